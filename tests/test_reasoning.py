"""Reasoning models: thoughts apart from the answer, switched on or off, held to a budget.

No small thinking model ships on PyPI, so the fixtures are the default model
carrying published reasoning templates (tests/templates/). A 135M model does
not think well, so these tests assert mechanism: how the stream is split, that
budgets and `end_reasoning` close the thought, what the template is told and
renders, what the history keeps; never what the model says.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol
from host import AsyncClient, Client, NotReasoning
from tests.harness import REPO_ROOT
from tests.models import reasoning_fixture
from worker import chat_families
from worker.chat_format import ChatFormatter
from worker.thoughts import HarmonySplitter, Segment, ThinkTagSplitter

TIMEOUT = 120
TAGS = re.compile(r"</?think>|<\|(channel|message|start|end|return|call)\|>")
#: A prefill that keeps the fixture "thinking" (counting) for hundreds of tokens, deterministically.
COUNTING = [
    {"role": "user", "content": "Think."},
    {"role": "assistant", "content": "<think>\nLet me count from 1 to 1000: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"},
]
GREEDY = {"temperature": 0.0, "repeat_penalty": 1.0}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reasoning-models")
    return {name: reasoning_fixture(folder, name) for name in ("qwen3", "deepseek-r1", "gpt-oss", "smollm3", "kept-thoughts")}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _no_tags(*texts: str | None) -> None:
    for text in texts:
        assert not TAGS.search(text or ""), f"a marker leaked: {text!r}"


# ---------------------------------------------------------------------------
# the splitters, fed in every possible way
# ---------------------------------------------------------------------------


def _run(splitter: ThinkTagSplitter | HarmonySplitter, pieces: list[str]) -> tuple[str, str]:
    segments: list[Segment] = []
    for piece in pieces:
        segments += splitter.feed(piece)
    segments += splitter.flush()
    assert all(text for _, text in segments), "no empty segments"
    return "".join(t for k, t in segments if k == "reasoning"), "".join(t for k, t in segments if k == "text")


def _pieces(text: str, cuts: list[int]) -> list[str]:
    points = [0, *sorted(set(cuts)), len(text)]
    return [text[a:b] for a, b in zip(points, points[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=12))
def test_think_tags_split_the_same_however_the_text_is_cut(cuts: list[int]) -> None:
    text = "  <think>\nweigh 7 x 13 </thin k\n</think>\n\nNo: 91 = 7 x 13. <think>is text now</think>"
    reasoning, answer = _run(ThinkTagSplitter("<think>", "</think>"), _pieces(text, cuts))
    assert reasoning == "weigh 7 x 13 </thin k"
    assert answer == "No: 91 = 7 x 13. <think>is text now</think>"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 120), max_size=12))
def test_harmony_channels_split_the_same_however_the_text_is_cut(cuts: list[int]) -> None:
    text = "<|channel|>analysis<|message|>User greets. <|end|><|start|>assistant<|channel|>final<|message|>Hello <|en d|>!<|return|>ignored"
    reasoning, answer = _run(HarmonySplitter(), _pieces(text, cuts))
    assert (reasoning, answer) == ("User greets. ", "Hello <|en d|>!")


def test_a_reply_that_starts_inside_a_thought_and_one_that_never_thinks() -> None:
    assert _run(ThinkTagSplitter("<think>", "</think>", in_thought=True), ["a", "b</th", "ink>c"]) == ("ab", "c")
    assert _run(ThinkTagSplitter("<think>", "</think>"), ["Hi ", "<think>"]) == ("", "Hi <think>")
    assert _run(HarmonySplitter(), ["Plain ", "text"]) == ("", "Plain text"), "not Harmony at all: the answer as it is"


def test_closing_a_thought_drops_a_half_written_close_tag() -> None:
    splitter = ThinkTagSplitter("<think>", "</think>", in_thought=True)
    assert splitter.feed("thinking </thi") == [("reasoning", "thinking")]
    inject, held = splitter.close_thought()
    assert inject == "\n</think>\n\n" and held == [] and splitter.answering
    assert splitter.feed("\n\nAnswer") == [("text", "Answer")]


def test_effort_and_the_switch_reach_the_template() -> None:
    template = (Path(__file__).parent / "templates" / "gpt-oss.jinja").read_text()
    formatter = ChatFormatter(name="gguf", template_source=template, bos_token="", eos_token="")
    profile = chat_families.detect(formatter, lambda _text: False)
    assert profile.format == "harmony"
    plan = profile.plan(protocol.Reasoning(effort="low"), constrained=False)
    assert plan.variables == {"enable_thinking": True, "reasoning_effort": "low"}
    assert "Reasoning: low" in formatter.render([{"role": "user", "content": "Hi"}], True, plan.variables)
    off = profile.plan(protocol.Reasoning(enabled=False), constrained=False)
    assert off.variables["enable_thinking"] is False and off.suffix.endswith("<|channel|>final<|message|>")


# ---------------------------------------------------------------------------
# through the real worker
# ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_each_family_is_detected_and_a_plain_model_reports_none(fixtures: dict[str, Path]) -> None:
    expected = {"qwen3": "think_tags", "deepseek-r1": "think_tags", "smollm3": "think_tags", "gpt-oss": "harmony", "kept-thoughts": "think_tags"}
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            plain = await client.load()
            assert (plain.reasoning, plain.reasoning_can_disable) == ("none", False)
            for name, family in expected.items():
                info = await client.load(fixtures[name], n_ctx=2048)
                assert (info.reasoning, info.reasoning_can_disable) == (family, True), name


@pytest.mark.anyio
async def test_a_budget_closes_the_thought_and_the_model_answers(fixtures: dict[str, Path]) -> None:
    # DeepSeek-R1's generation prompt opens <think>: the reply starts inside the thought.
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            await client.load(fixtures["deepseek-r1"], n_ctx=2048)
            parts = []
            async with await client.generate("Is 91 prime?", max_tokens=64, reasoning={"budget_tokens": 16}, **GREEDY) as stream:
                async for part in stream.parts():
                    parts.append(part)
            done = stream.result
            assert done is not None
            thought = "".join(p.text for p in parts if p.kind == "reasoning")
            answer = "".join(p.text for p in parts if p.kind == "text")
            assert done.reasoning == thought and done.text == answer and stream.text == answer
            assert thought and answer, "a thought, then (the worker having closed it) an answer"
            kinds = [p.kind for p in parts]
            assert kinds == sorted(kinds, key=lambda k: k == "text"), "every thought chunk comes before the answer"
            _no_tags(thought, answer)
            assert 1 <= done.usage.reasoning_tokens <= 16 < done.usage.completion_tokens
            assert len(await client.tokenize(thought)) <= 16


@pytest.mark.anyio
@pytest.mark.parametrize("family", ["qwen3", "deepseek-r1", "gpt-oss"])
async def test_thinking_switched_off_yields_no_thought(fixtures: dict[str, Path], family: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            await client.load(fixtures[family], n_ctx=2048)
            on = await client.count_tokens("Is 91 prime?")
            done = await client.chat("Is 91 prime?", max_tokens=24, reasoning={"enabled": False}, **GREEDY)
            assert done.reasoning is None and done.usage.reasoning_tokens == 0
            _no_tags(done.text)
            # What the template was told shows in the prompt: Qwen3 and R1 render an empty or
            # closed thought, and Harmony gets one pre-filled, so the prompt is longer.
            assert done.usage.prompt_tokens > on.tokens


@pytest.mark.anyio
async def test_end_reasoning_closes_the_thought_mid_way(fixtures: dict[str, Path]) -> None:
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            await client.load(fixtures["deepseek-r1"], n_ctx=2048)
            kinds: list[str] = []
            ended = False
            async with await client.generate(COUNTING, max_tokens=300, **GREEDY) as stream:
                async for part in stream.parts():
                    kinds.append(part.kind)
                    if part.kind == "reasoning" and not ended:
                        await stream.end_reasoning()  # ok: the counting thought runs for 300 tokens otherwise
                        ended = True
            done = stream.result
            assert done is not None and ended
            assert done.usage.reasoning_tokens < 200, "the thought ended long before max_tokens"
            assert "text" not in kinds or "reasoning" not in kinds[kinds.index("text") :], "no thought after the answer began"
            with pytest.raises(NotReasoning):
                await client.end_reasoning(stream.id)  # finished: nothing to end


@pytest.mark.anyio
async def test_end_reasoning_on_a_model_that_does_not_think_is_not_reasoning() -> None:
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            await client.load()
            async with await client.generate("Tell me a long story.", max_tokens=200) as stream:
                async for _ in stream:
                    with pytest.raises(NotReasoning):
                        await stream.end_reasoning()
                    break
            with pytest.raises(NotReasoning):
                await client.end_reasoning()


@pytest.mark.anyio
async def test_running_out_of_tokens_while_thinking_says_so(fixtures: dict[str, Path]) -> None:
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            await client.load(fixtures["deepseek-r1"], n_ctx=2048)
            done = await client.chat(COUNTING, max_tokens=12, **GREEDY)
            assert done.stop_reason == "max_tokens" and done.text == "" and done.reasoning
            assert done.usage.reasoning_tokens == done.usage.completion_tokens == 12


@pytest.mark.anyio
async def test_thoughts_stream_as_they_come_and_stop_sequences_skip_them(fixtures: dict[str, Path]) -> None:
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            await client.load(fixtures["deepseek-r1"], n_ctx=2048)
            chunks: list[str] = []
            done = await client.chat(COUNTING, max_tokens=150, stop=[", 20,"], on_reasoning=chunks.append, **GREEDY)
            assert ", 20," in (done.reasoning or ""), "a stop sequence in a thought does not end the reply"
            assert done.stop_reason != "stop_sequence" or ", 20," not in done.text
            assert len(chunks) > 1, "thought text is streamed, not sent at the end"


class Pet(msgspec.Struct):
    # Bounded, so that the grammar ends the JSON within max_tokens whatever the model likes to write.
    name: Annotated[str, msgspec.Meta(max_length=12)]
    legs: Annotated[int, msgspec.Meta(ge=0, le=8)]


@pytest.mark.anyio
@pytest.mark.parametrize("family", ["deepseek-r1", "qwen3", "gpt-oss"])
async def test_json_comes_after_the_thought(fixtures: dict[str, Path], family: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            await client.load(fixtures[family], n_ctx=2048)
            done = await client.chat("Describe a pet.", max_tokens=120, response_format=Pet, reasoning={"budget_tokens": 16}, **GREEDY)
            assert done.reasoning, "a grammar does not stop the model from thinking first"
            assert done.usage.reasoning_tokens <= 16 + 1
            _no_tags(done.reasoning, done.text)
            assert not done.incomplete
            msgspec.json.decode(done.text, type=Pet)


@pytest.mark.anyio
async def test_kept_thoughts_stay_in_the_history_and_the_next_prompt(fixtures: dict[str, Path]) -> None:
    # The kept-thoughts template shows every kept thought, so the next prompt shows the difference.
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            await client.load(fixtures["kept-thoughts"], n_ctx=2048)
            kept, dropped = client.session("kept"), client.session("dropped")
            a = await kept.chat("Is 91 prime?", max_tokens=32, reasoning={"enabled": True, "budget_tokens": 8, "keep_in_history": True}, **GREEDY)
            b = await dropped.chat("Is 91 prime?", max_tokens=32, reasoning={"enabled": True, "budget_tokens": 8}, **GREEDY)
            assert a.reasoning and a.reasoning == b.reasoning and a.text == b.text
            assert kept.history[-1] == {"role": "assistant", "content": a.text, "reasoning": a.reasoning}
            assert dropped.history[-1] == {"role": "assistant", "content": b.text}
            with_thought, without = await kept.count_tokens(), await dropped.count_tokens()
            assert with_thought.tokens - without.tokens >= len(await client.tokenize(a.reasoning))
            # A follow-up turn reuses the cache up to the end of the previous prompt at least.
            follow = await kept.chat("And 97?", max_tokens=8, reasoning={"enabled": False}, **GREEDY)
            assert follow.usage.cached_tokens > 0
            print(f"\nfollow-up turn, thoughts kept: {follow.usage.cached_tokens} of {follow.usage.prompt_tokens} prompt tokens cached")
            follow = await dropped.chat("And 97?", max_tokens=8, reasoning={"enabled": False}, **GREEDY)
            assert follow.usage.cached_tokens > 0
            print(f"follow-up turn, thoughts dropped: {follow.usage.cached_tokens} of {follow.usage.prompt_tokens} prompt tokens cached")


@pytest.mark.anyio
async def test_kept_thoughts_survive_save_and_restore(fixtures: dict[str, Path], tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            await client.load(fixtures["qwen3"], n_ctx=2048)
            done = await client.chat("Hi", max_tokens=24, reasoning={"enabled": True, "budget_tokens": 6, "keep_in_history": True}, **GREEDY)
            assert done.reasoning
            await client.save_session(tmp_path / "s.session")
            await client.session("copy").restore(tmp_path / "s.session")
            assert client.session("copy").history[-1]["reasoning"] == done.reasoning


@pytest.mark.anyio
async def test_a_model_without_reasoning_ignores_the_options() -> None:
    with anyio.fail_after(TIMEOUT):
        # Two fresh workers: a prompt evaluated afresh both times gives the same greedy text.
        async with AsyncClient() as client:
            await client.load()
            plain = await client.chat("Name a colour.", max_tokens=16, **GREEDY)
        async with AsyncClient() as client:
            await client.load()
            chunks: list[str] = []
            asked = await client.chat(
                "Name a colour.", max_tokens=16, reasoning={"enabled": True, "budget_tokens": 0, "effort": "high"}, on_reasoning=chunks.append, **GREEDY
            )
            assert asked.text == plain.text and asked.reasoning is None and asked.usage.reasoning_tokens == 0 and chunks == []
            assert asked.usage.prompt_tokens == plain.usage.prompt_tokens


@pytest.mark.anyio
async def test_assistant_prefill_is_continued_and_joins_the_history() -> None:
    prefix = "The three primary colours are"
    conversation = [{"role": "user", "content": "Name the primary colours."}, {"role": "assistant", "content": prefix}]
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            await client.load()
            without = await client.count_tokens(conversation[:1])
            chunks: list[str] = []
            done = await client.chat(conversation, max_tokens=12, on_chunk=chunks.append, **GREEDY)
            assert "".join(chunks) == done.text and not done.text.startswith(prefix)
            # The prompt ends with the prefix (no end-of-turn after it, no new assistant header).
            assert done.usage.prompt_tokens == without.tokens + len(await client.tokenize(prefix))
            assert client.history == [conversation[0], {"role": "assistant", "content": prefix + done.text}]
            info = (await client.sessions()).sessions[0]
            assert info.messages == 2
            with pytest.raises(Exception, match="last message"):
                await client.chat([{"role": "assistant", "content": "Hello"}], max_tokens=4)


def test_blocking_client_streams_thoughts_apart(fixtures: dict[str, Path]) -> None:
    with Client() as client:
        client.load(fixtures["deepseek-r1"], n_ctx=2048)
        thoughts: list[str] = []
        done = client.chat("Hi", max_tokens=40, reasoning={"budget_tokens": 8}, on_reasoning=thoughts.append, **GREEDY)
        assert thoughts and "".join(thoughts) == done.reasoning
        with client.generate("Hi again", max_tokens=40, reasoning={"budget_tokens": 8}, **GREEDY) as stream:
            texts = list(stream)
        assert "".join(texts) == stream.result.text and stream.reasoning == stream.result.reasoning  # type: ignore[union-attr]
        with pytest.raises(TypeError, match="unknown option"):
            client.chat("Hi", reasoning={"budget": 3})  # type: ignore[typeddict-unknown-key]


def test_llama_chat_shows_thoughts_on_stderr_and_the_answer_on_stdout(fixtures: dict[str, Path]) -> None:
    base = [sys.executable, "-m", "host.cli", "--model", str(fixtures["deepseek-r1"]), "--prompt", "Hi", "--temperature", "0", "--max-tokens", "40"]
    shown = subprocess.run([*base, "--reasoning-budget", "8"], capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO_ROOT)
    assert shown.returncode == 0, shown.stderr
    assert "(thinking)" in shown.stderr and "(thinking)" not in shown.stdout
    _no_tags(shown.stdout)
    hidden = subprocess.run([*base, "--reasoning-budget", "8", "--hide-thoughts"], capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO_ROOT)
    assert hidden.returncode == 0 and "(thinking)" not in hidden.stderr and hidden.stdout == shown.stdout
    off = subprocess.run([*base, "--think", "off", "--json"], capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO_ROOT)
    result = json.loads(off.stdout)
    assert result["reasoning"] is None and result["usage"]["reasoning_tokens"] == 0
