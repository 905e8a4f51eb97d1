"""The Python host's public surface: every protocol option reachable, both faces alike, the transport seam.

The protocol's request structs are the source of truth for option names: a
field added there and not to the host API fails here, for the async client,
the blocking one and the session handles.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import msgspec
import pytest

import protocol
from host import AsyncClient, Client, ProcessTransport, Session, SyncSession
from host.transport import WorkerStreams

TIMEOUT = 120

#: request tag -> the host method that sends it.
METHODS = {
    "init": "__init__",
    "load": "load",
    "generate": "generate",
    "abort": "abort",
    "end_reasoning": "end_reasoning",
    "reset": "reset",
    "ping": "ping",
    "cleanup": "cleanup",
    "preload": "preload",
    "sessions": "sessions",
    "close_session": "close_session",
    "save_session": "save_session",
    "restore_session": "restore_session",
    "tokenize": "tokenize",
    "detokenize": "detokenize",
    "count": "count_tokens",
}
#: Fields the client fills in itself, never its caller.
CLIENT_OWNED = {("init", "protocol_version")}
#: Session handles send these with their own name.
SESSION_METHODS = {"generate", "reset", "preload", "count_tokens"}


def _request_fields(cls: type[msgspec.Struct]) -> set[str]:
    tag = cls.__struct_config__.tag
    return {f.name for f in msgspec.structs.fields(cls) if f.name != "id" and (tag, f.name) not in CLIENT_OWNED}


def _parameters(fn: Callable[..., Any]) -> set[str]:
    """Named parameters, plus the keys of a `**options: Unpack[SomeTypedDict]`."""
    names = set()
    hints = typing.get_type_hints(fn, include_extras=True)
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            unpacked = hints[p.name]
            assert typing.get_origin(unpacked) is typing.Unpack, f"{fn.__qualname__}: **{p.name} is not an Unpack[TypedDict]"
            (options,) = typing.get_args(unpacked)
            names |= options.__required_keys__ | options.__optional_keys__
        elif p.kind is not p.VAR_POSITIONAL and p.name != "self":
            names.add(p.name)
    return names


REQUESTS = [cls for cls in typing.get_args(protocol.Request)]


def test_every_request_has_a_host_method() -> None:
    assert {cls.__struct_config__.tag for cls in REQUESTS} == set(METHODS)


@pytest.mark.parametrize("face", [AsyncClient, Client], ids=["async", "blocking"])
@pytest.mark.parametrize("request_type", REQUESTS, ids=lambda cls: cls.__struct_config__.tag)
def test_every_request_field_is_a_parameter_of_the_same_name(face: type, request_type: type[msgspec.Struct]) -> None:
    method = getattr(face, METHODS[request_type.__struct_config__.tag])
    missing = _request_fields(request_type) - _parameters(method)
    assert not missing, f"{face.__name__}.{method.__name__} cannot send {sorted(missing)}"


@pytest.mark.parametrize("handle", [Session, SyncSession], ids=["async", "blocking"])
@pytest.mark.parametrize("name", sorted(SESSION_METHODS))
def test_session_handles_take_every_field_but_the_session(handle: type, name: str) -> None:
    tag = next(tag for tag, method in METHODS.items() if method == name)
    request_type = next(cls for cls in REQUESTS if cls.__struct_config__.tag == tag)
    missing = _request_fields(request_type) - {"session"} - _parameters(getattr(handle, name))
    assert not missing, f"{handle.__name__}.{name} cannot send {sorted(missing)}"


def test_the_blocking_client_has_every_async_method_with_the_same_parameters() -> None:
    assert "__getattr__" not in vars(Client), "the blocking client forwards nothing implicitly"
    for name, fn in inspect.getmembers(AsyncClient, inspect.iscoroutinefunction):
        if name.startswith("_"):
            continue
        assert hasattr(Client, name), f"Client lacks {name}"
        assert _parameters(getattr(Client, name)) == _parameters(fn), name
        assert not inspect.iscoroutinefunction(getattr(Client, name)), name
    for name, value in vars(AsyncClient).items():
        if isinstance(value, property) and not name.startswith("_") and name not in ("request_timeout", "shutdown_timeout"):
            assert isinstance(vars(Client).get(name), property), f"Client lacks the property {name}"


# -- the transport seam -------------------------------------------------------------


class TapStreams:
    """A started worker whose bytes are recorded on their way through."""

    def __init__(self, inner: WorkerStreams, log: list[tuple[str, bytes]]) -> None:
        self.inner = inner
        self.log = log

    @property
    def pid(self) -> int | None:
        return self.inner.pid

    @property
    def returncode(self) -> int | None:
        return self.inner.returncode

    async def send(self, data: bytes) -> None:
        self.log.append(("sent", data))
        await self.inner.send(data)

    async def receive(self) -> AsyncIterator[bytes]:
        async for data in self.inner.receive():
            self.log.append(("received", data))
            yield data

    def stderr(self) -> AsyncIterator[bytes]:
        return self.inner.stderr()

    async def close_input(self) -> None:
        await self.inner.close_input()

    async def wait(self) -> int:
        return await self.inner.wait()

    def terminate(self) -> None:
        self.inner.terminate()

    def kill(self) -> None:
        self.inner.kill()


class TapTransport:
    def __init__(self) -> None:
        self.log: list[tuple[str, bytes]] = []
        self.started = 0

    async def start(self) -> TapStreams:
        self.started += 1
        return TapStreams(await ProcessTransport().start(), self.log)


def _frames(log: list[tuple[str, bytes]], direction: str) -> list[str]:
    stream = b"".join(data for d, data in log if d == direction)
    decoder = protocol.FrameDecoder()
    return [msgspec.json.decode(payload)["type"] for payload in decoder.feed(stream)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_custom_transport_carries_every_frame_and_restarts() -> None:
    tap = TapTransport()
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient(transport=tap) as client:
            await client.ping()
            assert client.pid is not None
            await client.restart()
            await client.ping()
    assert tap.started == 2, "a restart starts the next worker through the same transport"
    assert _frames(tap.log, "sent") == ["init", "ping", "init", "ping", "cleanup"]
    assert _frames(tap.log, "received") == ["ready", "pong", "ready", "pong", "ok"]


def test_a_transport_excludes_a_command() -> None:
    with pytest.raises(ValueError, match="transport"):
        AsyncClient(["python", "-m", "worker"], transport=TapTransport())
