"""Log records to the host as `log` frames, when `init.log_level` asks for them."""

from __future__ import annotations

import logging
from typing import Literal

import protocol

from .stdio import FrameWriter

WireLevel = Literal["debug", "info", "warning", "error"]


class LogFrameHandler(logging.Handler):
    """Sends log records at the host's chosen level or above as `log` frames (none until `init` asks)."""

    _LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

    def __init__(self, writer: FrameWriter) -> None:
        super().__init__(level=logging.CRITICAL + 1)
        self._writer = writer

    def set_wire_level(self, name: str | None) -> None:
        self.setLevel(self._LEVELS[name] if name else logging.CRITICAL + 1)

    def emit(self, record: logging.LogRecord) -> None:
        # llama.cpp's own chatter stays on stderr unless it is a warning or worse.
        if record.name.startswith("llama.cpp") and record.levelno < logging.WARNING:
            return
        if record.name.startswith("worker.stdio"):
            return  # never recurse into the writer about the writer
        level: WireLevel = (
            "error" if record.levelno >= logging.ERROR else "warning" if record.levelno >= logging.WARNING else "info" if record.levelno >= logging.INFO else "debug"
        )
        try:
            self._writer.send(protocol.Log(level=level, message=self.format(record)))
        except Exception:  # noqa: BLE001
            self.handleError(record)
