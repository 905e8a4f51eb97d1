// The Node.js host client: spawn a llama-worker, route its frames, survive its death.
//
// One LlamaWorkerClient owns one worker process. Every request gets an id and
// an entry in a pending table; the stdout reader decodes frames and routes
// each one by id (events to their request, the terminal reply completes it),
// so any number of calls can be in flight (a ping during a generation, an
// abort from a button handler). stderr is drained continuously and its tail
// kept for WorkerCrashedError. The same design as host/client.py.
//
// Failure paths: output that cannot be decoded is fatal (the worker is killed
// and every pending call fails with WorkerCrashedError); an invalid reply that
// names a request fails that request only; every call can time out and be
// cancelled (an AbortSignal); user callbacks and listeners run in a guard, so
// what they throw is reported ('callbackError') and never reaches the reader.

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
import { DEFAULT_MAX_FRAME_SIZE, MIN_FRAME_SIZE, FrameDecoder, FrameError, encodeFrame } from './framing.js';
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
/** Request type -> its reply type (besides `error`), and the event type of the two requests that have one. */
const REPLY_TYPE = {
  init: 'ready', load: 'loaded', generate: 'done', ping: 'pong', abort: 'ok', reset: 'ok', cleanup: 'ok', close_session: 'ok',
  sessions: 'session_list', preload: 'preloaded', save_session: 'saved', restore_session: 'restored',
  tokenize: 'tokens', detokenize: 'text', count: 'token_count',
};
const EVENT_OF = { load: 'progress', generate: 'chunk' };
/** The field of a message this client relies on, and its check. */
const SHAPE = {
  chunk: ['text', (v) => typeof v === 'string'],
  progress: ['fraction', (v) => typeof v === 'number'],
  done: ['text', (v) => typeof v === 'string'],
  text: ['text', (v) => typeof v === 'string'],
  tokens: ['ids', Array.isArray],
  loaded: ['model', (v) => v !== null && typeof v === 'object'],
  ready: ['protocol_version', Number.isInteger],
};
/** Requests that start work on the worker's model thread: cancelling one aborts it there. */
const JOB_TYPES = new Set(['load', 'generate', 'preload', 'reset', 'close_session', 'save_session', 'restore_session']);
/** `error` codes with id null that mean a request of ours was lost (PROTOCOL.md section 2.4). */
const LOST_REQUEST_CODES = new Set(['bad_frame', 'invalid_request', 'unknown_type']);

/** After stdout closes (or the process exits), how long to wait for the rest before failing calls. */
const GONE_GRACE_MS = 500;
/** After SIGKILL, how long to wait for the exit before giving up on it. */
const KILL_WAIT_MS = 5_000;
/** The longest timer Node.js keeps (a longer timeout means none). */
const MAX_TIMER_MS = 2 ** 31 - 1;

const kRequest = Symbol('request');
const kSend = Symbol('send');

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

/** console.error that cannot throw (a closed stdout in an Electron app, a patched console). */
function consoleError(...args) {
  try {
    console.error(...args);
  } catch {}
}

/**
 * Check a call's options: `signal` and `timeout`, plus the callbacks named in `callbacks`.
 * @returns {{ signal?: AbortSignal, timeout?: number | null } & Record<string, any>}
 */
