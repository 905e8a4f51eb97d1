"""The worker's one exception type: a protocol error code plus a message.

Raised anywhere below the stdio loop and turned into one `error` frame there,
so a failure deep in a load or a generation reaches the host with its stable
code instead of as a traceback.
"""

from __future__ import annotations

from protocol import ErrorCode, is_retryable


class WorkerError(Exception):
    def __init__(self, code: ErrorCode, message: str, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = is_retryable(code) if retryable is None else retryable

    @classmethod
    def invalid(cls, message: str) -> WorkerError:
        return cls(ErrorCode.INVALID_REQUEST, message)

    @classmethod
    def context_overflow(cls, message: str) -> WorkerError:
        return cls(ErrorCode.CONTEXT_OVERFLOW, message)

    def __repr__(self) -> str:
        return f"WorkerError({self.code.value!r}, {self.message!r})"
