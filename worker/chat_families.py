"""What each model family's template does about thinking: one table, one place.

Like llama.cpp's `common/chat.cpp`, this module is the one that knows the
quirks of each family: how a thought is marked, how a template is told to
think or not (`enable_thinking`, `reasoning_effort`), what text opens, closes
or skips a thought when the template does not. The splitters that cut the
output stream live in `thoughts`; the generate pipeline asks here for a
`ThoughtPlan` per request.

Detection happens once, at load: the template's source and the vocabulary say
which family it is, and a probe render (thinking on, thinking off) says
whether the generation prompt already opens or closes the thought, so that a
request is never guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import protocol

from .chat_format import ChatFormatError, ChatFormatter
from .thoughts import HarmonySplitter, ThinkTagSplitter, ThoughtSplitter

ReasoningFormat = Literal["none", "think_tags", "harmony"]
PromptState = Literal["open", "closed", "none"]
"""Where the generation prompt leaves a thought: opened, opened and closed (thinking skipped), or neither."""


@dataclass(frozen=True)
class ReasoningFamily:
    """One way of marking thoughts."""

    format: ReasoningFormat
    open_text: str
    """Appended to the prompt to open a thought."""
    empty_thought: str
    """Appended to the prompt to skip thinking (an empty thought, closed)."""
    close_text: str
    """Appended to the context to end a thought (the model's own end-of-thought marker)."""
    stop_markers: tuple[str, ...] = ()
    """End-of-turn markers of the family, beside the template's own (Harmony's `<|return|>`)."""

    def splitter(self, state: PromptState) -> ThoughtSplitter:
        """A splitter for a reply that starts where the prompt leaves it."""
        if self.format == "harmony":
            harmony = HarmonySplitter()
            if state == "open":
                harmony.feed(self.open_text)
            elif state == "closed":
                harmony.feed(self.empty_thought)
            return harmony
        think = ThinkTagSplitter(THINK_OPEN, THINK_CLOSE, in_thought=state == "open")
        if state == "closed":
            think.state = "lead"
        return think

    def prompt_state(self, tail: str) -> PromptState:
        """Where a generation prompt's text (after the last user message) leaves the thought."""
        if self.format == "harmony":
            if f"{HarmonySplitter.CHANNEL}final" in tail:
                return "closed"
            return "open" if f"{HarmonySplitter.CHANNEL}analysis{HarmonySplitter.MESSAGE}" in tail else "none"
        opened, closed = tail.rfind(THINK_OPEN), tail.rfind(THINK_CLOSE)
        if opened > closed:
            return "open"
        return "closed" if closed != -1 else "none"


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

FAMILIES: dict[ReasoningFormat, ReasoningFamily] = {
    "think_tags": ReasoningFamily(
        "think_tags", open_text=f"{THINK_OPEN}\n", empty_thought=f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n", close_text=f"\n{THINK_CLOSE}\n\n"
    ),
    "harmony": ReasoningFamily(
        "harmony",
        open_text="<|channel|>analysis<|message|>",
        empty_thought="<|channel|>analysis<|message|><|end|><|start|>assistant<|channel|>final<|message|>",
        close_text="<|end|><|start|>assistant<|channel|>final<|message|>",
        stop_markers=("<|return|>", "<|call|>"),
    ),
}


@dataclass(frozen=True)
class ReasoningProfile:
    """A loaded model's reasoning, as detected at load."""

    family: ReasoningFamily | None
    state_on: PromptState = "none"
    """The generation prompt's state with `enable_thinking` true."""
    state_off: PromptState = "none"
    """... and with it false."""

    @property
    def format(self) -> ReasoningFormat:
        return self.family.format if self.family else "none"

    @property
    def can_disable(self) -> bool:
        return self.family is not None  # the template's switch, else an empty thought pre-filled

    def plan(self, options: protocol.Reasoning | None, constrained: bool) -> ThoughtPlan:
        """How one request thinks: template variables, prompt suffix, the splitter's start."""
        options = options or protocol.Reasoning()
        variables: dict[str, Any] = {"enable_thinking": options.enabled is not False}
        if options.effort is not None:
            variables["reasoning_effort"] = options.effort
        family = self.family
        if family is None:
            return ThoughtPlan(variables)
        suffix, state = "", self.state_on
        if options.enabled is False:
            state = self.state_off
            if state == "open":
                suffix, state = family.close_text, "closed"
            elif state == "none":
                suffix, state = family.empty_thought, "closed"
        elif (options.enabled or constrained) and state == "none":
            # Asked to think, or a grammar waits for the answer: open the thought for the model.
            suffix, state = family.open_text, "open"
        return ThoughtPlan(variables, family, suffix, state, options.budget_tokens, options.keep_in_history)


@dataclass(frozen=True)
class ThoughtPlan:
    """One request's thinking."""

    variables: dict[str, Any] = field(default_factory=dict)
    """Template variables (`enable_thinking`, `reasoning_effort`)."""
    family: ReasoningFamily | None = None
    suffix: str = ""
    """Appended to the rendered prompt (opens, closes or skips a thought)."""
    state: PromptState = "none"
    budget_tokens: int | None = None
    keep_in_history: bool = False

    def splitter(self) -> ThoughtSplitter | None:
        return self.family.splitter(self.state) if self.family else None


NO_REASONING = ReasoningProfile(None)

#: Every marker a splitter looks for: where one is a special token, the decode loop renders it as text.
MARKERS = (
    THINK_OPEN,
    THINK_CLOSE,
    HarmonySplitter.START,
    HarmonySplitter.CHANNEL,
    HarmonySplitter.MESSAGE,
    HarmonySplitter.END,
    HarmonySplitter.RETURN,
    HarmonySplitter.CALL,
    "<|constrain|>",
)

_PROBE_TURNS = [
    {"role": "user", "content": "PROBE-USER-1"},
    {"role": "assistant", "content": "PROBE-ASSISTANT-1"},
    {"role": "user", "content": "PROBE-USER-2"},
]


def detect(formatter: ChatFormatter, is_special_token: Callable[[str], bool]) -> ReasoningProfile:
    """The model's reasoning family, from its template (and vocabulary), probed once."""
    source = formatter.template_source
    if "<|channel|>" in source and "<|message|>" in source:
        family = FAMILIES["harmony"]
    elif THINK_CLOSE in source or is_special_token(THINK_OPEN):
        family = FAMILIES["think_tags"]
    else:
        return NO_REASONING
    states: list[PromptState] = []
    for enable in (True, False):
        try:
            text = formatter.render(_PROBE_TURNS, True, {"enable_thinking": enable})
        except ChatFormatError:
            text = ""
        states.append(family.prompt_state(text.rsplit("PROBE-USER-2", 1)[-1]))
    return ReasoningProfile(family, states[0], states[1])


# ---------------------------------------------------------------------------
# tool calls
# ---------------------------------------------------------------------------

ToolFormat = Literal["hermes", "llama3", "mistral", "harmony", "generic"]


@dataclass(frozen=True)
class ToolFamily:
    """How a family writes tool calls, and how its templates take tools."""

    format: ToolFormat
    open: str
    """What starts the calls (the trigger the call grammar waits for under "auto")."""
    close: str
    """What ends one call; "" when the JSON's own end does."""
    shape: Literal["object", "array"]
    """One JSON object per call, or one JSON array of every call (Mistral)."""
    args_key: str
    """Where the arguments go: "arguments", or "parameters" (Llama 3)."""
    native: bool = True
    """The template renders `tools`, `tool_calls` and the `tool` role itself."""
    start_only: bool = False
    """A call only counts at the start of the answer (Llama 3's bare JSON)."""
    id_length: int = 0
    """Call ids the template insists on: this many letters and digits (Mistral: 9). 0: any."""


TOOL_FAMILIES: dict[ToolFormat, ToolFamily] = {
    "hermes": ToolFamily("hermes", open="<tool_call>", close="</tool_call>", shape="object", args_key="arguments"),
    "llama3": ToolFamily("llama3", open="{", close="", shape="object", args_key="parameters", start_only=True),
    "mistral": ToolFamily("mistral", open="[TOOL_CALLS]", close="", shape="array", args_key="arguments", id_length=9),
    # gpt-oss writes calls in Harmony's commentary channel; parsed as Hermes-style JSON by the generic
    # prompt until its own syntax is supported (see PROTOCOL.md 7.14).
    "generic": ToolFamily("generic", open="<tool_call>", close="</tool_call>", shape="object", args_key="arguments", native=False),
}

#: The tool prompt for templates that know nothing of tools: appended to the system prompt.
GENERIC_TOOL_PROMPT = (
    "You can call these tools (JSON Schema of each tool's arguments):\n{tools}\n\n"
    "To call a tool, write only:\n<tool_call>\n{{\"name\": \"<tool name>\", \"arguments\": {{<arguments>}}}}\n</tool_call>\n"
    "You may write several calls, one after the other. A tool's result comes back in a "
    "<tool_response> message; then answer the user."
)


def detect_tools(template_source: str) -> ToolFamily:
    """The family whose call syntax the template shows; generic when it shows none (or only Harmony's)."""
    if "tools" in template_source:
        if "<tool_call>" in template_source:
            return TOOL_FAMILIES["hermes"]
        if "[TOOL_CALLS]" in template_source:
            return TOOL_FAMILIES["mistral"]
        if "<|python_tag|>" in template_source or "ipython" in template_source:
            return TOOL_FAMILIES["llama3"]
    return TOOL_FAMILIES["generic"]
