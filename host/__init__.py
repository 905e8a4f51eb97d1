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

from .client import AsyncClient
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
    NotReasoning,
    ProtocolMismatch,
    ProtocolViolation,
    ReplyTooLarge,
    SessionFileError,
    WorkerCrashed,
    WorkerTimeout,
)
from .generation import Generation, Part
from .options import USE_CLIENT_DEFAULT, ChatInput, GenerateOptions, LoadOptions, ReasoningOptions, SessionGenerateOptions, Timeout, response_format
from .session import Session
from .sync import Client, SyncGeneration, SyncSession
from .tools import Tool
from .transport import ProcessTransport, Transport, WorkerStreams, default_worker_command

__all__ = [
    "Aborted",
    "AsyncClient",
    "BadRequest",
    "ChatInput",
    "Busy",
    "Client",
    "ContextOverflow",
    "Done",
    "Generation",
    "GenerateOptions",
    "GenerationFailed",
    "IncompleteOutput",
    "InternalError",
    "LlamaWorkerError",
    "LoadOptions",
    "LoadFailed",
    "ModelError",
    "ModelInfo",
    "ModelNotFound",
    "NoModel",
    "NotReasoning",
    "Part",
    "NotInitialized",
    "ProcessTransport",
    "ReasoningOptions",
    "ProtocolMismatch",
    "ProtocolViolation",
    "ReplyTooLarge",
    "Session",
    "SessionFileError",
    "SessionGenerateOptions",
    "USE_CLIENT_DEFAULT",
    "SyncGeneration",
    "SyncSession",
    "Timeout",
    "Tool",
    "Transport",
    "WorkerCrashed",
    "WorkerStreams",
    "WorkerTimeout",
    "default_worker_command",
    "response_format",
]
