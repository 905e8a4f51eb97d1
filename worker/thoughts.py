"""Thought splitters: a reasoning model's output stream cut into thought and answer, tags removed.

The decode loop feeds each token's text to a splitter and gets back segments,
each `("reasoning", text)` or `("text", text)`. Markers (`<think>`, Harmony's
`<|channel|>analysis<|message|>`...) never come out, also when the model writes
them as plain text split over several tokens: whatever could still be the
start of a marker is held back until the next piece decides.

`in_thought` says whether the model is thinking right now (what a budget
counts and `end_reasoning` acts on); `close_thought()` is the worker closing the
thought itself: it returns the model's own end-of-thought text, for the
caller to put into the context, and what the splitter still held.

Which splitter a model gets, and the exact tags, is `chat_families`' business.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, Protocol

Kind = Literal["text", "reasoning"]
Segment = tuple[Kind, str]


class ThoughtSplitter(Protocol):
    @property
    def in_thought(self) -> bool:
        """The model is inside a thought now."""
        ...

    @property
    def answering(self) -> bool:
        """The model is writing the answer now (a grammar may take over)."""
        ...

    def feed(self, text: str) -> list[Segment]:
        """Add text; return the segments it completes."""
        ...

    def flush(self) -> list[Segment]:
        """At the end of generation: what is still held (never a marker's fragment)."""
        ...

    def close_thought(self) -> tuple[str, list[Segment]]:
        """End the thought now: (text to append to the context, segments still held)."""
        ...


def held_prefix(buf: str, markers: Sequence[str]) -> int:
    """Length of the longest end of `buf` that could begin one of `markers`."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(buf)), best, -1):
            if buf.endswith(marker[:n]):
                best = n
                break
    return best


class ThinkTagSplitter:
    """`<think>` ... `</think>` (Qwen3, DeepSeek-R1, SmolLM3): one thought, at the start of the reply.

    States: "start" (the reply may open a thought: leading whitespace and a
    partial open tag are held), "thought", "lead" (just after the thought:
    the whitespace before the answer is dropped), "answer" (pass-through; a
    later `<think>` is answer text).
    """

    def __init__(self, open_tag: str, close_tag: str, *, in_thought: bool = False) -> None:
        self.open_tag = open_tag
        self.close_tag = close_tag
        self.state: Literal["start", "thought", "lead", "answer"] = "thought" if in_thought else "start"
        self._buf = ""
        self._thought_started = False  # a thought's leading whitespace is dropped

    @property
    def in_thought(self) -> bool:
        return self.state == "thought"

    @property
    def answering(self) -> bool:
        return self.state in ("lead", "answer")

    def feed(self, text: str) -> list[Segment]:
        out: list[Segment] = []
        buf = self._buf + text
        self._buf = ""
        while buf:
            if self.state == "answer":
                out.append(("text", buf))
                return out
            if self.state == "lead":
                stripped = buf.lstrip()
                if not stripped:
                    return out
                self.state = "answer"
                buf = stripped
                continue
            if self.state == "start":
                stripped = buf.lstrip()
                if stripped.startswith(self.open_tag):
                    self.state = "thought"
                    buf = stripped[len(self.open_tag) :]
                    continue
                if self.open_tag.startswith(stripped):
                    self._buf = buf  # whitespace, or the beginning of the open tag
                    return out
                self.state = "answer"
                continue
            # in a thought
            if not self._thought_started:
                buf = buf.lstrip()
                if not buf:
                    return out
                self._thought_started = True
            idx = buf.find(self.close_tag)
            if idx != -1:
                thought = buf[:idx].rstrip()
                if thought:
                    out.append(("reasoning", thought))
                self.state = "lead"
                buf = buf[idx + len(self.close_tag) :]
                continue
            # Hold what may begin the close tag, and trailing whitespace (a thought's end is trimmed).
            keep = held_prefix(buf, (self.close_tag,))
            body = buf[: len(buf) - keep]
            trimmed = body.rstrip()
            self._buf = body[len(trimmed) :] + buf[len(buf) - keep :]
            if trimmed:
                out.append(("reasoning", trimmed))
            return out
        return out

    def flush(self) -> list[Segment]:
        buf, self._buf = self._buf, ""
        if self.state == "start" and buf and not self.open_tag.startswith(buf.lstrip()):
            return [("text", buf)]
        return []  # whitespace, or a marker cut short by the end of the reply

    def close_thought(self) -> tuple[str, list[Segment]]:
        self._buf = ""  # trailing whitespace, or a close tag the model had begun
        self.state = "lead"
        return f"\n{self.close_tag}\n\n", []


_CHANNEL = re.compile(r"<\|channel\|>\s*(\w+)")


class HarmonySplitter:
    """gpt-oss's Harmony: messages `<|channel|>NAME<|message|>...<|end|>` after `<|start|>assistant`.

    The `analysis` channel is the thought; `final` (and `commentary`, the
    preamble of tool calls) is the answer. A reply that does not follow Harmony
    at all (no header where one must be) is answer text ("raw"). Markers out of
    place (a `<|message|>` inside a message) are dropped, never shown.
    States: "header" (until `<|message|>`), "content", "done" (after
    `<|return|>` or `<|call|>`), "raw" (not Harmony).
    """

    START, CHANNEL, MESSAGE, END, RETURN, CALL = "<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>"
    CONSTRAIN = "<|constrain|>"
    _MARKERS = (START, CHANNEL, MESSAGE, END, RETURN, CALL, CONSTRAIN)
    _HEADER_STARTS = ("<|start|>", "<|channel|>", "to=", "<|constrain|>", "<|message|>")
    _MAX_HEADER = 256

    def __init__(self) -> None:
        self.state: Literal["header", "content", "done", "raw"] = "header"
        self.channel = ""
        self._buf = ""

    @property
    def in_thought(self) -> bool:
        return self.state == "content" and self.channel == "analysis"

    @property
    def answering(self) -> bool:
        return self.state == "raw" or (self.state == "content" and self.channel != "analysis")

    def _kind(self) -> Kind:
        return "reasoning" if self.channel == "analysis" else "text"

    def feed(self, text: str) -> list[Segment]:
        out: list[Segment] = []
        buf = self._buf + text
        self._buf = ""
        while buf:
            if self.state == "done":
                return out
            if self.state == "header":
                idx = buf.find(self.MESSAGE)
                if idx == -1:
                    head = buf.lstrip()
                    plausible = any(head.startswith(s) or s.startswith(head) for s in self._HEADER_STARTS)
                    if not plausible or len(buf) > self._MAX_HEADER:
                        self.state = "raw"
                        continue
                    self._buf = buf
                    return out
                match = _CHANNEL.search(buf[:idx])
                self.channel = match.group(1) if match else "final"
                self.state = "content"
                buf = buf[idx + len(self.MESSAGE) :]
                continue
            # content of a message (or raw text)
            found = [(i, m) for m in self._MARKERS if (i := buf.find(m)) != -1]
            if found:
                idx, marker = min(found)
                if idx:
                    out.append((self._kind(), buf[:idx]))
                buf = buf[idx + len(marker) :]
                if self.state == "content" and marker == self.END:
                    self.state = "header"
                elif marker in (self.RETURN, self.CALL):
                    self.state = "done"
                continue  # any other marker here is out of place: dropped
            keep = held_prefix(buf, self._MARKERS)
            if len(buf) > keep:
                out.append((self._kind(), buf[: len(buf) - keep]))
            self._buf = buf[len(buf) - keep :]
            return out
        return out

    def flush(self) -> list[Segment]:
        self._buf = ""  # a header, or a marker cut short by the end of the reply
        return []

    def close_thought(self) -> tuple[str, list[Segment]]:
        self._buf = ""
        self.state, self.channel = "content", "final"
        return f"{self.END}{self.START}assistant{self.CHANNEL}final{self.MESSAGE}", []
