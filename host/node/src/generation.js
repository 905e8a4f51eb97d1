// Generation: one streamed `generate` as an async iterator of text chunks.
//
// It turns the request core's callbacks (a `chunk` event each, then the
// terminal `done` or an error) into the pull-based protocol of `for await`:
// chunks wait in a queue until next() takes them, an early exit from the loop
// (return()) aborts the generation and waits, bounded, for the worker to end
// it. It does not know the client: the client hands it a `send` function
// (which starts the request) and an `abort` function.

/** @import { Done, Generate } from './protocol.js' */

import { settlesWithin } from './wait.js';

/**
 * What a Generation needs from the client.
 * @typedef {object} GenerationStart
 * @property {(onChunk: (msg: { text: string }) => void) => { id: number, reply: Promise<Done> }} send  start the request (throws when it cannot be sent)
 * @property {(id: number) => Promise<void>} abort  send `abort` for it
 * @property {number} abortTimeout  how long return() waits for the worker to end it
 */

/**
 * An in-flight generation: an async iterator of text chunks (one `chunk`
 * frame each; the worker may merge several tokens into one), ending with the
 * final result (`done`).
 * @implements {AsyncIterableIterator<string, undefined>}
 */
export class Generation {
  #abort;
  #abortTimeout;
  /** @type {string[]} chunks received but not yet taken by next() */
  #queue = [];
  /** @type {Array<{ resolve: (result: IteratorResult<string, undefined>) => void, reject: (error: unknown) => void }>} */
  #waiters = [];
  /** @type {Done | null} */
  #result = null;
  /** @type {import('./errors.js').LlamaWorkerError | null} */
  #error = null;
  #draining = false;
  #abortSent = false;
  /** @type {() => void} */
  #resolveSettled = () => {};
  /** @type {Promise<void>} */
  #settled;

  /**
   * @param {Omit<Generate, 'id'>} message the request (wire names), without its id
   * @param {GenerationStart} start
   */
  constructor(message, { send, abort, abortTimeout }) {
    this.#abort = abort;
    this.#abortTimeout = abortTimeout;
    this.#settled = new Promise((resolve) => {
      this.#resolveSettled = resolve;
    });
    /**
     * The request as sent (wire names), id included once sent.
     * @type {Omit<Generate, 'id'> & { id?: number }}
     */
    this.request = message;
    /**
     * The request id, or null when it could not be sent.
     * @type {number | null}
     */
    this.id = null;
    /** The text received so far (all chunks, whether or not iterated). */
    this.text = '';
    try {
      const { id, reply } = send((msg) => this.#onChunk(msg));
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

  /** @param {{ text: string }} msg */
  #onChunk(msg) {
    if (this.finished) return;
    this.text += msg.text;
    if (this.#draining) return;
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve({ value: msg.text, done: false });
    else this.#queue.push(msg.text);
  }

  /**
   * @param {Done | null} result
   * @param {unknown} error what the request rejected with (a LlamaWorkerError, or a signal's reason)
   */
  #finish(result, error) {
    if (this.finished) return;
    this.#result = result;
    this.#error = /** @type {import('./errors.js').LlamaWorkerError | null} */ (error);
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
    this.#abort(this.id).catch(() => {});
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  /** @returns {Promise<IteratorResult<string, undefined>>} */
  next() {
    const queued = this.#queue.shift();
    if (queued !== undefined) return Promise.resolve({ value: queued, done: false });
    if (this.#error) return Promise.reject(this.#error);
    if (this.#result) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /**
   * Called by `for await` when the loop is left early (break, return, throw):
   * aborts the generation and waits (up to abortTimeout) for the worker to end
   * it, so the worker is idle again when the loop has been left.
   * @returns {Promise<IteratorResult<string, undefined>>}
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

  /**
   * Consume what is left and resolve with the final result (rejects with the generation's error).
   * @returns {Promise<Done>}
   */
  async final() {
    this.#draining = true;
    this.#queue = [];
    await this.#settled;
    if (this.#error) throw this.#error;
    return /** @type {Done} */ (this.#result);
  }

  /**
   * Stop the generation; resolves with its (partial) result, stop_reason "aborted" unless it had already ended.
   * @returns {Promise<Done>}
   */
  abort() {
    this.#sendAbort();
    return this.final();
  }
}
