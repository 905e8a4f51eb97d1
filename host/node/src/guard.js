// The callback guard: every piece of user code the client calls (a callback
// option such as onLog or onChunk, a listener of one of its events) runs
// through here, so that what it throws, or the promise it returns rejects
// with, is reported as a 'callbackError' event (console.error when nothing
// listens) and never reaches the frame reader, a pending call or the client's
// state. Plain functions over an EventEmitter: the client is the emitter, and
// the request core reaches these only through the `emit` the client gives it.

/** console.error that cannot throw (a closed stdout in an Electron app, a patched console). */
export function consoleError(/** @type {unknown[]} */ ...args) {
  try {
    console.error(...args);
  } catch {}
}

/** @param {unknown} value */
function isThenable(value) {
  return value !== null && typeof value === 'object' && typeof (/** @type {{ then?: unknown }} */ (value).then) === 'function';
}

/**
 * Call user code: what it throws, or the promise it returns rejects with,
 * goes to `emitter`'s 'callbackError' listeners as `(error, { callback })`.
 * @param {import('node:events').EventEmitter} emitter
 * @param {string} callback the option name ("onLog") or the event name ("log")
 * @param {Function} fn
 * @param {unknown[]} args
 * @param {unknown} [thisArg]
 */
export function guardCall(emitter, callback, fn, args, thisArg = undefined) {
  try {
    const out = Reflect.apply(fn, thisArg, args);
    if (isThenable(out)) {
      /** @type {PromiseLike<unknown>} */ (out).then(undefined, (err) => callbackFailed(emitter, err, callback));
    }
  } catch (err) {
    callbackFailed(emitter, err, callback);
  }
}

/**
 * emit() with every listener guarded: one that throws neither stops the
 * others nor reaches the caller.
 * @param {import('node:events').EventEmitter} emitter
 * @param {string} event
 * @param {unknown[]} args
 */
export function emitGuarded(emitter, event, args) {
  for (const listener of emitter.rawListeners(event)) guardCall(emitter, event, listener, args, emitter);
}

/**
 * Report a failed callback to the 'callbackError' listeners, or console.error when there is none.
 * @param {import('node:events').EventEmitter} emitter
 * @param {unknown} error
 * @param {string} callback
 */
function callbackFailed(emitter, error, callback) {
  const listeners = emitter.rawListeners('callbackError');
  if (listeners.length === 0) {
    consoleError(`llama-worker-client: ${callback} threw (add a 'callbackError' listener to handle this):`, error);
    return;
  }
  for (const listener of listeners) {
    try {
      const out = listener.call(emitter, error, { callback });
      if (isThenable(out)) {
        /** @type {PromiseLike<unknown>} */ (out).then(undefined, (err) => consoleError("llama-worker-client: a 'callbackError' listener failed:", err));
      }
    } catch (err) {
      consoleError("llama-worker-client: a 'callbackError' listener threw:", err);
    }
  }
}
