"""Tool calls: arguments that always fit their schema, every family's syntax, the loop in the host.

The default model's template knows nothing of tools (the generic format); the
fixtures carry published tool-calling templates (Hermes 3, Qwen3, Llama 3.1,
Mistral Nemo). A 135M model calls tools at random, so the tests force calls
where they need one ("required", a named tool) and assert mechanism: the
grammar's guarantees, parsing, history, cache reuse, errors, the host loop.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import anyio
import jsonschema
import msgspec
import pytest

from host import AsyncClient, BadRequest, Client, Tool
from tests.harness import REPO_ROOT
from tests.models import tool_fixture
from worker.chat_families import TOOL_FAMILIES
from worker.tool_calls import ToolCallParser

TIMEOUT = 120
GREEDY = {"temperature": 0.0}
RAW = re.compile(r"<tool_call>|</tool_call>|\[TOOL_CALLS\]|\"arguments\"|\"parameters\"")

BOOKING = {
    "name": "book_table",
    "description": "Book a table at a restaurant",
    "parameters": {
        "type": "object",
        "properties": {
            "restaurant": {"type": "string", "maxLength": 24},
            "party": {"type": "object", "properties": {"adults": {"type": "integer", "minimum": 1, "maximum": 8}, "children": {"type": "integer", "minimum": 0, "maximum": 4}}, "required": ["adults"]},
            "seating": {"enum": ["indoor", "terrace", "bar"]},
            "allergies": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        },
        "required": ["restaurant", "party", "seating"],
    },
}
CLOCK = {"name": "get_time", "description": "The time in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tool-models")
    return {name: tool_fixture(folder, name) for name in ("hermes", "qwen3", "llama3", "mistral")}


def _no_raw(text: str) -> None:
    assert not RAW.search(text), f"call syntax leaked into the text: {text!r}"


# ---------------------------------------------------------------------------
# the parser, without a model
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "text"),
    [
        ("hermes", 'Let me look. <tool_call>\n{"name": "get_time", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_call>{"name":"get_time","arguments":{"city":"Rome"}}</tool_call>'),
        ("llama3", ' {"name": "get_time", "parameters": {"city": "Oslo"}}'),
        ("mistral", '[TOOL_CALLS][{"name": "get_time", "arguments": {"city": "Oslo"}}, {"name": "get_time", "arguments": "{\\"city\\": \\"Rome\\"}"}]'),
    ],
)
@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_calls_parse_the_same_however_the_text_is_cut(family: str, text: str, step: int) -> None:
    parser = ToolCallParser(TOOL_FAMILIES[family], {"get_time"})  # type: ignore[index]
    shown, calls = "", []
    for i in range(0, len(text), step):
        piece, new = parser.feed(text[i : i + step])
        shown, calls = shown + piece, calls + new
    shown += parser.flush()
    assert [c.arguments["city"] for c in calls] == (["Oslo", "Rome"] if family != "llama3" else ["Oslo"])
    assert shown.strip() == ("Let me look." if family == "hermes" else "")
    ids = [c.id for c in calls]
    assert len(set(ids)) == len(ids) and (family != "mistral" or all(len(i) == 9 and i.isalnum() for i in ids))


class Where(msgspec.Struct):
    lat: float
    lon: float


def test_a_function_becomes_a_tool_with_a_schema_from_its_hints() -> None:
    def forecast(city: str, where: Where, unit: Literal["c", "f"] = "c", days: int = 1) -> dict[str, Any]:
        """The weather ahead."""
        return {"city": city}

    tool = Tool.from_function(forecast)
    params = tool.definition.parameters
    assert tool.name == "forecast" and tool.definition.description == "The weather ahead."
    assert params is not None and params["required"] == ["city", "where"] and params["properties"]["unit"]["enum"] == ["c", "f"]
    jsonschema.validate({"city": "Oslo", "where": {"lat": 1.0, "lon": 2.0}}, params)
    assert json.loads(anyio.run(tool.call, {"city": "Oslo", "where": {"lat": 1, "lon": 2}})) == {"city": "Oslo"}
    assert "error" in json.loads(anyio.run(tool.call, {"city": 3}))  # a bad argument: an error for the model


# ---------------------------------------------------------------------------
# through the real worker
# ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("family", ["generic", "hermes", "qwen3", "llama3", "mistral"])
async def test_required_yields_a_call_that_fits_a_nontrivial_schema(fixtures: dict[str, Path], family: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            info = await client.load(None if family == "generic" else fixtures[family], n_ctx=4096)
            assert info.tool_format == {"qwen3": "hermes"}.get(family, family)
            # Qwen3 thinks first (a thought is opened for the grammar's sake): thoughts, then calls.
            reasoning = {"budget_tokens": 16}
            stream = await client.generate(
                "Book me a table for two at Luigi's.", max_tokens=200, tools=[BOOKING, CLOCK], tool_choice="required", reasoning=reasoning, **GREEDY
            )
            async with stream:
                text = "".join([t async for t in stream])
            done = stream.result
            assert done is not None and done.stop_reason == "tool_calls" and done.tool_calls
            assert stream.tool_calls == done.tool_calls
            assert (done.reasoning is not None) == (family == "qwen3")
            for call in done.tool_calls:
                schema = {"book_table": BOOKING, "get_time": CLOCK}[call.name]["parameters"]
                jsonschema.validate(call.arguments, schema)
            _no_raw(text)
            assert text == done.text
            # The call joins the history; the follow-up after its result reuses the cache.
            call = done.tool_calls[0]
            history = [*client.history, {"role": "tool", "content": '{"ok": true}', "tool_call_id": call.id}]
            assert client.history[-1]["tool_calls"][0]["id"] == call.id
            follow = await client.chat(history, max_tokens=8, tools=[BOOKING, CLOCK], tool_choice="none", **GREEDY)
            assert follow.tool_calls is None and follow.stop_reason != "tool_calls"
            # Reused up to where the reply began (a thought opened by the worker is not in the history).
            assert follow.usage.cached_tokens >= done.usage.prompt_tokens - 4, (follow.usage, done.usage)
            print(f"\n{family}: follow-up after a tool result: {follow.usage.cached_tokens} of {follow.usage.prompt_tokens} prompt tokens cached")


@pytest.mark.anyio
async def test_a_named_tool_and_parallel_calls() -> None:
    question = "What's the time in Paris and in Rome?"
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            await client.load()
            one = await client.chat(question, max_tokens=200, tools=[BOOKING, CLOCK], tool_choice={"name": "get_time"}, parallel_tool_calls=False, **GREEDY)
            assert one.tool_calls is not None and [c.name for c in one.tool_calls] == ["get_time"]
            await client.reset()
            several = await client.chat(question, max_tokens=200, tools=[BOOKING, CLOCK], tool_choice={"name": "get_time"}, **GREEDY)
            assert several.tool_calls is not None and len(several.tool_calls) >= 2, "the default model writes a second call here"
            assert {c.name for c in several.tool_calls} == {"get_time"}
            assert len({c.id for c in several.tool_calls}) == len(several.tool_calls)


@pytest.mark.anyio
async def test_auto_without_a_call_streams_free_text_and_with_a_begun_call_constrains_it() -> None:
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            await client.load()
            free = await client.chat("Say hello.", max_tokens=24, tools=[CLOCK], **GREEDY)
            assert free.tool_calls is None and free.text and free.stop_reason != "tool_calls"
            # A prefill that opens a call: under "auto" the grammar takes over from there.
            begun = await client.chat(
                [{"role": "user", "content": "What time is it in Oslo?"}, {"role": "assistant", "content": "Let me check. <tool_call>\n"}],
                max_tokens=60,
                tools=[CLOCK],
                **GREEDY,
            )
            assert begun.tool_calls and begun.tool_calls[0].name == "get_time"
            jsonschema.validate(begun.tool_calls[0].arguments, CLOCK["parameters"])
            assert client.history[-1]["content"] == "Let me check. " and client.history[-1]["tool_calls"]


@pytest.mark.anyio
async def test_tool_errors_say_which() -> None:
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            await client.load()
            cases = [
                ({"tools": [CLOCK], "tool_choice": {"name": "nope"}}, "nope"),
                ({"tools": [{"name": "bad", "parameters": {"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}}}]}, "tools[0].parameters"),
                ({"tools": [{"name": "bad", "parameters": {"type": "string"}}]}, "tools[0].parameters"),
                ({"tools": [CLOCK, CLOCK]}, "unique"),
                ({"tool_choice": "required"}, "needs tools"),
            ]
            for options, words in cases:
                with pytest.raises(BadRequest, match=re.escape(words)):
                    await client.chat("Hi", max_tokens=4, **options)  # type: ignore[arg-type]
            orphan = [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "42", "tool_call_id": "call_x"}]
            with pytest.raises(BadRequest, match="tool_call_id"):
                await client.chat(orphan, max_tokens=4)
            ok = await client.chat("Hi", max_tokens=4)  # the session survives every one of them
            assert ok.usage.completion_tokens >= 1


@pytest.mark.anyio
async def test_the_loop_runs_functions_and_feeds_back_their_results_and_errors() -> None:
    calls: list[str] = []

    def get_time(city: str) -> str:
        """The time in a city."""
        calls.append(city)
        return "12:00"

    async def explode(reason: str) -> str:
        """Always fails."""
        raise RuntimeError(f"boom: {reason}")

    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            await client.load()
            seen: list[tuple[str, str]] = []
            result = await client.act(
                "What time is it in Oslo?",
                tools=[get_time, explode],
                tool_choice="required",
                max_rounds=2,
                max_tokens=80,
                on_tool_result=lambda call, output: seen.append((call.name, output)),
                **GREEDY,
            )
            # Two rounds of required calls, then a round that forbids them: an answer.
            assert len(seen) >= 2 and result.tool_calls is None and result.stop_reason != "tool_calls"
            assert all(("error" in out and "boom" in out) if name == "explode" else out == "12:00" for name, out in seen)
            roles = [m["role"] for m in client.history]
            assert roles.count("tool") == len(seen) and roles[-1] == "assistant"
            assert len(calls) == sum(1 for name, _ in seen if name == "get_time")


def test_the_blocking_loop_and_a_session() -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    with Client() as client:
        client.load()
        results: list[str] = []
        done = client.session("maths").act("What is 2 + 3?", tools=[add], tool_choice={"name": "add"}, max_rounds=1, max_tokens=40, on_tool_result=lambda _c, out: results.append(out), **GREEDY)
        assert results and all(out.lstrip("-").isdigit() for out in results) and done.tool_calls is None
        assert client.session("maths").history[1]["tool_calls"][0]["name"] == "add"


def test_llama_chat_tools_runs_a_modules_functions(tmp_path: Path) -> None:
    module = tmp_path / "clock.py"
    module.write_text('def get_time(city: str) -> str:\n    """The time in a city."""\n    return "It is noon in " + city\n')
    proc = subprocess.run(
        [sys.executable, "-m", "host.cli", "--tools", str(module), "--prompt", "Time in Oslo?", "--temperature", "0", "--max-tokens", "60", "--tool-choice", "required"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "get_time(" in proc.stderr and "It is noon in" in proc.stderr
    _no_raw(proc.stdout)


@pytest.mark.parametrize(("template", "native"), [("qwen3.jinja", True), ("mistral-nemo.jinja", True), ("llama-3.1.jinja", True), (None, False)])
def test_calls_and_results_render_into_the_prompt(template: str | None, native: bool) -> None:
    """What the next prompt shows of a call and its result: the template's own syntax, or the generic one."""
    from worker.chat_format import ChatFormatter
    from worker.tool_calls import template_message

    source = (REPO_ROOT / "tests" / "templates" / template).read_text() if template else "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
    formatter = ChatFormatter(name="gguf", template_source=source, bos_token="<s>", eos_token="</s>")
    call_id = "abcDEF123"  # Mistral's templates want 9 letters and digits
    messages = [
        {"role": "user", "content": "Time in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": call_id, "name": "get_time", "arguments": {"city": "Oslo"}}]},
        {"role": "tool", "content": "TOOL-RESULT-12:00", "tool_call_id": call_id, "name": "get_time"},
    ]
    rendered = formatter.render([template_message(m, native) if m["role"] != "user" else m for m in messages], True, {"tools": [{"type": "function", "function": CLOCK}] if native else None})
    assert "TOOL-RESULT-12:00" in rendered and '"city": "Oslo"' in rendered.replace('"city":"Oslo"', '"city": "Oslo"')
    if not native:
        assert "<tool_call>" in rendered and "<tool_response name=get_time>" in rendered
