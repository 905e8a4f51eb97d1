"""The conversations as this client knows them: what a restart puts back into a new worker.

The worker holds the real history; the client keeps a copy of each session's
system prompt and messages, updated from the replies it sees, so that after a
crash `restart()` can load the model again and `reset` every session to where
it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import protocol
from protocol import Done


@dataclass
class Mirror:
    """One session's conversation."""

    system_prompt: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class Mirrors:
    """Every session's `Mirror`; a session appears on first use with the load's system prompt."""

    def __init__(self) -> None:
        self.sessions: dict[str, Mirror] = {}
        self.default_system_prompt: str | None = None

    def __getitem__(self, session: str) -> Mirror:
        mirror = self.sessions.get(session)
        if mirror is None:
            mirror = self.sessions[session] = Mirror(system_prompt=self.default_system_prompt)
        return mirror

    def history(self, session: str) -> list[dict[str, Any]]:
        return [dict(m) for m in self[session].history]

    def loaded(self, system_prompt: str | None) -> None:
        """A load starts every session afresh."""
        self.sessions = {}
        self.default_system_prompt = system_prompt or None

    def reset(self, session: str, system_prompt: str | None, history: list[protocol.ChatMessage] | None) -> None:
        mirror = self[session]
        mirror.history = [_message(m) for m in history or []]
        if system_prompt is not None:
            mirror.system_prompt = system_prompt or None

    def restored(self, session: str, reply: protocol.Restored) -> None:
        """The file's conversation is the session's now."""
        history = [_message(m) for m in reply.history]
        self.sessions[session] = Mirror(system_prompt=reply.session.system_prompt, history=history)

    def closed(self, session: str) -> None:
        self.sessions.pop(session, None)

    def generated(self, request: protocol.Generate, done: Done) -> None:
        if request.mode != "chat":
            return
        if done.stop_reason == "aborted" and not done.text:
            return  # the worker did not record the turn either
        mirror = self[request.session]
        prefill = ""
        if isinstance(request.input, str):
            history = [*mirror.history, {"role": "user", "content": request.input}]
        else:
            messages = [_message(m) for m in request.input]
            if messages and messages[0]["role"] == "system":
                mirror.system_prompt = messages.pop(0)["content"] or None
            if messages and messages[-1]["role"] == "assistant" and not messages[-1].get("tool_calls"):
                prefill = messages.pop()["content"]  # the reply continued it
            history = messages
        history = history[done.truncated_messages :]
        if done.tool_calls:
            prefill = _before_call(prefill)
        reply: dict[str, Any] = {"role": "assistant", "content": prefill + done.text}
        if done.reasoning and request.reasoning is not None and request.reasoning.keep_in_history:
            reply["reasoning"] = done.reasoning
        if done.tool_calls:
            reply["tool_calls"] = [_call(c) for c in done.tool_calls]
        mirror.history = [*history, reply]


def _message(m: protocol.ChatMessage) -> dict[str, Any]:
    message: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.reasoning:
        message["reasoning"] = m.reasoning
    if m.tool_calls:
        message["tool_calls"] = [_call(c) for c in m.tool_calls]
    if m.tool_call_id is not None:
        message["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        message["name"] = m.name
    return message


#: What opens a call in a prefill; the worker keeps only the text before it (PROTOCOL.md 7.14).
_CALL_OPENERS = ("<tool_call>", "[TOOL_CALLS]")


def _before_call(prefill: str) -> str:
    cuts = [i for opener in _CALL_OPENERS if (i := prefill.find(opener)) != -1]
    return prefill[: min(cuts)] if cuts else prefill


def _call(c: protocol.ToolCall) -> dict[str, Any]:
    return {"id": c.id, "name": c.name, "arguments": c.arguments}
