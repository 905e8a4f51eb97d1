"""Unit tests that need no model: stop sequences, the chat session, chat formats."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import ErrorCode
from worker.chat_format import (
    BUILTIN_FORMATS,
    MAX_RENDER_CHARS,
    ChatFormatError,
    ChatFormatter,
    detect_builtin_format,
    formatter_for_builtin,
)
from worker.errors import WorkerError
from worker.output_filters import StopMatcher
from worker.session import ChatSession, Turn, fit_to_context

# ---------------------------------------------------------------------------
# StopMatcher
# ---------------------------------------------------------------------------


def _run(matcher: StopMatcher, pieces: list[str]) -> tuple[list[str], bool]:
    """Feed pieces the way the decode loop does; return emitted pieces and whether a stop matched."""
    out = []
    for piece in pieces:
        text, matched = matcher.feed(piece)
        out.append(text)
        if matched:
            return out, True
    out.append(matcher.flush())
    return out, False


def test_stop_split_across_many_feeds():
    m = StopMatcher(["<|end|>"])
    assert m.feed("Hello <") == ("Hello ", False)
    assert m.feed("|") == ("", False)
    assert m.feed("en") == ("", False)
    assert m.feed("d") == ("", False)
    assert m.feed("|> and more") == ("", True)
    assert m.flush() == ""


def test_stop_one_character_at_a_time():
    text = "abc STOP def"
    out, matched = _run(StopMatcher(["STOP"]), list(text))
    assert matched
    assert "".join(out) == "abc "


def test_earliest_of_several_stops_wins():
    assert StopMatcher(["END", "STOP"]).feed("abc STOP def END") == ("abc ", True)
    assert StopMatcher(["STOP", "END"]).feed("abc END def STOP") == ("abc ", True)
    assert StopMatcher(["b", "a"]).feed("xaby") == ("x", True)
    # Split: the second stop completes inside a piece while the first is still pending.
    m = StopMatcher(["</answer>", "\n\n"])
    assert m.feed("42</ans") == ("42", False)
    assert m.feed("wer>\n\n") == ("", True)


def test_held_back_text_is_released_when_it_is_not_a_stop():
    m = StopMatcher(["</s>"])
    assert m.feed("a </") == ("a ", False)
    assert m.feed("p> b") == ("</p> b", False)
    assert m.feed("<") == ("", False)
    assert m.feed("<") == ("<", False)  # the first '<' can no longer start the stop
    assert m.flush() == "<"
    assert m.flush() == ""


def test_flush_returns_the_held_back_tail():
    m = StopMatcher(["###"])
    assert m.feed("end ##") == ("end ", False)
    assert m.flush() == "##"
    # After a flush the matcher starts clean.
    assert m.feed("#x") == ("#x", False)


def test_no_stops_is_passthrough():
    for stops in ([], [""], ("",)):
        m = StopMatcher(stops)
        for piece in ["a", "<|", "", "im_end|>", "\n"]:
            assert m.feed(piece) == (piece, False)
        assert m.flush() == ""


def test_stop_at_the_very_start():
    assert StopMatcher(["\n"]).feed("\nrest") == ("", True)


_ALPHABET = "ab<>"


@settings(max_examples=500, deadline=None)
@given(
    text=st.text(alphabet=_ALPHABET, max_size=40),
    stop=st.text(alphabet=_ALPHABET, min_size=1, max_size=5),
    data=st.data(),
)
def test_stop_matcher_property_single_stop(text, stop, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=10), label="cuts"))
    points = [0, *cuts, len(text)]
    pieces = [text[a:b] for a, b in zip(points, points[1:], strict=False)]
    out, matched = _run(StopMatcher([stop]), pieces)
    idx = text.find(stop)
    expected = text if idx == -1 else text[:idx]
    assert "".join(out) == expected
    assert matched == (idx != -1)
    for piece in out:
        assert stop not in piece


# ---------------------------------------------------------------------------
# ChatSession / next_turn / commit
# ---------------------------------------------------------------------------


def _u(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def _a(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def _s(content: str) -> dict[str, str]:
    return {"role": "system", "content": content}


def test_string_input_appends_a_user_turn():
    s = ChatSession(system_prompt="SYS", history=[_u("q1"), _a("r1")])
    turn = s.next_turn("q2")
    assert turn.system_prompt == "SYS"
    assert turn.history == [_u("q1"), _a("r1"), _u("q2")]
    assert turn.messages() == [_s("SYS"), _u("q1"), _a("r1"), _u("q2")]
    # next_turn does not change the session
    assert s.history == [_u("q1"), _a("r1")]
    s.commit(turn, "r2")
    assert s.history == [_u("q1"), _a("r1"), _u("q2"), _a("r2")]
    assert s.system_prompt == "SYS"


def test_no_system_prompt_means_no_system_message():
    turn = ChatSession().next_turn("hi")
    assert turn.messages() == [_u("hi")]


def test_list_input_replaces_history():
    s = ChatSession(system_prompt="SYS", history=[_u("old"), _a("old reply")])
    given_list = [_u("x"), _a("y"), _u("z")]
    turn = s.next_turn(given_list)
    assert turn.system_prompt == "SYS"
    assert turn.history == [_u("x"), _a("y"), _u("z")]
    s.commit(turn, "reply")
    assert s.history == [_u("x"), _a("y"), _u("z"), _a("reply")]
    assert given_list == [_u("x"), _a("y"), _u("z")]  # the caller's list is untouched


def test_leading_system_message_replaces_the_system_prompt():
    s = ChatSession(system_prompt="OLD", history=[_u("a"), _a("b")])
    given_list = [_s("NEW"), _u("q")]
    turn = s.next_turn(given_list)
    assert turn.system_prompt == "NEW"
    assert turn.history == [_u("q")]
    assert turn.messages() == [_s("NEW"), _u("q")]
    assert s.system_prompt == "OLD"  # only a commit changes it
    assert len(given_list) == 2  # the system message was not popped off the caller's list
    s.commit(turn, "r")
    assert s.system_prompt == "NEW"
    assert s.history == [_u("q"), _a("r")]


def test_leading_empty_system_message_removes_the_system_prompt():
    s = ChatSession(system_prompt="OLD")
    turn = s.next_turn([_s(""), _u("q")])
    assert turn.system_prompt is None
    assert turn.messages() == [_u("q")]


@pytest.mark.parametrize(
    "messages",
    [
        [_u("a"), _s("late system"), _u("b")],
        [_s("one"), _s("two"), _u("b")],
        [_a("b")],
        [_u("a"), _a("b"), _a("c")],
        [_s("only system")],
        [],
        [_u("a"), _s("system last")],
    ],
)
def test_invalid_message_lists(messages):
    s = ChatSession(system_prompt="SYS", history=[_u("h"), _a("r")])
    with pytest.raises(WorkerError) as info:
        s.next_turn(messages)
    assert info.value.code == ErrorCode.INVALID_REQUEST
    assert info.value.retryable is False
    assert s.history == [_u("h"), _a("r")] and s.system_prompt == "SYS"


def test_reset():
    s = ChatSession(system_prompt="SYS", history=[_u("a"), _a("b")])
    s.reset()
    assert (s.system_prompt, s.history) == ("SYS", [])
    s.history = [_u("a")]
    s.reset("NEW")
    assert (s.system_prompt, s.history) == ("NEW", [])
    s.reset("")
    assert s.system_prompt is None


# ---------------------------------------------------------------------------
# fit_to_context
# ---------------------------------------------------------------------------


class CharCounter:
    """One token per character of content; records the calls."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, str]]] = []

    def __call__(self, messages: list[dict[str, str]]) -> list[int]:
        self.calls.append([dict(m) for m in messages])
        return [ord(c) for m in messages for c in m["content"]]


