"""Wire protocol v1 (issue 2): messages, framing, codec, schema.

Pure tests: no worker process and no model. They pin the format that other
languages depend on, so most assertions compare against literal bytes or the
issue's table rather than against the code's own constants.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol
from protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    REPLY_TYPES,
    REQUEST_TYPES,
    Abort,
    ChatMessage,
    Chunk,
    Cleanup,
    CloseSession,
    Count,
    Detokenize,
    Done,
    EndReasoning,
    Error,
    ErrorCode,
    FrameDecoder,
    Generate,
    Init,
    Load,
    Loaded,
    Log,
    ModelInfo,
    NamedToolChoice,
    Ok,
    Ping,
    Pong,
    Preload,
    Preloaded,
    Progress,
    ProtocolError,
    Ready,
    Reasoning,
    Reply,
    Request,
    Reset,
    ResponseFormat,
    Restored,
    RestoreSession,
    Saved,
    SaveSession,
    SessionInfo,
    SessionList,
    Sessions,
    Text,
    Timings,
    TokenCount,
    Tokenize,
    Tokens,
    Tool,
    ToolCall,
    ToolCallEvent,
    Usage,
    decode_reply,
    decode_request,
    encode,
    frame,
    is_retryable,
    reply_reader,
    request_reader,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

REQUEST_CLASSES: tuple[type, ...] = Request.__args__  # type: ignore[attr-defined]
REPLY_CLASSES: tuple[type, ...] = Reply.__args__  # type: ignore[attr-defined]

# ---------------------------------------------------------------------------
# Sample messages: every class, every defaulted field set to something else
# ---------------------------------------------------------------------------

REQUEST_SAMPLES: list[Any] = [
    Init(id="init-1", protocol_version=1, log_level="warning", max_frame_size=32 * 1024 * 1024),
    Load(
        id=2,
        model_path="/models/tiny model ✓.gguf",
        n_ctx=2048,
        n_threads=4,
        n_gpu_layers=-1,
        seed=42,
        chat_format="chatml",
        system_prompt="Be brief.",
        use_extra_bufts=False,
        n_batch=256,
        flash_attn=True,
        session_cache_bytes=1 << 30,
    ),
    Generate(
        id="g-3",
        input=[
            ChatMessage(role="system", content="You are terse."),
            ChatMessage(role="user", content='héllo ✓ "quoted" \\ back\nslash \u0000 nul 🦙'),
            ChatMessage(role="assistant", content="Hi."),
            ChatMessage(role="user", content="Again?"),
        ],
        max_tokens=7,
        temperature=0.0,
        top_p=0.5,
        stop=["\n\n", "END", "<|im_end|>"],
        top_k=0,
        min_p=0.1,
        repeat_penalty=1.3,
        seed=0xFFFFFFFE,
        mode="completion",
        session="notes ✓",
        response_format=ResponseFormat(type="json_schema", schema={"type": "object", "properties": {"a": {"type": "integer"}}}),
        reasoning=Reasoning(enabled=False, budget_tokens=0, effort="high", keep_in_history=True),
    ),
    Generate(id=-1, input="plain string input", max_tokens=1, temperature=1.5, top_p=1.0, stop=["x"], seed=0),
    Generate(
        id="t-1",
        input=[
            ChatMessage(role="user", content="Time in Oslo?"),
            ChatMessage(role="assistant", content="", tool_calls=[ToolCall(id="call_1", name="get_time", arguments={"city": "Oslo"})]),
            ChatMessage(role="tool", content="12:00", tool_call_id="call_1", name="get_time"),
        ],
        tools=[Tool(name="get_time", description="The time in a city", parameters={"type": "object", "properties": {"city": {"type": "string"}}})],
        tool_choice=NamedToolChoice(name="get_time"),
        parallel_tool_calls=False,
    ),
    Generate(id="t-2", input="Hi", tools=[Tool(name="noop")], tool_choice="required"),
    Abort(id=4, target="g-3"),
    Abort(id="a-5", target=3),
    EndReasoning(id=5, target="g-3"),
    EndReasoning(id="e-6"),
    Reset(id=6, system_prompt=""),
    Reset(
        id=7,
        system_prompt="New persona",
        session="s2",
        history=[ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", content="Hello", reasoning="A greeting.")],
    ),
    Preload(id=8, session="notes", input="Summarise the meet", max_tokens=64),
    Preload(id="p-9", input=[ChatMessage(role="user", content="Hi")]),
    Sessions(id=10),
    CloseSession(id=11, session="notes"),
    SaveSession(id=12, session="notes", path="~/x.session"),
    RestoreSession(id=13, session="notes", path="/tmp/x.session"),
    Tokenize(id=14, text="Hello ✓ <|im_start|>", special=True),
    Detokenize(id=15, ids=[1, 2, 3], special=True),
    Count(id=16, session="notes", input="And then?"),
    Count(id=17, input=[ChatMessage(role="user", content="Hi")]),
    Ping(id=0),
    Ping(id="ping-🦙"),
    Cleanup(id="c"),
]

MODEL_INFO = ModelInfo(
    path="/models/x.gguf",
    name="SmolLM2 135M",
    architecture="llama",
    size_bytes=10_000_000_000,
    n_ctx=4096,
    n_ctx_train=8192,
    chat_format="chatml",
    chat_format_source="detected",
    n_params=135_000_000,
    n_threads=8,
    n_gpu_layers=99,
    use_extra_bufts=False,
    system_prompt_mode="merged",
    session_cache_bytes=123456,
    backends=["CUDA", "CPU"],
    n_layer=30,
    gpu_layers_offloaded=31,
    reasoning="harmony",
    reasoning_can_disable=True,
    tool_format="hermes",
)

SESSION_INFO = SessionInfo(session="notes", messages=4, tokens=131, kv_cached=True, active=False, kv_bytes=3_000_000, system_prompt="Be brief.")

REPLY_SAMPLES: list[Any] = [
    Ready(
        id="init-1",
        protocol_version=1,
        worker_version="0.1.0",
        llama_cpp_version="0.3.36",
        pid=1234,
        capabilities=["chat", "completion", "abort"],
        max_frame_size=16 * 1024 * 1024,
    ),
    Progress(id=2, fraction=0.25),
    Progress(id=2, fraction=1.0),
    Loaded(id=2, model=MODEL_INFO, load_ms=12.5),
    Chunk(id="g-3", text="hé\n🦙"),
    Chunk(id="g-3", text="", reasoning="The user greets; "),
    Done(
        id="g-3",
        text="Hi there",
        stop_reason="stop_sequence",
        usage=Usage(prompt_tokens=10, cached_tokens=4, completion_tokens=3, reasoning_tokens=1),
        timings=Timings(ttft_ms=1.5, total_ms=20.25, tokens_per_second=33.3, prompt_ms=0.75),
        truncated_messages=2,
        seed=123,
        incomplete=True,
        reasoning="The user greets; ",
        tool_calls=[ToolCall(id="call_1", name="get_time", arguments={"city": "Oslo", "nested": [1, {"a": None}]})],
    ),
    ToolCallEvent(id="g-3", index=0, call=ToolCall(id="call_1", name="get_time", arguments={"city": "Oslo"})),
    Ok(id=4),
    Pong(id="ping-🦙"),
    Error(id=None, code=ErrorCode.BAD_FRAME, message="payload is not valid JSON", retryable=False),
    Error(id="g-3", code=ErrorCode.BUSY, message="a generation is running", retryable=True),
    Log(level="error", message="something critical"),
    SessionList(id=10, sessions=[SESSION_INFO], cache_bytes=3_000_000, cache_budget_bytes=1 << 30),
    Preloaded(id=8, session="notes", prompt_tokens=40, cached_tokens=30, complete=False),
    Saved(id=12, path="/root/x.session", bytes=4_000_000, session=SESSION_INFO),
    Restored(id=13, session=SESSION_INFO, history=[ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", content="Hello")]),
    Tokens(id=14, ids=[1, 2, 3], count=3),
    Text(id=15, text="Hello ✓"),
    TokenCount(id=16, session="notes", tokens=212, n_ctx=4096),
]


def _ids(samples: list[Any]) -> list[str]:
    return [f"{type(m).__name__}-{i}" for i, m in enumerate(samples)]


def _non_default_fields_missing(samples: list[Any]) -> list[str]:
    """Defaulted fields that no sample sets to a non-default value."""
    missing = []
    by_class: dict[type, list[Any]] = {}
    for m in samples:
        by_class.setdefault(type(m), []).append(m)
        if isinstance(m, Loaded):
            by_class.setdefault(ModelInfo, []).append(m.model)
        if isinstance(m, Done):
            by_class.setdefault(Timings, []).append(m.timings)
            by_class.setdefault(Usage, []).append(m.usage)
        if isinstance(m, Generate) and m.reasoning is not None:
            by_class.setdefault(Reasoning, []).append(m.reasoning)
        if isinstance(m, Reset):
            by_class.setdefault(ChatMessage, []).extend(m.history or [])
        if isinstance(m, Generate):
            by_class.setdefault(ChatMessage, []).extend(m.input if isinstance(m.input, list) else [])
            by_class.setdefault(Tool, []).extend(m.tools or [])
    for cls, instances in by_class.items():
        for f in msgspec.structs.fields(cls):
            if f.required:
                continue
            if cls is Log and f.name == "id":  # always null by definition
                continue
            default = f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
            if all(getattr(inst, f.name) == default for inst in instances):
                missing.append(f"{cls.__name__}.{f.name}")
    return missing


def test_samples_cover_every_message_class_and_non_default_field():
    assert {type(m) for m in REQUEST_SAMPLES} == set(REQUEST_CLASSES)
    assert {type(m) for m in REPLY_SAMPLES} == set(REPLY_CLASSES)
    assert _non_default_fields_missing(REQUEST_SAMPLES + REPLY_SAMPLES) == []


def test_message_type_tags_are_the_pinned_ones():
    assert {"init", "load", "generate", "abort", "reset", "ping", "cleanup"} <= REQUEST_TYPES
    assert {"ready", "progress", "loaded", "chunk", "done", "ok", "pong", "error"} <= REPLY_TYPES
    assert not (REQUEST_TYPES & REPLY_TYPES)


def test_error_codes_are_the_pinned_ones():
    assert {c.value for c in ErrorCode} >= {
        "bad_frame", "frame_too_large", "invalid_request", "unknown_type", "protocol_mismatch",
        "not_initialized", "no_model", "busy", "model_not_found", "load_failed",
        "context_overflow", "aborted", "generation_failed", "internal",
    }
    assert is_retryable(ErrorCode.BUSY) and not is_retryable(ErrorCode.BAD_FRAME)


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("message", REQUEST_SAMPLES, ids=_ids(REQUEST_SAMPLES))
def test_request_round_trip(message):
    data = encode(message)
    payload = data[HEADER_SIZE:]
    assert int.from_bytes(data[:HEADER_SIZE], "big") == len(payload)
    obj = json.loads(payload.decode("utf-8"))
    assert obj["type"] == type(message).__struct_config__.tag
    decoded = decode_request(payload)
    assert type(decoded) is type(message)
    assert decoded == message
    (via_reader,) = request_reader().feed(data)
    assert via_reader == message


@pytest.mark.parametrize("message", REPLY_SAMPLES, ids=_ids(REPLY_SAMPLES))
def test_reply_round_trip(message):
    data = encode(message)
    payload = data[HEADER_SIZE:]
    assert int.from_bytes(data[:HEADER_SIZE], "big") == len(payload)
    decoded = decode_reply(payload)
    assert type(decoded) is type(message)
    assert decoded == message
    (via_reader,) = reply_reader().feed(data)
    assert via_reader == message


@pytest.mark.parametrize("reason", ["eos", "stop_sequence", "max_tokens", "aborted", "context_full"])
def test_every_stop_reason_round_trips(reason):
    done = Done(
        id=1, text="", stop_reason=reason,
        usage=Usage(prompt_tokens=1, cached_tokens=0, completion_tokens=0),
        timings=Timings(ttft_ms=0.0, total_ms=1.0, tokens_per_second=0.0),
    )
    assert decode_reply(encode(done)[HEADER_SIZE:]) == done


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_round_trips(code):
    err = Error(id=5, code=code, message=f"m {code}", retryable=is_retryable(code))
    decoded = decode_reply(encode(err)[HEADER_SIZE:])
    assert decoded == err
    assert json.loads(encode(err)[HEADER_SIZE:])["code"] == code.value


@pytest.mark.parametrize("message", REPLY_SAMPLES[:3], ids=_ids(REPLY_SAMPLES[:3]))
def test_reply_sent_to_the_worker_is_unknown_type(message):
    with pytest.raises(ProtocolError) as info:
        decode_request(encode(message)[HEADER_SIZE:])
    assert info.value.code == ErrorCode.UNKNOWN_TYPE
    assert info.value.request_id == message.id
    with pytest.raises(ProtocolError) as info:
        decode_reply(encode(REQUEST_SAMPLES[0])[HEADER_SIZE:])
    assert info.value.code == ErrorCode.UNKNOWN_TYPE
    assert info.value.request_id == "init-1"


# ---------------------------------------------------------------------------
# Framing: the header, and incremental decoding on any chunking
# ---------------------------------------------------------------------------


def test_header_is_four_byte_big_endian_hex_dump():
    data = encode(Ping(id=1))
    payload = b'{"type":"ping","id":1}'
    assert len(payload) == 22
    assert data.hex() == "00000016" + payload.hex()
    assert data == bytes.fromhex("00 00 00 16") + payload
    assert HEADER_SIZE == 4
    assert DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024


def test_header_byte_order_for_a_multi_byte_length():
    payload = b"x" * 0x0102
    assert frame(payload)[:4] == b"\x00\x00\x01\x02"
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame(b"") == b"\x00\x00\x00\x00"
    chunk = Chunk(id=1, text="y" * 70000)
    data = encode(chunk)
    assert data[:4] == (len(data) - 4).to_bytes(4, "big")
    assert data[1] == (len(data) - 4) >> 16  # not little-endian


def _feed_all(reader, chunks):
    out = []
    for c in chunks:
        out.extend(reader.feed(c))
    return out


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


REQUEST_STREAM = b"".join(encode(m) for m in REQUEST_SAMPLES)
REPLY_STREAM = b"".join(encode(m) for m in REPLY_SAMPLES)


@pytest.mark.parametrize(
    ("make_reader", "stream", "expected"),
    [(request_reader, REQUEST_STREAM, REQUEST_SAMPLES), (reply_reader, REPLY_STREAM, REPLY_SAMPLES)],
    ids=["requests", "replies"],
)
def test_stream_fed_one_byte_at_a_time(make_reader, stream, expected):
    reader = make_reader()
    out = []
    for i in range(len(stream)):
        out.extend(reader.feed(stream[i : i + 1]))
    assert out == expected
    assert reader.buffered == 0
    assert reader.failed is None


@pytest.mark.parametrize(
    ("make_reader", "stream", "expected"),
    [(request_reader, REQUEST_STREAM, REQUEST_SAMPLES), (reply_reader, REPLY_STREAM, REPLY_SAMPLES)],
    ids=["requests", "replies"],
)
def test_stream_fed_all_at_once(make_reader, stream, expected):
    reader = make_reader()
    assert reader.feed(stream) == expected
    assert reader.buffered == 0
    assert reader.feed(b"") == []


@pytest.mark.parametrize("seed", range(20))
def test_stream_fed_in_random_splits(seed):
    rng = random.Random(seed)
    stream = REQUEST_STREAM * 3
    cuts = [rng.randrange(len(stream) + 1) for _ in range(rng.randrange(1, 40))]
    chunks = _split(stream, cuts)
    kinds = [bytes, bytearray, memoryview]
    chunks = [kinds[rng.randrange(3)](c) for c in chunks]
    assert _feed_all(request_reader(), chunks) == REQUEST_SAMPLES * 3


def test_partial_frame_is_buffered_until_complete():
    data = encode(Ping(id="p"))
    reader = request_reader()
    assert reader.feed(data[:2]) == []
    assert reader.buffered == 2
    assert reader.feed(data[2:-1]) == []
    assert reader.buffered == len(data) - 1
    assert reader.feed(data[-1:]) == [Ping(id="p")]
    assert reader.buffered == 0


def test_large_stream_across_compaction_boundary():
    # Many small frames and reads that end mid-frame: exercises the buffer
    # compaction path (consumed prefix > 64 KiB) without losing alignment.
    messages = [Ping(id=i) for i in range(10000)]
    stream = b"".join(encode(m) for m in messages)
    assert len(stream) > 3 * 65536
    chunks = _split(stream, [70001, 140003, 140004, 200007])
    assert _feed_all(request_reader(), chunks) == messages


def test_frame_decoder_returns_raw_payloads():
    dec = FrameDecoder(max_size=10)
    assert dec.feed(frame(b"0123456789") + frame(b"") + frame(b"ab")[:3]) == [b"0123456789", b""]
    assert dec.buffered == 3
    assert dec.feed(frame(b"ab")[3:]) == [b"ab"]
    with pytest.raises(ValueError):
        FrameDecoder(max_size=0)


# ---------------------------------------------------------------------------
# Oversized frames: fatal, detected from the header alone
# ---------------------------------------------------------------------------


def test_oversized_length_is_fatal_as_soon_as_the_header_arrives():
    reader = request_reader(max_frame_size=100)
    header = (101).to_bytes(4, "big")
    assert reader.feed(header[:1]) == []
    assert reader.feed(header[1:3]) == []
    (err,) = reader.feed(header[3:])  # no payload byte sent yet
    assert isinstance(err, ProtocolError)
    assert err.code == ErrorCode.FRAME_TOO_LARGE
    assert err.fatal is True
    assert err.request_id is None
    assert "101" in err.message
    assert reader.failed is err
    # Nothing more comes out, whatever follows.
    assert reader.feed(b"x" * 101) == []
    assert reader.feed(encode(Ping(id=1))) == []
    assert reader.buffered == 0


def test_oversized_length_with_default_maximum():
    reader = request_reader()
    (err,) = reader.feed(b"\xff\xff\xff\xff")
    assert err.code == ErrorCode.FRAME_TOO_LARGE and err.fatal
    (err2,) = request_reader().feed((DEFAULT_MAX_FRAME_SIZE + 1).to_bytes(4, "big"))
    assert err2.code == ErrorCode.FRAME_TOO_LARGE and err2.fatal


def test_frame_of_exactly_the_maximum_size_is_accepted():
    payload = encode(Ping(id=12345))[HEADER_SIZE:]
    reader = request_reader(max_frame_size=len(payload))
    assert reader.feed(frame(payload)) == [Ping(id=12345)]
    (err,) = request_reader(max_frame_size=len(payload) - 1).feed(frame(payload))
    assert err.code == ErrorCode.FRAME_TOO_LARGE


def test_good_frames_before_a_fatal_one_in_the_same_feed_are_returned():
    reader = request_reader(max_frame_size=64)
    data = encode(Ping(id=1)) + frame(b"not json") + encode(Ping(id=2)) + (65).to_bytes(4, "big") + encode(Ping(id=3))
    out = reader.feed(data)
    assert len(out) == 4
    assert out[0] == Ping(id=1)
    assert isinstance(out[1], ProtocolError) and out[1].code == ErrorCode.BAD_FRAME and not out[1].fatal
    assert out[2] == Ping(id=2)
    assert isinstance(out[3], ProtocolError) and out[3].code == ErrorCode.FRAME_TOO_LARGE and out[3].fatal
    assert reader.feed(encode(Ping(id=4))) == []


# ---------------------------------------------------------------------------
# Unreadable payloads: bad_frame, recoverable
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b"{not json}", b'{"type":"ping","id":1', b'{"type":"ping","id":1} trailing', b"nul", b"\x00"],
)
def test_invalid_json_is_bad_frame_and_stream_stays_aligned(payload):
    reader = request_reader()
    out = reader.feed(frame(payload) + encode(Ping(id="after")))
    assert len(out) == 2
    err, good = out
    assert isinstance(err, ProtocolError)
    assert err.code == ErrorCode.BAD_FRAME
    assert err.fatal is False
    assert err.request_id is None
    assert good == Ping(id="after")
    assert reader.failed is None
    with pytest.raises(ProtocolError) as info:
        decode_request(payload)
    assert info.value.code == ErrorCode.BAD_FRAME


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",
        b'{"type":"ping","id":"\xc3("}',
        b'{"type":"ping","id":1,"extra":"\xff\xfe"}',  # inside an unknown field msgspec skips
        b'{"type":"ping","id":1,"extra":{"deep":["\xed\xa0\x80"]}}',  # encoded surrogate
        b'{"type":"generate","id":1,"input":"caf\xe9"}',  # latin-1, not UTF-8
    ],
)
def test_invalid_utf8_is_bad_frame(payload):
    reader = request_reader()
    err, good = reader.feed(frame(payload) + encode(Ping(id=2)))
    assert isinstance(err, ProtocolError)
    assert err.code == ErrorCode.BAD_FRAME
    assert not err.fatal
    assert good == Ping(id=2)
    with pytest.raises(ProtocolError) as info:
        decode_reply(payload)
    assert info.value.code == ErrorCode.BAD_FRAME


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type":"bogus","id":3} trailing garbage',
        b'{"type":"ping","id":true,',
        b'{"type":"generate","id":1,"input":"x","max_tokens":"a"',
        b"[[[",
    ],
)
def test_malformed_json_is_bad_frame_even_after_a_schema_violation(payload):
    with pytest.raises(ProtocolError) as info:
        decode_request(payload)
    assert info.value.code == ErrorCode.BAD_FRAME


# ---------------------------------------------------------------------------
# Readable JSON that is not a valid message: invalid_request / unknown_type
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"[1, 2]", b'"ping"', b"3", b"null", b"true", b'[{"type":"ping","id":1}]', b"[]"],
)
def test_json_that_is_not_an_object_is_invalid_request_without_id(payload):
    reader = request_reader()
    err, good = reader.feed(frame(payload) + encode(Ping(id=1)))
    assert isinstance(err, ProtocolError)
    assert err.code == ErrorCode.INVALID_REQUEST
    assert err.request_id is None
    assert not err.fatal
    assert good == Ping(id=1)


@pytest.mark.parametrize(
    ("payload", "rid"),
    [
        (b'{"id":7}', 7),
        (b'{"id":"abc","type":5}', "abc"),
        (b'{"type":null,"id":"n"}', "n"),
        (b'{"type":["ping"],"id":-3}', -3),
        (b'{"type":{"x":1},"id":1.5}', None),  # a float id is not readable
        (b'{"id":true}', None),
        (b"{}", None),
    ],
)
def test_object_without_string_type_is_invalid_request_with_readable_id(payload, rid):
    for decode in (decode_request, decode_reply):
        with pytest.raises(ProtocolError) as info:
            decode(payload)
        assert info.value.code == ErrorCode.INVALID_REQUEST
        assert info.value.request_id == rid
        assert type(info.value.request_id) is type(rid)
        assert not info.value.fatal


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"type": "generate", "id": 11, "input": "hi", "max_tokens": "lots"}, "max_tokens"),
        ({"max_tokens": 2.5, "type": "generate", "input": "hi", "id": 11}, "max_tokens"),
        ({"type": "generate", "id": 11, "input": "hi", "max_tokens": 0}, "max_tokens"),
        ({"type": "generate", "id": 11, "input": "hi", "temperature": "hot"}, "temperature"),
        ({"type": "generate", "id": 11, "input": "hi", "top_p": 1.5}, "top_p"),
        ({"type": "generate", "id": 11, "input": "hi", "stop": "END"}, "stop"),
        ({"type": "generate", "id": 11, "input": "hi", "stop": [""]}, "stop"),
        ({"type": "generate", "id": 11, "input": "hi", "mode": "poetry"}, "mode"),
        ({"type": "generate", "id": 11, "input": "hi", "seed": -1}, "seed"),
        ({"type": "generate", "id": 11, "input": 5}, "input"),
        ({"type": "generate", "id": 11, "input": [{"role": "robot", "content": "x"}]}, "role"),
        ({"type": "generate", "id": 11, "input": [{"role": "user"}]}, "content"),
        ({"type": "generate", "id": 11}, "input"),
        ({"type": "init", "id": "i", "protocol_version": "1"}, "protocol_version"),
        ({"type": "load", "id": "l", "n_ctx": "big"}, "n_ctx"),
        ({"type": "load", "id": "l", "n_threads": 0}, "n_threads"),
        ({"type": "load", "id": "l", "model_path": 3}, "model_path"),
        ({"type": "abort", "id": 9, "target": [1]}, "target"),
        ({"type": "reset", "id": 9, "system_prompt": False}, "system_prompt"),
    ],
)
def test_wrong_field_type_is_invalid_request_naming_the_field(obj, field):
    payload = json.dumps(obj).encode()
    reader = request_reader()
    err, good = reader.feed(frame(payload) + encode(Ping(id="next")))
    assert isinstance(err, ProtocolError)
    assert err.code == ErrorCode.INVALID_REQUEST
    assert field in err.message
    assert err.request_id == obj["id"]
    assert not err.fatal
    assert good == Ping(id="next")


@pytest.mark.parametrize("bad_id", [True, 1.5, None, [1], {"a": 1}])
def test_unreadable_id_is_invalid_request_with_null_id(bad_id):
    with pytest.raises(ProtocolError) as info:
        decode_request(json.dumps({"type": "ping", "id": bad_id}).encode())
    assert info.value.code == ErrorCode.INVALID_REQUEST
    assert info.value.request_id is None
    assert "id" in info.value.message


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"type": "done", "id": 1, "text": "", "stop_reason": "bored", "usage": {}, "timings": {}}, "stop_reason"),
        ({"type": "progress", "id": 1, "fraction": "half"}, "fraction"),
        ({"type": "error", "id": 1, "code": "no_such_code", "message": "m", "retryable": False}, "code"),
        ({"type": "ready", "id": 1, "protocol_version": 1, "worker_version": "v", "llama_cpp_version": "v",
          "pid": 1, "capabilities": "all"}, "capabilities"),
    ],
)
def test_wrong_field_type_in_a_reply_is_invalid_request(obj, field):
    with pytest.raises(ProtocolError) as info:
        decode_reply(json.dumps(obj).encode())
    assert info.value.code == ErrorCode.INVALID_REQUEST
    assert field in info.value.message
    assert info.value.request_id == 1


@pytest.mark.parametrize(
    ("obj", "rid"),
    [
        ({"type": "frobnicate", "id": 9}, 9),
        ({"id": "u-1", "type": "generate_v2", "input": "x"}, "u-1"),
        ({"type": "pong", "id": 3}, 3),  # a reply's type is unknown to the worker
        ({"type": "frobnicate"}, None),
        ({"type": "frobnicate", "id": False}, None),
        ({"type": "frobnicate", "id": {"nested": 1}}, None),
        ({"type": "", "id": 2}, 2),
        ({"type": "PING", "id": 2}, 2),  # tags are case-sensitive
    ],
)
def test_unknown_type_with_and_without_readable_id(obj, rid):
    reader = request_reader()
    err, good = reader.feed(frame(json.dumps(obj).encode()) + encode(Ping(id=1)))
    assert isinstance(err, ProtocolError)
    assert err.code == ErrorCode.UNKNOWN_TYPE
    assert err.request_id == rid
    assert not err.fatal
    assert good == Ping(id=1)


def test_unknown_type_in_replies():
    with pytest.raises(ProtocolError) as info:
        decode_reply(b'{"type":"telemetry","id":"t"}')
    assert info.value.code == ErrorCode.UNKNOWN_TYPE
    assert info.value.request_id == "t"
    with pytest.raises(ProtocolError) as info:
        decode_reply(b'{"type":"generate","input":"x"}')
    assert info.value.code == ErrorCode.UNKNOWN_TYPE
    assert info.value.request_id is None


def test_unknown_extra_fields_are_ignored():
    obj = {
        "type": "generate",
        "id": 1,
        "future_field": {"nested": [1, 2, {"x": None}]},
        "input": [{"role": "user", "content": "hi", "nickname": "bob", "extra": [1]}],
        "x": None,
        "max_tokens": 9,
    }
    assert decode_request(json.dumps(obj).encode()) == Generate(
        id=1, input=[ChatMessage(role="user", content="hi")], max_tokens=9
    )
    done = {
        "type": "done", "id": "d", "text": "t", "stop_reason": "eos", "new_top_level": True,
        "usage": {"prompt_tokens": 1, "cached_tokens": 0, "completion_tokens": 2, "future_tokens": 7},
        "timings": {"ttft_ms": 1.0, "total_ms": 2.0, "tokens_per_second": 3.0, "queue_ms": 4.0},
    }
    decoded = decode_reply(json.dumps(done).encode())
    assert isinstance(decoded, Done)
    assert decoded.usage == Usage(prompt_tokens=1, cached_tokens=0, completion_tokens=2)
    assert decoded.timings == Timings(ttft_ms=1.0, total_ms=2.0, tokens_per_second=3.0)
    assert decode_request(b'{"id":5,"zzz":"\\u00e9","type":"ping"}') == Ping(id=5)


def test_generate_defaults():
    msg = decode_request(b'{"type":"generate","id":"g","input":"hi"}')
    assert isinstance(msg, Generate)
    assert msg.max_tokens == 512
    assert msg.temperature == 0.8
    assert msg.top_p == 0.95
    assert msg.stop == []
    assert msg.mode == "chat"
    assert (msg.top_k, msg.min_p, msg.repeat_penalty, msg.seed) == (None, None, None, None)
    # The mutable default is not shared between instances.
    other = Generate(id=2, input="x")
    other.stop.append("zzz")
    assert decode_request(b'{"type":"generate","id":"g","input":"hi"}').stop == []


def test_optional_fields_accept_null():
    msg = decode_request(b'{"type":"load","id":1,"model_path":null,"n_ctx":null,"seed":null}')
    assert msg == Load(id=1)
    assert decode_request(b'{"type":"abort","id":1,"target":null}') == Abort(id=1)
    assert decode_request(b'{"type":"abort","id":1}').target is None


def test_request_ids_keep_their_json_type():
    assert decode_request(b'{"type":"ping","id":"1"}').id == "1"
    assert decode_request(b'{"type":"ping","id":1}').id == 1
    assert type(decode_request(b'{"type":"ping","id":1}').id) is int


# ---------------------------------------------------------------------------
# Hypothesis: nothing but messages and ProtocolError, on any input
# ---------------------------------------------------------------------------

_ALL_STRUCTS = (*REQUEST_CLASSES, *REPLY_CLASSES, ChatMessage, ModelInfo, Usage, Timings)
FIELD_NAMES = sorted({f.name for cls in _ALL_STRUCTS for f in msgspec.structs.fields(cls)})
ALL_TAGS = sorted(REQUEST_TYPES | REPLY_TYPES)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["user", "system", "assistant", "chat", "completion", "eos", "busy", "info"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=6)), inner, max_size=4),
    ),
    max_leaves=10,
)


@st.composite
def message_like_objects(draw) -> Any:
    obj: dict[str, Any] = {}
    if draw(st.booleans()):
        obj["type"] = draw(st.one_of(st.sampled_from(ALL_TAGS), st.text(max_size=8), json_values))
    if draw(st.booleans()):
        obj["id"] = draw(st.one_of(st.integers(), st.text(max_size=8), json_values))
    extra = draw(st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=6)), json_values, max_size=5))
    for k, v in extra.items():
        obj.setdefault(k, v)
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # sometimes not an object at all
    return obj


def _json_bytes(obj: Any, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8")


@st.composite
def payloads(draw) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=48))
    if kind == 1:
        return encode(draw(st.sampled_from(REQUEST_SAMPLES + REPLY_SAMPLES)))[HEADER_SIZE:]
    data = _json_bytes(draw(message_like_objects()), draw(st.booleans()))
    if kind == 2:
        return data
    # Corrupt well-formed-looking JSON: cut it, or splice bytes in.
    pos = draw(st.integers(0, len(data)))
    if kind == 3:
        return data[:pos]
    return data[:pos] + draw(st.binary(min_size=1, max_size=4)) + data[pos:]


def _outcome(item: Any) -> tuple:
    if isinstance(item, ProtocolError):
        return ("error", item.code, item.request_id, item.fatal, item.message)
    return ("message", item)


def _direct(decode, payload: bytes) -> tuple:
    try:
        return _outcome(decode(payload))
    except ProtocolError as exc:
        return _outcome(exc)


def _check_error_is_reportable(err: ProtocolError) -> None:
    """Whatever error the decoder produces can be sent back as an `error` reply."""
    reply = Error(id=err.request_id, code=err.code, message=err.message, retryable=is_retryable(err.code))
    assert decode_reply(encode(reply)[HEADER_SIZE:]) == reply


READERS = [
    (request_reader, decode_request, REQUEST_CLASSES),
    (reply_reader, decode_reply, REPLY_CLASSES),
]

_HYPO = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_HYPO
@given(frames=st.lists(payloads(), max_size=8), data=st.data())
def test_any_sequence_of_frames_in_any_chunking(frames, data):
    stream = b"".join(frame(p) for p in frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    chunks = _split(stream, cuts)
    for make_reader, decode, classes in READERS:
        reader = make_reader()
        out = _feed_all(reader, chunks)
        # One item per frame, in order, each what decoding the payload alone gives:
        # the stream never loses alignment on a recoverable error.
        assert len(out) == len(frames)
        assert [_outcome(x) for x in out] == [_direct(decode, p) for p in frames]
        for item in out:
            assert isinstance(item, (ProtocolError, *classes))
            if isinstance(item, ProtocolError):
                assert not item.fatal
                assert item.code in (ErrorCode.BAD_FRAME, ErrorCode.INVALID_REQUEST, ErrorCode.UNKNOWN_TYPE)
                _check_error_is_reportable(item)
            else:
                # A decoded message re-encodes to the same message.
                assert decode(encode(item)[HEADER_SIZE:]) == item
        assert reader.buffered == 0
        assert reader.failed is None


@_HYPO
@given(stream=st.binary(max_size=400), max_size=st.one_of(st.none(), st.integers(1, 64)), data=st.data())
def test_arbitrary_bytes_in_any_chunking(stream, max_size, data):
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    chunks = _split(stream, cuts)
    for make_reader, _decode, classes in READERS:
        kwargs = {} if max_size is None else {"max_frame_size": max_size}
        reader = make_reader(**kwargs)
        out = _feed_all(reader, chunks)
        for i, item in enumerate(out):
            assert isinstance(item, (ProtocolError, *classes))
            if isinstance(item, ProtocolError):
                assert item.fatal == (item.code == ErrorCode.FRAME_TOO_LARGE)
                if item.fatal:
                    assert i == len(out) - 1
                    assert reader.failed is item
                    assert reader.feed(b"\x00\x00\x00\x02{}") == []
                _check_error_is_reportable(item)
        # The chunking does not change the result.
        assert [_outcome(x) for x in out] == [_outcome(x) for x in make_reader(**kwargs).feed(stream)]


@_HYPO
@given(prefix=st.lists(st.sampled_from(REQUEST_SAMPLES), max_size=4), garbage=st.binary(max_size=64), data=st.data())
def test_well_formed_frames_then_garbage(prefix, garbage, data):
    stream = b"".join(encode(m) for m in prefix) + garbage
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts")
    out = _feed_all(request_reader(max_frame_size=4096), _split(stream, cuts))
    assert out[: len(prefix)] == prefix
    for item in out[len(prefix) :]:
        assert isinstance(item, (ProtocolError, *REQUEST_CLASSES))


@_HYPO
@given(payload=st.one_of(st.binary(max_size=200), payloads()))
def test_decode_functions_raise_only_protocol_error(payload):
    for decode, classes in ((decode_request, REQUEST_CLASSES), (decode_reply, REPLY_CLASSES)):
        try:
            msg = decode(payload)
        except ProtocolError as exc:
            assert exc.code in (ErrorCode.BAD_FRAME, ErrorCode.INVALID_REQUEST, ErrorCode.UNKNOWN_TYPE)
            assert not exc.fatal
            if exc.code == ErrorCode.BAD_FRAME:
                assert exc.request_id is None
        else:
            assert isinstance(msg, classes)


def test_deeply_nested_json_is_a_protocol_error():
    for payload in (b"[" * 100_000 + b"]" * 100_000, b'{"type":"ping","id":1,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        for decode in (decode_request, decode_reply):
            with pytest.raises(ProtocolError) as info:
                decode(payload)
            assert info.value.code in (ErrorCode.BAD_FRAME, ErrorCode.INVALID_REQUEST)


# ---------------------------------------------------------------------------
# schema.json
# ---------------------------------------------------------------------------


def test_schema_check_command_passes():
    schema_path = REPO_ROOT / "protocol" / "schema.json"
    before = schema_path.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "protocol.schema", "--check"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert schema_path.read_bytes() == before  # --check never writes


def test_schema_check_command_fails_on_a_stale_file(tmp_path):
    # Run against a copy of the package (cwd comes first on sys.path with -m),
    # so the real schema.json is never touched.
    shutil.copytree(REPO_ROOT / "protocol", tmp_path / "protocol", ignore=shutil.ignore_patterns("__pycache__"))
    stale = tmp_path / "protocol" / "schema.json"
    stale.write_text(stale.read_text(encoding="utf-8").replace('"default": 512', '"default": 511'), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "protocol.schema", "--check"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert "stale" in proc.stderr
    assert str(tmp_path) in proc.stderr  # it really checked the copy


def test_schema_json_parses_and_defines_every_message():
    schema = json.loads((REPO_ROOT / "protocol" / "schema.json").read_text(encoding="utf-8"))
    defs = schema["$defs"]
    names = {cls.__name__ for cls in _ALL_STRUCTS}
    assert names <= set(defs)
    assert {"HostMessage", "WorkerMessage"} <= set(defs)
    generate = defs["Generate"]["properties"]
    assert generate["max_tokens"]["default"] == 512
    assert generate["temperature"]["default"] == 0.8
    assert generate["top_p"]["default"] == 0.95
    assert generate["stop"]["default"] == []
    assert generate["mode"]["default"] == "chat"
    assert set(defs["ErrorCode"]["enum"]) == {c.value for c in ErrorCode}
    # Every tag of each direction is reachable from its union.
    host_refs = json.dumps(defs["HostMessage"])
    for cls in REQUEST_CLASSES:
        assert f"#/$defs/{cls.__name__}" in host_refs
    worker_refs = json.dumps(defs["WorkerMessage"])
    for cls in REPLY_CLASSES:
        assert f"#/$defs/{cls.__name__}" in worker_refs


def test_package_exports():
    for name in protocol.__all__:
        assert hasattr(protocol, name), name
