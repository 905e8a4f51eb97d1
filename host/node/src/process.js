// The worker process and its pipes: the transport under the request core.
//
// A WorkerProcess spawns the worker command, writes frames to its stdin
// through one queue that honours back-pressure ('drain'), hands every chunk of
// stdout to its owner undecoded, drains stderr continuously (keeping its tail
// for crash reports), sends signals, and says once, when the process is gone
// and its output read, how it ended. It knows nothing of frames, requests or
// the protocol, so the request core above it can be tested and reasoned about
// apart from process handling (and another transport could take its place).

import { spawn } from 'node:child_process';

import { settlesWithin } from './wait.js';

/** The environment variable set to this process's pid: the worker exits when that process dies. */
export const PARENT_ENV_VAR = 'LLAMA_WORKER_PARENT_PID';

/** After stdout closes (or the process exits), how long to wait for the rest before reporting it gone. */
const GONE_GRACE_MS = 500;
/** After SIGKILL, how long to wait for the exit before giving up on it. */
export const KILL_WAIT_MS = 5_000;

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

/** @typedef {{ exitCode: number | null, signal: NodeJS.Signals | null }} ExitInfo */

/**
 * @typedef {object} ProcessHandlers  what the owner of a WorkerProcess hears from it
 * @property {(data: Buffer) => void} onStdout  a chunk of the worker's stdout, as read
 * @property {(data: Buffer) => void} onStderr  a chunk of stderr (already added to the tail)
 * @property {(info: ExitInfo, spawnError: Error | null) => void} onGone  once: the process is gone and its output read (or it never started)
 */

/** One spawned worker process. */
export class WorkerProcess {
  /** @type {import('node:child_process').ChildProcessWithoutNullStreams} */
  #child;
  /** @type {Promise<unknown>} */
  #writeTail = Promise.resolve();
  #writeStats = { frames: 0, bytes: 0, drainWaits: 0 };
  #stderrTail = Buffer.alloc(0);
  #stderrTailBytes;
  /** @type {string | null} */
  #killReason = null;
  #gone = false;
  /** @type {ExitInfo | null} */
  #exitInfo = null;
  /** @type {(info: ExitInfo) => void} */
  #resolveGone = () => {};
  /** @type {Promise<ExitInfo>} */
  #gonePromise;
  #handlers;

