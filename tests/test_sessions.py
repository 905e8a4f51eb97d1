"""Several chat sessions per worker, preload, and saved sessions (issue 8).

Real worker process, real pipes, real default model. Greedy decoding
throughout, so "the same state" can be checked as "the same text".
"""

from __future__ import annotations

from pathlib import Path

import pytest

import protocol as P
from tests.harness import RawWorker
from tests.models import without_template

SYSTEM = "You are a helpful assistant."
LONG_INPUT = " ".join(f"Item {i}: the ferry left the harbour at dawn with crates of apples." for i in range(80))


def listing(worker: RawWorker) -> dict[str, P.SessionInfo]:
    rid = worker.request(P.Sessions)
    reply, _ = worker.terminal(rid)
    assert isinstance(reply, P.SessionList), reply
    return {info.session: info for info in reply.sessions}


def request(worker: RawWorker, cls: type, expect: type, **fields: object):
    rid = worker.request(cls, **fields)
    reply, _ = worker.terminal(rid)
    assert isinstance(reply, expect), reply
    return reply


@pytest.fixture
def two_sessions(raw_worker: RawWorker) -> RawWorker:
    raw_worker.init()
    raw_worker.load(system_prompt=SYSTEM)
    raw_worker.generate("Tell me about cats.", max_tokens=24, session="a")
    raw_worker.generate("Tell me about the sea.", max_tokens=24, session="b")
    return raw_worker


def test_histories_stay_separate(two_sessions: RawWorker) -> None:
    w = two_sessions
    sessions = listing(w)
    assert sessions["a"].messages == 2 and sessions["b"].messages == 2
    assert sessions["default"].messages == 0  # untouched: sessions never leak into each other
    assert sessions["b"].active and not sessions["a"].active
    assert sessions["a"].kv_cached and sessions["a"].kv_bytes > 0  # a's state was kept in RAM on the switch
    assert sessions["a"].system_prompt == SYSTEM

    done, _ = w.generate("And dogs?", max_tokens=8, session="a")
    # Two-message history of "a" plus the new turn; b's turn is not in it.
    assert listing(w)["a"].messages == 4 and listing(w)["b"].messages == 2
    # The whole of a's earlier conversation came back from RAM: only the new turn was evaluated.
    assert done.usage.cached_tokens >= sessions["a"].tokens - 2, done.usage


def test_switching_back_gives_what_never_switching_gives(two_sessions: RawWorker) -> None:
    switched, _ = two_sessions.generate("And dogs?", max_tokens=24, session="a")

    other = RawWorker()
    try:
        other.init()
        other.load(system_prompt=SYSTEM)
        other.generate("Tell me about cats.", max_tokens=24, session="a")
        straight, _ = other.generate("And dogs?", max_tokens=24, session="a")
    finally:
        other.close()
    assert switched.text == straight.text
    assert switched.usage.prompt_tokens == straight.usage.prompt_tokens
    assert switched.usage.cached_tokens == straight.usage.cached_tokens


def test_eviction_under_a_tiny_budget_falls_back_to_evaluation(raw_worker: RawWorker) -> None:
    w = raw_worker
    w.init()
    loaded = w.load(system_prompt=SYSTEM, session_cache_bytes=1)
    assert loaded.model.session_cache_bytes == 1
    first, _ = w.generate("Tell me about cats.", max_tokens=24, session="a")
    w.generate("Tell me about the sea.", max_tokens=24, session="b")
    sessions = listing(w)
    assert not sessions["a"].kv_cached and sessions["a"].kv_bytes == 0
    rid = w.request(P.Sessions)
    reply, _ = w.terminal(rid)
    assert reply.cache_bytes <= reply.cache_budget_bytes == 1

    done, chunks = w.generate("And dogs?", max_tokens=24, session="a")
    assert "".join(chunks) == done.text and done.text
    # Evaluated again (only the shared system prompt could be reused), and truthfully reported so.
    shared_prefix = done.usage.cached_tokens
    assert shared_prefix < first.usage.prompt_tokens
    assert done.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens
    assert listing(w)["a"].messages == 4


def test_preload_then_generate_evaluates_only_the_tail(raw_worker: RawWorker) -> None:
    w = raw_worker
    w.init()
    w.load(system_prompt=SYSTEM)
    w.generate("Hello there.", max_tokens=12)
    text = "Can you list three facts about the planet Mars for me please?"
    pre = request(w, P.Preload, P.Preloaded, input=text)
    assert pre.complete and pre.session == "default"
    assert pre.cached_tokens > 0  # the earlier turn was reused
    assert listing(w)["default"].messages == 2  # a preload never changes the history
    done, _ = w.generate(text, max_tokens=8)
    assert done.usage.prompt_tokens == pre.prompt_tokens
    assert done.usage.cached_tokens == pre.prompt_tokens - 1  # only the last token is evaluated again


