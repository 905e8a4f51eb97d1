"""Tool calls: checking the tools, the call grammar, and the parser that takes calls out of the answer.

A request's tools become one JSON Schema per call (`{"name": <that tool>,
<args_key>: <its parameters>}`), turned into a llama.cpp grammar by the same
converter `response_format` uses, wrapped in the family's call syntax
(`chat_families.ToolFamily`). Under "required" or a named tool the grammar
constrains the answer from its first token; under "auto" it waits for the
family's trigger (`<tool_call>`, `[TOOL_CALLS]`, a leading `{` for Llama 3) and
takes over from there, as llama.cpp's lazy grammars do: free text stays free,
and a call, once begun, can only be a valid one.

The parser sits in the decode loop's answer path: text before a call streams
on; the call's raw syntax is held and never shown; each complete call comes
out as a `ToolCall` with an id (the families here have none of their own).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import protocol

from .chat_families import GENERIC_TOOL_PROMPT, ToolFamily
from .errors import WorkerError
from .structured import StructuredOutputError, grammar_for, is_complete_json
from .thoughts import held_prefix

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def new_call_id(family: ToolFamily) -> str:
    """An id for a call, in the shape the family's template accepts."""
    if family.id_length:
        return "".join(secrets.choice(_ALNUM) for _ in range(family.id_length))
    return "call_" + secrets.token_hex(6)


# ---------------------------------------------------------------------------
# the request's tools
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolPlan:
    """One request's tools: what the template sees, the grammars, how calls are parsed."""

    family: ToolFamily
    tools: list[protocol.Tool]
    choice: str
    """"auto", "required", "none" (tools shown, no call taken), or the name of the one tool."""
    parallel: bool
    lazy_grammar: str | None
    """Under "auto": the grammar from the trigger on (the trigger already written). None for Llama 3,
    whose trigger (a bare `{`) shares its token with what follows: there "auto" calls are parsed,
    not constrained."""
    full_grammar: str
    """Under "required" / a named tool: the grammar of the whole answer."""

    @property
    def forced(self) -> bool:
        return self.choice not in ("auto", "none")

    def template_tools(self) -> list[dict[str, Any]] | None:
        """The `tools` variable of a template that renders them (OpenAI's shape, as transformers passes it)."""
        if not self.family.native:
            return None
        return [{"type": "function", "function": _function(t)} for t in self.tools]

    def system_addition(self) -> str:
        """For a template that does not render tools: the generic tool prompt."""
        if self.family.native:
            return ""
        listing = "\n".join(json.dumps(_function(t), ensure_ascii=False) for t in self.tools)
        return GENERIC_TOOL_PROMPT.format(tools=listing)

    def parser(self) -> ToolCallParser:
        # Under "none" calls the model writes anyway are taken out of the text, and dropped.
        return ToolCallParser(self.family, set() if self.choice == "none" else {t.name for t in self.tools})


def _function(tool: protocol.Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description:
        out["description"] = tool.description
    out["parameters"] = tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}}
    return out


def plan_tools(request: protocol.Generate, family: ToolFamily) -> ToolPlan | None:
    """Check the request's tools and build their grammars; None without tools.

    Under "none" the tools are still shown to the model (so the prompt, and its
    cache, stay the same as in the rounds that called them), but no call is taken.
    """
    tools = request.tools or []
    choice_value = request.tool_choice if request.tool_choice is not None else "auto"
    names = [t.name for t in tools]
    if isinstance(choice_value, protocol.NamedToolChoice):
        if choice_value.name not in names:
            raise WorkerError.invalid(f"tool_choice: no tool named {choice_value.name!r} (tools: {names})")
        choice = choice_value.name
    else:
        choice = choice_value
        if choice == "required" and not tools:
            raise WorkerError.invalid("tool_choice: 'required' needs tools")
    if not tools:
        return None
    if len(set(names)) != len(names):
        raise WorkerError.invalid(f"tools: names must be unique, got {names}")
    if request.mode != "chat":
        raise WorkerError.invalid("tools: only in chat mode")
    if request.response_format is not None:
        raise WorkerError.invalid("tools and response_format together are not supported: a tool call is already JSON of its schema")
    callable_tools = [t for t in tools if t.name == choice] if choice not in ("auto", "required", "none") else tools
    call_rules = _call_grammar(callable_tools, family, tools)
    lazy, full = _wrap(call_rules, family, parallel=request.parallel_tool_calls)
    lazy_grammar = None if choice == "none" or family.open == "{" else lazy
    return ToolPlan(family, tools, choice, request.parallel_tool_calls, lazy_grammar, full)


