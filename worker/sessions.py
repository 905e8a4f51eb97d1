"""Many chat sessions over one context: their histories and a RAM cache of KV state.

One llama.cpp context holds the KV state of one token sequence at a time. A
desktop app has many conversations open, so the state of the sessions that
are not in the context is copied out to RAM (`KvSnapshot`) within a byte
budget, least recently used first out. Switching back to a cached session
copies its state in again instead of evaluating its prompt; an evicted one
falls back to evaluation, which the context's prefix matching keeps correct
(the cache is always checked token by token, never trusted by name).

The session store is read by the reader thread (`sessions` is answered at
once) while the model thread changes it, hence the lock; KV snapshots are
only ever touched by the model thread.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from protocol import DEFAULT_SESSION, SessionInfo

from .session import ChatSession

#: Default RAM budget: an eighth of the machine's memory, at most this.
MAX_DEFAULT_CACHE_BYTES = 4 * 1024**3


def default_cache_budget() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 1024**3
    return int(min(total // 8, MAX_DEFAULT_CACHE_BYTES))


@dataclass(frozen=True)
class KvSnapshot:
    """The KV state of `tokens`, as `Context.save_state` returned it."""

    tokens: tuple[int, ...]
    data: bytes | bytearray
    """Never written to after creation (a bytearray only so it can be handed to C without a copy)."""

    @property
    def nbytes(self) -> int:
        return len(self.data) + 4 * len(self.tokens)


class SessionStore:
    """Sessions by name, which one owns the context, and the RAM cache of the others."""

    def __init__(self, system_prompt: str | None, cache_budget: int) -> None:
        self._default_system_prompt = system_prompt
        self.cache_budget = cache_budget
        self.lock = threading.Lock()
        self._sessions: dict[str, ChatSession] = {DEFAULT_SESSION: ChatSession(system_prompt=system_prompt)}
        self._tokens: dict[str, int] = {}
        self._snapshots: OrderedDict[str, KvSnapshot] = OrderedDict()
        #: The session whose conversation the context's tokens were evaluated for (None: nobody's).
        self.owner: str | None = None

    # -- sessions ----------------------------------------------------------

    def get(self, name: str) -> ChatSession:
        """The session `name`, created with the load's system prompt on first use."""
        with self.lock:
            session = self._sessions.get(name)
            if session is None:
                session = self._sessions[name] = ChatSession(system_prompt=self._default_system_prompt)
            return session

    def peek(self, name: str) -> ChatSession:
        """A copy of session `name` as it stands (a new one's defaults if it does not exist yet)."""
        with self.lock:
            session = self._sessions.get(name)
            if session is None:
                return ChatSession(system_prompt=self._default_system_prompt)
            return ChatSession(system_prompt=session.system_prompt, history=[dict(m) for m in session.history])

    def replace(self, name: str, session: ChatSession, n_tokens: int) -> None:
        with self.lock:
            self._sessions[name] = session
            self._tokens[name] = n_tokens

    def set_tokens(self, name: str, n_tokens: int) -> None:
        with self.lock:
            self._tokens[name] = n_tokens

    def close(self, name: str) -> None:
        """Forget a session; "default" always exists, so it is emptied instead."""
        with self.lock:
            if name == DEFAULT_SESSION:
                self._sessions[name] = ChatSession(system_prompt=self._default_system_prompt)
            else:
                self._sessions.pop(name, None)
            self._tokens.pop(name, None)
            self._snapshots.pop(name, None)
            if self.owner == name:
                self.owner = None

    def names(self) -> list[str]:
        with self.lock:
            return list(self._sessions)

    # -- KV snapshots (model thread only) ------------------------------------

    def snapshot(self, name: str) -> KvSnapshot | None:
        return self._snapshots.get(name)

    def touch(self, name: str) -> None:
        """Mark a snapshot as just used (the last to be evicted)."""
        with self.lock:
            if name in self._snapshots:
                self._snapshots.move_to_end(name)

    def take_snapshot(self, name: str) -> KvSnapshot | None:
        """Remove and return a session's snapshot (it is about to be in the context)."""
        with self.lock:
            return self._snapshots.pop(name, None)

    def keep_snapshot(self, name: str, snap: KvSnapshot) -> bool:
        """Cache a snapshot, evicting the least recently used ones to fit; False if it cannot fit."""
        with self.lock:
            self._snapshots.pop(name, None)
            if snap.nbytes > self.cache_budget or name not in self._sessions:
                return False
            while self._snapshots and self.cache_bytes + snap.nbytes > self.cache_budget:
                self._snapshots.popitem(last=False)
            self._snapshots[name] = snap
            return True

    @property
    def cache_bytes(self) -> int:
        return sum(s.nbytes for s in self._snapshots.values())

    # -- listing (any thread) -----------------------------------------------

    def info(self, name: str, context_tokens: int) -> SessionInfo:
        with self.lock:
            return self._info(name, context_tokens)

    def _info(self, name: str, context_tokens: int) -> SessionInfo:
        session = self._sessions.get(name) or ChatSession()
        snap = self._snapshots.get(name)
        active = self.owner == name and context_tokens > 0
        tokens = context_tokens if active else len(snap.tokens) if snap else self._tokens.get(name, 0)
        return SessionInfo(
            session=name,
            messages=len(session.history),
            tokens=tokens,
            kv_cached=active or snap is not None,
            active=active,
            kv_bytes=snap.nbytes if snap else 0,
            system_prompt=session.system_prompt,
        )

    def listing(self, context_tokens: int) -> tuple[list[SessionInfo], int]:
        with self.lock:
            return [self._info(name, context_tokens) for name in self._sessions], self.cache_bytes
