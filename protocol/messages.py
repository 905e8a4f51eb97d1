"""Every message of wire protocol v1, defined once.

One msgspec `Struct` per message, tagged on `"type"`, gathered in one union per
direction. The JSON schema (`schema.json`) and the validation done by the
decoders both come from these classes, so this module *is* the protocol.

Pinned rule: fields here may be added, never renamed, removed or changed.
Unknown fields in incoming objects are ignored (msgspec's default), which is
what lets either side add fields without breaking the other.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .errors import ErrorCode
from .framing import MIN_FRAME_SIZE

PROTOCOL_VERSION = 1

#: A request id: chosen by the host, echoed on every event and reply.
RequestId = int | str

LogLevel = Literal["debug", "info", "warning", "error"]
StopReason = Literal["eos", "stop_sequence", "max_tokens", "aborted", "context_full", "tool_calls"]
Role = Literal["system", "user", "assistant", "tool"]

_Seed = Annotated[int, Meta(ge=0, le=0xFFFFFFFE, description="Sampling seed (uint32, 0xFFFFFFFF excluded)")]
_Probability = Annotated[float, Meta(ge=0.0, le=1.0)]

#: Name of a chat session, chosen by the host. Sessions spring into being on first use.
SessionId = Annotated[str, Meta(min_length=1, max_length=256, description="Chat session name")]
DEFAULT_SESSION = "default"


class _Message(msgspec.Struct, tag_field="type", kw_only=True):
    """Base of every frame's object: `type` is the tag."""


# --------------------------------------------------------------------------
# host -> worker
# --------------------------------------------------------------------------


class Init(_Message, tag="init", kw_only=True):
    """Handshake. Must come before anything but `ping`."""

    id: RequestId
    protocol_version: int
    log_level: LogLevel | None = None
    """When set, critical events at this level or above also reach the host as `log` frames."""
    max_frame_size: Annotated[int, Meta(ge=MIN_FRAME_SIZE)] | None = None
    """The largest payload this host reads. The worker never writes a larger frame: a reply that
    would not fit becomes `reply_too_large`. Default: `DEFAULT_MAX_FRAME_SIZE` (16 MiB)."""


class Load(_Message, tag="load", kw_only=True):
    """Load a model and create its context; replaces a loaded one on success."""

    id: RequestId
    model_path: str | None = None
    """Path to a GGUF file. Omitted or null: the default model."""
    n_ctx: Annotated[int, Meta(ge=0)] | None = None
    """Context size in tokens. Default 4096, capped at the model's training context; 0: the training context."""
    n_threads: Annotated[int, Meta(ge=1, le=1024)] | None = None
    """Default: the cores this process may run on."""
    n_gpu_layers: Annotated[int, Meta(ge=-1)] | None = None
    """Layers to offload to a GPU; -1: all. Default 0."""
    seed: _Seed | None = None
    """Makes the sequence of per-request seeds (for requests without `seed`) reproducible."""
    chat_format: str | None = None
    """A built-in chat format name, or "auto" (default): the GGUF's template, else one chosen from the model's metadata."""
    system_prompt: str | None = None
    """System prompt of the fresh chat session that a successful load starts."""
    use_extra_bufts: bool | None = None
    """llama.cpp's extra CPU buffer types (AMX, repacking). Null: on, except on CPUs with AMX where they crash."""
    n_batch: Annotated[int, Meta(ge=1)] | None = None
    """Prompt evaluation batch size. Default 512."""
    flash_attn: bool | None = None
    """Flash attention. Default off on the CPU (it slows long contexts there)."""
    session_cache_bytes: Annotated[int, Meta(ge=0)] | None = None
    """RAM budget for the KV state of sessions that are not in the context (LRU). Default: 1/8 of RAM, at most 4 GiB; 0: none."""


class ToolCall(msgspec.Struct, kw_only=True):
    """A call the model made: which tool, with which arguments (a JSON object valid against its `parameters`)."""

    id: Annotated[str, Meta(min_length=1, max_length=256)]
    """Chosen by the worker when the model's format has none; a `tool` message answers it by this id."""
    name: str
    arguments: dict[str, Any]


class ChatMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One turn of a conversation."""

    role: Role
    content: str
    reasoning: str | None = None
    """An assistant turn's thoughts, when they are kept (`generate.reasoning.keep_in_history`).
    Templates see them as `reasoning_content` and `thinking` and decide whether to show them."""
    tool_calls: list[ToolCall] | None = None
    """An assistant turn's tool calls (its `content` is the text written before them)."""
    tool_call_id: str | None = None
    """A `tool` message: the id of the call it answers."""
    name: str | None = None
    """A `tool` message: the tool's name (optional; taken from the call when omitted)."""


_ToolName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")]


class Tool(msgspec.Struct, kw_only=True):
    """A function the model may call."""

    name: _ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """A JSON Schema object for the arguments (the subset `response_format` accepts). Omitted: no arguments."""


class NamedToolChoice(msgspec.Struct, kw_only=True):
    """`tool_choice` naming the one tool to call."""

    name: str


class ResponseFormat(msgspec.Struct, kw_only=True):
    """Constrains a reply to JSON: any JSON object, or JSON valid against a schema."""

    type: Literal["json", "json_schema"]
    schema: dict[str, Any] | None = None
    """With "json_schema": the JSON Schema the reply must satisfy (local `$ref`s allowed, no recursion)."""


class Reasoning(msgspec.Struct, kw_only=True):
    """How a reasoning model thinks before it answers (ignored by models that do not)."""

    enabled: bool | None = None
    """Null: the model's own default (thinking on where the template has a switch). False: no
    thoughts (the template's switch, else an empty thought pre-filled). True: a thought is opened
    for the model where the template does not open one itself."""
    budget_tokens: Annotated[int, Meta(ge=0)] | None = None
    """At most this many thought tokens; then the worker closes the thought with the model's own
    end-of-thought marker and the model answers. 0: close it at once."""
    effort: Literal["low", "medium", "high"] | None = None
    """Passed to templates that take one (`reasoning_effort`, gpt-oss)."""
    keep_in_history: bool = False
    """Keep this reply's thoughts in the session history (`ChatMessage.reasoning`); whether a
    later prompt shows them is the template's choice (most drop past thoughts)."""


class Generate(_Message, tag="generate", kw_only=True):
    """Generate a reply (chat mode) or a continuation (completion mode)."""

    id: RequestId
    input: str | list[ChatMessage]
    """A string: the next user turn of the session. A list: replaces the history; the last must be a user message."""
    max_tokens: Annotated[int, Meta(ge=1)] = 512
    temperature: Annotated[float, Meta(ge=0.0)] = 0.8
    """0 means greedy decoding."""
    top_p: _Probability = 0.95
    stop: list[Annotated[str, Meta(min_length=1)]] = []
    top_k: Annotated[int, Meta(ge=0)] | None = None
    """Default 40; 0 turns it off."""
    min_p: _Probability | None = None
    """Default 0.05."""
    repeat_penalty: Annotated[float, Meta(gt=0.0)] | None = None
    """Default 1.1 over the last 64 tokens; 1.0 turns it off."""
    seed: _Seed | None = None
    """Default: a fresh seed per request, reported in `done.seed`."""
    mode: Literal["chat", "completion"] = "chat"
    """"completion": continue raw text without a chat template; the session is left alone."""
    session: SessionId = DEFAULT_SESSION
    """The chat session this turn belongs to (chat mode)."""
    response_format: ResponseFormat | None = None
    """Constrain the reply with a grammar built from this (built once per schema, then reused).
    With a reasoning model the grammar applies to the answer, after the thought."""
    reasoning: Reasoning | None = None
    """Thinking on or off, its budget and effort, and whether thoughts stay in the history."""
    tools: list[Tool] | None = None
    """Functions the model may call (chat mode). Calls come as `tool_call` events and in `done.tool_calls`."""
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    """With `tools`: "auto" (default: the model decides), "none", "required" (a call, from the first
    token), or {"name": ...} (that tool)."""
    parallel_tool_calls: bool = True
    """Allow several calls in one reply."""


