// Bounded waiting, shared by the process, the client and Generation: every
// wait of this package on the worker has an upper bound (a hung worker must
// never hang its host), and this is the one way they are written.

/** The longest timer Node.js keeps (a longer timeout means none). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Resolve to true when `promise` settles within `ms`, false otherwise (never rejects).
 * @param {Promise<unknown>} promise
 * @param {number} ms
 * @returns {Promise<boolean>}
 */
export async function settlesWithin(promise, ms) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  /** @type {Promise<boolean>} */
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
