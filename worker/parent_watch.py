"""Leave when the parent does.

End of stdin usually tells us, but not when the host's stdin pipe was
inherited by another process (a shell, a sibling), so we also watch the
parent pid. We poll `getppid()` rather than use PR_SET_PDEATHSIG: that signal
fires when the *thread* that spawned us exits, which would kill a healthy
worker spawned from a short-lived thread of a living host.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

POLL_INTERVAL_S = 0.2
PARENT_ENV_VAR = "LLAMA_WORKER_PARENT_PID"

#: Read at import, as early as the process allows: a parent that dies while we
#: start up would otherwise be missed (we would record init as our parent).
_PARENT_AT_START = os.getppid()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def host_pid() -> int | None:
    """The host's pid when it named itself in the environment.

    A host may start us through a wrapper (`sh -c`, `uv run`), so this pid is
    watched for liveness, not compared with our direct parent.
    """
    try:
        pid = int(os.environ[PARENT_ENV_VAR])
    except (KeyError, ValueError):
        return None
    return pid if pid > 0 else None


def parent_gone() -> bool:
    if os.getppid() != _PARENT_AT_START:
        return True
    pid = host_pid()
    return pid is not None and not _alive(pid)


def watch_parent(on_gone: Callable[[], None], interval: float = POLL_INTERVAL_S) -> threading.Thread:
    def run() -> None:
        while True:
            if parent_gone():
                on_gone()
                return
            threading.Event().wait(interval)

    thread = threading.Thread(target=run, name="parent-watch", daemon=True)
    thread.start()
    return thread
