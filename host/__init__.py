"""Python host for llama-worker: spawn a worker process and chat with its model.

    import anyio
    from host import AsyncClient

    async def main():
        async with AsyncClient() as client:
            await client.load()
            async with await client.generate("Hello!") as stream:
                async for text in stream:
                    print(text, end="", flush=True)
            print(stream.result.usage)

    anyio.run(main)

`Client` is the same thing for blocking code.
"""

from protocol import Done, ModelInfo

from .client import USE_CLIENT_DEFAULT, AsyncClient, Generation, Result, Session, default_worker_command, response_format
from .exceptions import (
    Aborted,
    BadRequest,
    Busy,
    ContextOverflow,
    GenerationFailed,
    IncompleteOutput,
    InternalError,
    LlamaWorkerError,
    LoadFailed,
    ModelError,
    ModelNotFound,
    NoModel,
    NotInitialized,
    ProtocolMismatch,
    ProtocolViolation,
    ReplyTooLarge,
    SessionFileError,
    WorkerCrashed,
    WorkerTimeout,
)
from .sync import Client, SyncGeneration, SyncSession

__all__ = [
    "Aborted",
    "AsyncClient",
    "BadRequest",
    "Busy",
    "Client",
    "ContextOverflow",
    "Done",
    "Generation",
    "GenerationFailed",
    "IncompleteOutput",
    "InternalError",
    "LlamaWorkerError",
    "LoadFailed",
    "ModelError",
    "ModelInfo",
    "ModelNotFound",
    "NoModel",
    "NotInitialized",
    "ProtocolMismatch",
    "ProtocolViolation",
    "ReplyTooLarge",
    "Result",
    "Session",
    "SessionFileError",
    "USE_CLIENT_DEFAULT",
    "SyncGeneration",
    "SyncSession",
    "WorkerCrashed",
    "WorkerTimeout",
    "default_worker_command",
    "response_format",
]
