"""The saved-session file: a chat history plus the KV state that goes with it.

Layout (all integers big-endian):

    8 bytes   magic b"LLWSESS\\x01"
    4 bytes   header length H
    H bytes   header, UTF-8 JSON (`Header`)
    N bytes   KV state, exactly `header.kv_bytes` long, SHA-256 `header.kv_sha256`

Everything is checked before anything is restored: the magic, the header, the
KV length and digest (a damaged or truncated file), and that the model and
the KV layout match the loaded ones (a state from another model would decode
to garbage or crash llama.cpp). Files are written to a temporary name and
renamed, so a crash never leaves half a file under the real name.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import msgspec

MAGIC = b"LLWSESS\x01"
FORMAT_VERSION = 1
_LEN = struct.Struct(">I")
MAX_HEADER_BYTES = 64 * 1024 * 1024


class SessionFileError(Exception):
    """The file cannot be used; `mismatch` tells a foreign file from a damaged one."""

    def __init__(self, message: str, *, mismatch: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.mismatch = mismatch


class SavedMessage(msgspec.Struct):
    role: str
    content: str


class Header(msgspec.Struct, kw_only=True):
    format: int = FORMAT_VERSION
    model: dict[str, object]
    """The model's fingerprint (`Model.fingerprint`)."""
    layout: dict[str, object]
    """What the KV state's encoding depends on (`Context.layout`)."""
    n_ctx: int
    system_prompt: str | None
    history: list[SavedMessage]
    tokens: list[int]
    kv_bytes: int
    kv_sha256: str


def write(path: Path, header: Header, kv: bytes | bytearray) -> int:
    """Write atomically; return the file's size."""
    body = msgspec.json.encode(header)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(_LEN.pack(len(body)))
            f.write(body)
            f.write(kv)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(MAGIC) + _LEN.size + len(body) + len(kv)


def read(path: Path) -> tuple[Header, bytearray]:
    """Read and verify a file's integrity (not yet whether it fits the model)."""
    try:
        with open(path, "rb") as f:
            data = bytearray(f.read())
    except FileNotFoundError:
        raise SessionFileError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise SessionFileError(f"{path} is a folder, not a saved session") from None
    except OSError as exc:
        raise SessionFileError(f"cannot read {path}: {exc.strerror}") from None
    if not data.startswith(MAGIC):
        if data.startswith(MAGIC[:7]):
            raise SessionFileError(f"{path} is a saved session of an unsupported format version", mismatch=True)
        raise SessionFileError(f"{path} is not a saved session (wrong magic bytes)")
    pos = len(MAGIC)
    if len(data) < pos + _LEN.size:
        raise SessionFileError(f"{path} is truncated (no header)")
    (size,) = _LEN.unpack_from(data, pos)
    pos += _LEN.size
    if size > MAX_HEADER_BYTES or len(data) < pos + size:
        raise SessionFileError(f"{path} is truncated or damaged (header of {size} bytes)")
    try:
        header = msgspec.json.decode(bytes(data[pos : pos + size]), type=Header)
    except msgspec.DecodeError as exc:
        raise SessionFileError(f"{path} has a damaged header: {exc}") from None
    pos += size
    del data[:pos]
    kv = data
    if len(kv) != header.kv_bytes:
        raise SessionFileError(f"{path} is truncated or damaged: {len(kv)} bytes of KV state, {header.kv_bytes} expected")
    if hashlib.sha256(kv).hexdigest() != header.kv_sha256:
        raise SessionFileError(f"{path} is damaged: its KV state does not match its checksum")
    if header.format != FORMAT_VERSION:
        raise SessionFileError(f"{path} has format {header.format}; this worker reads format {FORMAT_VERSION}", mismatch=True)
    return header, kv


def check_compatible(header: Header, path: Path, model: dict[str, object], layout: dict[str, object], n_ctx: int) -> None:
    """Refuse a file saved with another model, another KV layout, or too long for this context."""
    if header.model != model:
        differing = sorted(k for k in {*header.model, *model} if header.model.get(k) != model.get(k))
        raise SessionFileError(
            f"{path} was saved with another model ({header.model.get('name')!r}, differing in {', '.join(differing)}); "
            f"loaded: {model.get('name')!r}",
            mismatch=True,
        )
    if header.layout != layout:
        raise SessionFileError(f"{path} was saved with other context settings ({header.layout}); loaded: {layout}", mismatch=True)
    if len(header.tokens) >= n_ctx:
        raise SessionFileError(
            f"{path} holds {len(header.tokens)} tokens, which do not fit this context of {n_ctx}", mismatch=True
        )


def digest(kv: bytes | bytearray) -> str:
    return hashlib.sha256(kv).hexdigest()
