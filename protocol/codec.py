"""Payloads to messages and back.

Decoding sorts every failure into exactly one of the protocol's kinds, because
the worker's answer depends on it:

- unreadable payload (invalid UTF-8, not JSON): `bad_frame`, id null; the
  stream is still aligned, so the worker goes on;
- readable JSON that is not a valid message: `invalid_request` or
  `unknown_type`, carrying the request's id when one can be read;
- an oversized length (see `framing`): `frame_too_large`, fatal.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from .errors import ErrorCode, ProtocolError
from .framing import DEFAULT_MAX_FRAME_SIZE, HEADER, HEADER_SIZE, FrameDecoder
from .messages import REPLY_TYPES, REQUEST_TYPES, Reply, Request

M = TypeVar("M")

_encoder = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    """One message as a whole frame: length prefix and JSON payload."""
    buf = bytearray(HEADER_SIZE)
    _encoder.encode_into(message, buf, HEADER_SIZE)
    HEADER.pack_into(buf, 0, len(buf) - HEADER_SIZE)
    return bytes(buf)


def _readable_id(obj: Any) -> int | str | None:
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, (int, str)) and not isinstance(rid, bool):
            return rid
    return None


class MessageDecoder(Generic[M]):
    """Validating decoder for one direction of the protocol."""

    def __init__(self, union: Any, known_types: frozenset[str], *, side: str) -> None:
        self._decoder: msgspec.json.Decoder[M] = msgspec.json.Decoder(union)
        self._known_types = known_types
        self._side = side

    def decode(self, payload: bytes) -> M:
        """Decode one payload or raise `ProtocolError` (never another exception)."""
        try:
            # msgspec does not check UTF-8 inside values it skips (unknown
            # fields), but the protocol says every payload is UTF-8: check all.
            payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"payload is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
        try:
            return self._decoder.decode(payload)
        except msgspec.ValidationError as exc:
            raise self._classify(payload, str(exc)) from None
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"payload is not valid JSON: {exc}") from None

    def _classify(self, payload: bytes, detail: str) -> ProtocolError:
        # Only reached on the error path, so a second, untyped parse is fine.
        try:
            obj = msgspec.json.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            # The typed decoder stops at the first schema violation, before it
            # has read the whole payload; the JSON may still be broken later.
            return ProtocolError(ErrorCode.BAD_FRAME, f"payload is not valid JSON: {exc}")
        rid = _readable_id(obj)
        if not isinstance(obj, dict):
            return ProtocolError(ErrorCode.INVALID_REQUEST, f"a frame must hold a JSON object, got {type(obj).__name__}")
        mtype = obj.get("type")
        if not isinstance(mtype, str):
            return ProtocolError(ErrorCode.INVALID_REQUEST, 'the object has no string field "type"', rid)
        if mtype not in self._known_types:
            return ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown {self._side} message type {mtype!r}", rid)
        return ProtocolError(ErrorCode.INVALID_REQUEST, f"invalid {mtype!r} message: {detail}", rid)


#: Decodes what a host sends (the worker's side).
request_decoder: MessageDecoder[Request] = MessageDecoder(Request, REQUEST_TYPES, side="request")
#: Decodes what a worker sends (a host's side).
reply_decoder: MessageDecoder[Reply] = MessageDecoder(Reply, REPLY_TYPES, side="reply")


def decode_request(payload: bytes) -> Request:
    return request_decoder.decode(payload)


def decode_reply(payload: bytes) -> Reply:
    return reply_decoder.decode(payload)


class MessageReader(Generic[M]):
    """Byte stream in, messages (or the errors that replace them) out."""

    def __init__(self, decoder: MessageDecoder[M], max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._frames = FrameDecoder(max_frame_size)
        self._decoder = decoder

    @property
    def failed(self) -> ProtocolError | None:
        return self._frames.failed

    @property
    def buffered(self) -> int:
        return self._frames.buffered

    def feed(self, data: bytes | bytearray | memoryview) -> list[M | ProtocolError]:
        out: list[M | ProtocolError] = []
        for item in self._frames.feed(data):
            if isinstance(item, ProtocolError):
                out.append(item)
                continue
            try:
                out.append(self._decoder.decode(item))
            except ProtocolError as exc:
                out.append(exc)
        return out


def request_reader(max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> MessageReader[Request]:
    return MessageReader(request_decoder, max_frame_size)


def reply_reader(max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> MessageReader[Reply]:
    return MessageReader(reply_decoder, max_frame_size)