def test_preload_of_a_partial_input_helps_the_extended_one(raw_worker: RawWorker) -> None:
    w = raw_worker
    w.init()
    w.load()
    pre = request(w, P.Preload, P.Preloaded, input="Write a short poem about the autumn leaves falling", session="s")
    done, _ = w.generate("Write a short poem about the autumn leaves falling in the park.", max_tokens=8, session="s")
    assert done.usage.cached_tokens >= pre.prompt_tokens - 8  # all but the template's closing tokens and the last word


def test_preload_is_interrupted_by_a_generate_which_is_never_busy(raw_worker: RawWorker) -> None:
    w = raw_worker
    w.init()
    w.load()
    pre_id, gen_id = w.new_id(), w.new_id()
    # Both frames in one write: the generate reaches the worker while the long preload evaluates.
    w.send_raw(P.encode(P.Preload(id=pre_id, input=LONG_INPUT)) + P.encode(P.Generate(id=gen_id, input="Hi!", max_tokens=8, temperature=0)))
    pre, _ = w.terminal(pre_id)
    assert isinstance(pre, P.Preloaded) and not pre.complete, pre
    done, _ = w.terminal(gen_id)
    assert isinstance(done, P.Done), done
    assert listing(w)["default"].messages == 2


def test_abort_stops_a_preload(raw_worker: RawWorker) -> None:
    w = raw_worker
    w.init()
    w.load()
    pre_id = w.new_id()
    w.send_raw(P.encode(P.Preload(id=pre_id, input=LONG_INPUT)) + P.encode(P.Abort(id=w.new_id(), target=pre_id)))
    pre, _ = w.terminal(pre_id)
    assert isinstance(pre, P.Preloaded) and not pre.complete


def test_sessions_is_answered_while_generating(raw_worker: RawWorker) -> None:
    w = raw_worker
    w.init()
    w.load()
    gen_id = w.request(P.Generate, input="Write a long story about a dragon.", max_tokens=200, temperature=0)
    w.until(lambda m: isinstance(m, P.Chunk) and m.id == gen_id)
    list_id = w.request(P.Sessions)
    reply, before = w.until(lambda m: getattr(m, "id", None) in (list_id, gen_id) and not isinstance(m, P.Chunk))
    assert isinstance(reply, P.SessionList) and reply.id == list_id  # ahead of the generation's end
    w.request(P.Abort, target=gen_id)
    w.terminal(gen_id)


def test_close_session_forgets_it(two_sessions: RawWorker) -> None:
    w = two_sessions
    request(w, P.CloseSession, P.Ok, session="a")
    assert "a" not in listing(w)
    request(w, P.CloseSession, P.Ok, session="default")
    assert listing(w)["default"].messages == 0
    request(w, P.CloseSession, P.Ok, session="never-existed")  # closing is idempotent


def test_reset_is_per_session(two_sessions: RawWorker) -> None:
    w = two_sessions
    request(w, P.Reset, P.Ok, session="a", system_prompt="Be brief.")
    sessions = listing(w)
    assert sessions["a"].messages == 0 and sessions["a"].system_prompt == "Be brief."
    assert sessions["b"].messages == 2 and sessions["b"].system_prompt == SYSTEM


# ---------------------------------------------------------------------------
# saved sessions
# ---------------------------------------------------------------------------


def test_save_and_restore_in_a_new_worker(two_sessions: RawWorker, tmp_path: Path) -> None:
    path = tmp_path / "a.session"
    saved = request(two_sessions, P.SaveSession, P.Saved, session="a", path=str(path))
    assert saved.bytes == path.stat().st_size and saved.session.messages == 2 and saved.session.tokens > 0
    expected, _ = two_sessions.generate("And dogs?", max_tokens=24, session="a")

    fresh = RawWorker()
    try:
        fresh.init()
        fresh.load()  # no system prompt: the file brings its own
        restored = request(fresh, P.RestoreSession, P.Restored, session="kept", path=str(path))
        assert restored.session.messages == 2 and restored.session.system_prompt == SYSTEM
        assert [m.role for m in restored.history] == ["user", "assistant"]
        assert restored.history[0].content == "Tell me about cats."
        assert restored.session.tokens == saved.session.tokens and restored.session.active
        done, _ = fresh.generate("And dogs?", max_tokens=24, session="kept")
        # The whole saved conversation came from the file, none of it evaluated again.
        assert done.usage.cached_tokens >= saved.session.tokens - 1
        assert done.text == expected.text  # the same KV state gives the same greedy reply
    finally:
        fresh.close()


def test_restore_into_another_model_is_refused_and_changes_nothing(two_sessions: RawWorker, tmp_path: Path) -> None:
    path = tmp_path / "a.session"
    request(two_sessions, P.SaveSession, P.Saved, session="a", path=str(path))
    other = RawWorker()
    try:
        other.init()
        other.load(model_path=str(without_template(tmp_path)))
        other.generate("Hi", max_tokens=4, session="a")
        err = other.error_for(P.RestoreSession(id=other.new_id(), session="a", path=str(path)))
        assert err.code == "session_mismatch" and not err.retryable
        assert "another model" in err.message
        assert listing(other)["a"].messages == 2  # as it was
        done, _ = other.generate("Again", max_tokens=4, session="a")
        assert done.usage.cached_tokens > 0  # its KV state survived too
    finally:
        other.close()


