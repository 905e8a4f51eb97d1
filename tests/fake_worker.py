"""A worker that misbehaves on purpose: `python -m tests.fake_worker MODE`.

For the faults the real worker cannot produce. It answers `init` like a real
worker and `ping` with `pong`; what it does on any other request is MODE:

- `oversized`: a length prefix far over any limit (then stays alive);
- `garbage`: a whole frame that is not JSON (then stays alive);
- `truncated`: the first bytes of a frame, then exits;
- `bad_reply`: a reply with the request's id whose fields are invalid;
- `silent`: nothing, ever (but keeps reading);
- `exit_on_load`: exits with code 7 on `load`;
- `exit`: says it cannot serve the request (on stderr) and exits with code 3.
"""

from __future__ import annotations

import os
import struct
import sys

import protocol


def _reply(message: protocol.Reply) -> None:
    os.write(1, protocol.encode(message))


def _misbehave(mode: str, msg: protocol.Request) -> None:
    if mode == "oversized":
        os.write(1, struct.pack(">I", 0xFFFFFFF0) + b"{")
    elif mode == "garbage":
        payload = b"this is not JSON"
        os.write(1, struct.pack(">I", len(payload)) + payload)
    elif mode == "truncated":
        os.write(1, struct.pack(">I", 1000) + b'{"type":"pong"')
        sys.exit(5)
    elif mode == "bad_reply":
        payload = b'{"type":"tokens","id":%d,"ids":"not a list","count":1}' % msg.id  # type: ignore[str-format]
        os.write(1, struct.pack(">I", len(payload)) + payload)
    elif mode == "exit_on_load" and isinstance(msg, protocol.Load):
        sys.stderr.write("fake worker: exiting on load\n")
        sys.exit(7)
    elif mode == "exit":
        sys.stderr.write(f"fake worker: cannot serve {type(msg).__name__}, exiting\n")
        sys.stderr.flush()
        sys.exit(3)


def main(mode: str) -> None:
    reader = protocol.request_reader()
    while True:
        data = os.read(0, 65536)
        if not data:
            sys.exit(0)
        for msg in reader.feed(data):
            if isinstance(msg, protocol.ProtocolError):
                continue
            if isinstance(msg, protocol.Init):
                _reply(
                    protocol.Ready(
                        id=msg.id, protocol_version=msg.protocol_version, worker_version="fake",
                        llama_cpp_version="none", pid=os.getpid(), capabilities=[],
                    )
                )
            elif isinstance(msg, protocol.Ping):
                _reply(protocol.Pong(id=msg.id))
            elif mode != "silent":
                _misbehave(mode, msg)


if __name__ == "__main__":
    main(sys.argv[1])
