"""Error codes of wire protocol v1.

Codes are the stable part of an error: hosts branch on them, humans read the
message. Whether a retry can help is decided here, once, so the worker and
every host agree on it.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Every code an `error` frame can carry (pinned: add, never rename)."""

    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_TYPE = "unknown_type"
    PROTOCOL_MISMATCH = "protocol_mismatch"
    NOT_INITIALIZED = "not_initialized"
    NO_MODEL = "no_model"
    BUSY = "busy"
    MODEL_NOT_FOUND = "model_not_found"
    LOAD_FAILED = "load_failed"
    CONTEXT_OVERFLOW = "context_overflow"
    ABORTED = "aborted"
    GENERATION_FAILED = "generation_failed"
    INTERNAL = "internal"
    SESSION_MISMATCH = "session_mismatch"
    """A saved session was made with another model or KV layout."""
    BAD_SESSION_FILE = "bad_session_file"
    """A saved-session file is missing, unreadable, damaged or not one."""
    REPLY_TOO_LARGE = "reply_too_large"
    """The reply to this request would exceed the largest frame the host accepts."""
    NOT_REASONING = "not_reasoning"
    """`end_reasoning`: the target is not thinking (not running, never thought, or already answering)."""


#: Codes for which sending the same request again, later, can succeed
#: without the host changing anything.
RETRYABLE_CODES: frozenset[ErrorCode] = frozenset(
    {ErrorCode.BUSY, ErrorCode.ABORTED, ErrorCode.GENERATION_FAILED}
)


def is_retryable(code: ErrorCode | str) -> bool:
    return code in RETRYABLE_CODES


class ProtocolError(Exception):
    """A frame that could not become a message.

    Returned (not raised) by the stream decoder so that one bad frame among
    several in a read does not hide the good ones. `fatal` means the byte
    stream can no longer be trusted to be aligned on frame boundaries.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        request_id: int | str | None = None,
        *,
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.fatal = fatal

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.value!r}, {self.message!r}, id={self.request_id!r}, fatal={self.fatal})"