def _ten(tag: str) -> str:
    return (tag * 10)[:10]


def test_fit_without_truncation():
    turn = Turn("S" * 10, [_u(_ten("a")), _a(_ten("b")), _u(_ten("c"))])
    tokens = fit_to_context(turn, CharCounter(), n_ctx=100, max_tokens=60)
    assert len(tokens) == 40
    assert turn.truncated == 0
    assert len(turn.history) == 3


def test_fit_drops_oldest_whole_exchange():
    history = [_u(_ten("1")), _a(_ten("2")), _u(_ten("3")), _a(_ten("4")), _u(_ten("5"))]
    turn = Turn("S" * 10, list(history))
    counter = CharCounter()
    tokens = fit_to_context(turn, counter, n_ctx=45, max_tokens=5)  # 60 tokens > 45 - 5
    assert turn.history == history[2:]
    assert turn.truncated == 2
    assert turn.system_prompt == "S" * 10
    assert len(tokens) == 40
    assert counter.calls[-1][0] == _s("S" * 10)
    assert counter.calls[-1][-1] == _u(_ten("5"))


def test_fit_drops_down_to_the_last_user_message():
    history = [_u(_ten("1")), _a(_ten("2")), _u(_ten("3")), _a(_ten("4")), _u(_ten("5"))]
    turn = Turn("S" * 10, list(history))
    tokens = fit_to_context(turn, CharCounter(), n_ctx=25, max_tokens=5)
    assert turn.history == [_u(_ten("5"))]
    assert turn.truncated == 4
    assert len(tokens) == 20
    assert turn.messages()[0] == _s("S" * 10)


