"""`llama-worker` / `python -m worker`: start a worker on stdin/stdout."""

from __future__ import annotations

import argparse
import logging
import os
import signal

from . import parent_watch  # noqa: F401 - records the parent pid as early as possible

LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from protocol import DEFAULT_MAX_FRAME_SIZE

    parser = argparse.ArgumentParser(
        prog="llama-worker",
        description="A llama.cpp model and chat session behind length-prefixed JSON frames on stdin/stdout "
        "(wire protocol v1, see protocol/PROTOCOL.md). Logs go to stderr.",
    )
    parser.add_argument(
        "--max-frame-size",
        type=int,
        default=DEFAULT_MAX_FRAME_SIZE,
        metavar="BYTES",
        help=f"largest request frame accepted (default {DEFAULT_MAX_FRAME_SIZE}); a larger one is fatal",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=os.environ.get("LLAMA_WORKER_LOG_LEVEL", "warning"),
        help="stderr log level (default warning, or $LLAMA_WORKER_LOG_LEVEL)",
    )
    args = parser.parse_args(argv)
    if args.max_frame_size < 64:
        parser.error("--max-frame-size must be at least 64 bytes")
    return args


def main(argv: list[str] | None = None) -> None:
    # Arguments first, so --help and usage errors reach the real streams.
    args = parse_args(argv)
    # Before anything else can print: the protocol gets private copies of the
    # standard descriptors, and fd 1 becomes stderr.
    from .stdio import take_over_stdio

    fds = take_over_stdio()
    # ggml's crash path runs gdb on inherited descriptors; keep it quiet.
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    # Ctrl-C in a terminal reaches the whole process group; stopping a reply
    # is the host's call (abort), so the worker ignores SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    log_stream = os.fdopen(fds.logs, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    handler = logging.StreamHandler(log_stream)
    handler.setFormatter(logging.Formatter(f"llama-worker[{os.getpid()}] %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(args.log_level.upper())
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)

    from .llama_worker import LlamaWorker
    from .log_frames import LogFrameHandler
    from .parent_watch import watch_parent
    from .server import WorkerServer
    from .shutdown import EXIT_INTERNAL, EXIT_PARENT_GONE, exit_now
    from .stdio import FrameWriter

    writer = FrameWriter(fds.frames)
    frame_handler = LogFrameHandler(writer)
    frame_handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root.addHandler(frame_handler)
    server = WorkerServer(LlamaWorker(), fds.requests, writer, args.max_frame_size, frame_handler)
    watch_parent(lambda: server.shutdown(EXIT_PARENT_GONE, "the parent process is gone"))
    try:
        code = server.serve()
    except Exception:  # noqa: BLE001
        logging.getLogger("worker").exception("worker crashed")
        code = EXIT_INTERNAL
    # Daemon threads may sit in blocking reads; leave without waiting on them,
    # and without waiting on a stderr pipe the host no longer drains.
    exit_now(code)


if __name__ == "__main__":
    main()
