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


def watch_parent(on_gone: Callable[[], None], interval: float = POLL_INTERVAL_S) -> threading.Thread:
    parent = os.getppid()

    def run() -> None:
        while True:
            if os.getppid() != parent:
                on_gone()
                return
            threading.Event().wait(interval)

    thread = threading.Thread(target=run, name="parent-watch", daemon=True)
    thread.start()
    return thread
