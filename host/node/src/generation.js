// Generation: one streamed `generate` as an async iterator of answer chunks.
//
// It turns the request core's callbacks (a `chunk` event each, then the
// terminal `done` or an error) into the pull-based protocol of `for await`:
// answer chunks wait in a queue until next() takes them, an early exit from
// the loop (return()) aborts the generation and waits, bounded, for the worker
// to end it. Thought chunks of a reasoning model (`chunk.reasoning`) never
// enter the queue: they go to `reasoning` and the callbacks (onReasoningChunk,
// onResponseChunk), which run in the client's guard as they arrive. It does
// not know the client: the client hands it a `send` function (which starts the
// request), an `abort` and an `endReasoning` function, and its guard.

/**
 * @import { Chunk, Done, Generate } from './protocol.js'
 * @import { CallOptions, ResponseChunk } from './index.js'
 */

import { NotReasoningError } from './errors.js';
import { settlesWithin } from './wait.js';

/**
 * What a Generation needs from the client.
 * @typedef {object} GenerationStart
 * @property {(onChunk: (msg: Pick<Chunk, 'text' | 'reasoning'>) => void) => { id: number, reply: Promise<Done> }} send  start the request (throws when it cannot be sent)
 * @property {(id: number) => Promise<void>} abort  send `abort` for it
 * @property {(id: number, options: CallOptions) => Promise<void>} endReasoning  send `end_reasoning` for it
 * @property {number} abortTimeout  how long return() waits for the worker to end it
 * @property {{ onChunk?: Function, onReasoningChunk?: Function, onResponseChunk?: Function }} callbacks  the user's chunk callbacks (checked: functions or undefined)
 * @property {(callback: string, fn: Function, args: unknown[]) => void} guard  runs a user callback (what it throws goes to 'callbackError')
 */

/**
 * An in-flight generation: an async iterator of answer text chunks (one
 * `chunk` frame each; the worker may merge several tokens into one), ending
 * with the final result (`done`). A reasoning model's thoughts are not
 * iterated: `reasoning`, `onReasoningChunk` and `onResponseChunk` have them.
 * @implements {AsyncIterableIterator<string, undefined>}
 */
export class Generation {
  #abort;
  #endReasoning;
  #abortTimeout;
  #callbacks;
  #guard;
  /** the thought text so far */
  #reasoning = '';
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
  constructor(message, { send, abort, endReasoning, abortTimeout, callbacks, guard }) {
    this.#abort = abort;
    this.#endReasoning = endReasoning;
    this.#abortTimeout = abortTimeout;
    this.#callbacks = callbacks;
    this.#guard = guard;
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
    /** The answer text received so far (all answer chunks, whether or not iterated; no thoughts). */
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

  /** The thought text received so far (a reasoning model's); "" when none came (yet). */
  get reasoning() {
    return this.#reasoning;
  }

  /**
   * A `chunk`: thought text goes to `reasoning` and the callbacks, answer text
   * to `text`, the callbacks and the iteration. Neither is ever empty there.
   * @param {Pick<Chunk, 'text' | 'reasoning'>} msg
   */
  #onChunk(msg) {
    if (this.finished) return;
    const { onChunk, onReasoningChunk, onResponseChunk } = this.#callbacks;
    const thought = msg.reasoning ?? '';
    if (thought !== '') {
      this.#reasoning += thought;
      if (onReasoningChunk) this.#guard('onReasoningChunk', onReasoningChunk, [thought]);
      if (onResponseChunk) this.#guard('onResponseChunk', onResponseChunk, [/** @type {ResponseChunk} */ ({ type: 'reasoning', text: thought })]);
    }
    const text = msg.text;
    if (text === '') return;
    this.text += text;
    if (onChunk) this.#guard('onChunk', onChunk, [text]);
    if (onResponseChunk) this.#guard('onResponseChunk', onResponseChunk, [/** @type {ResponseChunk} */ ({ type: 'text', text })]);
    if (this.#draining) return;
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve({ value: text, done: false });
    else this.#queue.push(text);
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
   * End the thought now (`end_reasoning` for this generation): the worker
   * closes it with the model's own end-of-thought marker and the model goes on
   * to answer. Resolves on the worker's `ok`; rejects with NotReasoningError
   * when there is no thought to end (answering already, never thought, or
   * finished: a race with the model closing its own thought is harmless).
   * `options`: {signal, timeout} as for any control call.
   * @param {CallOptions} [options]
   * @returns {Promise<void>}
   */
  endReasoning(options = {}) {
    if (this.id === null || this.finished) {
      const which = this.id === null ? 'was never sent' : `(request ${this.id}) has ended`;
      return Promise.reject(new NotReasoningError(`the generation ${which}: no thought to end`, { requestId: this.id }));
    }
    return this.#endReasoning(this.id, options);
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