class Abort(_Message, tag="abort", kw_only=True):
    """Stop a running request. Idempotent."""

    id: RequestId
    target: RequestId | None = None
    """Id of the request to stop. Omitted: whatever runs."""


class EndReasoning(_Message, tag="end_reasoning", kw_only=True):
    """End a running generation's thought now: the worker closes it and the model answers.
    Answered at once with `ok`, or `not_reasoning` when the target is not thinking."""

    id: RequestId
    target: RequestId | None = None
    """Id of the generation. Omitted: whatever runs."""


class Reset(_Message, tag="reset", kw_only=True):
    """Clear the chat history."""

    id: RequestId
    system_prompt: str | None = None
    """New system prompt. Omitted: keep the current one. Empty string: none."""
    session: SessionId = DEFAULT_SESSION
    history: list[ChatMessage] | None = None
    """The session's history from now on (user and assistant messages), instead of an empty one; nothing is generated."""


class Preload(_Message, tag="preload", kw_only=True):
    """Evaluate a session's prompt for this (possibly partial) input into the KV cache, generating nothing. The next `generate` with the same or an extended input then evaluates only what is new. Any later job request interrupts it (never `busy`); the reply is then `preloaded` with `complete` false."""

    id: RequestId
    session: SessionId = DEFAULT_SESSION
    input: str | list[ChatMessage]
    """As `generate.input`."""
    max_tokens: Annotated[int, Meta(ge=1)] = 512
    """The `max_tokens` the coming `generate` will use: history is trimmed the same way."""


class Tokenize(_Message, tag="tokenize", kw_only=True):
    """Turn text into the model's token ids. Answered beside a running job, never `busy`."""

    id: RequestId
    text: str
    special: bool = False
    """Parse special-token text (such as "<|im_start|>") as those tokens, and add BOS as the model does."""


class Detokenize(_Message, tag="detokenize", kw_only=True):
    """Turn token ids back into text. Answered beside a running job, never `busy`."""

    id: RequestId
    ids: list[Annotated[int, Meta(ge=0)]]
    special: bool = False
    """Render special tokens (BOS, end of turn...) as their text instead of nothing."""


class Count(_Message, tag="count", kw_only=True):
    """Count the prompt tokens a `generate` of this input would evaluate, before any trimming. Answered beside a running job, never `busy`."""

    id: RequestId
    session: SessionId = DEFAULT_SESSION
    input: str | list[ChatMessage] | None = None
    """As `generate.input`. Omitted: the session's conversation as it stands (no new turn)."""


class Sessions(_Message, tag="sessions", kw_only=True):
    """List the chat sessions. Answered at once, also while a job runs."""

    id: RequestId


class CloseSession(_Message, tag="close_session", kw_only=True):
    """Forget a session and its cached KV state ("default" is emptied instead)."""

    id: RequestId
    session: SessionId


class SaveSession(_Message, tag="save_session", kw_only=True):
    """Write a session's history and KV state to a file."""

    id: RequestId
    session: SessionId = DEFAULT_SESSION
    path: Annotated[str, Meta(min_length=1)]


class RestoreSession(_Message, tag="restore_session", kw_only=True):
    """Replace a session with one saved by `save_session` (same model and KV layout)."""

    id: RequestId
    session: SessionId = DEFAULT_SESSION
    path: Annotated[str, Meta(min_length=1)]


class Ping(_Message, tag="ping", kw_only=True):
    """Liveness check, answered at once in any state."""

    id: RequestId


class Cleanup(_Message, tag="cleanup", kw_only=True):
    """Abort whatever runs and free the session, context and model."""

    id: RequestId


Request = Init | Load | Generate | Abort | EndReasoning | Reset | Ping | Cleanup | Preload | Sessions | CloseSession | SaveSession | RestoreSession | Tokenize | Detokenize | Count