def _call_grammar(callable_tools: list[protocol.Tool], family: ToolFamily, all_tools: list[protocol.Tool]) -> str:
    """GBNF whose rule `call` is one call object of any of `callable_tools`."""
    alternatives = []
    for tool in callable_tools:
        params = tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}}
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            index = all_tools.index(tool)
            raise WorkerError.invalid(f"tools[{index}].parameters: must be a JSON Schema of type 'object'")
        alternatives.append(
            {"type": "object", "properties": {"name": {"const": tool.name}, family.args_key: params}, "required": ["name", family.args_key]}
        )
    try:
        grammar = grammar_for("json_schema", {"anyOf": alternatives}, ("name", family.args_key))
    except StructuredOutputError as exc:
        # Say which tool: convert them one by one to find it.
        for index, tool in enumerate(all_tools):
            try:
                grammar_for("json_schema", tool.parameters or {"type": "object"})
            except StructuredOutputError as one:
                raise WorkerError.invalid(str(one).replace("response_format.schema", f"tools[{index}].parameters ({tool.name})")) from None
        raise WorkerError.invalid(str(exc).replace("response_format.schema", "tools")) from None
    # The converter's top rule becomes `call`; nothing else refers to `root`.
    return re.sub(r"^root ::=", "call ::=", grammar, count=1, flags=re.M)


def _literal(text: str) -> str:
    return json.dumps(text)


def _wrap(call_rules: str, family: ToolFamily, parallel: bool) -> tuple[str, str]:
    """(the grammar after the trigger, the grammar of a whole answer of calls)."""
    ws = 'tool-ws ::= [ \\t\\n]*\n'
    if family.shape == "array":
        more = ' (tool-ws "," tool-ws call)*' if parallel else ""
        rest = f'tool-ws "[" tool-ws call{more} tool-ws "]"'
        return (f"root ::= {rest}\n{ws}{call_rules}", f"root ::= {_literal(family.open)} {rest}\n{ws}{call_rules}")
    if family.open == "{":
        # Llama 3: the call is bare JSON; its opening brace is the trigger, so the lazy grammar is the rest of it.
        rests = re.findall(r"^(alternative-\d+) ::= \"\{\" (.*)$", call_rules, flags=re.M)
        if rests:
            rest_rules = "".join(f"{name}-rest ::= {body}\n" for name, body in rests)
            rest_root = " | ".join(f"{name}-rest" for name, _ in rests)
        else:  # a single alternative is the top rule itself
            body = re.search(r'^call ::= "\{" (.*)$', call_rules, flags=re.M)
            assert body is not None, "the converter's object rule starts with its brace"
            rest_rules, rest_root = f"call-rest ::= {body.group(1)}\n", "call-rest"
        return (f"root ::= {rest_root}\n{rest_rules}{call_rules}", f"root ::= tool-ws call\n{ws}{call_rules}")
    one = f'tool-ws call tool-ws {_literal(family.close)}'
    more = f' (tool-ws {_literal(family.open)} {one})*' if parallel else ""
    return (f"root ::= {one}{more}\n{ws}{call_rules}", f"root ::= {_literal(family.open)} {one}{more}\n{ws}{call_rules}")


# ---------------------------------------------------------------------------
# parsing the answer
# ---------------------------------------------------------------------------