  /**
   * Spawn `argv` with piped stdio (the owner's handlers start hearing at once).
   * @param {string[]} argv
   * @param {{ env: NodeJS.ProcessEnv, cwd?: string, stderrTailBytes: number }} options
   * @param {ProcessHandlers} handlers
   */
  constructor(argv, options, handlers) {
    this.#handlers = handlers;
    this.#stderrTailBytes = options.stderrTailBytes;
    this.#gonePromise = new Promise((resolve) => {
      this.#resolveGone = resolve;
    });
    const [file, ...args] = argv;
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'], env: options.env, cwd: options.cwd, windowsHide: true });
    this.#child = child;

    /** @type {Promise<ExitInfo>} */
    const exited = new Promise((resolve) => {
      child.once('exit', (exitCode, signal) => resolve({ exitCode, signal }));
    });
    const stdoutClosed = new Promise((resolve) => child.stdout.once('close', resolve));
    const stderrClosed = new Promise((resolve) => child.stderr.once('close', resolve));

    child.on('error', (err) => {
      // Spawning failed (ENOENT, EACCES...): no 'exit' will come.
      if (child.pid === undefined) this.#reportGone({ exitCode: null, signal: null }, err);
    });
    child.stdin.on('error', () => {
      // EPIPE and friends: the worker is gone; its exit reports it.
    });
    child.stdout.on('data', (data) => handlers.onStdout(data));
    child.stdout.on('error', () => {});
    child.stderr.on('data', (data) => this.#onStderr(data));
    child.stderr.on('error', () => {});

    // Whichever comes first (exit, or stdout closing), give the rest a moment
    // (frames still in the pipe, the stderr tail), then report it gone.
    Promise.race([exited, stdoutClosed]).then(async () => {
      await settlesWithin(Promise.all([exited, stdoutClosed, stderrClosed]), GONE_GRACE_MS);
      let info = this.#exitInfo;
      if (info === null && (await settlesWithin(exited, 0))) info = await exited;
      if (info === null) {
        // stdout closed but the process lingers: it can no longer talk to us.
        this.#killReason ??= 'the worker closed its output';
        this.signal('SIGKILL');
        if (await settlesWithin(exited, GONE_GRACE_MS)) info = await exited;
      }
      this.#reportGone(info ?? { exitCode: null, signal: null }, null);
    });
    exited.then((info) => {
      this.#exitInfo = info;
    });
  }

  /** The pid (undefined when spawning failed). */
  get pid() {
    return this.#child.pid;
  }

  /** True once the process is gone and its output read. */
  get gone() {
    return this.#gone;
  }

  /** Resolves with how the process ended, once it is gone and its output read. */
  get exited() {
    return this.#gonePromise;
  }

  /** The last `stderrTailBytes` of stderr, as text. */
  get stderrTail() {
    return this.#stderrTail.toString('utf8');
  }

  /** Frames written to stdin, bytes, and how often a write had to wait for 'drain'. */
  get writeStats() {
    return { ...this.#writeStats };
  }

  /** Why the owner (or this class) killed the process, or null when nobody did. */
  get killReason() {
    return this.#killReason;
  }

  /**
   * Queue bytes for stdin; a write waits for 'drain' whenever stdin.write()
   * returned false. Rejects when stdin is closed.
   * @param {Buffer} frame
   * @returns {Promise<void>}
   */
  write(frame) {
    const stdin = this.#child.stdin;
    const run = async () => {
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
            resolve(undefined);
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
   * Stop the process in order (PROTOCOL.md section 8.2, after `cleanup`): let
   * queued frames go out, end stdin, wait for the exit (exitTimeout), SIGTERM,
   * wait (termTimeout), SIGKILL. Resolves with false when even SIGKILL did not
   * end it within KILL_WAIT_MS (stuck in the kernel), else true.
   * @param {{ exitTimeout: number, termTimeout: number }} timeouts
   */
  async stop({ exitTimeout, termTimeout }) {
    if (!this.#gone) {
      // Bounded: a hung worker may never drain.
      await settlesWithin(this.#writeTail, exitTimeout);
      try {
        this.#child.stdin.end();
      } catch {}
    }
    if (await settlesWithin(this.#gonePromise, exitTimeout)) return true;
    this.signal('SIGTERM');
    if (await settlesWithin(this.#gonePromise, termTimeout)) return true;
    this.signal('SIGKILL');
    return settlesWithin(this.#gonePromise, KILL_WAIT_MS);
  }

  /**
   * Kill at once (SIGKILL), remembering why, and wait (bounded) until the process is gone.
   * @param {string} reason
   */
  async kill(reason) {
    this.#killReason ??= reason;
    if (!this.#gone) this.signal('SIGKILL');
    await settlesWithin(this.#gonePromise, KILL_WAIT_MS);
  }

  /** @param {NodeJS.Signals} name */
  signal(name) {
    try {
      this.#child.kill(name);
    } catch {}
  }

  /** @param {Buffer} data */
  #onStderr(data) {
    const limit = this.#stderrTailBytes;
    const joined = Buffer.concat([this.#stderrTail, data]);
    this.#stderrTail = joined.length > limit ? joined.subarray(joined.length - limit) : joined;
    this.#handlers.onStderr(data);
  }

  /**
   * @param {ExitInfo} info
   * @param {Error | null} spawnError
   */
  #reportGone(info, spawnError) {
    if (this.#gone) return;
    this.#gone = true;
    this.#handlers.onGone(info, spawnError);
    this.#resolveGone(info);
  }
}
