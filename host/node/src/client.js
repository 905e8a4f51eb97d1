// LlamaWorkerClient: the public API of the Node.js host client.
//
// One client owns one worker. It wires the parts together and keeps the
// lifecycle: a WorkerProcess (process.js: spawn, pipes, stderr tail, signals,
// exit detection) feeds stdout to a RequestCore (core.js: ids, the pending
// table, routing, timeouts, signals, withdraw-on-abort), and this file adds
// the handshake, the orderly close, what a crash means for pending calls, the
// events, and one method per protocol request that checks its arguments and
// maps camelCase options to wire fields (options.js). Generation
// (generation.js) and Session (session.js) are built on those methods.
//
// Every callback and listener of the user runs in the guard (guard.js): what
// it throws is reported ('callbackError') and never reaches the reader.
// The same design as host/client.py.

/**
 * @import { ClientOptions, CallOptions, LoadCallOptions, GenerateCallOptions, ChatCallOptions, LoadOptions, GenerateOptions, GenerateInput, ResetOptions, PreloadOptions, TokenizeOptions, DetokenizeOptions, CountOptions } from './index.js'
 * @import { Chunk, Done, Loaded, Log, ModelInfo, Preloaded, Ready, Restored, Saved, SessionList, TokenCount } from './protocol.js'
 * @import { ExitInfo } from './process.js'
 */

import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';

import { RequestCore, callOptions } from './core.js';
import { ClientClosedError, IncompleteOutputError, LlamaWorkerError, ProtocolMismatchError, WorkerCrashedError, WorkerTimeoutError } from './errors.js';
import { DEFAULT_MAX_FRAME_SIZE, MIN_FRAME_SIZE } from './framing.js';
import { Generation } from './generation.js';
import { emitGuarded, guardCall } from './guard.js';
import {
  COUNT_FIELDS,
  DETOKENIZE_FIELDS,
  GENERATE_FIELDS,
  LOAD_FIELDS,
  PRELOAD_FIELDS,
  RESET_FIELDS,
  TOKENIZE_FIELDS,
  toReasoning,
  toResponseFormat,
  toWireFields,
  toWireInput,
} from './options.js';
import { PARENT_ENV_VAR, WorkerProcess, resolveCommand } from './process.js';
import { DEFAULT_SESSION, Session } from './session.js';

/** @type {1} */
export const PROTOCOL_VERSION = 1;

/** The chunk callbacks of generate()'s and chat()'s call options. */
const CHUNK_CALLBACKS = /** @type {const} */ (['onChunk', 'onReasoningChunk', 'onResponseChunk']);

/**
 * The key of the client's dispose method: Symbol.asyncDispose (Node.js 18.18
 * and 20.4 on), else the registry symbol of that name, so that on older
 * runtimes the method neither lands under the key "undefined" nor is missing.
 * @type {typeof Symbol.asyncDispose}
 */
const asyncDispose = Symbol.asyncDispose ?? Symbol.for('Symbol.asyncDispose');

/**
 * Drive one llama-worker process.
 *
 *     const client = await LlamaWorkerClient.start({ python: '.venv/bin/python' });
 *     await client.load({}, { onProgress: (f) => console.log(f) });
 *     const stream = client.generate('Hello!', { maxTokens: 64 });
 *     for await (const text of stream) process.stdout.write(text);
 *     console.log(stream.result.usage);
 *     await client.close();
 *
 * Events: 'log' (a `log` frame), 'stderr' (a Buffer), 'exit' ({exitCode,
 * signal, expected, error}), 'workerError' (an `error` frame no request
 * waits for), 'protocolError' (unreadable or invalid worker output),
 * 'unknownMessage', 'callbackError' ((error, {callback}): a callback or
 * listener of this client threw). It never emits 'error'.
 */
