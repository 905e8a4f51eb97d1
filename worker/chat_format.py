"""Turning a conversation into prompt text: chat templates and their choice.

A GGUF usually carries its Jinja chat template; we render it in jinja2's
immutable sandbox (a template is untrusted input from a downloaded file) with
the helpers Hugging Face templates expect. When the GGUF has no template we do
not fall back to "llama-2" the way llama-cpp-python silently does: we pick a
built-in format from the special tokens the vocabulary actually has, and say
which one in `loaded.model.chat_format`.

Whether a template shows a system message is tested at load, not assumed:
some templates raise on one, others drop it without a word. Either way the
system prompt is then prepended to the first user turn ("merged"), so it is
never lost.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateError
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

Message = dict[str, Any]

#: Rendered prompts larger than this are refused (a template is untrusted).
MAX_RENDER_CHARS = 8 * 1024 * 1024

#: Template variables every render gets unless a request says otherwise. llama.cpp passes
#: `enable_thinking=true` too: some templates (DeepSeek-R1's) close the thought without it.
DEFAULT_VARIABLES: dict[str, Any] = {"enable_thinking": True}


def _template_message(m: Message) -> dict[str, Any]:
    """A message as templates expect it: kept thoughts as `reasoning_content` (Qwen, DeepSeek) and `thinking` (gpt-oss)."""
    out: dict[str, Any] = {k: v for k, v in m.items() if k != "reasoning"}
    if m.get("reasoning"):
        out["reasoning_content"] = out["thinking"] = m["reasoning"]
    return out


class ChatFormatError(Exception):
    """The template failed to render (bad template, or it refused the messages)."""


# ---------------------------------------------------------------------------
# Built-in formats, for GGUFs without a template
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltinFormat:
    name: str
    template: str
    #: Special tokens whose presence in the vocabulary identifies the format.
    markers: tuple[str, ...] = ()
    #: Text or single special tokens that end an assistant turn.
    stop: tuple[str, ...] = ()
    #: True when the format has no place for a system message.
    merge_system: bool = False


_CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + m.content + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
_GEMMA = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<start_of_turn>' + ('model' if m.role == 'assistant' else 'user') + '\n' + m.content + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
_PHI3 = (
    "{% for m in messages %}{{ '<|' + m.role + '|>\n' + m.content + '<|end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
_ZEPHYR = (
    "{% for m in messages %}{{ '<|' + m.role + '|>\n' + m.content + eos_token + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
_MISTRAL = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m.role == 'user' %}{{ '[INST] ' + m.content + ' [/INST]' }}"
    "{% else %}{{ m.content + eos_token }}{% endif %}{% endfor %}"
)
_LLAMA2 = (
    "{% for m in messages %}"
    "{% if m.role == 'user' %}{{ bos_token + '[INST] ' + m.content + ' [/INST]' }}"
    "{% else %}{{ ' ' + m.content + ' ' + eos_token }}{% endif %}{% endfor %}"
)
_PLAIN = (
    "{% for m in messages %}"
    "{{ {'system': '### System:', 'user': '### User:', 'assistant': '### Assistant:'}[m.role] + '\n' + m.content + '\n\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)

BUILTIN_FORMATS: dict[str, BuiltinFormat] = {
    f.name: f
    for f in (
        BuiltinFormat("chatml", _CHATML, markers=("<|im_start|>", "<|im_end|>"), stop=("<|im_end|>",)),
        BuiltinFormat("llama-3", _LLAMA3, markers=("<|start_header_id|>", "<|eot_id|>"), stop=("<|eot_id|>",)),
        BuiltinFormat("gemma", _GEMMA, markers=("<start_of_turn>", "<end_of_turn>"), stop=("<end_of_turn>",), merge_system=True),
        BuiltinFormat("phi-3", _PHI3, markers=("<|user|>", "<|end|>", "<|assistant|>"), stop=("<|end|>",)),
        BuiltinFormat("zephyr", _ZEPHYR, markers=("<|user|>", "<|assistant|>"), stop=("<|user|>",)),
        BuiltinFormat("mistral", _MISTRAL, markers=("[INST]", "[/INST]"), stop=("[INST]",), merge_system=True),
        BuiltinFormat("llama-2", _LLAMA2, stop=("[INST]",), merge_system=True),
        BuiltinFormat("plain", _PLAIN, stop=("\n### User:", "\n### System:")),
    )
}


def detect_builtin_format(
    is_special_token: Callable[[str], bool], architecture: str, name: str
) -> BuiltinFormat:
    """Choose a format for a GGUF without a template, from its vocabulary.

    Special tokens are the strongest evidence a model was trained on a
    format; architecture and name break the remaining ties.
    """
    for fmt in BUILTIN_FORMATS.values():
        if fmt.markers and all(is_special_token(m) for m in fmt.markers):
            return fmt
    lowered = f"{architecture} {name}".lower()
    if "llama-2" in lowered or "llama2" in lowered:
        return BUILTIN_FORMATS["llama-2"]
    if "mistral" in lowered or "mixtral" in lowered:
        return BUILTIN_FORMATS["mistral"]
    if architecture.startswith("qwen"):
        return BUILTIN_FORMATS["chatml"]
    if architecture.startswith("gemma"):
        return BUILTIN_FORMATS["gemma"]
    return BUILTIN_FORMATS["plain"]


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _check_size(value: Any) -> Any:
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_RENDER_CHARS:
        raise SecurityError("a chat template tried to build a huge value")
    return value


class _GuardedCodeGenerator(CodeGenerator):
    """Compiles `a ~ b` to a size-checked join (jinja2 offers no hook for it)."""

    def visit_Concat(self, node: Any, frame: Any) -> None:
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Sandbox(ImmutableSandboxedEnvironment):
    """Immutable sandbox that also refuses to build huge strings or numbers.

    Every way a template can grow a value (operators, `~`, filters) is checked
    after each step, so repeated doubling stops at MAX_RENDER_CHARS instead of
    exhausting memory.
    """

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def checked_concat(self, parts: Sequence[Any]) -> str:
        joined = "".join(str(p) for p in parts)
        _check_size(joined)
        return joined

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            if isinstance(right, (int, float)) and abs(right) > 64:
                raise SecurityError("exponent too large in a chat template")
            return operator.pow(left, right)
        if operator_name == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_RENDER_CHARS:
                    raise SecurityError("a chat template tried to build a huge value")
            return operator.mul(left, right)
        if operator_name == "%":
            return _check_size(operator.mod(left, right))
        return _check_size(operator.add(left, right))


def _guard_filter(fn: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        for width in (*args[1:], *kwargs.values()):
            if isinstance(width, int) and not isinstance(width, bool) and width > MAX_RENDER_CHARS:
                raise SecurityError("a chat template passed a huge size to a filter")
        return _check_size(fn(*args, **kwargs))

    for attr in ("jinja_pass_arg", "__name__", "__doc__"):
        if hasattr(fn, attr):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(guarded, attr, getattr(fn, attr))
    return guarded


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    # Hugging Face's tojson: no HTML escaping, unlike jinja2's built-in.
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _make_environment() -> _Sandbox:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.filters = {name: _guard_filter(fn) for name, fn in env.filters.items()}
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@dataclass
class ChatFormatter:
    """Renders message lists with one template; knows how to treat system prompts."""

    name: str
    template_source: str
    bos_token: str
    eos_token: str
    source: str = "gguf"
    stop: tuple[str, ...] = ()
    merge_system: bool = False
    no_tools: list[Any] | None = None
    """What `tools` is when a request has none: null, as llama.cpp passes it, or [] for templates
    that iterate `tools` unguarded (Hermes 3's tool-use template), found by the probe."""
    _template: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        try:
            self._template = _make_environment().from_string(self.template_source)
        except TemplateError as exc:
            raise ChatFormatError(f"chat template does not compile: {exc}") from None

    def _render_raw(self, messages: Sequence[Message], add_generation_prompt: bool, variables: Mapping[str, Any] | None = None) -> str:
        try:
            text = self._template.render(
                {"documents": None, **DEFAULT_VARIABLES, **(variables or {}), "tools": (variables or {}).get("tools") or self.no_tools},
                messages=[_template_message(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except RecursionError:
            raise ChatFormatError("chat template recursed too deeply") from None
        except (TemplateError, SecurityError, TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError, MemoryError) as exc:
            raise ChatFormatError(f"chat template failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(text, str) or len(text) > MAX_RENDER_CHARS:
            raise ChatFormatError("chat template produced an oversized prompt")
        return text

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True, variables: Mapping[str, Any] | None = None) -> str:
        """Prompt text for `messages` (system first, if any, then alternating turns).

        `variables` are extra template variables (`enable_thinking`, `reasoning_effort`).
        """
        msgs = list(messages)
        if self.merge_system and msgs and msgs[0]["role"] == "system":
            system = msgs.pop(0)["content"]
            if msgs and msgs[0]["role"] == "user":
                msgs[0] = {"role": "user", "content": f"{system}\n\n{msgs[0]['content']}" if system else msgs[0]["content"]}
            elif system:
                msgs.insert(0, {"role": "user", "content": system})
        return self._render_raw(msgs, add_generation_prompt, variables)

    def probe(self) -> None:
        """Render a small test conversation once, at load.

        Fails when the template cannot render ordinary turns; switches to
        merged system prompts when it refuses or drops a system message.
        """
        turns = [
            {"role": "user", "content": "PROBE-USER-1"},
            {"role": "assistant", "content": "PROBE-ASSISTANT-1"},
            {"role": "user", "content": "PROBE-USER-2"},
        ]
        try:
            text = self._render_raw(turns, True)
        except ChatFormatError:
            self.no_tools = []  # a template that needs a tools list; if it still fails, that error stands
            text = self._render_raw(turns, True)
        for marker in ("PROBE-USER-1", "PROBE-ASSISTANT-1", "PROBE-USER-2"):
            if marker not in text:
                raise ChatFormatError(f"chat template dropped a message of the test conversation ({marker})")
        if self.merge_system:
            return
        try:
            with_system = self._render_raw([{"role": "system", "content": "PROBE-SYSTEM"}, *turns], True)
        except ChatFormatError:
            self.merge_system = True
            return
        if "PROBE-SYSTEM" not in with_system:
            self.merge_system = True


def formatter_for_builtin(fmt: BuiltinFormat, bos_token: str, eos_token: str, source: str) -> ChatFormatter:
    return ChatFormatter(
        name=fmt.name,
        template_source=fmt.template,
        bos_token=bos_token,
        eos_token=eos_token,
        source=source,
        stop=fmt.stop,
        merge_system=fmt.merge_system,
    )
