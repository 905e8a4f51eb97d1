"""The llama-worker process: a model and a chat session behind a stdio protocol.

`LlamaWorker` (no I/O) does the work; `worker.server` drives it from frames
on stdin/stdout; `python -m worker` / `llama-worker` starts it.
"""

__version__ = "0.1.0"
