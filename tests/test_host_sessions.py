"""Sessions through the Python host client (issue 8): objects, preload, files, restart.

Real worker, real default model, greedy decoding; waits bounded by
`anyio.fail_after`, never by sleeping.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from host import AsyncClient, Client, SessionFileError
from tests.harness import pid_alive

TIMEOUT = 120


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_session_objects_keep_their_own_conversations(tmp_path: Path) -> None:
    async with AsyncClient() as client:
        await client.load(system_prompt="You are terse.")
        notes, todo = client.session("notes"), client.session("todo")
        assert client.session("notes") is notes
        with anyio.fail_after(TIMEOUT):
            first = await notes.chat("Remember: the meeting is at noon.", max_tokens=12, temperature=0)
            await todo.chat("Add milk to the list.", max_tokens=12, temperature=0)
            again = await notes.chat("When is the meeting?", max_tokens=8, temperature=0)
        assert [m["role"] for m in notes.history] == ["user", "assistant"] * 2
        assert len(todo.history) == 2 and client.history == []  # the default session is untouched
        # Switching back to "notes" restored its KV state: only the new turn was evaluated.
        assert again.usage.cached_tokens >= first.usage.prompt_tokens + first.usage.completion_tokens - 2
        listing = {s.session: s for s in (await client.sessions()).sessions}
        assert listing["notes"].active and listing["todo"].kv_cached and listing["notes"].messages == 4
        info = await todo.info()
        assert info.messages == 2 and info.system_prompt == "You are terse."

        with anyio.fail_after(TIMEOUT):
            pre = await todo.preload("Also add eggs")
            done = await todo.chat("Also add eggs", max_tokens=4, temperature=0)
        assert pre.complete and done.usage.cached_tokens == pre.prompt_tokens - 1

        path = tmp_path / "notes.session"
        with anyio.fail_after(TIMEOUT):
            saved = await notes.save(path)
        assert saved.bytes == path.stat().st_size

        await todo.close()
        assert "todo" not in {s.session for s in (await client.sessions()).sessions}

    # A new worker, tomorrow: the conversation comes back, with its KV state.
    async with AsyncClient() as client:
        await client.load()
        restored = client.session("notes")
        with anyio.fail_after(TIMEOUT):
            info = await restored.restore(path)
            follow = await restored.chat("Thanks.", max_tokens=4, temperature=0)
        assert info.messages == 4 and info.system_prompt == "You are terse."
        assert [m["role"] for m in restored.history] == ["user", "assistant"] * 3
        assert follow.usage.cached_tokens >= saved.session.tokens - 1

        path.write_bytes(path.read_bytes()[:1000])
        with pytest.raises(SessionFileError) as err:
            await client.session("other").restore(path)
        assert err.value.code == "bad_session_file" and not err.value.retryable


@pytest.mark.anyio
async def test_auto_restart_restores_every_session() -> None:
    async with AsyncClient(auto_restart=True) as client:
        await client.load(system_prompt="You are terse.")
        a, b = client.session("a"), client.session("b")
        with anyio.fail_after(TIMEOUT):
            a1 = await a.chat("My name is Ada.", max_tokens=8, temperature=0)
            b1 = await b.chat("My name is Bob.", max_tokens=8, temperature=0)
        pid = client.pid
        assert pid is not None
        worker = client._conn
        assert worker is not None
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(10):
            await worker.gone.wait()  # the client noticed the death
        assert not pid_alive(pid) and not client.alive
        with anyio.fail_after(TIMEOUT):
            # The first call after the crash brings a new worker up with every conversation back,
            # whatever the call: counting sees a's history before anything is generated.
            counted = await a.count_tokens()
        assert counted.tokens >= a1.usage.prompt_tokens + a1.usage.completion_tokens - 2
        with anyio.fail_after(TIMEOUT):
            a2 = await a.chat("What is my name?", max_tokens=4, temperature=0)
            b2 = await b.chat("What is my name?", max_tokens=4, temperature=0)
        assert client.pid != pid
        # Each new prompt held that session's earlier turn, and only that one.
        assert a2.usage.prompt_tokens > a1.usage.prompt_tokens + a1.usage.completion_tokens
        assert b2.usage.prompt_tokens > b1.usage.prompt_tokens + b1.usage.completion_tokens
        assert [m["content"] for m in a.history][0] == "My name is Ada."
        assert [m["content"] for m in b.history][0] == "My name is Bob."
        listing = {s.session: s for s in (await client.sessions()).sessions}
        assert listing["a"].messages == 4 and listing["b"].messages == 4


def test_sync_sessions(tmp_path: Path) -> None:
    with Client() as client:
        client.load()
        s = client.session("x")
        done = s.chat("Hello!", max_tokens=6, temperature=0)
        assert done.text and len(s.history) == 2
        assert s.preload("How are").complete
        saved = s.save(tmp_path / "x.session")
        assert saved.session.messages == 2
        assert client.session("y").restore(tmp_path / "x.session").messages == 2
        assert {i.session for i in client.sessions().sessions} >= {"default", "x", "y"}
        s.close()
        assert "x" not in {i.session for i in client.sessions().sessions}
