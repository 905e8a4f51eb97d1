"""Output filters: the stage between decoded text and the chunks a host sees.

Each filter takes the text decoded so far piece by piece and returns what may
be emitted now, holding back what the next piece may still change. The
decode loop runs them in order; stop sequences are the first, and the
thought splitter and tool-call parser to come are filters of the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class OutputFilter(Protocol):
    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether generation should stop here)."""
        ...

    def flush(self) -> str:
        """What is still held back, at the end of generation."""
        ...


class StopMatcher:
    """Finds stop sequences in streamed text without ever emitting part of one.

    Text that could be the beginning of a stop sequence is held back until
    the next piece shows whether it is one.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop sequence ended it)."""
        if not self._stops:
            return text, False
        buf = self._pending + text
        cut = -1
        for stop in self._stops:
            idx = buf.find(stop)
            if idx != -1 and (cut == -1 or idx < cut):
                cut = idx
        if cut != -1:
            self._pending = ""
            return buf[:cut], True
        hold = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), hold, -1):
                if buf.endswith(stop[:n]):
                    hold = n
                    break
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out