def test_fit_keeps_history_starting_with_a_user_turn():
    # A list input may start with an assistant message and hold consecutive user turns.
    history = [_a(_ten("0")), _u(_ten("1")), _u(_ten("2")), _a(_ten("3")), _u(_ten("4"))]
    turn = Turn(None, list(history))
    fit_to_context(turn, CharCounter(), n_ctx=35, max_tokens=5)
    assert turn.history == history[2:]
    assert turn.truncated == 2
    assert turn.history[0]["role"] == "user"


def test_fit_does_not_touch_the_session():
    s = ChatSession(system_prompt="S", history=[_u(_ten("1")), _a(_ten("2"))])
    turn = s.next_turn(_ten("3"))
    fit_to_context(turn, CharCounter(), n_ctx=16, max_tokens=4)
    assert turn.truncated == 2
    assert s.history == [_u(_ten("1")), _a(_ten("2"))]


def test_fit_returns_when_only_part_of_max_tokens_fits():
    # The newest input alone leaves room for some (not all) of max_tokens:
    # the prompt is returned and generation may end with context_full.
    turn = Turn(None, [_u(_ten("1")), _a(_ten("2")), _u("x" * 19)])
    tokens = fit_to_context(turn, CharCounter(), n_ctx=20, max_tokens=512)
    assert len(tokens) == 19
    assert turn.history == [_u("x" * 19)]


@pytest.mark.parametrize(("system", "last", "n_ctx"), [(None, "x" * 20, 20), ("S" * 5, "x" * 15, 20), (None, "x" * 50, 20)])
def test_context_overflow_when_the_input_alone_cannot_fit(system, last, n_ctx):
    turn = Turn(system, [_u("old"), _a("reply"), _u(last)])
    with pytest.raises(WorkerError) as info:
        fit_to_context(turn, CharCounter(), n_ctx=n_ctx, max_tokens=1)
    assert info.value.code == ErrorCode.CONTEXT_OVERFLOW
    assert info.value.retryable is False
    assert str(n_ctx) in info.value.message


