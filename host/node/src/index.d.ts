// Typings of llama-worker-client. The wire message types live in ./protocol.d.ts,
// generated from protocol/schema.json (scripts/gen-typings.js); this file only
// describes the client API and refers to them.

import { EventEmitter } from 'node:events';
import type {
  ChatMessage,
  Count,
  Detokenize,
  Done,
  Error as ErrorFrame,
  ErrorCode,
  Generate,
  Load,
  Log,
  ModelInfo,
  Preload,
  Preloaded,
  Ready,
  Reasoning,
  Reset,
  ResponseFormat,
  Restored,
  Saved,
  SessionInfo,
  SessionList,
  TokenCount,
  Tokenize,
  WorkerMessage,
} from './protocol.js';

export type * from './protocol.js';
export type { ErrorFrame };

export declare const PROTOCOL_VERSION: 1;
/** The environment variable the client sets to its own pid (the worker exits when that process dies). */
export declare const PARENT_ENV_VAR: 'LLAMA_WORKER_PARENT_PID';
/** The session of requests that name none. */
export declare const DEFAULT_SESSION: 'default';

/** `python` on Windows, `python3` elsewhere. */
export declare function defaultPython(): string;
/** The command line `new LlamaWorkerClient(options)` spawns (without `args`). */
export declare function resolveCommand(options?: Pick<ClientOptions, 'command' | 'python'>): string[];

export interface ClientOptions {
  /**
   * The worker command: a string (one executable, e.g. "llama-worker" or
   * "/app/.venv/bin/llama-worker") or an argv array. Default:
   * `[python, "-m", "worker"]`.
   */
  command?: string | string[];
  /** The interpreter for the default command (e.g. "/app/.venv/bin/python"). Default: defaultPython(). */
  python?: string;
  /** Extra worker flags, e.g. ["--log-level", "info"]. Never "--help". */
  args?: string[];
  /** Extra environment (e.g. LLAMA_WORKER_MODEL). LLAMA_WORKER_PARENT_PID is always set to process.pid. */
  env?: Record<string, string>;
  /** Start from process.env (default true); false: only `env`. */
  inheritEnv?: boolean;
  cwd?: string;
  /** Milliseconds to wait for `ready` (default 60000). */
  handshakeTimeout?: number;
  /**
   * The default `timeout` of every control call (ping, cleanup, sessions, tokenize, detokenize,
   * countTokens, reset, preload, closeSession, saveSession, restoreSession, abort), in ms
   * (default 60000; null: none). generate, chat and load have none unless given one.
   */
  requestTimeout?: number | null;
  /** A load with no progress for this long (ms) is aborted and rejects with WorkerTimeoutError (default 120000). */
  loadStallTimeout?: number;
  /** close(): how long to wait for `cleanup` (default 5000 ms). */
  cleanupTimeout?: number;
  /** close(): how long to wait for the exit after ending stdin (default 5000 ms). */
  exitTimeout?: number;
  /** close(): how long to wait after SIGTERM before SIGKILL (default 2000 ms). */
  termTimeout?: number;
  /**
   * A cancelled job (signal, timeout, leaving a `for await` early): how long to wait for the worker
   * to end it after sending `abort` (default 5000 ms).
   */
  abortTimeout?: number;
  /**
   * Largest worker frame read (default 16 MiB, at least 4096), sent as `init.max_frame_size`: the
   * worker answers a request whose reply would be larger with ReplyTooLargeError. A larger frame
   * is fatal (the worker is killed).
   */
  maxFrameSize?: number;
  /**
   * Largest request payload sent; larger requests throw BadRequestError (`frame_too_large`) unsent.
   * Default: the worker's `ready.max_frame_size`, else 16 MiB (its default `--max-frame-size`).
   */
  maxRequestSize?: number;
  /** How much stderr to keep for WorkerCrashedError.stderrTail (default 8192 bytes). */
  stderrTailBytes?: number;
  /** `init.log_level`: also receive worker log records at this level or above as 'log' events. */
  logLevel?: 'debug' | 'info' | 'warning' | 'error' | null;
  /** Called for every `log` frame (what it throws goes to 'callbackError'). */
  onLog?: (level: Log['level'], message: string) => unknown;
  /** Called for every chunk of stderr (stderr is always drained, whether or not this is set). */
  onStderr?: (data: Buffer) => unknown;
}