@pytest.mark.parametrize("damage", ["flip_kv", "truncate", "garbage", "missing", "folder"])
def test_a_damaged_file_is_refused_and_the_session_stays(two_sessions: RawWorker, tmp_path: Path, damage: str) -> None:
    w = two_sessions
    path = tmp_path / "a.session"
    request(w, P.SaveSession, P.Saved, session="a", path=str(path))
    data = bytearray(path.read_bytes())
    if damage == "flip_kv":
        data[-100] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "garbage":
        path.write_bytes(b"not a session at all" * 10)
    elif damage == "missing":
        path.unlink()
    else:
        path.unlink()
        path.mkdir()
    err = w.error_for(P.RestoreSession(id=w.new_id(), session="b", path=str(path)))
    assert err.code == "bad_session_file" and not err.retryable, err
    assert str(path) in err.message
    sessions = listing(w)
    assert sessions["b"].messages == 2 and sessions["b"].kv_cached  # untouched (the save made "a" active)
    done, _ = w.generate("More please.", max_tokens=8, session="b")
    assert done.usage.cached_tokens >= sessions["b"].tokens - 2


def test_save_to_a_bad_path_is_invalid_request(two_sessions: RawWorker, tmp_path: Path) -> None:
    err = two_sessions.error_for(P.SaveSession(id=two_sessions.new_id(), session="a", path=str(tmp_path / "no" / "such" / "dir" / "x")))
    assert err.code == "invalid_request" and "does not exist" in err.message


def test_a_session_saved_without_kv_in_memory_is_evaluated_first(raw_worker: RawWorker, tmp_path: Path) -> None:
    w = raw_worker
    w.init()
    w.load(session_cache_bytes=0)
    w.generate("Tell me about cats.", max_tokens=16, session="a")
    w.generate("Tell me about the sea.", max_tokens=16, session="b")  # a's state is gone (no budget)
    saved = request(w, P.SaveSession, P.Saved, session="a", path=str(tmp_path / "a.session"))
    assert saved.session.tokens > 20 and saved.session.active
    restored = request(w, P.RestoreSession, P.Restored, session="c", path=str(tmp_path / "a.session"))
    assert restored.session.tokens == saved.session.tokens


def test_reset_can_set_a_history_without_generating(raw_worker: RawWorker) -> None:
    w = raw_worker
    w.init()
    w.load(system_prompt=SYSTEM)
    history = [P.ChatMessage(role="user", content="My name is Ada."), P.ChatMessage(role="assistant", content="Hello Ada.")]
    request(w, P.Reset, P.Ok, session="back", system_prompt="Be brief.", history=history)
    info = listing(w)["back"]
    assert info.messages == 2 and info.system_prompt == "Be brief." and not info.kv_cached  # nothing evaluated
    done, _ = w.generate("What is my name?", max_tokens=4, session="back")
    count = request(w, P.Count, P.TokenCount, session="fresh", input=[*history, P.ChatMessage(role="user", content="What is my name?")])
    assert done.usage.prompt_tokens > count.tokens - 8  # the set history was in the prompt
    err = w.error_for(P.Reset(id=w.new_id(), session="back", history=[P.ChatMessage(role="system", content="x")]))
    assert err.code == "invalid_request" and "system_prompt" in err.message
    assert listing(w)["back"].messages == 4  # a refused reset changes nothing


def test_a_state_llama_cpp_refuses_puts_the_context_back(raw_worker: RawWorker, tmp_path: Path) -> None:
    """A file that passes every check of ours but whose KV state llama.cpp cannot read."""
    from worker import session_file

    w = raw_worker
    w.init()
    w.load(session_cache_bytes=0)  # no RAM copy to fall back on: the context itself must be kept
    w.generate("Tell me about cats.", max_tokens=16, session="a")
    path = tmp_path / "a.session"
    request(w, P.SaveSession, P.Saved, session="a", path=str(path))
    header, kv = session_file.read(path)
    kv = kv[: len(kv) // 2]  # cut, then re-sealed with a correct checksum
    header.kv_bytes, header.kv_sha256 = len(kv), session_file.digest(header.tokens, kv)
    session_file.write(path, header, bytes(kv))
    w.generate("Tell me about the sea.", max_tokens=16, session="b")
    before = listing(w)["b"]
    err = w.error_for(P.RestoreSession(id=w.new_id(), session="c", path=str(path)))
    assert err.code == "session_mismatch", err
    after = listing(w)
    assert "c" not in after and after["b"].active and after["b"].tokens == before.tokens
    done, _ = w.generate("More please.", max_tokens=4, session="b")
    assert done.usage.cached_tokens >= before.tokens - 2  # b's state was put back, not lost


def test_a_fifo_is_refused_without_blocking(two_sessions: RawWorker, tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.session"
    os.mkfifo(fifo)
    err = two_sessions.error_for(P.RestoreSession(id=two_sessions.new_id(), session="x", path=str(fifo)))
    assert err.code == "bad_session_file" and "not a regular file" in err.message