@settings(max_examples=300, deadline=None)
@given(
    system=st.one_of(st.none(), st.text(alphabet="s", min_size=1, max_size=10)),
    exchanges=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), max_size=6),
    last=st.integers(1, 20),
    n_ctx=st.integers(1, 80),
    max_tokens=st.integers(1, 30),
)
def test_fit_to_context_property(system, exchanges, last, n_ctx, max_tokens):
    history = []
    for i, (q, r) in enumerate(exchanges):
        history += [_u(str(i % 10) * q), _a(str(i % 10) * r)]
    history.append(_u("L" * last))
    original = list(history)
    turn = Turn(system, list(history))
    sys_len = len(system or "")
    try:
        tokens = fit_to_context(turn, CharCounter(), n_ctx, max_tokens)
    except WorkerError as exc:
        assert exc.code == ErrorCode.CONTEXT_OVERFLOW
        assert sys_len + last >= n_ctx  # the input alone could not fit
        return
    assert turn.system_prompt == system
    assert turn.history[-1] == _u("L" * last)
    assert turn.history[0]["role"] == "user"
    assert turn.history == original[len(original) - len(turn.history) :]  # a suffix: oldest dropped
    assert turn.truncated == len(original) - len(turn.history)
    assert turn.truncated % 2 == 0  # whole exchanges
    assert len(tokens) == sys_len + sum(len(m["content"]) for m in turn.history)
    assert len(tokens) < n_ctx
    if turn.truncated:
        # Dropped only as much as needed: keeping one more exchange would not fit.
        kept_one_more = original[len(original) - len(turn.history) - 2 :]
        assert sys_len + sum(len(m["content"]) for m in kept_one_more) + max_tokens > n_ctx
    if len(turn.history) > 1:
        assert len(tokens) + max_tokens <= n_ctx


# ---------------------------------------------------------------------------
# chat_format
# ---------------------------------------------------------------------------


def test_builtin_chatml_renders():
    f = formatter_for_builtin(BUILTIN_FORMATS["chatml"], "<s>", "</s>", "detected")
    text = f.render([_s("S"), _u("U"), _a("A"), _u("V")])
    assert text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        "<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nV<|im_end|>\n<|im_start|>assistant\n"
    )
    assert f.render([_u("U")], add_generation_prompt=False) == "<|im_start|>user\nU<|im_end|>\n"
    assert f.stop == ("<|im_end|>",)
    assert f.source == "detected"


@pytest.mark.parametrize("name", sorted(BUILTIN_FORMATS))
def test_every_builtin_format_passes_its_probe_and_keeps_the_system_text(name):
    fmt = BUILTIN_FORMATS[name]
    f = formatter_for_builtin(fmt, "<s>", "</s>", "requested")
    f.probe()
    assert f.merge_system == fmt.merge_system
    text = f.render([_s("SYSTEXT"), _u("USERTEXT")])
    assert "SYSTEXT" in text and "USERTEXT" in text
    assert text.index("SYSTEXT") < text.index("USERTEXT")