/**
 * What every call accepts besides its own options. Aborting `signal` cancels the call: a job the
 * worker runs (load, generate, preload, reset, closeSession, saveSession, restoreSession) is
 * aborted there and the call settles with the worker's answer once it came (an aborted load or
 * save: AbortedError; a preload: `complete: false`; a generation: `stop_reason: "aborted"`), so
 * the next job is never busy; any other call rejects with `signal.reason` at once. A signal
 * already aborted throws its reason and sends nothing.
 */
export interface CallOptions {
  signal?: AbortSignal;
  /**
   * Milliseconds before the call rejects with WorkerTimeoutError (a job is aborted first, as for
   * `signal`); null or Infinity: none. Default: `requestTimeout` for control calls, none for
   * generate, chat and load.
   */
  timeout?: number | null;
}

/** load()'s call options. */
export interface LoadCallOptions extends CallOptions {
  /** Load progress, 0..1 (what it throws goes to 'callbackError'; the load goes on). */
  onProgress?: (fraction: number) => unknown;
}

/** One piece of a reply for `onResponseChunk`: answer text, or a reasoning model's thought. */
export interface ResponseChunk {
  /** "text": the answer; "reasoning": the thought (never shown by the iteration or `onChunk`). */
  type: 'text' | 'reasoning';
  /** Never empty. */
  text: string;
}

/**
 * generate()'s call options: the chunk callbacks run as chunks arrive, whether or not the
 * stream is iterated (what they throw goes to 'callbackError'; the generation goes on).
 */
export interface GenerateCallOptions extends CallOptions {
  /** Each chunk of answer text (never a thought, never empty). */
  onChunk?: (text: string) => unknown;
  /** Each chunk of a reasoning model's thought. */
  onReasoningChunk?: (text: string) => unknown;
  /** Every chunk, answer and thought, in order, tagged by its kind. */
  onResponseChunk?: (chunk: ResponseChunk) => unknown;
}

/** chat()'s and chatJson()'s call options: the same as generate()'s. */
export interface ChatCallOptions extends GenerateCallOptions {}

/** The user code that threw: a callback option, or the event whose listener it was. */
export type CallbackName =
  | 'onLog'
  | 'onStderr'
  | 'onProgress'
  | 'onChunk'
  | 'onReasoningChunk'
  | 'onResponseChunk'
  | 'log'
  | 'stderr'
  | 'exit'
  | 'workerError'
  | 'protocolError'
  | 'unknownMessage';

/**
 * load() options: camelCase names or the wire names (snake_case). Unknown
 * names throw a TypeError. Omitted (or undefined) fields take the worker's
 * defaults; null is sent as null.
 */
export interface LoadOptions {
  /** GGUF file; omitted/null: $LLAMA_WORKER_MODEL, else the bundled default model. */
  modelPath?: Load['model_path'];
  nCtx?: Load['n_ctx'];
  nThreads?: Load['n_threads'];
  nGpuLayers?: Load['n_gpu_layers'];
  seed?: Load['seed'];
  chatFormat?: Load['chat_format'];
  systemPrompt?: Load['system_prompt'];
  useExtraBufts?: Load['use_extra_bufts'];
  nBatch?: Load['n_batch'];
  flashAttn?: Load['flash_attn'];
  /** RAM budget for the KV state of sessions not in the context (worker default: 1/8 of RAM, at most 4 GiB; 0: none). */
  sessionCacheBytes?: Load['session_cache_bytes'];
  model_path?: Load['model_path'];
  n_ctx?: Load['n_ctx'];
  n_threads?: Load['n_threads'];
  n_gpu_layers?: Load['n_gpu_layers'];
  chat_format?: Load['chat_format'];
  system_prompt?: Load['system_prompt'];
  use_extra_bufts?: Load['use_extra_bufts'];
  n_batch?: Load['n_batch'];
  flash_attn?: Load['flash_attn'];
  session_cache_bytes?: Load['session_cache_bytes'];
}

/** A JSON Schema (an object; PROTOCOL.md section 7.11 lists what the worker's grammar supports). */
export type JsonSchema = Record<string, unknown>;

