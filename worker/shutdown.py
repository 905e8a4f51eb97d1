"""Leaving: one decision about the exit code, a watchdog, and an exit that cannot block.

Shutdown can be asked for from several threads at once (end of stdin, a
broken stdout, the parent watch, a fatal frame). The first asker decides the
exit code; the model loop then stops, and a watchdog makes sure the process
leaves even if the model thread is stuck in a call that cannot be aborted.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable

from .stdio import FINAL_FLUSH_S

log = logging.getLogger("worker")

#: Exit codes (documented in PROTOCOL.md section 8.1).
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_FATAL_FRAME = 3
EXIT_PARENT_GONE = 4

#: The model thread's time to stop (abort the job, run queued cleanups, free
#: the model) once shutdown begins. The final flush of stdout then has its own
#: `FINAL_FLUSH_S` on top: a slow host still gets the last frames.
SHUTDOWN_GRACE_S = 1.5


class Shutdown:
    """The exit code, decided once, and the watchdog that enforces the grace periods."""

    def __init__(self, stop_work: Callable[[], None]) -> None:
        self._stop_work = stop_work
        self._lock = threading.Lock()
        self.started = threading.Event()
        self.flushing = threading.Event()
        """Set by the server when the final flush begins."""
        self.finished = threading.Event()
        """Set by the server when it has nothing left to do; the watchdog stands down."""
        self.exit_code = EXIT_OK

    def begin(self, exit_code: int, reason: str) -> None:
        """Decide the exit code (if nobody has yet) and stop the work; callable from any thread."""
        with self._lock:
            if self.started.is_set():
                return
            self.started.set()
            self.exit_code = exit_code
        log.info("shutting down: %s", reason)
        threading.Thread(target=self._watchdog, name="shutdown-watchdog", daemon=True).start()
        self._stop_work()

    def _watchdog(self) -> None:
        """Exit hard if the model thread is stuck, allowing the final flush its own time."""
        if self.finished.wait(SHUTDOWN_GRACE_S):
            return
        if self.flushing.is_set() and self.finished.wait(FINAL_FLUSH_S + 0.5):
            return
        exit_now(self.exit_code, f"shutdown did not finish within {SHUTDOWN_GRACE_S} s (+{FINAL_FLUSH_S} s to flush); exiting hard")


def pipe_hung_up(fd: int) -> bool:
    """True when every writer of this pipe has closed it (POLLHUP), data left unread or not."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        return any(events & select.POLLHUP for _, events in poller.poll(0))
    except OSError:
        return False


def exit_now(code: int, message: str | None = None) -> None:
    """Leave the process at once with `code`, logging `message` only if that cannot block.

    Logging can block: a host that stopped draining stderr leaves the pipe
    full, and a handler's lock may be held by a thread stuck in that write.
    So the last words are written by a daemon thread given a moment, and
    `os._exit` follows whether it finished or not.
    """

    def last_words() -> None:
        if message:
            log.error("%s", message)
        logging.shutdown()

    speaker = threading.Thread(target=last_words, name="last-words", daemon=True)
    speaker.start()
    speaker.join(0.5)
    os._exit(code)
