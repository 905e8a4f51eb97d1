"""Structured output: a JSON Schema (or plain "JSON") becomes a llama.cpp grammar.

The schema-to-GBNF conversion is llama-cpp-python's port of llama.cpp's
converter; this module makes it safe to feed untrusted schemas to it:

- local `$ref`s (`#/$defs/...`, `#/definitions/...`, as msgspec and pydantic
  emit them) are inlined first, because the port fails on nested references;
  recursive schemas are refused, since inlining them never ends, and so is
  an expansion past MAX_SCHEMA_NODES subschemas;
- sizes that would make the grammar huge or too deeply nested for
  llama.cpp's parser (lengths and item counts over 1,000, enums over 4,096
  values, grammars over 1 MiB) are refused;
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
from typing import Any, TypeGuard

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

MAX_SCHEMA_BYTES = 256 * 1024
MAX_REF_DEPTH = 64
#: Subschemas once references are expanded (shared references are copied at every use).
MAX_SCHEMA_NODES = 20_000
#: Integer ranges up to this size are enforced (as an enum); wider bounds are not.
MAX_INTEGER_RANGE = 1001
#: Lengths and item counts: the converter nests one grammar group per unit, and
#: llama.cpp's recursive grammar parser crashes on very deep nesting.
MAX_REPETITION = 1000
MAX_ENUM = 4096
#: Every token is checked against the grammar: a huge one makes each token slow.
MAX_GRAMMAR_BYTES = 1024 * 1024


class StructuredOutputError(Exception):
    """The response format cannot be turned into a grammar."""


def grammar_for(kind: str, schema: dict[str, Any] | None, prop_order: tuple[str, ...] = ()) -> str:
    """The GBNF grammar (root rule "root") for a response format (`prop_order`: properties that come first)."""
    if kind == "json":
        if schema is not None:
            raise StructuredOutputError("response_format.schema: only with type 'json_schema'")
        return JSON_GBNF
    if schema is None:
        raise StructuredOutputError("response_format.schema: required with type 'json_schema'")
    try:
        canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    except (RecursionError, ValueError):
        raise StructuredOutputError("response_format.schema: nested too deeply") from None
    if len(canonical) > MAX_SCHEMA_BYTES:
        raise StructuredOutputError(f"response_format.schema: larger than {MAX_SCHEMA_BYTES} bytes")
    return _schema_grammar(canonical, prop_order)


@functools.lru_cache(maxsize=64)
def _schema_grammar(canonical: str, prop_order: tuple[str, ...] = ()) -> str:
    schema = json.loads(canonical)
    try:
        inliner = _Inliner(schema)
        inlined = inliner.schema(schema, ())
        grammar: str = json_schema_to_gbnf(json.dumps(inlined), list(prop_order) or None)
    except StructuredOutputError:
        raise
    except RecursionError:
        raise StructuredOutputError("response_format.schema: nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - the converter signals with asserts, KeyErrors...
        detail = str(exc) or type(exc).__name__
        raise StructuredOutputError(f"response_format.schema: unsupported or invalid schema: {detail}") from None
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise StructuredOutputError(f"response_format.schema: its grammar would exceed {MAX_GRAMMAR_BYTES} bytes")
    return grammar


#: Keywords whose value is a schema, a list of schemas, or a map of name -> schema.
_SCHEMA_VALUED = frozenset({"items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "dependentSchemas"})
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")


class _Inliner:
    """Inlines local `$ref`s, walking only where schemas can be (never into `enum`, `const`,
    `default` or property names), with a budget on what it builds: shared references are
    copied at every use, which could otherwise grow a small schema exponentially."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.nodes = 0

    def schema(self, node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, bool) or not isinstance(node, dict):
            return node
        self.nodes += 1
        if self.nodes > MAX_SCHEMA_NODES:
            raise StructuredOutputError(f"response_format.schema: more than {MAX_SCHEMA_NODES} subschemas once references are expanded")
        ref = node.get("$ref")
        if isinstance(ref, str):
            if ref in seen:
                raise StructuredOutputError(f"response_format.schema: recursive reference {ref!r} is not supported")
            if len(seen) >= MAX_REF_DEPTH:
                raise StructuredOutputError("response_format.schema: references nested too deeply")
            merged = {**_resolve(ref, self.root), **{k: v for k, v in node.items() if k != "$ref"}}
            return self.schema(merged, (*seen, ref))
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("$defs", "definitions"):
                continue  # inlined where used
            if key in _SCHEMA_VALUED:
                out[key] = self.schema(value, seen)
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                out[key] = [self.schema(v, seen) for v in value]
            elif key in _SCHEMA_MAPS and isinstance(value, dict):
                out[key] = {name: self.schema(v, seen) for name, v in value.items()}
            else:
                out[key] = value
        return _normalise(out)


def _normalise(node: dict[str, Any]) -> dict[str, Any]:
    for key in _COUNTS:
        value = node.get(key)
        if value is not None and (not _is_int(value) or not 0 <= value <= MAX_REPETITION):
            raise StructuredOutputError(f"response_format.schema: {key} must be an integer from 0 to {MAX_REPETITION}, not {value!r}")
    for key in ("enum",):
        value = node.get(key)
        if isinstance(value, list) and len(value) > MAX_ENUM:
            raise StructuredOutputError(f"response_format.schema: an enum of {len(value)} values (at most {MAX_ENUM})")
    if node.get("type") == "object" and not any(k in node for k in ("properties", "additionalProperties", "patternProperties")):
        node["additionalProperties"] = True
    low, high = node.get("minimum"), node.get("maximum")
    if node.get("type") == "integer" and _is_int(low) and _is_int(high) and 0 <= high - low < MAX_INTEGER_RANGE:
        # The converter ignores integer bounds; a small range is exact as an enum.
        return {"enum": list(range(low, high + 1))}
    return node


def _is_int(value: Any) -> TypeGuard[int]:
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