export class LlamaWorkerClient extends EventEmitter {
  /** @type {WorkerProcess | null} */
  #process = null;
  #core;
  /** @type {Promise<Ready> | null} */
  #startPromise = null;
  /** @type {Promise<ExitInfo> | null} */
  #closePromise = null;
  #closing = false;
  #gone = false;
  /** @type {WorkerCrashedError | null} */
  #crash = null;
  /** @type {(info: ExitInfo) => void} */
  #resolveGone = () => {};
  /** @type {Promise<ExitInfo>} */
  #gonePromise;
  #options;
  #maxRequestSizeGiven;
  /** @type {Map<string, Session>} */
  #sessions = new Map();

  /**
   * Create a client; call start() (or use LlamaWorkerClient.start()) to spawn the worker.
   * @param {ClientOptions} [options]
   */
  constructor(options = {}) {
    super();
    this.#options = {
      command: resolveCommand(options),
      args: options.args ? [...options.args] : [],
      env: options.env ?? {},
      inheritEnv: options.inheritEnv ?? true,
      cwd: options.cwd,
      handshakeTimeout: options.handshakeTimeout ?? 60_000,
      requestTimeout: options.requestTimeout === undefined ? 60_000 : options.requestTimeout,
      loadStallTimeout: options.loadStallTimeout ?? 120_000,
      cleanupTimeout: options.cleanupTimeout ?? 5_000,
      exitTimeout: options.exitTimeout ?? 5_000,
      termTimeout: options.termTimeout ?? 2_000,
      abortTimeout: options.abortTimeout ?? 5_000,
      maxFrameSize: options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE,
      stderrTailBytes: options.stderrTailBytes ?? 8192,
      logLevel: options.logLevel ?? null,
      onLog: options.onLog ?? null,
      onStderr: options.onStderr ?? null,
    };
    const { maxFrameSize, requestTimeout } = this.#options;
    if (!Number.isInteger(maxFrameSize) || maxFrameSize < MIN_FRAME_SIZE || maxFrameSize > 0xffffffff) {
      throw new RangeError(`maxFrameSize must be an integer from ${MIN_FRAME_SIZE} to 4294967295, not ${maxFrameSize}`);
    }
    if (requestTimeout !== null && !(typeof requestTimeout === 'number' && requestTimeout >= 0)) {
      throw new TypeError('requestTimeout must be a number of milliseconds >= 0, or null for none');
    }
    this.#maxRequestSizeGiven = options.maxRequestSize != null;
    this.#core = new RequestCore(
      {
        maxFrameSize,
        maxRequestSize: options.maxRequestSize ?? DEFAULT_MAX_FRAME_SIZE,
        requestTimeout,
        abortTimeout: this.#options.abortTimeout,
      },
      {
        admit: (internal) => this.#admit(internal),
        write: (frame) => (this.#process ? this.#process.write(frame) : Promise.reject(new Error('the worker is not started'))),
        kill: (reason) => {
          this.#kill(reason);
        },
        abort: (id) => this.abort(id),
        emit: (event, payload) => this.#emit(event, payload),
        log: (msg) => this.#onLog(msg),
      },
    );
    this.#gonePromise = new Promise((resolve) => {
      this.#resolveGone = resolve;
    });
    /**
     * The worker's `ready` message, once started.
     * @type {Ready | null}
     */
    this.ready = null;
    /**
     * The loaded model (from `loaded.model`), or null.
     * @type {ModelInfo | null}
     */
    this.model = null;
  }

  /**
   * Spawn a worker and complete the handshake.
   * @param {ClientOptions} [options]
   */
  static async start(options) {
    const client = new LlamaWorkerClient(options);
    await client.start();
    return client;
  }

  // -- state ------------------------------------------------------------------

  /** The command line used to spawn the worker. */
  get command() {
    return [...this.#options.command, ...this.#options.args];
  }

  /**
   * Pid of the spawned process (the worker itself reports its own in `ready.pid`).
   * @returns {number | null}
   */
  get pid() {
    return this.#process?.pid ?? null;
  }

  /** True while the worker runs and the client accepts requests. */
  get alive() {
    return this.#process !== null && !this.#gone && !this.#closing && this.ready !== null;
  }

  /** The last few KiB of the worker's stderr. */
  get stderrTail() {
    return this.#process?.stderrTail ?? '';
  }

  /** Frames written to the worker's stdin, bytes, and how often a write had to wait for 'drain'. */
  get writeStats() {
    return this.#process?.writeStats ?? { frames: 0, bytes: 0, drainWaits: 0 };
  }

  /** The crash that ended the worker, if it died unexpectedly. */
  get crashError() {
    return this.#crash;
  }

  /** Resolves with {exitCode, signal} once the worker process is gone (and its output read). */
  get exited() {
    return this.#gonePromise;
  }

  /** The largest request payload sent: `maxRequestSize`, else the worker's `ready.max_frame_size`, else 16 MiB. */
  get maxRequestSize() {
    return this.#core.maxRequestSize;
  }

  // -- lifecycle ----------------------------------------------------------------

  /**
   * Spawn the worker and send `init`; resolves with the `ready` message.
   * @returns {Promise<Ready>}
   */
  start() {
    return (this.#startPromise ??= this.#start());
  }

  async #start() {
    if (this.#closing) throw new ClientClosedError('the client is closed');
    this.#spawn();
    const o = this.#options;
    let ready;
    try {
      const init = { type: /** @type {const} */ ('init'), protocol_version: PROTOCOL_VERSION, log_level: o.logLevel, max_frame_size: o.maxFrameSize };
      ready = await this.#core.call(init, { internal: true, timeout: o.handshakeTimeout });
      if (ready.protocol_version !== PROTOCOL_VERSION) {
        throw new ProtocolMismatchError(`the worker speaks protocol version ${ready.protocol_version}, this client ${PROTOCOL_VERSION}`);
      }
    } catch (err) {
      await this.#kill('handshake failed');
      if (err instanceof WorkerTimeoutError) {
        throw new WorkerTimeoutError(`the worker did not answer init within ${o.handshakeTimeout} ms; stderr: ${this.stderrTail.slice(-2000)}`);
      }
      throw err;
    }
    // The worker's own request limit, unless the caller chose one.
    const limit = ready.max_frame_size;
    if (!this.#maxRequestSizeGiven && typeof limit === 'number' && Number.isInteger(limit) && limit > 0) {
      this.#core.maxRequestSize = limit;
    }
    this.ready = ready;
    return ready;
  }

  #spawn() {
    const o = this.#options;
    const env = { ...(o.inheritEnv ? process.env : {}), ...o.env, [PARENT_ENV_VAR]: String(process.pid) };
    this.#process = new WorkerProcess(this.command, { env, cwd: o.cwd, stderrTailBytes: o.stderrTailBytes }, {
      onStdout: (data) => this.#core.onData(data),
      onStderr: (data) => {
        if (o.onStderr) this.#guard('onStderr', o.onStderr, [data]);
        this.#emit('stderr', data);
      },
      onGone: (info, spawnError) => this.#onGone(info, spawnError),
    });
  }

  /**
   * Shut down in order: `cleanup` (bounded by cleanupTimeout), end stdin, wait
   * for the exit (exitTimeout), SIGTERM (termTimeout), SIGKILL. Idempotent.
   * Resolves with {exitCode, signal}.
   * @returns {Promise<ExitInfo>}
   */
  close() {
    return (this.#closePromise ??= this.#close());
  }

  /** @returns {Promise<ExitInfo>} */
  async #close() {
    this.#closing = true;
    if (this.#startPromise) await this.#startPromise.catch(() => {});
    const wasAlive = this.ready !== null && !this.#gone;
    const proc = this.#process;
    if (proc === null) {
      this.#gone = true;
      this.#resolveGone({ exitCode: null, signal: null });
      return this.#gonePromise;
    }
    const o = this.#options;
    if (wasAlive) await this.#core.call({ type: 'cleanup' }, { internal: true, timeout: o.cleanupTimeout }).catch(() => {});
    // A process SIGKILL cannot end (stuck in the kernel) must not hang the caller forever.
    if (!(await proc.stop(o))) return { exitCode: null, signal: null };
    return this.#gonePromise;
  }

  /**
   * Kill at once (SIGKILL) and wait until the process is gone.
   * @param {string} reason
   */
  async #kill(reason) {
    await this.#process?.kill(reason);
  }

  /**
   * Refuse a request when none may be sent (see RequestCore.send); `internal`
   * requests (init, the cleanup of close(), abort) only need a live process.
   * @param {boolean} internal
   */
  #admit(internal) {
    if (!internal) {
      if (this.#crash) throw this.#crash;
      if (this.#closing || this.#gone) throw new ClientClosedError('the client is closed');
      if (this.ready === null) throw new LlamaWorkerError('the client is not started: call start() first', { code: 'not_started' });
    } else if (this.#gone) {
      throw this.#crash ?? new ClientClosedError('the worker is gone');
    }
  }

  /**
   * The process is gone: fail every pending call (WorkerCrashedError, or
   * ClientClosedError when close() ended it), then emit 'exit'.
   * @param {ExitInfo} info
   * @param {Error | null} spawnError
   */
  #onGone(info, spawnError) {
    if (this.#gone) return;
    this.#gone = true;
    const { exitCode, signal } = info;
    const proc = /** @type {WorkerProcess} */ (this.#process);
    const expected = this.#closing && !spawnError;
    if (!expected) this.#core.outputEnded();
    const crashCause = this.#core.crashCause;
    let cause;
    if (spawnError) cause = `could not be started: ${spawnError.message}`;
    else if (signal) cause = `was killed by signal ${signal}`;
    else if (exitCode !== null) cause = `exited with code ${exitCode}`;
    else cause = 'closed its output';
    if (proc.killReason) cause += ` (killed by the client: ${proc.killReason})`;
    else if (crashCause) cause += ` (${crashCause.message})`;
    let error = null;
    if (!expected) {
      error = new WorkerCrashedError(`the worker (${spawnError ? this.command[0] : `pid ${proc.pid}`}) ${cause}`, {
        exitCode,
        signal,
        stderrTail: this.stderrTail,
        cause: spawnError ?? crashCause ?? undefined,
      });
      this.#crash = error;
    }
    this.#core.failAll(error ?? new ClientClosedError(`the client was closed; the worker ${cause}`));
    this.#resolveGone({ exitCode, signal });
    this.#emit('exit', { exitCode, signal, expected, error });
  }

  // -- user code ------------------------------------------------------------------

  /**
   * Call user code in the guard (guard.js).
   * @param {string} callback
   * @param {Function} fn
   * @param {unknown[]} args
   */
  #guard(callback, fn, args) {
    guardCall(this, callback, fn, args);
  }

  /**
   * emit() with every listener guarded.
   * @param {string} event
   * @param {...unknown} args
   */
  #emit(event, ...args) {
    emitGuarded(this, event, args);
  }

  /** @param {Log} msg */
  #onLog(msg) {
    if (this.#options.onLog) this.#guard('onLog', this.#options.onLog, [msg.level, msg.message]);
    this.#emit('log', msg);
  }

  /**
   * The send options of a control call from its checked call options.
   * @param {{ signal?: AbortSignal, timeout?: number | null }} opts
   */
  #control({ signal, timeout }) {
    return { signal, timeout: this.#core.timeoutFor(timeout) };
  }

  // -- requests -----------------------------------------------------------------
  //
  // Every call takes `signal` (an AbortSignal) and `timeout` (ms; null: none)
  // in its call options. Control calls time out after requestTimeout by
  // default; generate, chat and load never do unless given one.

  /**
   * Liveness check; resolves with the round trip in milliseconds. Answered at
   * once, even during a load or generation.
   * @param {CallOptions} [options]
   * @returns {Promise<number>}
   */
  async ping(options = {}) {
    const opts = callOptions(options, 'ping');
    const t0 = performance.now();
    await this.#core.call({ type: 'ping' }, this.#control(opts));
    return performance.now() - t0;
  }

  /**
   * Load a model (`modelPath` omitted or null: $LLAMA_WORKER_MODEL, else the
   * bundled default). Resolves with the model info. `onProgress` gets
   * fractions 0..1. Aborting `signal` aborts the load in the worker and
   * settles with its answer (AbortedError, or the model when it was too late
   * to stop). Rejects with WorkerTimeoutError (after aborting) at `timeout`,
   * or when no progress arrives for loadStallTimeout.
   * @param {LoadOptions} [options]
   * @param {LoadCallOptions} [callOpts]
   * @returns {Promise<ModelInfo>}
   */
  load(options = {}, callOpts = {}) {
    const fields = toWireFields(options, LOAD_FIELDS, 'load');
    const { onProgress, signal, timeout } = callOptions(callOpts, 'load', ['onProgress']);
    const stallMs = this.#options.loadStallTimeout;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let stall;
    /** @type {import('./core.js').Sent<Loaded> | undefined} */
    let request;
    const armStall = () => {
      clearTimeout(stall);
      stall = setTimeout(() => request?.cancel(new WorkerTimeoutError(`the load made no progress for ${stallMs} ms and was aborted`)), stallMs);
    };
    try {
      request = this.#core.send({ type: 'load', ...fields }, {
        signal,
        timeout: this.#core.timeoutFor(timeout, false),
        onEvent: (msg) => {
          armStall();
          if (onProgress) this.#guard('onProgress', onProgress, [msg.fraction]);
        },
        onReply: (msg) => {
          if (msg.type === 'loaded') this.model = msg.model;
        },
      });
    } catch (err) {
      return Promise.reject(err);
    }
    armStall();
    return request.reply.then(
      (msg) => {
        clearTimeout(stall);
        return msg.model;
      },
      (err) => {
        clearTimeout(stall);
        throw err;
      },
    );
  }

  /**
   * Start a generation. Returns at once a Generation: an async iterator of text
   * chunks; its final result is `stream.result` after the loop, or
   * `await stream.final()`. Errors (BusyError, NoModelError, BadRequestError,
   * ContextOverflowError, WorkerCrashedError...) are thrown by the iteration.
   * Breaking out of the loop, or aborting `signal`, aborts the generation on
   * the worker; it then ends with `stop_reason` "aborted" (not an error). A
   * signal aborted before the call sends nothing: the iteration throws its
   * reason. `timeout`: the generation is aborted and rejects with
   * WorkerTimeoutError after that many ms (default: none).
   * `options.session` names the chat session of the turn (default "default").
   * `options.responseFormat` constrains the reply to JSON: "json" (any JSON
   * object), a JSON Schema object, or the wire's {type, schema}; `done.incomplete`
   * then says whether the reply stopped before its JSON was complete.
   * `options.reasoning` steers a reasoning model's thought ({enabled,
   * budgetTokens, effort, keepInHistory}, or a boolean for `enabled`).
   *
   * The iteration yields answer text only; a reasoning model's thought goes
   * to `stream.reasoning` and the call options `onReasoningChunk(text)` and
   * `onResponseChunk({type: "reasoning" | "text", text})` (every chunk, in
   * order); `onChunk(text)` gets the answer chunks. They run as chunks
   * arrive, whether or not the stream is iterated; what they throw goes to
   * 'callbackError'. `stream.endReasoning()` ends the thought early.
   * @param {GenerateInput} input
   * @param {GenerateOptions} [options]
   * @param {GenerateCallOptions} [callOpts]
   * @returns {Generation}
   */
  generate(input, options = {}, callOpts = {}) {
    const fields = toWireFields(options, GENERATE_FIELDS, 'generate');
    const { signal, timeout, onChunk, onReasoningChunk, onResponseChunk } = callOptions(callOpts, 'generate', CHUNK_CALLBACKS);
    if (typeof fields.stop === 'string') fields.stop = [fields.stop];
    if (fields.response_format !== undefined) fields.response_format = toResponseFormat(fields.response_format);
    if (fields.reasoning !== undefined) fields.reasoning = toReasoning(fields.reasoning);
    const message = /** @type {Omit<import('./protocol.js').Generate, 'id'>} */ ({ type: 'generate', input: toWireInput(input), ...fields });
    const send = { signal, timeout: this.#core.timeoutFor(timeout, false) };
    return new Generation(message, {
      send: (onChunk) => this.#core.send(message, { ...send, onEvent: (msg) => onChunk(/** @type {Chunk} */ (msg)) }),
      abort: (id) => this.abort(id),
      endReasoning: (id, opts) => this.endReasoning(id, opts),
      abortTimeout: this.#options.abortTimeout,
      callbacks: { onChunk, onReasoningChunk, onResponseChunk },
      guard: (callback, fn, args) => this.#guard(callback, fn, args),
    });
  }

  /**
   * One turn, resolving with the final result; answer chunks go to `onChunk`,
   * thought chunks to `onReasoningChunk`, both to `onResponseChunk`, if given
   * (what they throw is reported through 'callbackError'; the turn goes on).
   * @param {GenerateInput} input
   * @param {GenerateOptions} [options]
   * @param {ChatCallOptions} [callOpts]
   * @returns {Promise<Done>}
   */
  async chat(input, options = {}, callOpts = {}) {
    callOptions(callOpts, 'chat', CHUNK_CALLBACKS); // checked here, to name chat() in its TypeError
    return this.generate(input, options, callOpts).final();
  }

  /**
   * One turn whose reply is JSON, resolving with it parsed (JSON.parse).
   * `options.responseFormat` as for generate() (default "json": any JSON
   * object), typically a JSON Schema. Rejects with IncompleteOutputError
   * (`.result`: the `done` message) when the reply stopped before its JSON
   * was complete (raise `maxTokens`). The grammar does not enforce every
   * schema keyword (PROTOCOL.md section 7.11): validate what matters.
   * @template [T=unknown]
   * @param {GenerateInput} input
   * @param {GenerateOptions} [options]
   * @param {ChatCallOptions} [callOpts]
   * @returns {Promise<T>}
   */
  async chatJson(input, options = {}, callOpts = {}) {
    let withFormat = options;
    if (options == null || (typeof options === 'object' && !Array.isArray(options) && options.responseFormat == null && options.response_format == null)) {
      const { responseFormat: _camel, response_format: _wire, ...rest } = options ?? {};
      withFormat = { ...rest, responseFormat: 'json' };
    }
    const result = await this.chat(input, withFormat, callOpts);
    if (result.incomplete) {
      throw new IncompleteOutputError(`the reply ended (${result.stop_reason}) before its JSON was complete`, { result });
    }
    return JSON.parse(result.text);
  }

  /**
   * Stop `target` (a request id), or whatever job runs when omitted. Resolves
   * when the worker acknowledged (`ok`); a no-op once the worker is gone.
   * @param {number | string | null} [target]
   * @param {CallOptions} [options]
   * @returns {Promise<void>}
   */
  async abort(target = null, options = {}) {
    const opts = callOptions(options, 'abort');
    if (this.#process === null || this.#gone || this.ready === null) return;
    try {
      await this.#core.call({ type: 'abort', target }, { ...this.#control(opts), internal: true });
    } catch (err) {
      if (!(err instanceof WorkerCrashedError || err instanceof ClientClosedError)) throw err;
    }
  }

  /**
   * End the thought of `target` (a generate's request id), or of whatever
   * runs when omitted: the worker closes it with the model's own
   * end-of-thought marker and the model goes on to answer. Answered at once.
   * Resolves on the worker's `ok`; rejects with NotReasoningError when the
   * target is not thinking (not running, not a generate, never thought, or
   * answering already: a race with the model closing its own thought is
   * harmless). A Generation has `endReasoning()` for itself.
   * @param {number | string | null} [target]
   * @param {CallOptions} [options]
   * @returns {Promise<void>}
   */
  async endReasoning(target = null, options = {}) {
    if (target !== null && typeof target !== 'number' && typeof target !== 'string') {
      throw new TypeError('endReasoning() takes a request id (or nothing: whatever runs)');
    }
    await this.#core.call({ type: 'end_reasoning', target }, this.#control(callOptions(options, 'endReasoning')));
  }

  /**
   * Clear a session's chat history (`session`, default "default").
   * `systemPrompt`: undefined/null keeps the current one, "" removes it, a
   * string replaces it. Accepts a string or {systemPrompt, session, history}.
   * @param {string | null | ResetOptions} [options]
   * @param {CallOptions} [callOpts]
   * @returns {Promise<void>}
   */
  async reset(options = {}, callOpts = {}) {
    const fields = typeof options === 'string' || options === null ? { system_prompt: options } : toWireFields(options, RESET_FIELDS, 'reset');
    await this.#core.call({ type: 'reset', ...fields }, this.#control(callOptions(callOpts, 'reset')));
  }

  /**
   * Abort whatever runs and free the model, context and sessions (the worker
   * stays up and accepts `load`).
   * @param {CallOptions} [options]
   * @returns {Promise<void>}
   */
  async cleanup(options = {}) {
    /** @param {{ type: string }} msg */
    const onReply = (msg) => {
      if (msg.type === 'ok') this.model = null;
    };
    await this.#core.call({ type: 'cleanup' }, { ...this.#control(callOptions(options, 'cleanup')), onReply });
  }

  // -- tokens -----------------------------------------------------------------------

  /**
   * The model's token ids for `text`. `special`: parse special-token text
   * ("<|im_start|>") as those tokens and add BOS when the model wants one.
   * Answered on a thread of its own: never busy, also during a generation.
   * A reply above maxFrameSize is ReplyTooLargeError.
   * @param {string} text
   * @param {TokenizeOptions} [options]
   * @param {CallOptions} [callOpts]
   * @returns {Promise<number[]>}
   */
  async tokenize(text, options = {}, callOpts = {}) {
    if (typeof text !== 'string') throw new TypeError('tokenize() takes a string');
    const fields = toWireFields(options, TOKENIZE_FIELDS, 'tokenize');
    const reply = await this.#core.call({ type: 'tokenize', text, ...fields }, this.#control(callOptions(callOpts, 'tokenize')));
    return reply.ids;
  }

  /**
   * The text of token ids (`special`: render special tokens as their text
   * instead of nothing). An id outside the vocabulary is a BadRequestError.
   * Never busy, like tokenize().
   * @param {Iterable<number>} ids
   * @param {DetokenizeOptions} [options]
   * @param {CallOptions} [callOpts]
   * @returns {Promise<string>}
   */
  async detokenize(ids, options = {}, callOpts = {}) {
    if (ids == null || typeof ids === 'string' || typeof ids[Symbol.iterator] !== 'function') {
      throw new TypeError('detokenize() takes an array of token ids');
    }
    const fields = toWireFields(options, DETOKENIZE_FIELDS, 'detokenize');
    const reply = await this.#core.call({ type: 'detokenize', ids: Array.from(ids), ...fields }, this.#control(callOptions(callOpts, 'detokenize')));
    return reply.text;
  }

  /**
   * The prompt tokens a generate() of `input` would evaluate in a session
   * (template and BOS included, before trimming): `usage.prompt_tokens` of
   * that turn. `input` omitted or null: the session's conversation as it
   * stands. Resolves with the `token_count` message ({session, tokens,
   * n_ctx}); creates no session; never busy, like tokenize().
   * @param {GenerateInput | null} [input]
   * @param {CountOptions} [options]
   * @param {CallOptions} [callOpts]
   * @returns {Promise<TokenCount>}
   */
  async countTokens(input = null, options = {}, callOpts = {}) {
    const fields = toWireFields(options, COUNT_FIELDS, 'countTokens');
    const message = { type: /** @type {const} */ ('count'), input: input === null ? null : toWireInput(input), ...fields };
    return this.#core.call(message, this.#control(callOptions(callOpts, 'countTokens')));
  }

  // -- sessions -------------------------------------------------------------------

  /**
   * A chat session of this worker: the same calls as the client's, bound to
   * the session `name`. Sessions share the model; each has its own history
   * and system prompt. The worker creates a session on first use; this only
   * makes a handle (one per name, the same object each time).
   * @param {string} [name]
   * @returns {Session}
   */
  session(name = DEFAULT_SESSION) {
    if (typeof name !== 'string' || name.length === 0) throw new TypeError('a session name must be a non-empty string');
    let handle = this.#sessions.get(name);
    if (handle === undefined) {
      handle = new Session(this, name);
      this.#sessions.set(name, handle);
    }
    return handle;
  }

  /**
   * Every session of the worker: the `session_list` message ({sessions,
   * cache_bytes, cache_budget_bytes}). Answered at once, also during a generation.
   * @param {CallOptions} [options]
   * @returns {Promise<SessionList>}
   */
  sessions(options = {}) {
    return this.#core.call({ type: 'sessions' }, this.#control(callOptions(options, 'sessions')));
  }

  /**
   * Evaluate the prompt of a (possibly unfinished) input into the KV cache,
   * generating nothing; the coming `generate` with the same or a longer input
   * then evaluates only what is new. Resolves with the `preloaded` message.
   * Any later job request (generate, load, reset, preload, a session request,
   * cleanup) interrupts it, never refused as busy: the preload then resolves
   * with `complete: false` and the request runs after it. `signal` interrupts
   * it the same way.
   * @param {GenerateInput} input
   * @param {PreloadOptions} [options]
   * @param {CallOptions} [callOpts]
   * @returns {Promise<Preloaded>}
   */
  preload(input, options = {}, callOpts = {}) {
    const fields = toWireFields(options, PRELOAD_FIELDS, 'preload');
    const message = { type: /** @type {const} */ ('preload'), input: toWireInput(input), ...fields };
    return this.#core.call(message, this.#control(callOptions(callOpts, 'preload')));
  }

  /**
   * Forget a session and its cached KV state on the worker ("default" is
   * emptied instead).
   * @param {string} session
   * @param {CallOptions} [callOpts]
   * @returns {Promise<void>}
   */
  async closeSession(session, callOpts = {}) {
    if (typeof session !== 'string') throw new TypeError('closeSession() takes a session name');
    await this.#core.call({ type: 'close_session', session }, this.#control(callOptions(callOpts, 'closeSession')));
  }

  /**
   * Write a session's history and KV state to `path` (a path for the worker:
   * relative to its cwd). Resolves with the `saved` message ({path, bytes,
   * session}); a save aborted through `signal` rejects with AbortedError.
   * @param {string} path
   * @param {{ session?: string }} [options]
   * @param {CallOptions} [callOpts]
   * @returns {Promise<Saved>}
   */
  async saveSession(path, options = {}, callOpts = {}) {
    const message = { type: /** @type {const} */ ('save_session'), path: checkPath(path, 'saveSession'), ...sessionField(options, 'saveSession') };
    return this.#core.call(message, this.#control(callOptions(callOpts, 'saveSession')));
  }

  /**
   * Replace a session with one written by saveSession() (same model and KV
   * layout, any worker). Resolves with the `restored` message ({session,
   * history}). Rejects with SessionFileError (`bad_session_file`,
   * `session_mismatch`) and leaves the session as it was when it cannot.
   * @param {string} path
   * @param {{ session?: string }} [options]
   * @param {CallOptions} [callOpts]
   * @returns {Promise<Restored>}
   */
  async restoreSession(path, options = {}, callOpts = {}) {
    const message = { type: /** @type {const} */ ('restore_session'), path: checkPath(path, 'restoreSession'), ...sessionField(options, 'restoreSession') };
    return this.#core.call(message, this.#control(callOptions(callOpts, 'restoreSession')));
  }

  /**
   * close(), for `await using client = await LlamaWorkerClient.start(...)`.
   * @returns {Promise<void>}
   */
  async [asyncDispose]() {
    await this.close();
  }
}

/**
 * @param {unknown} path
 * @param {string} what
 * @returns {string}
 */
function checkPath(path, what) {
  if (typeof path !== 'string') throw new TypeError(`${what}() takes a path string`);
  return path;
}

/**
 * {session} (or {}) from the options of saveSession/restoreSession.
 * @param {{ session?: string } | null | undefined} options
 * @param {string} what
 * @returns {{ session?: string }}
 */
function sessionField(options, what) {
  const fields = toWireFields(options, { session: 'session' }, what);
  return fields.session === undefined ? {} : { session: /** @type {string} */ (fields.session) };
}
