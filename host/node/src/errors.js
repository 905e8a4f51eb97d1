// Typed errors of the Node.js host client, mirroring host/exceptions.py.
//
// An `error` frame from the worker becomes the class mapped from its `code`
// (see PROTOCOL.md section 6), carrying `code`, `message` and `retryable`, so
// callers can write `if (err instanceof BusyError)` instead of comparing
// strings. Failures of the worker process itself (it died, it did not answer,
// the client was closed) have their own classes: they are not the worker's
// answer to a request.

/** Base of every error this package raises. */
export class LlamaWorkerError extends Error {
  /**
   * @param {string} message
   * @param {{ code?: string, retryable?: boolean, requestId?: number | string | null, cause?: unknown }} [options]
   */
  constructor(message, options = {}) {
    super(message, options.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = new.target.name;
    /** @type {string} */
    this.code = options.code ?? new.target.defaultCode;
    /** @type {boolean} */
    this.retryable = options.retryable ?? new.target.defaultRetryable;
    /** @type {number | string | null} */
    this.requestId = options.requestId ?? null;
  }

  static defaultCode = 'internal';
  static defaultRetryable = false;
}

/** The request was malformed or not allowed now: fix it, do not retry. */
export class BadRequestError extends LlamaWorkerError {
  static defaultCode = 'invalid_request';
}

/** A request other than ping/init before the handshake (a client bug). */
export class NotInitializedError extends BadRequestError {
  static defaultCode = 'not_initialized';
}

/** The worker does not speak protocol version 1. */
export class ProtocolMismatchError extends BadRequestError {
  static defaultCode = 'protocol_mismatch';
}

/**
 * `end_reasoning` found no thought to end: the generation is answering
 * already, never thought, or has finished (not running). Harmless in a race
 * with the model closing its own thought. Not retryable.
 */
export class NotReasoningError extends BadRequestError {
  static defaultCode = 'not_reasoning';
}

/** Another generate/load/reset (or a cleanup) is running: retry when it ends, or abort it. */
export class BusyError extends LlamaWorkerError {
  static defaultCode = 'busy';
  static defaultRetryable = true;
}

/** Something about the model: not loaded, not found, not loadable. */
export class ModelError extends LlamaWorkerError {}

/** `generate`/`reset` with no model loaded. */
export class NoModelError extends ModelError {
  static defaultCode = 'no_model';
}

/** The model file does not exist (or the default model is not installed). */
export class ModelNotFoundError extends ModelError {
  static defaultCode = 'model_not_found';
}

/** The file exists but could not be loaded (not GGUF, bad template, no memory...). */
export class LoadFailedError extends ModelError {
  static defaultCode = 'load_failed';
}

/** The input cannot fit the context even after dropping old turns. */
export class ContextOverflowError extends LlamaWorkerError {
  static defaultCode = 'context_overflow';
}

/** A load stopped by abort/cleanup. (An aborted generation is not an error: it ends with stop_reason "aborted".) */
export class AbortedError extends LlamaWorkerError {
  static defaultCode = 'aborted';
  static defaultRetryable = true;
}

/** llama.cpp failed while decoding; the session is unchanged. */
export class GenerationFailedError extends LlamaWorkerError {
  static defaultCode = 'generation_failed';
  static defaultRetryable = true;
}

/** An unexpected failure inside the worker (a bug); it keeps serving. */
export class InternalError extends LlamaWorkerError {
  static defaultCode = 'internal';
}

/**
 * A saved session cannot be restored: the file is missing, damaged or not a
 * session file (`bad_session_file`), or it was made with another model or KV
 * layout (`session_mismatch`). The session is left as it was; not retryable.
 */
export class SessionFileError extends LlamaWorkerError {
  static defaultCode = 'bad_session_file';
}

/**
 * A structured reply (`responseFormat`) stopped before its JSON was complete
 * (`done.incomplete`: max_tokens, aborted, context_full, a stop sequence);
 * `result` is the `done` message. Raised by the client (chatJson()), never
 * sent by the worker; not retryable as it is: raise `maxTokens`.
 */
export class IncompleteOutputError extends LlamaWorkerError {
  static defaultCode = 'incomplete_output';

