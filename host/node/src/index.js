// llama-worker-client: the Node.js host client of llama-worker (plain ESM, no dependencies).
// The public surface, typed by index.d.ts; the modules behind it are listed in README.md.
export { LlamaWorkerClient, PROTOCOL_VERSION } from './client.js';
export { Generation } from './generation.js';
export { Session, DEFAULT_SESSION } from './session.js';
export { PARENT_ENV_VAR, defaultPython, resolveCommand } from './process.js';
export {
  LlamaWorkerError,
  BadRequestError,
  NotInitializedError,
  ProtocolMismatchError,
  NotReasoningError,
  BusyError,
  ModelError,
  NoModelError,
  ModelNotFoundError,
  LoadFailedError,
  ContextOverflowError,
  AbortedError,
  GenerationFailedError,
  InternalError,
  SessionFileError,
  ReplyTooLargeError,
  IncompleteOutputError,
  WorkerCrashedError,
  WorkerTimeoutError,
  ClientClosedError,
  ProtocolViolationError,
  errorFromFrame,
  errorClassForCode,
} from './errors.js';
export { encodeFrame, FrameDecoder, FrameError, DEFAULT_MAX_FRAME_SIZE, WORKER_DEFAULT_MAX_FRAME_SIZE, MIN_FRAME_SIZE } from './framing.js';
export { LOAD_FIELDS, GENERATE_FIELDS, RESET_FIELDS, PRELOAD_FIELDS, TOKENIZE_FIELDS, DETOKENIZE_FIELDS, COUNT_FIELDS, REASONING_FIELDS, toReasoning, toResponseFormat } from './options.js';
