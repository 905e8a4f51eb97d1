// The request core: request/response correlation over the worker's byte stream.
//
// Every request gets an id and an entry in a pending table; the worker's
// stdout is decoded into frames and each frame is routed by its id (`chunk`
// and `progress` events to their request, the terminal reply completes it),
// so any number of calls can be in flight (a ping during a generation, an
// abort from a button handler). Every call carries a timeout and an
// AbortSignal; cancelling a job withdraws it from the worker (`abort`, then a
// bounded wait for its terminal reply) so the next job is never `busy`.
//
// Failure rules: output that cannot be decoded is fatal (the core asks its
// owner to kill the worker, whose exit fails every pending call); a frame that
// names a request but is not a valid reply to it fails that request alone.
//
// The core neither spawns nor owns the process: its owner (the client) gives it
// a small set of hooks (`admit`, `write`, `kill`, `abort`, `emit`, `log`) and
// feeds it stdout with onData(). It is internal: not exported by index.js.

/** @import { Log, Ready, Loaded, Done, Pong, Ok, SessionList, Preloaded, Saved, Restored, Tokens, Text, TokenCount, HostMessage } from './protocol.js' */

import { BadRequestError, ProtocolViolationError, WorkerTimeoutError, errorFromFrame } from './errors.js';
import { FrameDecoder, FrameError, encodeFrame } from './framing.js';
import { MAX_TIMER_MS } from './wait.js';

/**
 * The terminal reply of each request type (besides `error`).
 * @typedef {{
 *   init: Ready, load: Loaded, generate: Done, ping: Pong, abort: Ok, end_reasoning: Ok, reset: Ok, cleanup: Ok, close_session: Ok,
 *   sessions: SessionList, preload: Preloaded, save_session: Saved, restore_session: Restored,
 *   tokenize: Tokens, detokenize: Text, count: TokenCount,
 * }} Replies
 */
/** @typedef {HostMessage['type']} RequestType */

/**
 * A decoded frame: a JSON object with a string `type`. Its other fields are
 * read only after replyProblem() checked what the client relies on. (`any`,
 * not `unknown`: the protocol's message interfaces have no index signature,
 * so `unknown` would force a double cast at every use of a checked field.)
 * @typedef {{ type: string, id?: unknown, [field: string]: any }} WireMessage
 */

/** Worker message types that end a request; `chunk` and `progress` are events. */
const TERMINAL_TYPES = new Set(['ready', 'loaded', 'done', 'ok', 'pong', 'error', 'session_list', 'preloaded', 'saved', 'restored', 'tokens', 'text', 'token_count']);
const EVENT_TYPES = new Set(['chunk', 'progress']);
/**
 * Request type -> its reply type (besides `error`).
 * @type {{ readonly [T in RequestType]: Replies[T]['type'] }}
 */
const REPLY_TYPE = {
  init: 'ready', load: 'loaded', generate: 'done', ping: 'pong', abort: 'ok', end_reasoning: 'ok', reset: 'ok', cleanup: 'ok', close_session: 'ok',
  sessions: 'session_list', preload: 'preloaded', save_session: 'saved', restore_session: 'restored',
  tokenize: 'tokens', detokenize: 'text', count: 'token_count',
};
/** @type {Readonly<Record<string, 'progress' | 'chunk'>>} the event type of the two requests that have one */
const EVENT_OF = { load: 'progress', generate: 'chunk' };
/** @param {unknown} v */
const optionalString = (v) => v === undefined || typeof v === 'string';
/** @param {unknown} v */
const optionalStringOrNull = (v) => v === undefined || v === null || typeof v === 'string';
/** @type {Readonly<Record<string, Array<[field: string, check: (value: unknown) => boolean]>>>} the fields of a message this client relies on, and their checks */
const SHAPE = {
  chunk: [['text', (v) => typeof v === 'string'], ['reasoning', optionalString]],
  progress: [['fraction', (v) => typeof v === 'number']],
  done: [['text', (v) => typeof v === 'string'], ['reasoning', optionalStringOrNull]],
  text: [['text', (v) => typeof v === 'string']],
  tokens: [['ids', Array.isArray]],
  loaded: [['model', (v) => v !== null && typeof v === 'object']],
  ready: [['protocol_version', Number.isInteger]],
};
/** Requests that start work on the worker's model thread: cancelling one aborts it there. */
const JOB_TYPES = new Set(['load', 'generate', 'preload', 'reset', 'close_session', 'save_session', 'restore_session']);
/** `error` codes with id null that mean a request of ours was lost (PROTOCOL.md section 2.4). */
const LOST_REQUEST_CODES = new Set(['bad_frame', 'invalid_request', 'unknown_type']);