  /**
   * @param {string} message
   * @param {{ result: import('./protocol.js').Done, cause?: unknown }} details
   */
  constructor(message, details) {
    super(message, { cause: details.cause });
    /** The `done` message of the cut-short reply (text, stop_reason, usage...). */
    this.result = details.result;
  }
}

/**
 * The reply to this request would be larger than the largest frame this client
 * reads (`maxFrameSize`, sent as `init.max_frame_size`): the worker answered
 * with this error instead. Ask for less at a time, or raise `maxFrameSize`.
 */
export class ReplyTooLargeError extends LlamaWorkerError {
  static defaultCode = 'reply_too_large';
}

/** The worker process died (or closed its output, or could not start) with requests pending. */
export class WorkerCrashedError extends LlamaWorkerError {
  static defaultCode = 'worker_crashed';
  static defaultRetryable = true;

  /**
   * @param {string} message
   * @param {{ exitCode: number | null, signal: string | null, stderrTail: string, cause?: unknown }} details
   */
  constructor(message, details) {
    super(message, { cause: details.cause });
    /** Exit code, or null when killed by a signal (or it never started). */
    this.exitCode = details.exitCode;
    /** Signal name such as "SIGKILL", or null. */
    this.signal = details.signal;
    /** The last few KiB of the worker's stderr. */
    this.stderrTail = details.stderrTail;
  }
}

/** The worker did not answer in time (handshake, ping, a load that stalled, close). */
export class WorkerTimeoutError extends LlamaWorkerError {
  static defaultCode = 'timeout';
  static defaultRetryable = true;
}

/** The client was closed (or is closing): no more requests. */
export class ClientClosedError extends LlamaWorkerError {
  static defaultCode = 'closed';
}

/**
 * The worker wrote something that is not a valid frame, or not a valid reply
 * to the request it names (a worker bug). Unreadable output is fatal (the
 * worker is killed; this is the `cause` of the WorkerCrashedError); an invalid
 * reply with a readable id fails that request only.
 */
export class ProtocolViolationError extends LlamaWorkerError {
  static defaultCode = 'protocol_violation';
}

/**
 * Every protocol ErrorCode -> its class. Exactly the codes of the protocol
 * (test/error-codes.test.js checks it against protocol/schema.json, and each
 * class's retryable default against protocol/errors.py). Internal: index.js
 * exports errorClassForCode() instead.
 * @type {Readonly<Record<import('./protocol.js').ErrorCode, typeof LlamaWorkerError>>}
 */
export const BY_CODE = Object.freeze({
  bad_frame: BadRequestError,
  frame_too_large: BadRequestError,
  invalid_request: BadRequestError,
  unknown_type: BadRequestError,
  protocol_mismatch: ProtocolMismatchError,
  not_initialized: NotInitializedError,
  no_model: NoModelError,
  busy: BusyError,
  model_not_found: ModelNotFoundError,
  load_failed: LoadFailedError,
  context_overflow: ContextOverflowError,
  aborted: AbortedError,
  generation_failed: GenerationFailedError,
  internal: InternalError,
  session_mismatch: SessionFileError,
  bad_session_file: SessionFileError,
  reply_too_large: ReplyTooLargeError,
  not_reasoning: NotReasoningError,
});

/**
 * The class an error code maps to (LlamaWorkerError for codes this client does not know).
 * @param {string} code
 * @returns {typeof LlamaWorkerError}
 */
export function errorClassForCode(code) {
  return Object.prototype.hasOwnProperty.call(BY_CODE, code) ? BY_CODE[/** @type {import('./protocol.js').ErrorCode} */ (code)] : LlamaWorkerError;
}

/**
 * Turn an `error` frame into the matching error instance.
 * @param {{ id?: number | string | null, code: string, message: string, retryable: boolean }} frame
 */
export function errorFromFrame(frame) {
  const Cls = errorClassForCode(frame.code);
  return new Cls(String(frame.message), {
    code: String(frame.code),
    retryable: Boolean(frame.retryable),
    requestId: frame.id ?? null,
  });
}
