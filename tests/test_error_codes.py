"""The Python host's error classes cover exactly the protocol's error codes."""

from __future__ import annotations

import json

import protocol
from host import exceptions
from tests.harness import REPO_ROOT


def test_every_error_code_maps_to_a_class_and_nothing_else() -> None:
    assert set(exceptions._BY_CODE) == set(protocol.ErrorCode)
    schema = json.loads((REPO_ROOT / "protocol" / "schema.json").read_text())
    assert set(schema["$defs"]["ErrorCode"]["enum"]) == {c.value for c in protocol.ErrorCode}


def test_raised_errors_carry_the_protocols_retryable_flag() -> None:
    for code in protocol.ErrorCode:
        exc = exceptions.error_from_frame(code, "m", protocol.is_retryable(code))
        assert exc.code == code.value and exc.retryable is (code in protocol.RETRYABLE_CODES)
        assert isinstance(exc, exceptions._BY_CODE[code])