/**
 * @template {string} C
 * @typedef {{ signal?: AbortSignal, timeout?: number | null } & { [K in C]?: Function }} CheckedCallOptions
 */

/**
 * Check a call's options: `signal` and `timeout`, plus the callbacks named in `callbacks`.
 * @template {string} [C=never]
 * @param {unknown} options
 * @param {string} what the method, for messages
 * @param {readonly C[]} [callbacks]
 * @returns {CheckedCallOptions<C>}
 */
export function callOptions(options, what, callbacks = []) {
  if (options == null) return {};
  if (typeof options !== 'object' || Array.isArray(options)) throw new TypeError(`${what}: call options must be an object`);
  const given = /** @type {Record<string, unknown>} */ (options);
  /** @type {readonly string[]} */
  const known = ['signal', 'timeout', ...callbacks];
  for (const key of Object.keys(given)) {
    if (!known.includes(key)) throw new TypeError(`${what}: unknown call option ${JSON.stringify(key)} (known: ${known.join(', ')})`);
  }
  const signal = /** @type {AbortSignal | null | undefined} */ (given.signal);
  const timeout = given.timeout;
  if (signal != null && (typeof signal.aborted !== 'boolean' || typeof signal.addEventListener !== 'function')) {
    throw new TypeError(`${what}: signal must be an AbortSignal`);
  }
  if (timeout != null && !(typeof timeout === 'number' && timeout >= 0)) {
    throw new TypeError(`${what}: timeout must be a number of milliseconds >= 0, or null for none`);
  }
  for (const key of callbacks) {
    if (given[key] != null && typeof given[key] !== 'function') throw new TypeError(`${what}: ${key} must be a function`);
  }
  return /** @type {CheckedCallOptions<C>} */ ({ ...given, signal: signal ?? undefined });
}

/**
 * @typedef {object} CoreHooks  what the request core needs from its owner
 * @property {(internal: boolean) => void} admit  throw when no request may be sent now (closed, crashed, not started)
 * @property {(frame: Buffer) => Promise<void>} write  queue a frame for the worker's stdin
 * @property {(reason: string) => void} kill  end the worker at once: its output cannot be trusted
 * @property {(id: number) => Promise<void>} abort  send `abort` for a request
 * @property {(event: 'protocolError' | 'workerError' | 'unknownMessage', payload: unknown) => void} emit  a client event
 * @property {(msg: Log) => void} log  a `log` frame
 */

/**
 * @typedef {object} SendOptions
 * @property {AbortSignal} [signal]  cancels the call (a job is aborted in the worker first)
 * @property {number | null} [timeout]  ms before the call is cancelled with WorkerTimeoutError; null: none
 * @property {(msg: WireMessage) => void} [onEvent]  each `chunk`/`progress` of the request, until it settles
 * @property {(msg: WireMessage) => void} [onReply]  the terminal reply, before the call settles (even a cancelled one)
 * @property {boolean} [internal]  sent by the client itself (init, cleanup on close, abort): allowed before `ready` and while closing
 */

/**
 * A request on its way: `reply` settles with its terminal reply; `cancel`
 * withdraws it (see RequestCore.send).
 * @template R
 * @typedef {{ id: number, reply: Promise<R>, cancel: (error: Error | null, fallback?: unknown) => void }} Sent
 */