/**
 * What generate()'s `responseFormat` accepts: the wire's ResponseFormat
 * ({type: "json"} or {type: "json_schema", schema}), null (none), "json" (any
 * JSON object), or a bare JSON Schema, sent as {type: "json_schema", schema}.
 */
export type ResponseFormatInput = ResponseFormat | null | 'json' | JsonSchema;

/**
 * generate()'s `reasoning` as an object: the fields of the wire's Reasoning, camelCase names or
 * wire names. Unknown fields and values outside the schema throw a TypeError.
 */
export interface ReasoningOptions {
  /** null: the model's default; false: no thought; true: a thought is opened where the template does not open one. */
  enabled?: Reasoning['enabled'];
  /** At most this many thought tokens (an integer >= 0; 0 closes the thought at once), then the model answers. */
  budgetTokens?: Reasoning['budget_tokens'];
  /** For templates that take one (gpt-oss's `reasoning_effort`). */
  effort?: Reasoning['effort'];
  /** Keep this reply's thought in the session history (`ChatMessage.reasoning`; the template decides whether to show it). */
  keepInHistory?: Reasoning['keep_in_history'];
  budget_tokens?: Reasoning['budget_tokens'];
  keep_in_history?: Reasoning['keep_in_history'];
}

/**
 * What generate()'s `reasoning` accepts: ReasoningOptions (the wire's Reasoning among them), a
 * boolean (`{enabled}`), or null (the model's own default). Ignored by models that do not reason.
 */
export type ReasoningInput = ReasoningOptions | boolean | null;

/** generate() options: camelCase names or the wire names (snake_case). Unknown names throw a TypeError. */
export interface GenerateOptions {
  /** Upper bound on completion tokens (worker default 512). */
  maxTokens?: Generate['max_tokens'];
  temperature?: Generate['temperature'];
  topP?: Generate['top_p'];
  /** Stop sequences; a single string is accepted too. */
  stop?: Generate['stop'] | string;
  topK?: Generate['top_k'];
  minP?: Generate['min_p'];
  repeatPenalty?: Generate['repeat_penalty'];
  seed?: Generate['seed'];
  mode?: Generate['mode'];
  /** The chat session of this turn (default "default"); ignored in completion mode. */
  session?: Generate['session'];
  /**
   * Constrain the reply to JSON: "json" (any JSON object), a JSON Schema, or
   * the wire's {type, schema}. `done.incomplete` then tells whether the reply
   * stopped before its JSON was complete.
   */
  responseFormat?: Generate['response_format'] | ResponseFormatInput;
  /**
   * A reasoning model's thought: {enabled, budgetTokens, effort, keepInHistory} (or the wire
   * names), or a boolean for `enabled`. The thought streams apart from the answer
   * (`onReasoningChunk`, `Generation.reasoning`, `done.reasoning`).
   */
  reasoning?: Generate['reasoning'] | ReasoningInput;
  /** Functions the model may call (passed to the worker as they are; calls come in `done.tool_calls`). */
  tools?: Generate['tools'];
  toolChoice?: Generate['tool_choice'];
  parallelToolCalls?: Generate['parallel_tool_calls'];
  max_tokens?: Generate['max_tokens'];
  top_p?: Generate['top_p'];
  top_k?: Generate['top_k'];
  min_p?: Generate['min_p'];
  repeat_penalty?: Generate['repeat_penalty'];
  response_format?: Generate['response_format'] | ResponseFormatInput;
  tool_choice?: Generate['tool_choice'];
  parallel_tool_calls?: Generate['parallel_tool_calls'];
}

/** reset() options. */
export interface ResetOptions {
  /** undefined/null: keep the current system prompt; "": remove it; a string: the new one. */
  systemPrompt?: Reset['system_prompt'];
  /** The session to clear (default "default"). */
  session?: Reset['session'];
  /** The session's history from now on instead of an empty one (user/assistant messages; nothing is generated). */
  history?: Reset['history'];
  system_prompt?: Reset['system_prompt'];
}

/** preload() options: camelCase names or the wire names. */
export interface PreloadOptions {
  /** The `maxTokens` the coming generate will use (history is trimmed the same way; worker default 512). */
  maxTokens?: Preload['max_tokens'];
  /** The session to preload (default "default"). */
  session?: Preload['session'];
  max_tokens?: Preload['max_tokens'];
}

