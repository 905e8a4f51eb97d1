"""Typed errors of the host client: one class per way a caller reacts.

An `error` frame becomes the class mapped from its code, carrying `code`,
`message` and `retryable`, so callers can write `except Busy:` instead of
comparing strings. Failures of the worker process itself (it died, it did not
answer) are separate classes: they are not the worker's answer to a request.
"""

from __future__ import annotations

from protocol import ErrorCode


class LlamaWorkerError(Exception):
    """Base of every error this package raises."""

    code: str = "internal"
    retryable: bool = False

    def __init__(self, message: str, code: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BadRequest(LlamaWorkerError):
    """The request was malformed or not allowed now (fix the request, do not retry)."""


class NotInitialized(BadRequest):
    pass


class ProtocolMismatch(BadRequest):
    pass


class NotReasoning(BadRequest):
    """`end_reasoning` found no thought to end: the generation is answering already, never
    thought, or has finished. Harmless in a race with the model closing its own thought."""


class Busy(LlamaWorkerError):
    """Another generate/load/reset is running; retry when it ends, or abort it."""

    retryable = True


class ModelError(LlamaWorkerError):
    """Something about the model: not loaded, not found, not loadable."""


class NoModel(ModelError):
    pass


class ModelNotFound(ModelError):
    pass


class LoadFailed(ModelError):
    pass


class ContextOverflow(LlamaWorkerError):
    """The input cannot fit the context even after dropping old turns."""


class Aborted(LlamaWorkerError):
    """The request was aborted (a load; a generation ends with stop_reason 'aborted' instead)."""

    retryable = True


class GenerationFailed(LlamaWorkerError):
    retryable = True


class InternalError(LlamaWorkerError):
    pass


class IncompleteOutput(LlamaWorkerError):
    """A structured reply stopped before its JSON was complete; `.result` holds what came."""

    code = "incomplete_output"

    def __init__(self, message: str, *, result: object) -> None:
        super().__init__(message)
        self.result = result


class SessionFileError(LlamaWorkerError):
    """A saved session cannot be restored: damaged or missing (`bad_session_file`),
    or made with another model or KV layout (`session_mismatch`)."""


class WorkerCrashed(LlamaWorkerError):
    """The worker process died (or closed its output) with requests pending."""

    code = "worker_crashed"
    retryable = True

    def __init__(self, message: str, *, exit_code: int | None, signal: int | None, stderr_tail: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.signal = signal
        self.stderr_tail = stderr_tail


class ProtocolViolation(LlamaWorkerError):
    """The worker sent something that is not a valid reply.

    Raised by the one call whose reply could not be read (its id was
    readable). When the stream itself is broken (a frame over the limit,
    garbage), the worker is killed and every pending call gets a
    `WorkerCrashed` whose `__cause__` is this.
    """

    code = "protocol_violation"


class ReplyTooLarge(LlamaWorkerError):
    """The reply would exceed the largest frame this client reads (`max_frame_size`).

    Ask for less at a time, or create the client with a larger `max_frame_size`.
    """

    code = "reply_too_large"


class WorkerTimeout(LlamaWorkerError):
    """The worker did not answer in time (the call's `timeout`, the handshake, a stalled load).

    Work the call had started in the worker was aborted before this was raised.
    """

    code = "timeout"
    retryable = True


_BY_CODE: dict[str, type[LlamaWorkerError]] = {
    ErrorCode.BAD_FRAME: BadRequest,
    ErrorCode.FRAME_TOO_LARGE: BadRequest,
    ErrorCode.INVALID_REQUEST: BadRequest,
    ErrorCode.UNKNOWN_TYPE: BadRequest,
    ErrorCode.PROTOCOL_MISMATCH: ProtocolMismatch,
    ErrorCode.NOT_INITIALIZED: NotInitialized,
    ErrorCode.NO_MODEL: NoModel,
    ErrorCode.BUSY: Busy,
    ErrorCode.MODEL_NOT_FOUND: ModelNotFound,
    ErrorCode.LOAD_FAILED: LoadFailed,
    ErrorCode.CONTEXT_OVERFLOW: ContextOverflow,
    ErrorCode.ABORTED: Aborted,
    ErrorCode.GENERATION_FAILED: GenerationFailed,
    ErrorCode.INTERNAL: InternalError,
    ErrorCode.SESSION_MISMATCH: SessionFileError,
    ErrorCode.BAD_SESSION_FILE: SessionFileError,
    ErrorCode.REPLY_TOO_LARGE: ReplyTooLarge,
    ErrorCode.NOT_REASONING: NotReasoning,
}


def error_from_frame(code: str, message: str, retryable: bool) -> LlamaWorkerError:
    cls = _BY_CODE.get(code, LlamaWorkerError)
    return cls(message, code=str(code), retryable=retryable)