/** @typedef {{ type: string, onEvent?: (msg: WireMessage) => void, onTerminal: (msg: WireMessage) => void, onFail: (err: unknown) => void }} Pending */

export class RequestCore {
  #hooks;
  #decoder;
  #decoderFailed = false;
  /** @type {Map<number, Pending>} */
  #pending = new Map();
  #nextId = 1;
  #requestTimeout;
  #abortTimeout;
  /** @type {Error | null} */
  #crashCause = null;

  /**
   * @param {{ maxFrameSize: number, maxRequestSize: number, requestTimeout: number | null, abortTimeout: number }} options
   * @param {CoreHooks} hooks
   */
  constructor(options, hooks) {
    this.#hooks = hooks;
    this.#decoder = new FrameDecoder({ maxFrameSize: options.maxFrameSize });
    this.#requestTimeout = options.requestTimeout;
    this.#abortTimeout = options.abortTimeout;
    /** The largest request payload sent (requests above it throw BadRequestError `frame_too_large`, unsent). */
    this.maxRequestSize = options.maxRequestSize;
  }

  /** What the worker's output said about why it is (about to be) gone: the cause of the WorkerCrashedError. */
  get crashCause() {
    return this.#crashCause;
  }

  /**
   * A call's timeout in ms (null: none): as given (null or Infinity: none),
   * else requestTimeout for control calls, none for the others.
   * @param {number | null | undefined} given
   * @param {boolean} [control]
   * @returns {number | null}
   */
  timeoutFor(given, control = true) {
    const value = given === undefined ? (control ? this.#requestTimeout : null) : given;
    return value === null || value === Infinity ? null : value;
  }

  // -- sending ------------------------------------------------------------------

  /**
   * Send a request with a timeout and a signal. Returns {id, reply, cancel} at
   * once; `reply` settles with the terminal message (rejects with the error of
   * an `error` reply, a crash...). Throws, sending nothing, when `signal` is
   * already aborted (its reason) or the request cannot be sent (admit(), or a
   * frame above maxRequestSize).
   *
   * Cancelling a job (`signal`, `timeout`, `cancel(error)`) sends `abort` for
   * it and waits, up to abortTimeout, for its terminal reply, so the worker is
   * idle again when the call settles; any other request is just forgotten (its
   * late reply dropped). After the signal the call settles with the worker's
   * terminal reply (an aborted load: AbortedError; a preload: complete false;
   * a generation: stop_reason "aborted"), or rejects with `signal.reason` when
   * none came; after a timeout (or cancel(error)) it rejects with
   * WorkerTimeoutError (that error).
   * @template {RequestType} T
   * @param {{ type: T } & Record<string, unknown>} fields
   * @param {SendOptions} [options]
   * @returns {Sent<Replies[T]>}
   */
  send(fields, { signal, timeout = null, onEvent, onReply, internal = false } = {}) {
    if (signal?.aborted) throw signal.reason;
    const job = JOB_TYPES.has(fields.type);
    /** @type {(value: Replies[T]) => void} */
    let resolve = () => {};
    /** @type {(error: unknown) => void} */
    let reject = () => {};
    /** @type {Promise<Replies[T]>} */
    const reply = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    let settled = false;
    let cancelled = false;
    /** @type {Error | null} */
    let cancelError = null;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let grace;
    /** @type {AbortSignal | null} */
    let timer = null;
    /** @param {boolean} ok @param {unknown} value */
    const settle = (ok, value) => {
      if (settled) return;
      settled = true;
      clearTimeout(grace);
      signal?.removeEventListener('abort', onSignal);
      timer?.removeEventListener('abort', onTimeout);
      if (ok) resolve(/** @type {Replies[T]} */ (value));
      else reject(value);
    };
    const id = this.#register(fields, internal, {
      type: fields.type,
      onEvent: (msg) => {
        if (!settled) onEvent?.(msg);
      },
      onTerminal: (msg) => {
        onReply?.(msg);
        if (cancelError !== null) settle(false, cancelError);
        else if (msg.type === 'error') settle(false, errorFromFrame(/** @type {import('./protocol.js').Error} */ (msg)));
        else settle(true, msg);
      },
      onFail: (err) => settle(false, err),
    });
    /** @type {Sent<Replies[T]>['cancel']} */
    const cancel = (error, fallback = error) => {
      if (settled || cancelled) return;
      cancelled = true;
      cancelError = error;
      if (!job) {
        this.#abandon(id);
        settle(false, fallback);
        return;
      }
      this.#hooks.abort(id).catch(() => {});
      grace = setTimeout(() => {
        this.#abandon(id);
        settle(false, fallback);
      }, this.#abortTimeout);
    };
    const onSignal = () => cancel(null, signal?.reason);
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
   * Send a request and resolve with its terminal reply (see send()); a
   * request that cannot be sent rejects instead of throwing.
   * @template {RequestType} T
   * @param {{ type: T } & Record<string, unknown>} fields
   * @param {SendOptions} [options]
   * @returns {Promise<Replies[T]>}
   */
  call(fields, options) {
    try {
      return this.send(fields, options).reply;
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Give a request its id, check its size, enter it in the pending table and queue it.
   * @param {{ type: string } & Record<string, unknown>} fields
   * @param {boolean} internal
   * @param {Pending} entry
   */
  #register(fields, internal, entry) {
    this.#hooks.admit(internal);
    const id = this.#nextId++;
    const { type, ...rest } = fields;
    const frame = encodeFrame({ type, id, ...rest });
    if (frame.length - 4 > this.maxRequestSize) {
      throw new BadRequestError(`the ${type} request is ${frame.length - 4} bytes, above maxRequestSize (${this.maxRequestSize})`, {
        code: 'frame_too_large',
      });
    }
    this.#pending.set(id, entry);
    // A failed write means the worker is dying: its exit fails the request.
    this.#hooks.write(frame).catch(() => {});
    return id;
  }

  /**
   * Forget a request we stopped waiting for (its late frames are dropped).
   * @param {number} id
   */
  #abandon(id) {
    const entry = this.#pending.get(id);
    if (entry) {
      this.#pending.set(id, { type: entry.type, onEvent: () => {}, onTerminal: () => {}, onFail: () => {} });
    }
  }

  /**
   * The worker is gone: fail every pending request with `error`.
   * @param {unknown} error
   */
  failAll(error) {
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const entry of pending) {
      try {
        entry.onFail(error);
      } catch {}
    }
  }