/** tokenize() options. */
export interface TokenizeOptions {
  /** Parse special-token text ("<|im_start|>") as those tokens, and add BOS when the model wants one (default false). */
  special?: Tokenize['special'];
}

/** detokenize() options. */
export interface DetokenizeOptions {
  /** Render special tokens as their text instead of nothing (default false). */
  special?: Detokenize['special'];
}

/** countTokens() options. */
export interface CountOptions {
  /** The session whose conversation the input continues (default "default"). */
  session?: Count['session'];
}

/**
 * A chat message as accepted by generate() (other properties are dropped): `reasoning` is an
 * assistant turn's thought. The last message may be an assistant one: the reply continues it.
 */
export type MessageInput = Pick<ChatMessage, 'role' | 'content' | 'reasoning' | 'tool_calls' | 'tool_call_id' | 'name'>;
/** generate() input: the next user turn (or the text to continue in completion mode), or a whole conversation. */
export type GenerateInput = string | readonly MessageInput[];

export interface ExitInfo {
  exitCode: number | null;
  /** Signal name, e.g. "SIGKILL". */
  signal: NodeJS.Signals | null;
}

export interface ExitEvent extends ExitInfo {
  /** True when the client closed (or killed) it; false for a crash. */
  expected: boolean;
  /** The crash error when not expected. */
  error: WorkerCrashedError | null;
}

export interface LlamaWorkerClientEvents {
  log: [message: Log];
  stderr: [data: Buffer];
  exit: [event: ExitEvent];
  workerError: [error: LlamaWorkerError];
  protocolError: [error: ProtocolViolationError];
  unknownMessage: [message: Record<string, unknown> & { type: string }];
  /** A callback or listener threw (or its promise rejected); with no listener, console.error reports it. */
  callbackError: [error: unknown, info: { callback: CallbackName }];
}

export declare class LlamaWorkerClient extends EventEmitter implements AsyncDisposable {
  constructor(options?: ClientOptions);
  /** Spawn a worker and complete the handshake. */
  static start(options?: ClientOptions): Promise<LlamaWorkerClient>;

  /** The worker's `ready` message, once started. */
  ready: Ready | null;
  /** The loaded model, or null. */
  model: ModelInfo | null;
  /** The command line used to spawn the worker. */
  readonly command: string[];
  /** Pid of the spawned process (null before start). */
  readonly pid: number | null;
  /** True while the worker runs and the client accepts requests. */
  readonly alive: boolean;
  /** The last few KiB of the worker's stderr. */
  readonly stderrTail: string;
  /** Frames written to the worker's stdin, bytes, and how often a write had to wait for 'drain'. */
  readonly writeStats: { frames: number; bytes: number; drainWaits: number };
  /** The crash that ended the worker, if it died unexpectedly. */
  readonly crashError: WorkerCrashedError | null;
  /** Resolves once the worker process is gone and its output read. */
  readonly exited: Promise<ExitInfo>;
  /** The largest request payload sent: `maxRequestSize`, else the worker's `ready.max_frame_size`, else 16 MiB. */
  readonly maxRequestSize: number;

