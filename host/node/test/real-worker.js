// Shared by the suites that drive the REAL Python worker: where its
// interpreter is, the load options that suit a small shared machine, and a
// client factory whose clients are all closed when the file's tests end.
// (node --test runs every file under test/; this one has no tests of its own.)
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after } from 'node:test';

import { LlamaWorkerClient } from '../src/index.js';

export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const VENV_BIN = join(REPO_ROOT, '.venv', process.platform === 'win32' ? 'Scripts' : 'bin');
/** The worker's interpreter: $LLAMA_WORKER_PYTHON, else the repository's .venv (`make setup`). */
export const PYTHON = process.env.LLAMA_WORKER_PYTHON || join(VENV_BIN, process.platform === 'win32' ? 'python.exe' : 'python');
// One thread: on a small shared machine (2 cores, other jobs running) llama.cpp's
// spinning thread pool is several times slower with 2 threads than with 1.
export const LOAD = Object.freeze({ nThreads: 1 });
/** Greedy decoding of this prompt runs for hundreds of tokens without an end of turn. */
export const LONG = 'Tell me a very long story about dragons.';

if (!process.env.LLAMA_WORKER_PYTHON && !existsSync(PYTHON)) {
  throw new Error(`no Python for the worker at ${PYTHON}: run \`make setup\` in ${REPO_ROOT}, or set LLAMA_WORKER_PYTHON`);
}

/** A client factory for one test file; every client it made is closed after the file's tests. */
export function clientFactory() {
  const clients = new Set();
  after(() => Promise.all([...clients].map((c) => c.close())));
  return (options = {}) => {
    const c = new LlamaWorkerClient({ python: PYTHON, ...options });
    clients.add(c);
    return c;
  };
}