function callOptions(options, what, callbacks = []) {
  if (options == null) return {};
  if (typeof options !== 'object' || Array.isArray(options)) throw new TypeError(`${what}: call options must be an object`);
  const known = ['signal', 'timeout', ...callbacks];
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) throw new TypeError(`${what}: unknown call option ${JSON.stringify(key)} (known: ${known.join(', ')})`);
  }
  const { signal, timeout } = options;
  if (signal != null && (typeof signal.aborted !== 'boolean' || typeof signal.addEventListener !== 'function')) {
    throw new TypeError(`${what}: signal must be an AbortSignal`);
  }
  if (timeout != null && !(typeof timeout === 'number' && timeout >= 0)) {
    throw new TypeError(`${what}: timeout must be a number of milliseconds >= 0, or null for none`);
  }
  for (const key of callbacks) {
    if (options[key] != null && typeof options[key] !== 'function') throw new TypeError(`${what}: ${key} must be a function`);
  }
  return { ...options, signal: signal ?? undefined };
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
 * waits for), 'protocolError' (unreadable or invalid worker output),
 * 'unknownMessage', 'callbackError' ((error, {callback}): a callback or
 * listener of this client threw). It never emits 'error'.
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
  /** @type {Error | null} why the worker is (about to be) gone: the cause of the WorkerCrashedError */
  #crashCause = null;
  #exitInfo = null;
  #resolveGone;
  #gonePromise;
  #options;
  #maxRequestSizeGiven;
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
      requestTimeout: options.requestTimeout === undefined ? 60_000 : options.requestTimeout,
      loadStallTimeout: options.loadStallTimeout ?? 120_000,
      cleanupTimeout: options.cleanupTimeout ?? 5_000,
      exitTimeout: options.exitTimeout ?? 5_000,
      termTimeout: options.termTimeout ?? 2_000,
      abortTimeout: options.abortTimeout ?? 5_000,
      maxFrameSize: options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE,
      maxRequestSize: options.maxRequestSize ?? DEFAULT_MAX_FRAME_SIZE,
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
    this.#decoder = new FrameDecoder({ maxFrameSize });
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

  /** The largest request payload sent: `maxRequestSize`, else the worker's `ready.max_frame_size`, else 16 MiB. */
  get maxRequestSize() {
    return this.#options.maxRequestSize;
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
    const o = this.#options;
    let ready;
    try {
      const init = { type: 'init', protocol_version: PROTOCOL_VERSION, log_level: o.logLevel, max_frame_size: o.maxFrameSize };
      ready = await this.#call(init, { internal: true, timeout: o.handshakeTimeout });
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
    if (!this.#maxRequestSizeGiven && Number.isInteger(ready.max_frame_size) && ready.max_frame_size > 0) {
      o.maxRequestSize = ready.max_frame_size;
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
    if (wasAlive) await this.#call({ type: 'cleanup' }, { internal: true, timeout: o.cleanupTimeout }).catch(() => {});
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
    const expected = this.#closing && !spawnError;
    if (!expected && !this.#decoderFailed && this.#decoder.buffered > 0) {
      const truncated = new ProtocolViolationError(`the worker's output ended inside a frame (${this.#decoder.buffered} bytes of it arrived)`);
      this.#crashCause ??= truncated;
      this.#emit('protocolError', truncated);
    }
    let cause;
    if (spawnError) cause = `could not be started: ${spawnError.message}`;
    else if (signal) cause = `was killed by signal ${signal}`;
    else if (exitCode !== null) cause = `exited with code ${exitCode}`;
    else cause = 'closed its output';
    if (this.#killReason) cause += ` (killed by the client: ${this.#killReason})`;
    else if (this.#crashCause) cause += ` (${this.#crashCause.message})`;
    let error = null;
    if (!expected) {
      error = new WorkerCrashedError(`the worker (${spawnError ? this.command[0] : `pid ${pid}`}) ${cause}`, {
        exitCode,
        signal,
        stderrTail: this.stderrTail,
        cause: spawnError ?? this.#crashCause ?? undefined,
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
    this.#emit('exit', { exitCode, signal, expected, error });
  }

  // -- user code ------------------------------------------------------------------

  /**
   * Call user code (a callback, a listener): what it throws, or the promise it
   * returns rejects with, goes to 'callbackError' and never into the client.
   */
  #guard(callback, fn, args, thisArg = undefined) {
    try {
      const out = Reflect.apply(fn, thisArg, args);
      if (out !== null && typeof out === 'object' && typeof out.then === 'function') {
        out.then(undefined, (err) => this.#callbackFailed(err, callback));
      }
    } catch (err) {
      this.#callbackFailed(err, callback);
    }
  }

  /** Report a failed callback to the 'callbackError' listeners, or console.error when there is none. */
  #callbackFailed(error, callback) {
    const listeners = this.rawListeners('callbackError');
    if (listeners.length === 0) {
      consoleError(`llama-worker-client: ${callback} threw (add a 'callbackError' listener to handle this):`, error);
      return;
    }
    for (const listener of listeners) {
      try {
        const out = listener.call(this, error, { callback });
        if (out !== null && typeof out === 'object' && typeof out.then === 'function') {
          out.then(undefined, (err) => consoleError("llama-worker-client: a 'callbackError' listener failed:", err));
        }
      } catch (err) {
        consoleError("llama-worker-client: a 'callbackError' listener threw:", err);
      }
    }
  }

  /** emit() with every listener guarded: one that throws neither stops the others nor reaches the caller. */
  #emit(event, ...args) {
    for (const listener of this.rawListeners(event)) this.#guard(event, listener, args, this);
  }

  // -- plumbing ---------------------------------------------------------------

  #onStderr(data) {
    const limit = this.#options.stderrTailBytes;
    const joined = Buffer.concat([this.#stderrTail, data]);
    this.#stderrTail = joined.length > limit ? joined.subarray(joined.length - limit) : joined;
    if (this.#options.onStderr) this.#guard('onStderr', this.#options.onStderr, [data]);
    this.#emit('stderr', data);
  }

  #onData(data) {
    if (this.#decoderFailed) return;
    let items;
    try {
      items = this.#decoder.push(data);
    } catch (err) {
      this.#fatal(new ProtocolViolationError(`unreadable output from the worker: ${err.message}`, { cause: err }));
      return;
    }
    for (const item of items) {
      if (this.#decoderFailed) return;
      if (!(item instanceof FrameError)) this.#route(item);
      else if (item.id !== null) this.#invalidReply(item.id, `an unreadable frame (${item.message})`, item, false);
      else this.#fatal(new ProtocolViolationError(`unreadable output from the worker: ${item.message}`, { cause: item }));
    }
  }

  /** Output that cannot be trusted: report it and kill the worker (its exit fails every pending call). */
  #fatal(error) {
    if (this.#decoderFailed) return;
    this.#decoderFailed = true;
    this.#crashCause ??= error;
    this.#emit('protocolError', error);
    this.#kill(error.message);
  }

  /**
   * A frame naming request `id` that is not a valid reply or event for it: that
   * request alone fails with ProtocolViolationError (a job still running in the
   * worker is aborted, its later frames dropped).
   */
  #invalidReply(id, what, cause, terminal) {
    const entry = this.#pending.get(id);
    const error = new ProtocolViolationError(`the worker sent ${what} for request ${JSON.stringify(id)}${entry ? ` (${entry.type})` : ''}`, { cause, requestId: id });
    this.#emit('protocolError', error);
    if (entry === undefined) return;
    if (terminal || EVENT_OF[entry.type] === undefined) {
      this.#pending.delete(id);
    } else {
      this.#abandon(id);
      this.abort(id).catch(() => {});
    }
    try {
      entry.onFail(error);
    } catch {}
  }

  #route(msg) {
    const id = msg.id;
    if (id === null || id === undefined) {
      this.#routeUnaddressed(msg);
      return;
    }
    const known = TERMINAL_TYPES.has(msg.type) || EVENT_TYPES.has(msg.type);
    const entry = this.#pending.get(id);
    if (entry === undefined) {
      if (msg.type === 'error') this.#emit('workerError', errorFromFrame(msg));
      else if (!known) this.#emit('unknownMessage', msg);
      return;
    }
    if (!known) {
      // A message type this client does not know (a newer worker): ignore it.
      this.#emit('unknownMessage', msg);
      return;
    }
    const problem = replyProblem(entry.type, msg);
    if (problem !== null) {
      this.#invalidReply(id, problem, undefined, TERMINAL_TYPES.has(msg.type));
    } else if (EVENT_TYPES.has(msg.type)) {
      entry.onEvent?.(msg);
    } else {
      this.#pending.delete(id);
      entry.onTerminal(msg);
    }
  }

  /** Frames with id null: `log`s, and errors about frames the worker could not read. */
  #routeUnaddressed(msg) {
    if (msg.type === 'log') {
      if (this.#options.onLog) this.#guard('onLog', this.#options.onLog, [msg.level, msg.message]);
      this.#emit('log', msg);
    } else if (msg.type === 'error') {
      const error = errorFromFrame(msg);
      this.#emit('workerError', error);
      if (LOST_REQUEST_CODES.has(error.code)) {
        // Every request of this client has an id: one of them was lost, and its call would wait forever.
        this.#fatal(new ProtocolViolationError(`the worker could not read a request (${error.code}: ${error.message})`, { cause: error }));
      } else if (error.code === 'frame_too_large') {
        this.#crashCause ??= error; // the worker exits with code 3
      }
    } else {
      this.#emit('unknownMessage', msg);
    }
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
   * Send a request with a timeout and a signal. Returns {id, reply, cancel} at
   * once; `reply` settles with the terminal message (rejects with the error of
   * an `error` reply, a crash...). Throws, sending nothing, when `signal` is
   * already aborted (its reason) or the request cannot be sent.
   *
   * Cancelling a job (`signal`, `timeout`, `cancel(error)`) sends `abort` for
   * it and waits, up to abortTimeout, for its terminal reply, so the worker is
   * idle again when the call settles; any other request is just forgotten (its
   * late reply dropped). After the signal the call settles with the worker's
   * terminal reply (an aborted load: AbortedError; a preload: complete false;
   * a generation: stop_reason "aborted"), or rejects with `signal.reason` when
   * none came; after a timeout (or cancel(error)) it rejects with
   * WorkerTimeoutError (that error).
   * @param {{ type: string } & Record<string, unknown>} fields
   * @param {{ signal?: AbortSignal, timeout?: number | null, onEvent?: (msg: any) => void, onReply?: (msg: any) => void, internal?: boolean }} [options]
   */
  [kSend](fields, { signal, timeout = null, onEvent, onReply, internal = false } = {}) {
    if (signal?.aborted) throw signal.reason;
    const job = JOB_TYPES.has(fields.type);
    let resolve;
    let reject;
    const reply = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    let settled = false;
    let cancelled = false;
    let cancelError = null;
    let grace = null;
    let timer = null;
    const settle = (ok, value) => {
      if (settled) return;
      settled = true;
      clearTimeout(grace);
      signal?.removeEventListener('abort', onSignal);
      timer?.removeEventListener('abort', onTimeout);
      (ok ? resolve : reject)(value);
    };
    const id = this[kRequest](fields, {
      internal,
      onEvent: (msg) => {
        if (!settled) onEvent?.(msg);
      },
      onTerminal: (msg) => {
        onReply?.(msg);
        if (cancelError !== null) settle(false, cancelError);
        else if (msg.type === 'error') settle(false, errorFromFrame(msg));
        else settle(true, msg);
      },
      onFail: (err) => settle(false, err),
    });
    const cancel = (error, fallback = error) => {
      if (settled || cancelled) return;
      cancelled = true;
      cancelError = error;
      if (!job) {
        this.#abandon(id);
        settle(false, fallback);
        return;
      }
      this.abort(id).catch(() => {});
      grace = setTimeout(() => {
        this.#abandon(id);
        settle(false, fallback);
      }, this.#options.abortTimeout);
    };
    const onSignal = () => cancel(null, signal.reason);
    const onTimeout = () => cancel(new WorkerTimeoutError(`no reply to ${fields.type} (request ${id}) within ${timeout} ms${job ? '; it was aborted' : ''}`));
    signal?.addEventListener('abort', onSignal, { once: true });
    if (timeout !== null && timeout <= MAX_TIMER_MS) {
      // AbortSignal.timeout's timer does not keep the process alive; the worker's pipes do.
      timer = AbortSignal.timeout(Math.ceil(timeout));
      timer.addEventListener('abort', onTimeout, { once: true });
    }
    return { id, reply, cancel };
  }

  /**
   * Send a request and resolve with its terminal reply (see [kSend]); a
   * request that cannot be sent rejects instead of throwing.
   * @param {{ type: string } & Record<string, unknown>} fields
   * @param {Parameters<LlamaWorkerClient[typeof kSend]>[1]} [options]
   */
  #call(fields, options) {
    try {
      return this[kSend](fields, options).reply;
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** A call's timeout in ms (null: none): as given (null or Infinity: none), else requestTimeout for control calls, none for the others. */
  #timeout(given, control = true) {
    const value = given === undefined ? (control ? this.#options.requestTimeout : null) : given;
    return value === null || value === Infinity ? null : value;
  }

  /** The send options of a control call from its checked call options. */
  #control({ signal, timeout }) {
    return { signal, timeout: this.#timeout(timeout) };
  }

  /** Forget a request we stopped waiting for (its late frames are dropped). */
  #abandon(id) {
    const entry = this.#pending.get(id);
    if (entry) {
      this.#pending.set(id, { type: entry.type, onEvent: () => {}, onTerminal: () => {}, onFail: () => {} });
    }
  }

  // -- requests -----------------------------------------------------------------
  //
  // Every call takes `signal` (an AbortSignal) and `timeout` (ms; null: none)
  // in its call options. Control calls time out after requestTimeout by
  // default; generate, chat and load never do unless given one.

  /**
   * Liveness check; resolves with the round trip in milliseconds. Answered at
   * once, even during a load or generation.
   * @param {import('./index.js').CallOptions} [options]
   */
  async ping(options = {}) {
    const opts = callOptions(options, 'ping');
    const t0 = performance.now();
    await this.#call({ type: 'ping' }, this.#control(opts));
    return performance.now() - t0;
  }

  /**
   * Load a model (`modelPath` omitted or null: $LLAMA_WORKER_MODEL, else the
   * bundled default). Resolves with the model info. `onProgress` gets
   * fractions 0..1. Aborting `signal` aborts the load in the worker and
   * settles with its answer (AbortedError, or the model when it was too late
   * to stop). Rejects with WorkerTimeoutError (after aborting) at `timeout`,
   * or when no progress arrives for loadStallTimeout.
   * @param {import('./index.js').LoadOptions} [options]
   * @param {import('./index.js').LoadCallOptions} [callOpts]
   */
  load(options = {}, callOpts = {}) {
    const fields = toWireFields(options, LOAD_FIELDS, 'load');
    const { onProgress, signal, timeout } = callOptions(callOpts, 'load', ['onProgress']);
    const stallMs = this.#options.loadStallTimeout;
    let stall = null;
    let request;
    const armStall = () => {
      clearTimeout(stall);
      stall = setTimeout(() => request.cancel(new WorkerTimeoutError(`the load made no progress for ${stallMs} ms and was aborted`)), stallMs);
    };
    try {
      request = this[kSend]({ type: 'load', ...fields }, {
        signal,
        timeout: this.#timeout(timeout, false),
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
   * @param {string | Array<{role: string, content: string}>} input
   * @param {import('./index.js').GenerateOptions} [options]
   * @param {import('./index.js').CallOptions} [callOpts]
   */
  generate(input, options = {}, callOpts = {}) {
    const fields = toWireFields(options, GENERATE_FIELDS, 'generate');
    const { signal, timeout } = callOptions(callOpts, 'generate');
    if (typeof fields.stop === 'string') fields.stop = [fields.stop];
    if (fields.response_format !== undefined) fields.response_format = toResponseFormat(fields.response_format);
    const message = { type: 'generate', input: toWireInput(input), ...fields };
    return new Generation(this, message, { signal, timeout: this.#timeout(timeout, false) }, this.#options.abortTimeout);
  }

  /**
   * One turn, resolving with the final result; chunks go to `onChunk` if given
   * (what it throws is reported through 'callbackError'; the turn goes on).
   * @param {string | Array<{role: string, content: string}>} input
   * @param {import('./index.js').GenerateOptions} [options]
   * @param {import('./index.js').ChatCallOptions} [callOpts]
   */
  async chat(input, options = {}, callOpts = {}) {
    const { onChunk, ...rest } = callOptions(callOpts, 'chat', ['onChunk']);
    const stream = this.generate(input, options, rest);
    for await (const text of stream) {
      if (onChunk) this.#guard('onChunk', onChunk, [text]);
    }
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
   * @param {import('./index.js').ChatCallOptions} [callOpts]
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
   * @param {import('./index.js').CallOptions} [options]
   */
  async abort(target = null, options = {}) {
    const opts = callOptions(options, 'abort');
    if (this.#child === null || this.#gone || this.ready === null) return;
    try {
      await this.#call({ type: 'abort', target }, { ...this.#control(opts), internal: true });
    } catch (err) {
      if (!(err instanceof WorkerCrashedError || err instanceof ClientClosedError)) throw err;
    }
  }

  /**
   * Clear a session's chat history (`session`, default "default").
   * `systemPrompt`: undefined/null keeps the current one, "" removes it, a
   * string replaces it. Accepts a string or {systemPrompt, session, history}.
   * @param {string | null | import('./index.js').ResetOptions} [options]
   * @param {import('./index.js').CallOptions} [callOpts]
   */
  async reset(options = {}, callOpts = {}) {
    const fields = typeof options === 'string' || options === null ? { system_prompt: options } : toWireFields(options, RESET_FIELDS, 'reset');
    await this.#call({ type: 'reset', ...fields }, this.#control(callOptions(callOpts, 'reset')));
  }

  /**
   * Abort whatever runs and free the model, context and sessions (the worker
   * stays up and accepts `load`).
   * @param {import('./index.js').CallOptions} [options]
   */
  async cleanup(options = {}) {
    const onReply = (msg) => {
      if (msg.type === 'ok') this.model = null;
    };
    await this.#call({ type: 'cleanup' }, { ...this.#control(callOptions(options, 'cleanup')), onReply });
  }

  // -- tokens -----------------------------------------------------------------------

  /**
   * The model's token ids for `text`. `special`: parse special-token text
   * ("<|im_start|>") as those tokens and add BOS when the model wants one.
   * Answered on a thread of its own: never busy, also during a generation.
   * A reply above maxFrameSize is ReplyTooLargeError.
   * @param {string} text
   * @param {import('./index.js').TokenizeOptions} [options]
   * @param {import('./index.js').CallOptions} [callOpts]
   * @returns {Promise<number[]>}
   */
  async tokenize(text, options = {}, callOpts = {}) {
    if (typeof text !== 'string') throw new TypeError('tokenize() takes a string');
    const fields = toWireFields(options, TOKENIZE_FIELDS, 'tokenize');
    const reply = await this.#call({ type: 'tokenize', text, ...fields }, this.#control(callOptions(callOpts, 'tokenize')));
    return reply.ids;
  }

  /**
   * The text of token ids (`special`: render special tokens as their text
   * instead of nothing). An id outside the vocabulary is a BadRequestError.
   * Never busy, like tokenize().
   * @param {Iterable<number>} ids
   * @param {import('./index.js').DetokenizeOptions} [options]
   * @param {import('./index.js').CallOptions} [callOpts]
   * @returns {Promise<string>}
   */
  async detokenize(ids, options = {}, callOpts = {}) {
    if (ids == null || typeof ids === 'string' || typeof ids[Symbol.iterator] !== 'function') {
      throw new TypeError('detokenize() takes an array of token ids');
    }
    const fields = toWireFields(options, DETOKENIZE_FIELDS, 'detokenize');
    const reply = await this.#call({ type: 'detokenize', ids: Array.from(ids), ...fields }, this.#control(callOptions(callOpts, 'detokenize')));
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
   * @param {import('./index.js').CallOptions} [callOpts]
   */
  async countTokens(input = null, options = {}, callOpts = {}) {
    const fields = toWireFields(options, COUNT_FIELDS, 'countTokens');
    const message = { type: 'count', input: input === null ? null : toWireInput(input), ...fields };
    return this.#call(message, this.#control(callOptions(callOpts, 'countTokens')));
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
   * @param {import('./index.js').CallOptions} [options]
   */
  sessions(options = {}) {
    return this.#call({ type: 'sessions' }, this.#control(callOptions(options, 'sessions')));
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
   * @param {import('./index.js').CallOptions} [callOpts]
   */
  preload(input, options = {}, callOpts = {}) {
    const fields = toWireFields(options, PRELOAD_FIELDS, 'preload');
    const message = { type: 'preload', input: toWireInput(input), ...fields };
    return this.#call(message, this.#control(callOptions(callOpts, 'preload')));
  }

  /**
   * Forget a session and its cached KV state on the worker ("default" is
   * emptied instead).
   * @param {string} session
   * @param {import('./index.js').CallOptions} [callOpts]
   */
  async closeSession(session, callOpts = {}) {
    if (typeof session !== 'string') throw new TypeError('closeSession() takes a session name');
    await this.#call({ type: 'close_session', session }, this.#control(callOptions(callOpts, 'closeSession')));
  }

  /**
   * Write a session's history and KV state to `path` (a path for the worker:
   * relative to its cwd). Resolves with the `saved` message ({path, bytes,
   * session}); a save aborted through `signal` rejects with AbortedError.
   * @param {string} path
   * @param {{ session?: string }} [options]
   * @param {import('./index.js').CallOptions} [callOpts]
   */
  async saveSession(path, options = {}, callOpts = {}) {
    const message = { type: 'save_session', path: checkPath(path, 'saveSession'), ...sessionField(options, 'saveSession') };
    return this.#call(message, this.#control(callOptions(callOpts, 'saveSession')));
  }

  /**
   * Replace a session with one written by saveSession() (same model and KV
   * layout, any worker). Resolves with the `restored` message ({session,
   * history}). Rejects with SessionFileError (`bad_session_file`,
   * `session_mismatch`) and leaves the session as it was when it cannot.
   * @param {string} path
   * @param {{ session?: string }} [options]
   * @param {import('./index.js').CallOptions} [callOpts]
   */
  async restoreSession(path, options = {}, callOpts = {}) {
    const message = { type: 'restore_session', path: checkPath(path, 'restoreSession'), ...sessionField(options, 'restoreSession') };
    return this.#call(message, this.#control(callOptions(callOpts, 'restoreSession')));
  }
}

/** What is wrong with `msg` as a reply or event of a `requestType` request, or null when nothing is. */
function replyProblem(requestType, msg) {
  if (msg.type === 'error') return typeof msg.code === 'string' ? null : 'an error without a string code';
  const expected = EVENT_TYPES.has(msg.type) ? EVENT_OF[requestType] : REPLY_TYPE[requestType];
  if (msg.type !== expected) return `a ${msg.type} message`;
  const shape = SHAPE[msg.type];
  if (shape !== undefined && !shape[1](msg[shape[0]])) return `a ${msg.type} message without a valid ${shape[0]}`;
  return null;
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
  countTokens(input = null, callOptions = {}) {
    return this.client.countTokens(input, { session: this.name }, callOptions);
  }

  /** As client.reset(): a string (or null) is the system prompt, or {systemPrompt, history}. */
  async reset(options = {}, callOptions = {}) {
    const bound = typeof options === 'string' || options === null ? { systemPrompt: options } : options;
    await this.client.reset(bindSession(bound, this.name, 'reset'), callOptions);
  }

  /** As client.preload(), in this session. */
  preload(input, options = {}, callOptions = {}) {
    return this.client.preload(input, bindSession(options, this.name, 'preload'), callOptions);
  }

  /** Write this session to `path` (client.saveSession()). */
  save(path, callOptions = {}) {
    return this.client.saveSession(path, { session: this.name }, callOptions);
  }

  /** Replace this session with a saved one (client.restoreSession()). */
  restore(path, callOptions = {}) {
    return this.client.restoreSession(path, { session: this.name }, callOptions);
  }

  /** Forget this session on the worker (client.closeSession()); the handle stays usable. */
  close(callOptions = {}) {
    return this.client.closeSession(this.name, callOptions);
  }

  /**
   * This session's entry of client.sessions() ({session, messages, tokens,
   * kv_cached, active, kv_bytes, system_prompt}); all zero when the worker
   * does not know it (yet).
   */
  async info(callOptions = {}) {
    const listing = await this.client.sessions(callOptions);
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
  #resolveSettled;
  #settled;

  /**
   * @param {LlamaWorkerClient} client
   * @param {{ signal?: AbortSignal, timeout: number | null }} callOpts
   */
  constructor(client, message, callOpts, abortTimeout) {
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
      const { id, reply } = client[kSend](message, { ...callOpts, onEvent: (msg) => this.#onChunk(msg) });
      this.id = id;
      this.request = { ...message, id };
      reply.then(
        (msg) => this.#finish(msg, null),
        (err) => this.#finish(null, err),
      );
    } catch (err) {
      this.#finish(null, err);
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
    if (this.finished) return;
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