_TURNS = (
    "{% for m in messages %}{{ '<' + m.role + '>' + m.content + '</' + m.role + '>' }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
_RAISES_ON_SYSTEM = (
    "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<' + m.role + '>' + m.content + '</' + m.role + '>' }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
_DROPS_SYSTEM = (
    "{% for m in messages %}{% if m.role != 'system' %}{{ '<' + m.role + '>' + m.content + '</' + m.role + '>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_probe_keeps_native_system_for_a_template_that_shows_it():
    f = ChatFormatter("t", _TURNS, "", "")
    f.probe()
    assert f.merge_system is False
    assert f.render([_s("S"), _u("U")]) == "<system>S</system><user>U</user><assistant>"


@pytest.mark.parametrize("template", [_RAISES_ON_SYSTEM, _DROPS_SYSTEM], ids=["raises", "drops"])
def test_probe_switches_to_merged_system(template):
    f = ChatFormatter("t", template, "", "")
    assert f.merge_system is False
    f.probe()
    assert f.merge_system is True
    text = f.render([_s("BE NICE"), _u("hello"), _a("hi"), _u("again")])
    assert text == "<user>BE NICE\n\nhello</user><assistant>hi</assistant><user>again</user><assistant>"
    # No user turn right after the system message: the system text becomes one.
    assert f.render([_s("BE NICE"), _a("hi"), _u("q")]) == (
        "<user>BE NICE</user><assistant>hi</assistant><user>q</user><assistant>"
    )
    # Without a system message nothing changes.
    assert f.render([_u("q")]) == "<user>q</user><assistant>"


def test_probe_fails_for_a_template_that_drops_turns():
    f = ChatFormatter("t", "{% for m in messages %}{% if loop.last %}{{ m.content }}{% endif %}{% endfor %}", "", "")
    with pytest.raises(ChatFormatError):
        f.probe()


def test_template_that_does_not_compile():
    with pytest.raises(ChatFormatError):
        ChatFormatter("t", "{% for m in messages %}{{ m.content }", "", "")


def test_template_raise_exception_is_a_chat_format_error():
    f = ChatFormatter("t", "{{ raise_exception('Conversation roles must alternate') }}", "", "")
    with pytest.raises(ChatFormatError, match="alternate"):
        f.render([_u("q")])


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
        "{{ joiner.__init__.__globals__.os.popen('touch MARKER').read() }}",
        "{{ namespace.__init__.__globals__.os.system('touch MARKER') }}",
        "{{ lipsum.__globals__['os'].system('touch MARKER') }}",
        "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('touch MARKER') }}",
        "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch MARKER') }}",
        "{{ messages.append({'role': 'user', 'content': 'x'}) }}",
        "{{ 'a' * 100000000 }}",
        "{{ 100000000 * 'a' }}",
        "{{ ['a'] * 100000000 }}",
        "{{ 'a' * 4000000 * 3 }}",
        "{{ 10 ** 100000 }}",
    ],
)
def test_hostile_templates_fail_and_run_no_code(template, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    f = ChatFormatter("evil", template, "", "")
    with pytest.raises(ChatFormatError, match="SecurityError"):
        f.render([_u("q")])
    assert not marker.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "template",
    [
        "{% set s = 'a' * HALF %}{{ (s ~ s ~ s ~ s)|length }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        "{{ ''|center(50000000) }}",
        "{% set s = 'a' * HALF %}{{ ('%s%s%s' % (s, s, s))|length }}",
        "{% set s = 'a' * HALF %}{{ [s, s, s]|join|length }}",
    ],
)
def test_templates_cannot_build_huge_values(template):
    f = ChatFormatter("evil", template.replace("HALF", str(MAX_RENDER_CHARS // 2 + 1)), "", "")
    with pytest.raises(ChatFormatError):
        f.render([_u("q")])


def test_oversized_rendered_prompt_is_refused():
    n = MAX_RENDER_CHARS // 2 + 1
    f = ChatFormatter("big", "{{ 'a' * " + str(n) + " }}{{ 'b' * " + str(n) + " }}", "", "")
    with pytest.raises(ChatFormatError):
        f.render([_u("q")])


def test_hugging_face_helpers_are_available():
    f = ChatFormatter(
        "hf",
        "{% for m in messages %}{{ m | tojson }}{% endfor %}{{ bos_token }}|{{ eos_token }}"
        "{% if tools is none and documents is none %}|ok{% endif %}",
        "<s>",
        "</s>",
    )
    assert f.render([_u("é <b>")]) == '{"role": "user", "content": "é <b>"}<s>|</s>|ok'


def _specials(*tokens: str):
    vocab = set(tokens)
    return lambda t: t in vocab


@pytest.mark.parametrize(
    ("tokens", "arch", "name", "expected"),
    [
        (("<|im_start|>", "<|im_end|>"), "llama", "SmolLM2", "chatml"),
        (("<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|eot_id|>"), "llama", "x", "chatml"),
        (("<|start_header_id|>", "<|eot_id|>"), "llama", "x", "llama-3"),
        (("<start_of_turn>", "<end_of_turn>"), "gemma2", "x", "gemma"),
        (("<|user|>", "<|end|>", "<|assistant|>"), "phi3", "x", "phi-3"),
        (("<|user|>", "<|assistant|>"), "llama", "x", "zephyr"),
        (("[INST]", "[/INST]"), "llama", "x", "mistral"),
        (("<|im_start|>",), "llama", "x", "plain"),  # one marker is not enough
        ((), "llama", "Llama-2-7B-chat", "llama-2"),
        ((), "llama", "Mixtral 8x7B", "mistral"),
        ((), "qwen2", "x", "chatml"),
        ((), "gemma", "x", "gemma"),
        ((), "gpt2", "something", "plain"),
        ((), "", "", "plain"),
    ],
)
def test_detect_builtin_format(tokens, arch, name, expected):
    assert detect_builtin_format(_specials(*tokens), arch, name).name == expected