  /** Spawn the worker and send `init` (idempotent); resolves with `ready`. */
  start(): Promise<Ready>;
  /** Liveness check; resolves with the round trip in milliseconds. */
  ping(options?: CallOptions): Promise<number>;
  /** Load a model; resolves with its info. No timeout unless given; loadStallTimeout applies. */
  load(options?: LoadOptions, callOptions?: LoadCallOptions): Promise<ModelInfo>;
  /**
   * Start a generation: an async iterator of answer text chunks (a reasoning model's thought goes
   * to `stream.reasoning` and the `onReasoningChunk` / `onResponseChunk` callbacks). The final
   * result is `stream.result` after the loop, or `await stream.final()`.
   */
  generate(input: GenerateInput, options?: GenerateOptions, callOptions?: GenerateCallOptions): Generation;
  /** One turn, resolving with the final result. */
  chat(input: GenerateInput, options?: GenerateOptions, callOptions?: ChatCallOptions): Promise<Done>;
  /**
   * One turn whose reply is JSON (`responseFormat`, default "json"), resolving
   * with it parsed. Rejects with IncompleteOutputError when the reply stopped
   * before its JSON was complete. The type parameter is not checked: validate
   * what the grammar does not enforce.
   */
  chatJson<T = unknown>(input: GenerateInput, options?: GenerateOptions, callOptions?: ChatCallOptions): Promise<T>;
  /** The model's token ids for `text`; never busy, also during a generation. ReplyTooLargeError above maxFrameSize. */
  tokenize(text: string, options?: TokenizeOptions, callOptions?: CallOptions): Promise<number[]>;
  /** The text of token ids; an id outside the vocabulary is a BadRequestError. Never busy. */
  detokenize(ids: Iterable<number>, options?: DetokenizeOptions, callOptions?: CallOptions): Promise<string>;
  /**
   * The prompt tokens a generate() of `input` would evaluate (`usage.prompt_tokens`, before trimming);
   * omitted/null: the session's conversation as it stands. Creates no session; never busy.
   */
  countTokens(input?: GenerateInput | null, options?: CountOptions, callOptions?: CallOptions): Promise<TokenCount>;
  /** Stop a request by id, or whatever job runs. Resolves on the worker's `ok`; a no-op once the worker is gone. */
  abort(target?: number | string | null, callOptions?: CallOptions): Promise<void>;
  /**
   * End the thought of a generation (`target`: its request id; omitted: whatever runs); the model
   * then answers. Resolves on `ok`; rejects with NotReasoningError when the target is not thinking.
   */
  endReasoning(target?: number | string | null, callOptions?: CallOptions): Promise<void>;
  /** Clear a session's chat history (optionally replacing its system prompt); the "default" session unless `session` says. */
  reset(options?: string | null | ResetOptions, callOptions?: CallOptions): Promise<void>;
  /** Abort what runs and free the model; the worker stays up. */
  cleanup(options?: CallOptions): Promise<void>;
  /** cleanup -> end stdin -> wait -> SIGTERM -> SIGKILL, each bounded. Idempotent. */
  close(): Promise<ExitInfo>;
  /**
   * close(), for `await using client = await LlamaWorkerClient.start(...)` (where the runtime has
   * Symbol.asyncDispose: Node.js 18.18 / 20.4 and later).
   */
  [Symbol.asyncDispose](): Promise<void>;

  /** A handle on the chat session `name` (default "default"); the same object for the same name. */
  session(name?: string): Session;
  /** Every session of the worker; answered at once, also during a generation. */
  sessions(options?: CallOptions): Promise<SessionList>;
  /**
   * Evaluate the prompt of a (possibly unfinished) input ahead of generate().
   * Any later job request interrupts it (never busy): it then resolves with `complete: false`.
   */
  preload(input: GenerateInput, options?: PreloadOptions, callOptions?: CallOptions): Promise<Preloaded>;
  /** Forget a session and its cached KV state ("default" is emptied instead). */
  closeSession(session: string, callOptions?: CallOptions): Promise<void>;
  /** Write a session's history and KV state to `path` (a path for the worker). */
  saveSession(path: string, options?: { session?: string }, callOptions?: CallOptions): Promise<Saved>;
  /** Replace a session with a saved one; rejects with SessionFileError (session unchanged) when it cannot. */
  restoreSession(path: string, options?: { session?: string }, callOptions?: CallOptions): Promise<Restored>;

  on<K extends keyof LlamaWorkerClientEvents>(event: K, listener: (...args: LlamaWorkerClientEvents[K]) => void): this;
  once<K extends keyof LlamaWorkerClientEvents>(event: K, listener: (...args: LlamaWorkerClientEvents[K]) => void): this;
  off<K extends keyof LlamaWorkerClientEvents>(event: K, listener: (...args: LlamaWorkerClientEvents[K]) => void): this;
}

/**
 * One chat session of a worker (`client.session(name)`): the client's calls
 * bound to its name. Options naming another `session` throw a TypeError.
 */
