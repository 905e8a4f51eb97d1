"""Giving the one context to a session: its KV state in, the previous owner's out to RAM.

Beside the session store (`sessions.py`), which only keeps names, histories
and snapshots, this is what moves KV state between the context and that
store. Model thread only: it touches the context.
"""

from __future__ import annotations

import logging

from .llama_backend import Context, LlamaError
from .sessions import KvSnapshot, SessionStore

log = logging.getLogger("worker")


def activate(store: SessionStore, ctx: Context, name: str | None) -> None:
    """Give the context to session `name` (None: a completion, nobody's).

    The outgoing session's KV state is kept in RAM (unless an identical copy
    is already there); the incoming one's is copied in when cached. Without a
    cached copy the context keeps what it holds: prefix matching still reuses
    whatever the two conversations share.
    """
    if store.owner == name:
        return
    stash_owner(store, ctx)
    snap = store.snapshot(name) if name is not None else None
    if name is not None and snap is not None:
        try:
            ctx.load_state(snap.data, snap.tokens)
            store.touch(name)
        except LlamaError as exc:  # the cache is empty now: evaluation takes over
            log.warning("could not restore session %r from RAM: %s", name, exc)
            store.take_snapshot(name)
    store.owner = name


def stash_owner(store: SessionStore, ctx: Context, current: KvSnapshot | None = None) -> None:
    """Keep the context's state in RAM for its owner (`current`: that state, already copied)."""
    owner = store.owner
    if owner is None or not ctx.tokens or store.cache_budget <= 0:
        return
    snap = store.snapshot(owner)
    if snap is not None and len(snap.tokens) == len(ctx.tokens) and snap.tokens == tuple(ctx.tokens):
        return
    try:
        store.keep_snapshot(owner, current or KvSnapshot(tuple(ctx.tokens), ctx.save_state()))
    except LlamaError as exc:  # only a cache: the session will be evaluated again if needed
        log.warning("could not keep session %r's KV state in RAM: %s", owner, exc)
