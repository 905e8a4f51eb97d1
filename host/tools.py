"""Tools from plain Python functions, and running the calls a model makes.

`Tool.from_function(fn)` reads a function's name, docstring and type-hinted
parameters and makes the protocol's tool definition, with a JSON Schema that
msgspec generates from the hints (the same types `chat_as` accepts). Calling
it converts the model's arguments to those types (msgspec again) and runs the
function, sync on a worker thread or async on the event loop. Whatever the
function raises becomes the call's result (`{"error": ...}`), for the model
to read: a tool never breaks the loop that runs it.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import msgspec

import protocol


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its protocol definition and how to run it."""

    definition: protocol.Tool
    function: Callable[..., Any]
    arguments: type[msgspec.Struct]

    @property
    def name(self) -> str:
        return self.definition.name

    @classmethod
    def from_function(cls, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None) -> Tool:
        """A tool from `fn`: every parameter needs a type hint; defaults make parameters optional."""
        hints = typing.get_type_hints(fn)
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {fn.__name__}: *args and **kwargs cannot be described to a model")
            if param.name not in hints:
                raise TypeError(f"tool {fn.__name__}: parameter {param.name!r} needs a type hint")
            if param.default is inspect.Parameter.empty:
                fields.append((param.name, hints[param.name]))
            else:
                fields.append((param.name, hints[param.name], param.default))
        tool_name = name or fn.__name__
        arguments = msgspec.defstruct(f"{tool_name}_arguments", fields, kw_only=True, forbid_unknown_fields=True)
        schema = _inline(msgspec.json.schema(arguments))
        doc = description if description is not None else inspect.getdoc(fn)
        return cls(protocol.Tool(name=tool_name, description=doc or None, parameters=schema), fn, arguments)

    async def call(self, arguments: Mapping[str, Any]) -> str:
        """Run the function with the model's arguments; its result (or its error) as text for the model."""
        try:
            args = msgspec.convert(dict(arguments), self.arguments)
            kwargs = {f: getattr(args, f) for f in self.arguments.__struct_fields__}
            if inspect.iscoroutinefunction(self.function):
                result = await self.function(**kwargs)
            else:
                result = await anyio.to_thread.run_sync(lambda: self.function(**kwargs))
                if inspect.isawaitable(result):
                    result = await result
        except Exception as exc:  # noqa: BLE001 - the model reads what went wrong; the loop goes on
            return json.dumps({"error": f"{type(exc).__name__}: {exc}"}, ensure_ascii=False)
        return result if isinstance(result, str) else msgspec.json.encode(result).decode()


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """msgspec's schema is a `$ref` into `$defs`: the tool's parameters are the object itself."""
    defs = schema.get("$defs", {})
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/") and ref[len("#/$defs/") :] in defs:
        top = dict(defs[ref[len("#/$defs/") :]])
        top.pop("title", None)
        rest = {k: v for k, v in defs.items() if v is not defs[ref[len("#/$defs/") :]]}
        if rest:
            top["$defs"] = rest
        return top
    return schema


ToolLike = Tool | Callable[..., Any] | protocol.Tool | Mapping[str, Any]


def as_tool(value: ToolLike) -> Tool | protocol.Tool:
    """A function becomes a runnable `Tool`; a protocol tool (or its dict) stays a definition only."""
    if isinstance(value, Tool | protocol.Tool):
        return value
    if isinstance(value, Mapping):
        return msgspec.convert(dict(value), protocol.Tool)
    if callable(value):
        return Tool.from_function(value)
    raise TypeError(f"tools: expected a function, a host.Tool, or a tool definition, not {value!r}")


def definition(tool: Tool | protocol.Tool) -> protocol.Tool:
    return tool.definition if isinstance(tool, Tool) else tool