# --------------------------------------------------------------------------
# worker -> host
# --------------------------------------------------------------------------


class Ready(_Message, tag="ready", kw_only=True):
    id: RequestId
    protocol_version: int
    worker_version: str
    llama_cpp_version: str
    pid: int
    capabilities: list[str]
    max_frame_size: int | None = None
    """The largest request payload this worker reads (`--max-frame-size`); a larger one is fatal."""


class Progress(_Message, tag="progress", kw_only=True):
    """Event of a `load`: rising fraction, at most about 20 per second."""

    id: RequestId
    fraction: float


class ModelInfo(msgspec.Struct, kw_only=True):
    path: str
    name: str
    architecture: str
    size_bytes: int
    n_ctx: int
    n_ctx_train: int
    chat_format: str
    """The chat format in use: "gguf" (the model's own template) or a built-in name."""
    chat_format_source: Literal["gguf", "requested", "detected"] = "gguf"
    """Where the chat format came from; "detected" when the GGUF had no template."""
    n_params: int = 0
    n_threads: int = 0
    n_gpu_layers: int = 0
    use_extra_bufts: bool = True
    system_prompt_mode: Literal["native", "merged"] = "native"
    """"merged": the template cannot show a system message, so it is prepended to the first user turn."""
    session_cache_bytes: int = 0
    """The RAM budget for inactive sessions' KV state, as in effect."""
    backends: list[str] = []
    """Compute backends the llama.cpp build has, such as ["CPU"] or ["CUDA", "CPU"]."""
    n_layer: int = 0
    """Layers of the model."""
    gpu_layers_offloaded: int = 0
    """Layers llama.cpp puts on a GPU for this request: derived from `n_gpu_layers`, `n_layer` and
    whether the build can offload (0 when it cannot), not read back from llama.cpp."""
    tool_format: Literal["hermes", "llama3", "mistral", "harmony", "generic"] = "generic"
    """How the model writes tool calls, detected at load from its template: "hermes" (`<tool_call>`
    JSON: Qwen, Hermes, SmolLM3), "llama3" (`{"name", "parameters"}` JSON, `<|python_tag|>`),
    "mistral" (`[TOOL_CALLS]`), "harmony" (gpt-oss), "generic" (a built-in tool prompt)."""
    reasoning: Literal["none", "think_tags", "harmony"] = "none"
    """How the model thinks, detected at load from its template and vocabulary: "think_tags"
    (`<think>`...`</think>`: Qwen3, DeepSeek-R1, SmolLM3), "harmony" (gpt-oss's analysis channel)."""
    reasoning_can_disable: bool = False
    """Whether `generate.reasoning.enabled: false` can switch thinking off."""


class Loaded(_Message, tag="loaded", kw_only=True):
    id: RequestId
    model: ModelInfo
    load_ms: float = 0.0


class Chunk(_Message, tag="chunk", kw_only=True, omit_defaults=True):
    """Event of a `generate`: the next piece of text (valid UTF-8, never part of a stop sequence).
    A chunk carries answer text or thought text, never both, and never a thought's tags."""

    id: RequestId
    text: str
    """Answer text ("" in a thought chunk)."""
    reasoning: str = ""
    """Thought text (reasoning models)."""


class ToolCallEvent(_Message, tag="tool_call", kw_only=True):
    """Event of a `generate`: a complete tool call (its raw syntax never appears in any `text`)."""

    id: RequestId
    index: int
    """0 for the reply's first call, then 1, 2..."""
    call: ToolCall


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    """Tokens of the rendered prompt."""
    cached_tokens: int
    """Of those, tokens reused from the KV cache (not evaluated again)."""
    completion_tokens: int
    reasoning_tokens: int = 0
    """Of the completion tokens, those spent thinking (end-of-thought markers included)."""


class Timings(msgspec.Struct, kw_only=True):
    ttft_ms: float
    """Request received to first chunk sent (0 when nothing was generated)."""
    total_ms: float
    """Request received to terminal reply."""
    tokens_per_second: float
    """Completion tokens per second of decoding (after the first token)."""
    prompt_ms: float = 0.0
    """Time spent evaluating the uncached part of the prompt."""


