// The Node.js host client: spawn a llama-worker, route its frames, survive its death.
//
// One LlamaWorkerClient owns one worker process. Every request gets an id and
// an entry in a pending table; the stdout reader decodes frames and routes
// each one by id (events to their request, the terminal reply completes it),
// so any number of calls can be in flight (a ping during a generation, an
// abort from a button handler). stderr is drained continuously and its tail
// kept for WorkerCrashedError. The same design as host/client.py.

import { spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';

import {
  BadRequestError,
  ClientClosedError,
  IncompleteOutputError,
  LlamaWorkerError,
  ProtocolMismatchError,
  ProtocolViolationError,
  WorkerCrashedError,
  WorkerTimeoutError,
  errorFromFrame,
} from './errors.js';
import { DEFAULT_MAX_FRAME_SIZE, WORKER_DEFAULT_MAX_FRAME_SIZE, FrameDecoder, FrameError, encodeFrame } from './framing.js';
import {
  COUNT_FIELDS,
  DETOKENIZE_FIELDS,
  GENERATE_FIELDS,
  LOAD_FIELDS,
  PRELOAD_FIELDS,
  RESET_FIELDS,
  TOKENIZE_FIELDS,
  toResponseFormat,
  toWireFields,
  toWireInput,
} from './options.js';

export const PROTOCOL_VERSION = 1;
export const PARENT_ENV_VAR = 'LLAMA_WORKER_PARENT_PID';
/** The session of requests that name none. */
export const DEFAULT_SESSION = 'default';

/** Worker message types that end a request; `chunk` and `progress` are events. */
const TERMINAL_TYPES = new Set(['ready', 'loaded', 'done', 'ok', 'pong', 'error', 'session_list', 'preloaded', 'saved', 'restored', 'tokens', 'text', 'token_count']);
const EVENT_TYPES = new Set(['chunk', 'progress']);

/** After stdout closes (or the process exits), how long to wait for the rest before failing calls. */
const GONE_GRACE_MS = 500;
/** After SIGKILL, how long to wait for the exit before giving up on it. */
const KILL_WAIT_MS = 5_000;

const kRequest = Symbol('request');

/** The default interpreter name: `python` on Windows, `python3` elsewhere. */
export function defaultPython() {
  return process.platform === 'win32' ? 'python' : 'python3';
}

/**
 * The worker command line for the given options (without `args`).
 * @param {{ command?: string | string[], python?: string }} options
 * @returns {string[]}
 */
export function resolveCommand(options = {}) {
  if (options.command != null) {
    const command = typeof options.command === 'string' ? [options.command] : [...options.command];
    if (command.length === 0 || command.some((part) => typeof part !== 'string')) {
      throw new TypeError('command must be a non-empty string or array of strings');
    }
    return command;
  }
  return [options.python ?? defaultPython(), '-m', 'worker'];
}

function delay(ms) {
  return new Promise((resolve) => {
    setTimeout(resolve, ms);
  });
}

/** Resolve to true when `promise` settles within ms, false otherwise (never rejects). */
async function settlesWithin(promise, ms) {
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

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
 * waits for), 'protocolError' (an unreadable worker frame), 'unknownMessage'.
 * It never emits 'error'.
 */
export class LlamaWorkerClient extends EventEmitter {
  /** @type {import('child_process').ChildProcessWithoutNullStreams | null} */
  #child = null;
  #decoder;
  #decoderFailed = false;
  /** @type {Map<number, {type: string, onEvent?: Function, onTerminal: Function, onFail: Function, internal?: boolean}>} */
  #pending = new Map();
  #nextId = 1;
  #writeTail = Promise.resolve();
  #writeStats = { frames: 0, bytes: 0, drainWaits: 0 };
  #stderrTail = Buffer.alloc(0);
  #startPromise = null;
  #closePromise = null;
  #closing = false;
  #gone = false;
  /** @type {WorkerCrashedError | null} */
  #crash = null;
  #killReason = null;
  #exitInfo = null;
  #resolveGone;
  #gonePromise;
  #options;
  /** @type {Map<string, Session>} */
  #sessions = new Map();

  /**
   * Create a client; call start() (or use LlamaWorkerClient.start()) to spawn the worker.
   * @param {import('./index.js').ClientOptions} [options]
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
      loadStallTimeout: options.loadStallTimeout ?? 120_000,
      cleanupTimeout: options.cleanupTimeout ?? 5_000,
      exitTimeout: options.exitTimeout ?? 5_000,
      termTimeout: options.termTimeout ?? 2_000,
      abortTimeout: options.abortTimeout ?? 5_000,
      maxFrameSize: options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE,
      maxRequestSize: options.maxRequestSize ?? WORKER_DEFAULT_MAX_FRAME_SIZE,
      stderrTailBytes: options.stderrTailBytes ?? 8192,
      logLevel: options.logLevel ?? null,
      onLog: options.onLog ?? null,
      onStderr: options.onStderr ?? null,
    };
    this.#decoder = new FrameDecoder({ maxFrameSize: this.#options.maxFrameSize });
    this.#gonePromise = new Promise((resolve) => {
      this.#resolveGone = resolve;
    });
    /** The worker's `ready` message, once started. */
    this.ready = null;
    /** The loaded model (from `loaded.model`), or null. */
    this.model = null;
  }

  /**
   * Spawn a worker and complete the handshake.
   * @param {import('./index.js').ClientOptions} [options]
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

  /** Pid of the spawned process (the worker itself reports its own in `ready.pid`). */
  get pid() {
    return this.#child?.pid ?? null;
  }

  /** True while the worker runs and the client accepts requests. */
  get alive() {
    return this.#child !== null && !this.#gone && !this.#closing && this.ready !== null;
  }

  /** The last few KiB of the worker's stderr. */
  get stderrTail() {
    return this.#stderrTail.toString('utf8');
  }

  /** Frames written to the worker's stdin, bytes, and how often a write had to wait for 'drain'. */
  get writeStats() {
    return { ...this.#writeStats };
  }

  /** The crash that ended the worker, if it died unexpectedly. */
  get crashError() {
    return this.#crash;
  }

  /** Resolves with {exitCode, signal} once the worker process is gone (and its output read). */
  get exited() {
    return this.#gonePromise;
  }

  // -- lifecycle ----------------------------------------------------------------

  /** Spawn the worker and send `init`; resolves with the `ready` message. */
  start() {
    this.#startPromise ??= this.#start();
    return this.#startPromise;
  }

  async #start() {
    if (this.#closing) throw new ClientClosedError('the client is closed');
    this.#spawn();
    let timer;
    const init = this.#call({ type: 'init', protocol_version: PROTOCOL_VERSION, log_level: this.#options.logLevel }, { internal: true });
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => {
        reject(new WorkerTimeoutError(`the worker did not answer init within ${this.#options.handshakeTimeout} ms; stderr: ${this.stderrTail.slice(-2000)}`));
      }, this.#options.handshakeTimeout);
    });
    let ready;
    try {
      ready = await Promise.race([init, timeout]);
      if (ready.protocol_version !== PROTOCOL_VERSION) {
        throw new ProtocolMismatchError(`the worker speaks protocol version ${ready.protocol_version}, this client ${PROTOCOL_VERSION}`);
      }
    } catch (err) {
      init.catch(() => {});
      await this.#kill('handshake failed');
      throw err;
    } finally {
      clearTimeout(timer);
    }
    this.ready = ready;
    return ready;
  }

  #spawn() {
    const o = this.#options;
    const [file, ...args] = this.command;
    const env = { ...(o.inheritEnv ? process.env : {}), ...o.env, [PARENT_ENV_VAR]: String(process.pid) };
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'], env, cwd: o.cwd, windowsHide: true });
    this.#child = child;

    const exited = new Promise((resolve) => {
      child.once('exit', (exitCode, signal) => resolve({ exitCode, signal }));
    });
    const stdoutClosed = new Promise((resolve) => child.stdout.once('close', resolve));
    const stderrClosed = new Promise((resolve) => child.stderr.once('close', resolve));

    child.on('error', (err) => {
      // Spawning failed (ENOENT, EACCES...): no 'exit' will come.
      if (child.pid === undefined) this.#onGone({ exitCode: null, signal: null }, err);
    });
    child.stdin.on('error', () => {
      // EPIPE and friends: the worker is gone; its exit reports it.
    });
    child.stdout.on('data', (data) => this.#onData(data));
    child.stdout.on('error', () => {});
    child.stderr.on('data', (data) => this.#onStderr(data));
    child.stderr.on('error', () => {});

    // Whichever comes first (exit, or stdout closing), give the rest a moment
    // (frames still in the pipe, the stderr tail), then fail what is pending.
    Promise.race([exited, stdoutClosed]).then(async () => {
      await settlesWithin(Promise.all([exited, stdoutClosed, stderrClosed]), GONE_GRACE_MS);
      let info = this.#exitInfo;
      if (info === null && (await settlesWithin(exited, 0))) info = await exited;
      if (info === null) {
        // stdout closed but the process lingers: it can no longer talk to us.
        this.#killReason ??= 'the worker closed its output';
        try {
          child.kill('SIGKILL');
        } catch {}
        if (await settlesWithin(exited, GONE_GRACE_MS)) info = await exited;
      }
      this.#onGone(info ?? { exitCode: null, signal: null });
    });
    exited.then((info) => {
      this.#exitInfo = info;
    });
  }

  /**
   * Shut down in order: `cleanup` (bounded by cleanupTimeout), end stdin, wait
   * for the exit (exitTimeout), SIGTERM (termTimeout), SIGKILL. Idempotent.
   * Resolves with {exitCode, signal}.
   */
  close() {
    this.#closePromise ??= this.#close();
    return this.#closePromise;
  }

  async #close() {
    this.#closing = true;
    if (this.#startPromise) await this.#startPromise.catch(() => {});
    const wasAlive = this.ready !== null && !this.#gone;
    const child = this.#child;
    if (child === null) {
      this.#gone = true;
      this.#resolveGone({ exitCode: null, signal: null });
      return this.#gonePromise;
    }
    const o = this.#options;
    if (wasAlive) {
      const cleanup = this.#call({ type: 'cleanup' }, { internal: true });
      cleanup.catch(() => {});
      await settlesWithin(cleanup, o.cleanupTimeout);
    }
    if (!this.#gone) {
      // Let queued frames go out first (bounded: a hung worker may never drain).
      await settlesWithin(this.#writeTail, o.exitTimeout);
      try {
        child.stdin.end();
      } catch {}
    }
    if (!(await settlesWithin(this.#gonePromise, o.exitTimeout))) {
      this.#signal('SIGTERM');
      if (!(await settlesWithin(this.#gonePromise, o.termTimeout))) {
        this.#signal('SIGKILL');
        // A process SIGKILL cannot end (stuck in the kernel) must not hang the caller forever.
        if (!(await settlesWithin(this.#gonePromise, KILL_WAIT_MS))) return { exitCode: null, signal: null };
      }
    }
    return this.#gonePromise;
  }

  #signal(name) {
    try {
      this.#child?.kill(name);
    } catch {}
  }

  /** Kill at once (SIGKILL) and wait until the process is gone. */
  async #kill(reason) {
    this.#killReason ??= reason;
    if (this.#child === null) return;
    if (!this.#gone) this.#signal('SIGKILL');
    await settlesWithin(this.#gonePromise, KILL_WAIT_MS);
  }

  #onGone(info, spawnError) {
    if (this.#gone) return;
    this.#gone = true;
    const { exitCode, signal } = info;
    const pid = this.#child?.pid;
    let cause;
    if (spawnError) cause = `could not be started: ${spawnError.message}`;
    else if (signal) cause = `was killed by signal ${signal}`;
    else if (exitCode !== null) cause = `exited with code ${exitCode}`;
    else cause = 'closed its output';
    if (this.#killReason) cause += ` (killed by the client: ${this.#killReason})`;
    const expected = this.#closing && !spawnError;
    let error = null;
    if (!expected) {
      error = new WorkerCrashedError(`the worker (${spawnError ? this.command[0] : `pid ${pid}`}) ${cause}`, {
        exitCode,
        signal,
        stderrTail: this.stderrTail,
        cause: spawnError,
      });
      this.#crash = error;
    }
    const failure = error ?? new ClientClosedError(`the client was closed; the worker ${cause}`);
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const entry of pending) {
      try {
        entry.onFail(failure);
      } catch {}
    }
    this.#resolveGone({ exitCode, signal });
    this.emit('exit', { exitCode, signal, expected, error });
  }

  // -- plumbing ---------------------------------------------------------------

  #onStderr(data) {
    const limit = this.#options.stderrTailBytes;
    const joined = Buffer.concat([this.#stderrTail, data]);
    this.#stderrTail = joined.length > limit ? joined.subarray(joined.length - limit) : joined;
    this.#options.onStderr?.(data);
    this.emit('stderr', data);
  }

  #onData(data) {
    if (this.#decoderFailed) return;
    let items;
    try {
      items = this.#decoder.push(data);
    } catch (err) {
      this.#decoderFailed = true;
      const error = new ProtocolViolationError(`unreadable output from the worker: ${err.message}`, { cause: err });
      this.emit('protocolError', error);
      // Nothing after a bad length prefix can be trusted.
      this.#kill(error.message);
      return;
    }
    for (const item of items) {
      if (item instanceof FrameError) {
        this.emit('protocolError', new ProtocolViolationError(`unreadable frame from the worker: ${item.message}`, { cause: item }));
        continue;
      }
      this.#route(item);
    }
  }

  #route(msg) {
    const id = msg.id;
    if (id === null || id === undefined) {
      if (msg.type === 'log') {
        this.#options.onLog?.(msg.level, msg.message);
        this.emit('log', msg);
      } else if (msg.type === 'error') {
        this.emit('workerError', errorFromFrame(msg));
      } else {
        this.emit('unknownMessage', msg);
      }
      return;
    }
    const entry = this.#pending.get(id);
    if (entry === undefined) {
      if (msg.type === 'error') this.emit('workerError', errorFromFrame(msg));
      else if (!TERMINAL_TYPES.has(msg.type) && !EVENT_TYPES.has(msg.type)) this.emit('unknownMessage', msg);
      return;
    }
    if (EVENT_TYPES.has(msg.type)) {
      entry.onEvent?.(msg);
      return;
    }
    if (!TERMINAL_TYPES.has(msg.type)) {
      // A message type this client does not know (a newer worker): ignore it.
      this.emit('unknownMessage', msg);
      return;
    }
    this.#pending.delete(id);
    entry.onTerminal(msg);
  }

  /** Queue a frame; writes wait for 'drain' whenever stdin.write() returns false. */
  #write(frame) {
    const child = this.#child;
    const run = async () => {
      const stdin = child.stdin;
      if (stdin.destroyed || stdin.writableEnded) throw new Error('the worker stdin is closed');
      this.#writeStats.frames += 1;
      this.#writeStats.bytes += frame.length;
      if (!stdin.write(frame)) {
        this.#writeStats.drainWaits += 1;
        await new Promise((resolve) => {
          const done = () => {
            stdin.off('drain', done);
            stdin.off('close', done);
            stdin.off('error', done);
            resolve();
          };
          stdin.on('drain', done);
          stdin.on('close', done);
          stdin.on('error', done);
        });
      }
    };
    const written = this.#writeTail.then(run);
    this.#writeTail = written.catch(() => {});
    return written;
  }

  /**
   * Send a request and register its handlers; returns its id. Throws (at once)
   * when the client is closed, the worker died, or the frame is too large.
   * @param {{ type: string } & Record<string, unknown>} fields
   * @param {{ onEvent?: (msg: any) => void, onTerminal: (msg: any) => void, onFail: (err: Error) => void, internal?: boolean }} handlers
   */
  [kRequest](fields, handlers) {
    if (!handlers.internal) {
      if (this.#crash) throw this.#crash;
      if (this.#closing || this.#gone) throw new ClientClosedError('the client is closed');
      if (this.ready === null) throw new LlamaWorkerError('the client is not started: call start() first', { code: 'not_started' });
    } else if (this.#gone) {
      throw this.#crash ?? new ClientClosedError('the worker is gone');
    }
    const id = this.#nextId++;
    const message = { type: fields.type, id, ...fields };
    const frame = encodeFrame(message);
    if (frame.length - 4 > this.#options.maxRequestSize) {
      throw new BadRequestError(`the ${fields.type} request is ${frame.length - 4} bytes, above maxRequestSize (${this.#options.maxRequestSize})`, {
        code: 'frame_too_large',
      });
    }
    this.#pending.set(id, { type: fields.type, ...handlers });
    // A failed write means the worker is dying: its exit fails the request.
    this.#write(frame).catch(() => {});
    return id;
  }

  /**
   * Send a request, resolve with its terminal reply (reject on `error`).
   * @param {{ type: string } & Record<string, unknown>} fields
   * @param {{ internal?: boolean, onEvent?: (msg: any) => void }} [options]
   */
  #call(fields, { internal = false, onEvent } = {}) {
    return new Promise((resolve, reject) => {
      this[kRequest](fields, {
        internal,
        onEvent,
        onTerminal: (msg) => (msg.type === 'error' ? reject(errorFromFrame(msg)) : resolve(msg)),
        onFail: reject,
      });
    });
  }

  /** Forget a request we stopped waiting for (its late reply is dropped). */
  #abandon(id) {
    const entry = this.#pending.get(id);
    if (entry) {
      this.#pending.set(id, { type: entry.type, onEvent: () => {}, onTerminal: () => {}, onFail: () => {} });
    }
  }

  // -- requests -----------------------------------------------------------------

  /**
   * Liveness check; resolves with the round trip in milliseconds. Answered at
   * once, even during a load or generation.
   * @param {{ timeout?: number }} [options]
   */
  async ping(options = {}) {
    const t0 = performance.now();
    if (options.timeout == null) {
      await this.#call({ type: 'ping' });
      return performance.now() - t0;
    }
    let id;
    const reply = new Promise((resolve, reject) => {
      id = this[kRequest]({ type: 'ping' }, { onTerminal: resolve, onFail: reject });
    });
    reply.catch(() => {});
    if (!(await settlesWithin(reply, options.timeout))) {
      this.#abandon(id);
      throw new WorkerTimeoutError(`no pong within ${options.timeout} ms`);
    }
    await reply;
    return performance.now() - t0;
  }

  /**
   * Load a model (`modelPath` omitted or null: $LLAMA_WORKER_MODEL, else the
   * bundled default). Resolves with the model info. `onProgress` gets
   * fractions 0..1; `signal` aborts the load (rejecting with AbortedError).
   * Rejects with WorkerTimeoutError (after aborting) when no progress arrives
   * for loadStallTimeout.
   * @param {import('./index.js').LoadOptions} [options]
   * @param {{ onProgress?: (fraction: number) => void, signal?: AbortSignal }} [callOptions]
   */
  load(options = {}, { onProgress, signal } = {}) {
    const fields = toWireFields(options, LOAD_FIELDS, 'load');
    return new Promise((resolve, reject) => {
      let id = null;
      let stall = null;
      let settled = false;
      const stallMs = this.#options.loadStallTimeout;
      const finish = () => {
        settled = true;
        clearTimeout(stall);
        signal?.removeEventListener('abort', onAbort);
      };
      const armStall = () => {
        clearTimeout(stall);
        stall = setTimeout(() => {
          if (settled) return;
          finish();
          this.#abandon(id);
          this.abort(id).catch(() => {});
          reject(new WorkerTimeoutError(`the load made no progress for ${stallMs} ms and was aborted`));
        }, stallMs);
      };
      const onAbort = () => {
        if (!settled && id !== null) this.abort(id).catch(() => {});
      };
      try {
        id = this[kRequest]({ type: 'load', ...fields }, {
          onEvent: (msg) => {
            if (settled) return;
            armStall();
            if (onProgress) {
              try {
                onProgress(msg.fraction);
              } catch (err) {
                // A throwing callback ends the load: abort it and surface the error.
                finish();
                this.#abandon(id);
                this.abort(id).catch(() => {});
                reject(err);
              }
            }
          },
          onTerminal: (msg) => {
            if (settled) return;
            finish();
            if (msg.type === 'error') {
              reject(errorFromFrame(msg));
            } else {
              this.model = msg.model;
              resolve(msg.model);
            }
          },
          onFail: (err) => {
            if (settled) return;
            finish();
            reject(err);
          },
        });
      } catch (err) {
        reject(err);
        return;
      }
      armStall();
      if (signal) {
        if (signal.aborted) onAbort();
        else signal.addEventListener('abort', onAbort, { once: true });
      }
    });
  }

  /**
   * Start a generation. Returns at once a Generation: an async iterator of text
   * chunks; its final result is `stream.result` after the loop, or
   * `await stream.final()`. Errors (BusyError, NoModelError, BadRequestError,
   * ContextOverflowError, WorkerCrashedError...) are thrown by the iteration.
   * Breaking out of the loop, or aborting `signal`, aborts the generation on
   * the worker; it then ends with `stop_reason` "aborted" (not an error).
   * `options.session` names the chat session of the turn (default "default").
   * `options.responseFormat` constrains the reply to JSON: "json" (any JSON
   * object), a JSON Schema object, or the wire's {type, schema}; `done.incomplete`
   * then says whether the reply stopped before its JSON was complete.
   * @param {string | Array<{role: string, content: string}>} input
   * @param {import('./index.js').GenerateOptions} [options]
   * @param {{ signal?: AbortSignal }} [callOptions]
   */
  generate(input, options = {}, { signal } = {}) {
    const fields = toWireFields(options, GENERATE_FIELDS, 'generate');
    if (typeof fields.stop === 'string') fields.stop = [fields.stop];
    if (fields.response_format !== undefined) fields.response_format = toResponseFormat(fields.response_format);
    const message = { type: 'generate', input: toWireInput(input), ...fields };
    return new Generation(this, message, signal, this.#options.abortTimeout);
  }

  /**
   * One turn, resolving with the final result; chunks go to `onChunk` if given.
   * @param {string | Array<{role: string, content: string}>} input
   * @param {import('./index.js').GenerateOptions} [options]
   * @param {{ signal?: AbortSignal, onChunk?: (text: string) => void }} [callOptions]
   */
  async chat(input, options = {}, { signal, onChunk } = {}) {
    const stream = this.generate(input, options, { signal });
    for await (const text of stream) onChunk?.(text);
    return stream.result;
  }

  /**
   * One turn whose reply is JSON, resolving with it parsed (JSON.parse).
   * `options.responseFormat` as for generate() (default "json": any JSON
   * object), typically a JSON Schema. Rejects with IncompleteOutputError
   * (`.result`: the `done` message) when the reply stopped before its JSON
   * was complete (raise `maxTokens`). The grammar does not enforce every
   * schema keyword (PROTOCOL.md section 7.11): validate what matters.
   * @param {string | Array<{role: string, content: string}>} input
   * @param {import('./index.js').GenerateOptions} [options]
   * @param {{ signal?: AbortSignal, onChunk?: (text: string) => void }} [callOptions]
   */
  async chatJson(input, options = {}, callOptions = {}) {
    let withFormat = options;
    if (options == null || (typeof options === 'object' && !Array.isArray(options) && options.responseFormat == null && options.response_format == null)) {
      const { responseFormat: _camel, response_format: _wire, ...rest } = options ?? {};
      withFormat = { ...rest, responseFormat: 'json' };
    }
    const result = await this.chat(input, withFormat, callOptions);
    if (result.incomplete) {
      throw new IncompleteOutputError(`the reply ended (${result.stop_reason}) before its JSON was complete`, { result });
    }
    return JSON.parse(result.text);
  }

  /**
   * Stop `target` (a request id), or whatever job runs when omitted. Resolves
   * when the worker acknowledged (`ok`); a no-op once the worker is gone.
   * @param {number | string | null} [target]
   */
  async abort(target = null) {
    if (this.#child === null || this.#gone || this.ready === null) return;
    try {
      await this.#call({ type: 'abort', target }, { internal: true });
    } catch (err) {
      if (!(err instanceof WorkerCrashedError || err instanceof ClientClosedError)) throw err;
    }
  }

  /**
   * Clear a session's chat history (`session`, default "default").
   * `systemPrompt`: undefined/null keeps the current one, "" removes it, a
   * string replaces it. Accepts a string or {systemPrompt, session}.
   * @param {string | null | import('./index.js').ResetOptions} [options]
   */
  async reset(options = {}) {
    const fields = typeof options === 'string' || options === null ? { system_prompt: options } : toWireFields(options, RESET_FIELDS, 'reset');
    await this.#call({ type: 'reset', ...fields });
  }

  /**
   * Abort whatever runs and free the model, context and sessions (the worker
   * stays up and accepts `load`).
   * @param {{ timeout?: number }} [options]
   */
  async cleanup(options = {}) {
    const timeout = options.timeout ?? null;
    if (timeout === null) {
      await this.#call({ type: 'cleanup' });
    } else {
      let id;
      const reply = new Promise((resolve, reject) => {
        id = this[kRequest]({ type: 'cleanup' }, {
          onTerminal: (msg) => (msg.type === 'error' ? reject(errorFromFrame(msg)) : resolve(msg)),
          onFail: reject,
        });
      });
      reply.catch(() => {});
      if (!(await settlesWithin(reply, timeout))) {
        this.#abandon(id);
        throw new WorkerTimeoutError(`cleanup did not complete within ${timeout} ms`);
      }
      await reply;
    }
    this.model = null;
  }

  // -- tokens -----------------------------------------------------------------------

  /**
   * The model's token ids for `text`. `special`: parse special-token text
   * ("<|im_start|>") as those tokens and add BOS when the model wants one.
   * Answered on a thread of its own: never busy, also during a generation.
   * @param {string} text
   * @param {import('./index.js').TokenizeOptions} [options]
   * @returns {Promise<number[]>}
   */
  async tokenize(text, options = {}) {
    if (typeof text !== 'string') throw new TypeError('tokenize() takes a string');
    const reply = await this.#call({ type: 'tokenize', text, ...toWireFields(options, TOKENIZE_FIELDS, 'tokenize') });
    return reply.ids;
  }

  /**
   * The text of token ids (`special`: render special tokens as their text
   * instead of nothing). An id outside the vocabulary is a BadRequestError.
   * Never busy, like tokenize().
   * @param {Iterable<number>} ids
   * @param {import('./index.js').DetokenizeOptions} [options]
   * @returns {Promise<string>}
   */
  async detokenize(ids, options = {}) {
    if (ids == null || typeof ids === 'string' || typeof ids[Symbol.iterator] !== 'function') {
      throw new TypeError('detokenize() takes an array of token ids');
    }
    const reply = await this.#call({ type: 'detokenize', ids: Array.from(ids), ...toWireFields(options, DETOKENIZE_FIELDS, 'detokenize') });
    return reply.text;
  }

  /**
   * The prompt tokens a generate() of `input` would evaluate in a session
   * (template and BOS included, before trimming): `usage.prompt_tokens` of
   * that turn. `input` omitted or null: the session's conversation as it
   * stands. Resolves with the `token_count` message ({session, tokens,
   * n_ctx}); creates no session; never busy, like tokenize().
   * @param {string | Array<{role: string, content: string}> | null} [input]
   * @param {import('./index.js').CountOptions} [options]
   */
  async countTokens(input = null, options = {}) {
    const fields = toWireFields(options, COUNT_FIELDS, 'countTokens');
    return this.#call({ type: 'count', input: input === null ? null : toWireInput(input), ...fields });
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
   */
  sessions() {
    return this.#call({ type: 'sessions' });
  }

  /**
   * Evaluate the prompt of a (possibly unfinished) input into the KV cache,
   * generating nothing; the coming `generate` with the same or a longer input
   * then evaluates only what is new. Resolves with the `preloaded` message.
   * Any later job request (generate, load, reset, preload, a session request,
   * cleanup) interrupts it, never refused as busy: the preload then resolves
   * with `complete: false` and the request runs after it. `signal` interrupts
   * it the same way.
   * @param {string | Array<{role: string, content: string}>} input
   * @param {import('./index.js').PreloadOptions} [options]
   * @param {{ signal?: AbortSignal }} [callOptions]
   */
  preload(input, options = {}, { signal } = {}) {
    const fields = toWireFields(options, PRELOAD_FIELDS, 'preload');
    const message = { type: 'preload', input: toWireInput(input), ...fields };
    return new Promise((resolve, reject) => {
      let id = null;
      const onAbort = () => {
        if (id !== null) this.abort(id).catch(() => {});
      };
      const finish = () => signal?.removeEventListener('abort', onAbort);
      try {
        id = this[kRequest](message, {
          onTerminal: (msg) => {
            finish();
            if (msg.type === 'error') reject(errorFromFrame(msg));
            else resolve(msg);
          },
          onFail: (err) => {
            finish();
            reject(err);
          },
        });
      } catch (err) {
        reject(err);
        return;
      }
      if (signal) {
        if (signal.aborted) onAbort();
        else signal.addEventListener('abort', onAbort, { once: true });
      }
    });
  }

  /**
   * Forget a session and its cached KV state on the worker ("default" is
   * emptied instead).
   * @param {string} session
   */
  async closeSession(session) {
    if (typeof session !== 'string') throw new TypeError('closeSession() takes a session name');
    await this.#call({ type: 'close_session', session });
  }

  /**
   * Write a session's history and KV state to `path` (a path for the worker:
   * relative to its cwd). Resolves with the `saved` message ({path, bytes, session}).
   * @param {string} path
   * @param {{ session?: string }} [options]
   */
  async saveSession(path, options = {}) {
    return this.#call({ type: 'save_session', path: checkPath(path, 'saveSession'), ...sessionField(options, 'saveSession') });
  }

  /**
   * Replace a session with one written by saveSession() (same model and KV
   * layout, any worker). Resolves with the `restored` message ({session,
   * history}). Rejects with SessionFileError (`bad_session_file`,
   * `session_mismatch`) and leaves the session as it was when it cannot.
   * @param {string} path
   * @param {{ session?: string }} [options]
   */
  async restoreSession(path, options = {}) {
    return this.#call({ type: 'restore_session', path: checkPath(path, 'restoreSession'), ...sessionField(options, 'restoreSession') });
  }
}

function checkPath(path, what) {
  if (typeof path !== 'string') throw new TypeError(`${what}() takes a path string`);
  return path;
}

/** {session} (or {}) from the options of saveSession/restoreSession. */
function sessionField(options, what) {
  const fields = toWireFields(options, { session: 'session' }, what);
  return fields.session === undefined ? {} : { session: fields.session };
}

/** Options with `session` set to `name`; a different `session` among them is a mistake. */
function bindSession(options, name, what) {
  if (options == null) return { session: name };
  if (typeof options !== 'object' || Array.isArray(options)) throw new TypeError(`${what} options must be an object`);
  if (options.session !== undefined && options.session !== name) {
    throw new TypeError(`${what}: option session ${JSON.stringify(options.session)} on the session ${JSON.stringify(name)}`);
  }
  return { ...options, session: name };
}

/**
 * One chat session of a worker: `client.session('notes')`. The client's
 * calls bound to this session's name. Sessions share the model; each has its
 * own history and system prompt, and the worker keeps the KV state of
 * recently used ones in RAM, so switching between them does not evaluate
 * their prompts again.
 */
export class Session {
  /**
   * @param {LlamaWorkerClient} client
   * @param {string} name
   */
  constructor(client, name) {
    /** The client this session belongs to. */
    this.client = client;
    /** The session name sent to the worker. */
    this.name = name;
  }

  /** As client.generate(), in this session. */
  generate(input, options = {}, callOptions = {}) {
    return this.client.generate(input, bindSession(options, this.name, 'generate'), callOptions);
  }

  /** As client.chat(), in this session. */
  chat(input, options = {}, callOptions = {}) {
    return this.client.chat(input, bindSession(options, this.name, 'chat'), callOptions);
  }

  /** As client.chatJson(), in this session. */
  chatJson(input, options = {}, callOptions = {}) {
    return this.client.chatJson(input, bindSession(options, this.name, 'chatJson'), callOptions);
  }

  /** As client.countTokens(), in this session (`input` omitted: the conversation as it stands). */
  countTokens(input = null) {
    return this.client.countTokens(input, { session: this.name });
  }

  /** As client.reset(): a string (or null) is the system prompt, or {systemPrompt}. */
  async reset(options = {}) {
    const bound = typeof options === 'string' || options === null ? { systemPrompt: options } : options;
    await this.client.reset(bindSession(bound, this.name, 'reset'));
  }

  /** As client.preload(), in this session. */
  preload(input, options = {}, callOptions = {}) {
    return this.client.preload(input, bindSession(options, this.name, 'preload'), callOptions);
  }

  /** Write this session to `path` (client.saveSession()). */
  save(path) {
    return this.client.saveSession(path, { session: this.name });
  }

  /** Replace this session with a saved one (client.restoreSession()). */
  restore(path) {
    return this.client.restoreSession(path, { session: this.name });
  }

  /** Forget this session on the worker (client.closeSession()); the handle stays usable. */
  close() {
    return this.client.closeSession(this.name);
  }

  /**
   * This session's entry of client.sessions() ({session, messages, tokens,
   * kv_cached, active, kv_bytes, system_prompt}); all zero when the worker
   * does not know it (yet).
   */
  async info() {
    const listing = await this.client.sessions();
    const found = listing.sessions.find((s) => s.session === this.name);
    return found ?? { session: this.name, messages: 0, tokens: 0, kv_cached: false, active: false, kv_bytes: 0, system_prompt: null };
  }
}

if (typeof Symbol.asyncDispose === 'symbol') {
  LlamaWorkerClient.prototype[Symbol.asyncDispose] = function asyncDispose() {
    return this.close();
  };
}

/**
 * An in-flight generation: an async iterator of text chunks (one `chunk`
 * frame each; the worker may merge several tokens into one), ending with the
 * final result (`done`).
 */
export class Generation {
  #client;
  #abortTimeout;
  /** @type {string[]} chunks received but not yet taken by next() */
  #queue = [];
  /** @type {Array<{resolve: Function, reject: Function}>} */
  #waiters = [];
  #result = null;
  #error = null;
  #draining = false;
  #abortSent = false;
  #signal;
  #onAbort;
  #resolveSettled;
  #settled;

  /** @param {LlamaWorkerClient} client */
  constructor(client, message, signal, abortTimeout) {
    this.#client = client;
    this.#abortTimeout = abortTimeout;
    this.#settled = new Promise((resolve) => {
      this.#resolveSettled = resolve;
    });
    /** The request as sent (wire names), id included once sent. */
    this.request = message;
    /** The request id, or null when it could not be sent. */
    this.id = null;
    /** The text received so far (all chunks, whether or not iterated). */
    this.text = '';
    try {
      this.id = client[kRequest](message, {
        onEvent: (msg) => this.#onChunk(msg),
        onTerminal: (msg) => (msg.type === 'error' ? this.#finish(null, errorFromFrame(msg)) : this.#finish(msg, null)),
        onFail: (err) => this.#finish(null, err),
      });
      this.request = { ...message, id: this.id };
    } catch (err) {
      this.#finish(null, err);
    }
    if (signal && !this.finished) {
      this.#signal = signal;
      this.#onAbort = () => this.#sendAbort();
      if (signal.aborted) this.#sendAbort();
      else signal.addEventListener('abort', this.#onAbort, { once: true });
    }
  }

  /** The `done` message once finished successfully (stop_reason, text, usage, timings, seed...), else null. */
  get result() {
    return this.#result;
  }

  /** The error that ended the generation, if any. */
  get error() {
    return this.#error;
  }

  /** True once the generation ended, with a result or an error. */
  get finished() {
    return this.#result !== null || this.#error !== null;
  }

  #onChunk(msg) {
    if (this.finished || msg.type !== 'chunk') return;
    this.text += msg.text;
    if (this.#draining) return;
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve({ value: msg.text, done: false });
    else this.#queue.push(msg.text);
  }

  #finish(result, error) {
    if (this.finished) return;
    this.#result = result;
    this.#error = error;
    if (this.#signal) this.#signal.removeEventListener('abort', this.#onAbort);
    this.#resolveSettled();
    // Waiters only exist while the queue is empty.
    for (const waiter of this.#waiters.splice(0)) {
      if (error) waiter.reject(error);
      else waiter.resolve({ value: undefined, done: true });
    }
  }

  #sendAbort() {
    if (this.finished || this.#abortSent || this.id === null) return;
    this.#abortSent = true;
    this.#client.abort(this.id).catch(() => {});
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  /** @returns {Promise<IteratorResult<string, undefined>>} */
  next() {
    if (this.#queue.length > 0) return Promise.resolve({ value: this.#queue.shift(), done: false });
    if (this.#error) return Promise.reject(this.#error);
    if (this.#result) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /**
   * Called by `for await` when the loop is left early (break, return, throw):
   * aborts the generation and waits (up to abortTimeout) for the worker to end
   * it, so the worker is idle again when the loop has been left.
   */
  async return() {
    this.#draining = true;
    this.#queue = [];
    if (!this.finished) {
      this.#sendAbort();
      await settlesWithin(this.#settled, this.#abortTimeout);
    }
    return { value: undefined, done: true };
  }

  /** Consume what is left and resolve with the final result (rejects with the generation's error). */
  async final() {
    this.#draining = true;
    this.#queue = [];
    await this.#settled;
    if (this.#error) throw this.#error;
    return this.#result;
  }

  /** Stop the generation; resolves with its (partial) result, stop_reason "aborted" unless it had already ended. */
  abort() {
    this.#sendAbort();
    return this.final();
  }
}