export declare class Session {
  private constructor();
  readonly client: LlamaWorkerClient;
  readonly name: string;
  generate(input: GenerateInput, options?: GenerateOptions, callOptions?: GenerateCallOptions): Generation;
  chat(input: GenerateInput, options?: GenerateOptions, callOptions?: ChatCallOptions): Promise<Done>;
  chatJson<T = unknown>(input: GenerateInput, options?: GenerateOptions, callOptions?: ChatCallOptions): Promise<T>;
  /** client.countTokens() in this session. */
  countTokens(input?: GenerateInput | null, callOptions?: CallOptions): Promise<TokenCount>;
  reset(options?: string | null | ResetOptions, callOptions?: CallOptions): Promise<void>;
  preload(input: GenerateInput, options?: PreloadOptions, callOptions?: CallOptions): Promise<Preloaded>;
  save(path: string, callOptions?: CallOptions): Promise<Saved>;
  restore(path: string, callOptions?: CallOptions): Promise<Restored>;
  /** Forget the session on the worker; the handle stays usable (the worker recreates it on next use). */
  close(callOptions?: CallOptions): Promise<void>;
  /** Its entry of client.sessions() (zeros when the worker does not know it). */
  info(callOptions?: CallOptions): Promise<SessionInfo>;
}

/** An in-flight generation: iterate it for answer text chunks; the final `done` at the end. */
export declare class Generation implements AsyncIterableIterator<string> {
  private constructor();
  /** The request id (null when it could not be sent). */
  readonly id: number | null;
  /** The request as sent, wire names. */
  readonly request: Omit<Generate, 'id'> & { id?: number };
  /** All answer text received so far (no thought). */
  readonly text: string;
  /** A reasoning model's thought text received so far ("" when none); `result.reasoning` once done. */
  readonly reasoning: string;
  /** The final result once finished (stop_reason "aborted" after an abort), else null. */
  readonly result: Done | null;
  /** The error that ended the generation, if any. */
  readonly error: LlamaWorkerError | null;
  readonly finished: boolean;
  [Symbol.asyncIterator](): this;
  next(): Promise<IteratorResult<string, undefined>>;
  /** Leaving a `for await` early lands here: aborts and waits (bounded) for the worker to end the generation. */
  return(): Promise<IteratorResult<string, undefined>>;
  /** Resolve with the final result (consuming what is left); rejects with the generation's error. */
  final(): Promise<Done>;
  /** Abort; resolves with the (partial) result. */
  abort(): Promise<Done>;
  /**
   * End the thought now (`end_reasoning`); the model goes on to answer. Resolves on `ok`; rejects
   * with NotReasoningError when there is none to end (answering already, never thought, finished).
   */
  endReasoning(callOptions?: CallOptions): Promise<void>;
}

// -- errors -------------------------------------------------------------------

export declare class LlamaWorkerError extends Error {
  constructor(message: string, options?: { code?: string; retryable?: boolean; requestId?: number | string | null; cause?: unknown });
  /** A protocol ErrorCode (reply_too_large included), or one of the client's own: worker_crashed, timeout, closed, protocol_violation, not_started, incomplete_output. */
  code: ErrorCode | 'worker_crashed' | 'timeout' | 'closed' | 'protocol_violation' | 'not_started' | 'incomplete_output' | (string & {});
  /** True when sending the same request again later can succeed unchanged. */
  retryable: boolean;
  /** The id of the request the worker refused, when it came from an `error` frame. */
  requestId: number | string | null;
}
/** invalid_request, bad_frame, frame_too_large, unknown_type (and the two subclasses). */
export declare class BadRequestError extends LlamaWorkerError {}
export declare class NotInitializedError extends BadRequestError {}
export declare class ProtocolMismatchError extends BadRequestError {}
/** not_reasoning: endReasoning() found no thought to end (answering already, never thought, finished). */
export declare class NotReasoningError extends BadRequestError {}
/** busy: retryable. */
export declare class BusyError extends LlamaWorkerError {}
export declare class ModelError extends LlamaWorkerError {}
export declare class NoModelError extends ModelError {}
export declare class ModelNotFoundError extends ModelError {}
export declare class LoadFailedError extends ModelError {}
export declare class ContextOverflowError extends LlamaWorkerError {}
/** aborted: a load stopped by abort/cleanup (an aborted generation ends with stop_reason "aborted" instead). */
export declare class AbortedError extends LlamaWorkerError {}
export declare class GenerationFailedError extends LlamaWorkerError {}
export declare class InternalError extends LlamaWorkerError {}
/** bad_session_file (missing, damaged, not a session file) or session_mismatch (another model or KV layout). */
export declare class SessionFileError extends LlamaWorkerError {}
/** incomplete_output: a structured reply stopped before its JSON was complete (chatJson()); raised by the client. */
export declare class IncompleteOutputError extends LlamaWorkerError {
  constructor(message: string, details: { result: Done; cause?: unknown });
  /** The `done` message of the cut-short reply (`incomplete: true`). */
  result: Done;
}
/** reply_too_large: the reply would exceed maxFrameSize; ask for less at a time, or raise maxFrameSize. */
export declare class ReplyTooLargeError extends LlamaWorkerError {}
/** The process died, or was killed because its output could not be trusted (`cause`: the ProtocolViolationError). */
export declare class WorkerCrashedError extends LlamaWorkerError {
  constructor(message: string, details: { exitCode: number | null; signal: string | null; stderrTail: string; cause?: unknown });
  exitCode: number | null;
  /** e.g. "SIGKILL" */
  signal: string | null;
  stderrTail: string;
}
/** The worker did not answer in time: a call's `timeout` (or requestTimeout), the handshake, a stalled load. */
export declare class WorkerTimeoutError extends LlamaWorkerError {}
export declare class ClientClosedError extends LlamaWorkerError {}
/** Unreadable output (fatal: the cause of a WorkerCrashedError), or an invalid reply to one request (`requestId`). */
export declare class ProtocolViolationError extends LlamaWorkerError {}