class Done(_Message, tag="done", kw_only=True):
    id: RequestId
    text: str
    stop_reason: StopReason
    usage: Usage
    timings: Timings
    truncated_messages: int = 0
    """Oldest messages dropped from the history so that it fits the context."""
    seed: int | None = None
    """The seed used for sampling (null for greedy decoding)."""
    incomplete: bool = False
    """With `response_format`: the reply stopped before its JSON was complete (max_tokens, abort, a stop sequence)."""
    reasoning: str | None = None
    """All the thought text of the reply (null when the model did not think). A reply that ran out
    of `max_tokens` while thinking has `reasoning` and an empty `text`."""
    tool_calls: list[ToolCall] | None = None
    """The reply's tool calls, as the `tool_call` events gave them (null: none); `stop_reason` is then "tool_calls"."""


class Ok(_Message, tag="ok", kw_only=True):
    id: RequestId


class Pong(_Message, tag="pong", kw_only=True):
    id: RequestId


class Error(_Message, tag="error", kw_only=True):
    id: RequestId | None
    code: ErrorCode
    message: str
    retryable: bool


class Tokens(_Message, tag="tokens", kw_only=True):
    """Reply to `tokenize`."""

    id: RequestId
    ids: list[int]
    count: int


class Text(_Message, tag="text", kw_only=True):
    """Reply to `detokenize`."""

    id: RequestId
    text: str


class TokenCount(_Message, tag="token_count", kw_only=True):
    """Reply to `count`."""

    id: RequestId
    session: str
    tokens: int
    """Prompt tokens, template and BOS included, before trimming."""
    n_ctx: int


class SessionInfo(msgspec.Struct, kw_only=True):
    session: str
    messages: int
    """Messages in the history (the system prompt not counted)."""
    tokens: int
    """Tokens of the session's KV state: its conversation as last evaluated (0: none)."""
    kv_cached: bool
    """True when its KV state is in memory: in the context, or kept in RAM."""
    active: bool
    """True when its KV state is the one in the context now."""
    kv_bytes: int
    """RAM held for its KV state outside the context."""
    system_prompt: str | None = None


class SessionList(_Message, tag="session_list", kw_only=True):
    """Reply to `sessions`."""

    id: RequestId
    sessions: list[SessionInfo]
    cache_bytes: int
    """RAM held by inactive sessions' KV state."""
    cache_budget_bytes: int


class Preloaded(_Message, tag="preloaded", kw_only=True):
    """Reply to `preload`."""

    id: RequestId
    session: str
    prompt_tokens: int
    """Tokens of the prompt it evaluated toward."""
    cached_tokens: int
    """Of those, tokens that were already in the KV cache."""
    complete: bool
    """False when a later request or `abort` interrupted it (what was evaluated is kept)."""


class Saved(_Message, tag="saved", kw_only=True):
    """Reply to `save_session`."""

    id: RequestId
    path: str
    bytes: int
    session: SessionInfo


class Restored(_Message, tag="restored", kw_only=True):
    """Reply to `restore_session`."""

    id: RequestId
    session: SessionInfo
    history: list[ChatMessage] = []
    """The restored conversation (the system prompt is in `session`)."""


class Log(_Message, tag="log", kw_only=True):
    """A critical event, sent when `init.log_level` asked for it."""

    id: None = None
    level: LogLevel
    message: str


Reply = Ready | Progress | Loaded | Chunk | ToolCallEvent | Done | Ok | Pong | Error | Log | SessionList | Preloaded | Saved | Restored | Tokens | Text | TokenCount

#: Tags of each direction, for telling an unknown `type` from a malformed one.
REQUEST_TYPES: frozenset[str] = frozenset(cls.__struct_config__.tag for cls in Request.__args__)
REPLY_TYPES: frozenset[str] = frozenset(cls.__struct_config__.tag for cls in Reply.__args__)