  // -- receiving ------------------------------------------------------------------

  /**
   * Bytes from the worker's stdout, in any chunking.
   * @param {Buffer} data
   */
  onData(data) {
    if (this.#decoderFailed) return;
    let items;
    try {
      items = this.#decoder.push(data);
    } catch (err) {
      this.#fatal(new ProtocolViolationError(`unreadable output from the worker: ${/** @type {Error} */ (err).message}`, { cause: err }));
      return;
    }
    for (const item of items) {
      if (this.#decoderFailed) return;
      if (!(item instanceof FrameError)) this.#route(/** @type {WireMessage} */ (item));
      else if (item.id !== null) this.#invalidReply(item.id, `an unreadable frame (${item.message})`, item, false);
      else this.#fatal(new ProtocolViolationError(`unreadable output from the worker: ${item.message}`, { cause: item }));
    }
  }

  /**
   * The output ended (the process is gone, unexpectedly): bytes left inside a
   * frame are a protocol violation, reported and kept as the crash cause.
   */
  outputEnded() {
    if (this.#decoderFailed || this.#decoder.buffered === 0) return;
    const truncated = new ProtocolViolationError(`the worker's output ended inside a frame (${this.#decoder.buffered} bytes of it arrived)`);
    this.#crashCause ??= truncated;
    this.#hooks.emit('protocolError', truncated);
  }

  /**
   * Output that cannot be trusted: report it and kill the worker (its exit fails every pending call).
   * @param {ProtocolViolationError} error
   */
  #fatal(error) {
    if (this.#decoderFailed) return;
    this.#decoderFailed = true;
    this.#crashCause ??= error;
    this.#hooks.emit('protocolError', error);
    this.#hooks.kill(error.message);
  }

  /**
   * A frame naming request `id` that is not a valid reply or event for it: that
   * request alone fails with ProtocolViolationError (a job still running in the
   * worker is aborted, its later frames dropped).
   * @param {unknown} id
   * @param {string} what
   * @param {unknown} cause
   * @param {boolean} terminal
   */
  #invalidReply(id, what, cause, terminal) {
    const key = /** @type {number} */ (id);
    const entry = this.#pending.get(key);
    const requestId = /** @type {number | string} */ (id);
    const error = new ProtocolViolationError(`the worker sent ${what} for request ${JSON.stringify(id)}${entry ? ` (${entry.type})` : ''}`, { cause, requestId });
    this.#hooks.emit('protocolError', error);
    if (entry === undefined) return;
    if (terminal || EVENT_OF[entry.type] === undefined) {
      this.#pending.delete(key);
    } else {
      this.#abandon(key);
      this.#hooks.abort(key).catch(() => {});
    }
    try {
      entry.onFail(error);
    } catch {}
  }

  /** @param {WireMessage} msg */
  #route(msg) {
    const id = msg.id;
    if (id === null || id === undefined) {
      this.#routeUnaddressed(msg);
      return;
    }
    const known = TERMINAL_TYPES.has(msg.type) || EVENT_TYPES.has(msg.type);
    const entry = this.#pending.get(/** @type {number} */ (id));
    if (entry === undefined) {
      if (msg.type === 'error') this.#hooks.emit('workerError', errorFromFrame(/** @type {import('./protocol.js').Error} */ (msg)));
      else if (!known) this.#hooks.emit('unknownMessage', msg);
      return;
    }
    if (!known) {
      // A message type this client does not know (a newer worker): ignore it.
      this.#hooks.emit('unknownMessage', msg);
      return;
    }
    const problem = replyProblem(entry.type, msg);
    if (problem !== null) {
      this.#invalidReply(id, problem, undefined, TERMINAL_TYPES.has(msg.type));
    } else if (EVENT_TYPES.has(msg.type)) {
      entry.onEvent?.(msg);
    } else {
      this.#pending.delete(/** @type {number} */ (id));
      entry.onTerminal(msg);
    }
  }

  /**
   * Frames with id null: `log`s, and errors about frames the worker could not read.
   * @param {WireMessage} msg
   */
  #routeUnaddressed(msg) {
    if (msg.type === 'log') {
      this.#hooks.log(/** @type {Log} */ (msg));
    } else if (msg.type === 'error') {
      const error = errorFromFrame(/** @type {import('./protocol.js').Error} */ (msg));
      this.#hooks.emit('workerError', error);
      if (LOST_REQUEST_CODES.has(error.code)) {
        // Every request of this client has an id: one of them was lost, and its call would wait forever.
        this.#fatal(new ProtocolViolationError(`the worker could not read a request (${error.code}: ${error.message})`, { cause: error }));
      } else if (error.code === 'frame_too_large') {
        this.#crashCause ??= error; // the worker exits with code 3
      }
    } else {
      this.#hooks.emit('unknownMessage', msg);
    }
  }
}

/**
 * What is wrong with `msg` as a reply or event of a `requestType` request, or null when nothing is.
 * @param {string} requestType
 * @param {WireMessage} msg
 */
function replyProblem(requestType, msg) {
  if (msg.type === 'error') return typeof msg.code === 'string' ? null : 'an error without a string code';
  const expected = EVENT_TYPES.has(msg.type) ? EVENT_OF[requestType] : REPLY_TYPE[/** @type {RequestType} */ (requestType)];
  if (msg.type !== expected) return `a ${msg.type} message`;
  for (const [field, check] of SHAPE[msg.type] ?? []) {
    if (!check(msg[field])) return `a ${msg.type} message without a valid ${field}`;
  }
  return null;
}
