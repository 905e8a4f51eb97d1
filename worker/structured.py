"""Structured output: a JSON Schema (or plain "JSON") becomes a llama.cpp grammar.

The schema-to-GBNF conversion is llama-cpp-python's port of llama.cpp's
converter; this module makes it safe to feed untrusted schemas to it:

- local `$ref`s (`#/$defs/...`, `#/definitions/...`, as msgspec and pydantic
  emit them) are inlined first, because the port fails on nested references;
  recursive schemas are refused, since inlining them never ends;
- `{"type": "object"}` without properties means any object (JSON Schema's
  meaning), not the empty object the converter would otherwise allow;
- the converter ignores integer `minimum`/`maximum`: a range of up to 1,001
  values becomes an enum, which the grammar enforces exactly;
- every failure becomes `StructuredOutputError` with a message naming the
  problem, which the worker reports as `invalid_request`.

Grammars are cached by the schema's canonical JSON, so a schema sent with
every request is converted once.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

MAX_SCHEMA_BYTES = 256 * 1024
MAX_REF_DEPTH = 64
#: Integer ranges up to this size are enforced (as an enum); wider bounds are not.
MAX_INTEGER_RANGE = 1001


class StructuredOutputError(Exception):
    """The response format cannot be turned into a grammar."""


def grammar_for(kind: str, schema: dict[str, Any] | None) -> str:
    """The GBNF grammar (root rule "root") for a response format."""
    if kind == "json":
        if schema is not None:
            raise StructuredOutputError("response_format.schema: only with type 'json_schema'")
        return JSON_GBNF
    if schema is None:
        raise StructuredOutputError("response_format.schema: required with type 'json_schema'")
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    if len(canonical) > MAX_SCHEMA_BYTES:
        raise StructuredOutputError(f"response_format.schema: larger than {MAX_SCHEMA_BYTES} bytes")
    return _schema_grammar(canonical)


@functools.lru_cache(maxsize=64)
def _schema_grammar(canonical: str) -> str:
    schema = json.loads(canonical)
    inlined = _inline_refs(schema, schema, ())
    try:
        return json_schema_to_gbnf(json.dumps(inlined))
    except RecursionError:
        raise StructuredOutputError("response_format.schema: nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - the converter signals with asserts, KeyErrors...
        detail = str(exc) or type(exc).__name__
        raise StructuredOutputError(f"response_format.schema: unsupported or invalid schema: {detail}") from None


def _inline_refs(node: Any, root: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline_refs(item, root, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            raise StructuredOutputError(f"response_format.schema: recursive reference {ref!r} is not supported")
        if len(seen) >= MAX_REF_DEPTH:
            raise StructuredOutputError("response_format.schema: references nested too deeply")
        target = _resolve(ref, root)
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline_refs(merged, root, (*seen, ref))
    out = {k: _inline_refs(v, root, seen) for k, v in node.items() if k not in ("$defs", "definitions")}
    if out.get("type") == "object" and not any(k in out for k in ("properties", "additionalProperties", "patternProperties")):
        out["additionalProperties"] = True
    low, high = out.get("minimum"), out.get("maximum")
    if out.get("type") == "integer" and _is_int(low) and _is_int(high) and 0 <= high - low < MAX_INTEGER_RANGE:
        # The converter ignores integer bounds; a small range is exact as an enum.
        out = {"enum": list(range(low, high + 1))}
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise StructuredOutputError(f"response_format.schema: only local references (#/...) are supported, not {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise StructuredOutputError(f"response_format.schema: reference {ref!r} points nowhere")
        node = node[part]
    if not isinstance(node, dict):
        raise StructuredOutputError(f"response_format.schema: reference {ref!r} is not a schema")
    return node


def is_complete_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
