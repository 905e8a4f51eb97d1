"""The route table: for every request type, its lane and its handler. One entry per message.

Adding a request to the protocol means one line here and one method in
`handlers.Handlers`; a test fails when a member of the request union has no
route. The lanes are explained in `lanes`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from protocol import (
    Abort,
    Cleanup,
    CloseSession,
    Count,
    Detokenize,
    EndReasoning,
    Generate,
    Init,
    Load,
    Ping,
    Preload,
    Reset,
    RestoreSession,
    SaveSession,
    Sessions,
    Tokenize,
)

from .handlers import Handlers
from .lanes import Job, Lane


@dataclass(frozen=True)
class Route:
    lane: Lane
    handler: Callable[[Handlers, Job[Any]], Any]
    before_init: bool = False
    """Answered before `init` too (every other request gets `not_initialized` then)."""


ROUTES: Mapping[type, Route] = {
    Ping: Route(Lane.INLINE, Handlers.ping, before_init=True),
    Init: Route(Lane.INLINE, Handlers.init, before_init=True),
    Abort: Route(Lane.INLINE, Handlers.abort),
    EndReasoning: Route(Lane.INLINE, Handlers.end_reasoning),
    Sessions: Route(Lane.INLINE, Handlers.sessions),
    Tokenize: Route(Lane.AUX, Handlers.tokenize),
    Detokenize: Route(Lane.AUX, Handlers.detokenize),
    Count: Route(Lane.AUX, Handlers.count),
    Generate: Route(Lane.JOB, Handlers.generate),
    Load: Route(Lane.JOB, Handlers.load),
    Reset: Route(Lane.JOB, Handlers.reset),
    CloseSession: Route(Lane.JOB, Handlers.close_session),
    SaveSession: Route(Lane.JOB, Handlers.save_session),
    RestoreSession: Route(Lane.JOB, Handlers.restore_session),
    Preload: Route(Lane.PREEMPTIBLE, Handlers.preload),
    Cleanup: Route(Lane.QUEUED, Handlers.cleanup),
}
