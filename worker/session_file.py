"""The saved-session file: a chat history plus the KV state that goes with it.

Layout (all integers big-endian):

    8 bytes   magic b"LLWSESS\\x01"
    4 bytes   header length H
    H bytes   header, UTF-8 JSON (`Header`)
    N bytes   KV state, exactly `header.kv_bytes` long; `header.kv_sha256` is the
              SHA-256 of the tokens (4-byte big-endian each) and then these bytes

Everything is checked before anything is restored: the magic, the header, the
KV length and digest (a damaged or truncated file), and that the model and
the KV layout match the loaded ones (a state from another model would decode
to garbage or crash llama.cpp). Files are written to a temporary name and
renamed, so a crash never leaves half a file under the real name.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from pathlib import Path
from typing import Any

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


class SavedMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str
    reasoning: str | None = None
    """Kept thoughts (files written before reasoning support have none)."""
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


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
    """SHA-256 of the tokens (4-byte big-endian each) followed by the KV state."""


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
    """Read and verify a file's integrity (not yet whether it fits the model).

    The header is read and checked before the KV state, and the file must be
    a regular file of exactly the announced size, so pointing this at a
    model, a device or a FIFO fails fast instead of filling memory or hanging.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SessionFileError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise SessionFileError(f"{path} is a folder, not a saved session") from None
    except OSError as exc:
        raise SessionFileError(f"cannot read {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise SessionFileError(f"{path} is a folder, not a saved session")
        raise SessionFileError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        head = f.read(len(MAGIC) + _LEN.size)
        if not head.startswith(MAGIC):
            if head.startswith(MAGIC[:7]):
                raise SessionFileError(f"{path} is a saved session of an unsupported format version", mismatch=True)
            raise SessionFileError(f"{path} is not a saved session (wrong magic bytes)")
        if len(head) < len(MAGIC) + _LEN.size:
            raise SessionFileError(f"{path} is truncated (no header)")
        (size,) = _LEN.unpack_from(head, len(MAGIC))
        if size > MAX_HEADER_BYTES or size > st.st_size - len(head):
            raise SessionFileError(f"{path} is truncated or damaged (header of {size} bytes)")
        try:
            header = msgspec.json.decode(f.read(size), type=Header)
        except msgspec.DecodeError as exc:
            raise SessionFileError(f"{path} has a damaged header: {exc}") from None
        remaining = st.st_size - len(head) - size
        if remaining != header.kv_bytes:
            raise SessionFileError(f"{path} is truncated or damaged: {remaining} bytes of KV state, {header.kv_bytes} expected")
        kv = bytearray(remaining)
        if f.readinto(kv) != remaining:
            raise SessionFileError(f"{path} changed while it was read")
    try:
        matches = digest(header.tokens, kv) == header.kv_sha256
    except struct.error:  # token ids that are not uint32
        matches = False
    if not matches:
        raise SessionFileError(f"{path} is damaged: its tokens and KV state do not match its checksum")
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


def digest(tokens: list[int], kv: bytes | bytearray) -> str:
    """SHA-256 over the token ids and the KV state: the two must not drift apart."""
    h = hashlib.sha256(struct.pack(f">{len(tokens)}I", *tokens))
    h.update(kv)
    return h.hexdigest()