@dataclass
class ToolCallParser:
    """Takes tool calls out of streamed answer text (after thoughts, before stop sequences).

    States: "text" (answer text; what may begin the trigger is held), "call"
    (a call's syntax, held until complete), "after" (between or after calls:
    whitespace and further calls; other text is answer text again).
    """

    family: ToolFamily
    names: set[str]
    state: str = "text"
    calls: list[protocol.ToolCall] = field(default_factory=list)
    _buf: str = ""
    """Text held in case it begins the trigger."""
    _body: str = ""
    """The call being written."""
    _seen_text: bool = False

    @property
    def in_call(self) -> bool:
        return self.state == "call"

    def feed(self, text: str) -> tuple[str, list[protocol.ToolCall]]:
        """Add answer text; return (text to show, calls completed now)."""
        out: list[str] = []
        new: list[protocol.ToolCall] = []
        buf = self._buf + text
        self._buf = ""
        opener = self.family.open
        while buf:
            if self.state in ("text", "after"):
                if self.family.start_only and (self._seen_text or self.calls):
                    out.append(buf)
                    break
                idx = buf.find(opener)
                if self.family.start_only and idx != -1 and buf[:idx].strip():
                    idx = -1  # Llama 3: a brace after some text is text
                if idx == -1:
                    if self.family.start_only and not buf.strip():
                        self._buf = buf  # leading whitespace: a call may still come
                        break
                    keep = 0 if self.family.start_only else held_prefix(buf, (opener,))
                    shown = buf[: len(buf) - keep]
                    if self.state == "after" and not shown.strip():
                        shown = ""
                    out.append(shown)
                    self._seen_text = self._seen_text or bool(shown.strip())
                    self._buf = buf[len(buf) - keep :]
                    break
                before = buf[:idx]
                if before.strip():
                    out.append(before if self.state == "text" else before.strip())
                self._seen_text = self._seen_text or bool(before.strip())
                self.state = "call"
                # The trigger is part of the body for bare JSON (Llama 3's brace), not otherwise.
                buf = buf[idx:] if self.family.open == "{" else buf[idx + len(opener) :]
                continue
            # in a call
            buf, self._body = self._body + buf, ""
            body, rest, complete = self._take_body(buf)
            if not complete:
                self._body = body
                break
            new += self._parse(body)
            self.state = "after"
            buf = rest
        self.calls += new
        return "".join(out), new

    def _take_body(self, buf: str) -> tuple[str, str, bool]:
        if self.family.close:
            idx = buf.find(self.family.close)
            if idx == -1:
                return buf, "", False
            return buf[:idx], buf[idx + len(self.family.close) :], True
        # The JSON's own end: the shortest prefix that parses.
        start = len(buf) - len(buf.lstrip())
        for end in _closing_positions(buf, start):
            if is_complete_json(buf[:end]):
                return buf[:end], buf[end:], True
        return buf, "", False

    def _parse(self, body: str) -> list[protocol.ToolCall]:
        try:
            value = json.loads(body)
        except ValueError:
            return []  # a call cut short or malformed (only without a grammar): never shown as text
        items = value if isinstance(value, list) else [value]
        calls = []
        for item in items:
            if not isinstance(item, dict) or item.get("name") not in self.names:
                continue
            args = item.get(self.family.args_key, item.get("arguments", {}))
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except ValueError:
                    continue
            if isinstance(args, dict):
                calls.append(protocol.ToolCall(id=new_call_id(self.family), name=item["name"], arguments=args))
        return calls

    def flush(self) -> str:
        """At the end: held text that was not the start of a call (a cut-off call is dropped)."""
        buf, self._buf, self._body = self._buf, "", ""
        if self.state == "call" or (self.state == "after" and not buf.strip()):
            return ""
        return buf


def _closing_positions(buf: str, start: int) -> list[int]:
    """Candidate ends of a JSON value starting at `start`: after each closing bracket."""
    return [i + 1 for i in range(start, len(buf)) if buf[i] in "}]"]


# ---------------------------------------------------------------------------
# history
# ---------------------------------------------------------------------------


def check_tool_messages(messages: list[dict[str, Any]]) -> None:
    """Every `tool` message answers a call made before it (by id)."""
    ids: dict[str, str] = {}
    for i, m in enumerate(messages):
        for call in m.get("tool_calls") or []:
            ids[call["id"]] = call["name"]
        if m["role"] == "tool":
            call_id = m.get("tool_call_id")
            if not call_id or call_id not in ids:
                raise WorkerError.invalid(f"input[{i}]: a tool message must answer an earlier call by its tool_call_id (got {call_id!r})")
            m.setdefault("name", ids[call_id])


def template_message(m: dict[str, Any], native: bool) -> dict[str, Any]:
    """A message with tool calls or a tool result, as templates expect it (OpenAI's shape)."""
    out = dict(m)
    calls = m.get("tool_calls")
    if native:
        if calls:
            out["tool_calls"] = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]
        return out
    # Generic: calls written as the generic prompt asks; results as user turns.
    if calls:
        written = "\n".join(
            "<tool_call>\n" + json.dumps({"name": c["name"], "arguments": c["arguments"]}, ensure_ascii=False) + "\n</tool_call>" for c in calls
        )
        out["content"] = (m["content"] + "\n" if m["content"] else "") + written
        out.pop("tool_calls")
    if m["role"] == "tool":
        out = {"role": "user", "content": f"<tool_response name={m.get('name', '')}>\n{m['content']}\n</tool_response>"}
    return out