/** The class an error code maps to (LlamaWorkerError for unknown codes). */
export declare function errorClassForCode(code: string): typeof LlamaWorkerError;
/** Turn an `error` frame into the matching error. */
export declare function errorFromFrame(frame: Pick<ErrorFrame, 'code' | 'message' | 'retryable'> & { id?: ErrorFrame['id'] }): LlamaWorkerError;

// -- framing ------------------------------------------------------------------

/** 16 MiB: the default frame limit, both ways. */
export declare const DEFAULT_MAX_FRAME_SIZE: number;
/** The worker's default `--max-frame-size` (the same 16 MiB). */
export declare const WORKER_DEFAULT_MAX_FRAME_SIZE: number;
/** 4096: the least `maxFrameSize` (`init.max_frame_size`) allowed. */
export declare const MIN_FRAME_SIZE: number;
export declare class FrameError extends Error {
  fatal: boolean;
  payload?: Buffer;
  /** The request id the payload names (a JSON object without a string `type`), else null. */
  id: number | string | null;
}
/** 4-byte big-endian length + UTF-8 JSON. */
export declare function encodeFrame(message: object): Buffer;
/** Incremental frame decoder for any chunking. */
export declare class FrameDecoder {
  constructor(options?: { maxFrameSize?: number });
  maxFrameSize: number;
  readonly buffered: number;
  /** Whole frames so far (FrameError for undecodable payloads); throws a fatal FrameError on an oversized length. */
  push(data: Uint8Array): Array<WorkerMessage | (Record<string, unknown> & { type: string }) | FrameError>;
}

// -- options tables -------------------------------------------------------------

export declare const LOAD_FIELDS: Readonly<Record<string, string>>;
export declare const GENERATE_FIELDS: Readonly<Record<string, string>>;
export declare const RESET_FIELDS: Readonly<Record<string, string>>;
export declare const PRELOAD_FIELDS: Readonly<Record<string, string>>;
export declare const TOKENIZE_FIELDS: Readonly<Record<string, string>>;
export declare const DETOKENIZE_FIELDS: Readonly<Record<string, string>>;
export declare const COUNT_FIELDS: Readonly<Record<string, string>>;
/** generate()'s `reasoning` object: camelCase name -> wire field of Reasoning. */
export declare const REASONING_FIELDS: Readonly<Record<string, string>>;
/** generate()'s `reasoning` as the wire's Reasoning, checked against the schema (TypeError otherwise). */
export declare function toReasoning(value: ReasoningInput): Reasoning | null;
/** generate()'s `responseFormat` as the wire's ResponseFormat (the rules of host/client.py's response_format()). */
export declare function toResponseFormat(value: ResponseFormatInput): ResponseFormat | null;
