// Conformance: the Node client driving the REAL Python worker with the real
// default model, over real pipes; the same cases as the Python host's tests
// (streaming, history, message lists, abort, busy, bad input, crash,
// shutdown, ping during a generation).
//
// The worker's interpreter: $LLAMA_WORKER_PYTHON, else the repository's
// .venv (run `make setup` first). The model is tiny and its answers poor: the
// assertions are about behaviour, never about what it says. No sleeps: every
// wait is on an event, bounded by the test timeout.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { before, test } from 'node:test';

import {
  AbortedError,
  BadRequestError,
  BusyError,
  ContextOverflowError,
  LoadFailedError,
  ModelNotFoundError,
  NoModelError,
  WorkerCrashedError,
} from '../src/index.js';
import { LOAD, LONG, PYTHON, VENV_BIN, clientFactory } from './real-worker.js';

const CONSOLE_SCRIPT = join(process.env.LLAMA_WORKER_PYTHON ? dirname(PYTHON) : VENV_BIN, process.platform === 'win32' ? 'llama-worker.exe' : 'llama-worker');

// Generous: CI machines are shared and noisy.
const T = { timeout: 60_000 };
const client = clientFactory();

function pidExists(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    if (err.code === 'ESRCH') return false;
    throw err;
  }
}

/** Collect a whole generation: [chunks, result]. */
async function run(stream) {
  const chunks = [];
  for await (const text of stream) chunks.push(text);
  return [chunks, stream.result];
}

/** One loaded worker shared by the read-mostly cases (each resets what it needs). */
let shared;
const progress = [];
const logs = [];
before(async () => {
  shared = client({ logLevel: 'warning', onLog: (level, message) => logs.push({ level, message }) });
  await shared.start();
  await shared.load(LOAD, { onProgress: (f) => progress.push(f) });
});

test('handshake and load: ready, rising progress ending at 1.0, model info', T, () => {
  assert.equal(shared.ready.protocol_version, 1);
  assert.ok(shared.ready.capabilities.includes('load_progress'));
  assert.ok(pidExists(shared.ready.pid));
  assert.ok(progress.length >= 2, `progress: ${progress}`);
  for (let i = 1; i < progress.length; i += 1) assert.ok(progress[i] > progress[i - 1], `progress rises: ${progress}`);
  assert.equal(progress.at(-1), 1);
  assert.ok(shared.model.n_ctx > 0 && shared.model.path.endsWith('.gguf'));
});

test('streaming: chunks join to result.text; usage and timings are reported', T, async () => {
  await shared.reset();
  const stream = shared.generate('Write one sentence about the sea.', { maxTokens: 24, temperature: 0 });
  const [chunks, result] = await run(stream);
  assert.ok(chunks.length > 0);
  assert.equal(chunks.join(''), result.text);
  assert.equal(stream.text, result.text);
  assert.equal(result.type, 'done');
  assert.equal(result.id, stream.id);
  assert.ok(['max_tokens', 'eos'].includes(result.stop_reason), result.stop_reason);
  assert.ok(result.usage.completion_tokens > 0 && result.usage.completion_tokens <= 24);
  assert.ok(result.usage.prompt_tokens > 5);
  assert.ok(result.timings.total_ms >= result.timings.ttft_ms && result.timings.ttft_ms > 0);
  assert.equal(result.seed, null); // greedy
  assert.equal(await stream.final(), result);
});

test('history across string inputs: the second turn reuses the cache', T, async () => {
  await shared.reset();
  const first = await shared.generate('My favourite colour is green. Say OK.', { max_tokens: 12, temperature: 0 }).final();
  const second = await shared.chat('What did I say my favourite colour was?', { maxTokens: 12, temperature: 0 });
  assert.ok(second.usage.cached_tokens > 0);
  assert.ok(second.usage.cached_tokens >= first.usage.prompt_tokens);
  assert.ok(second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens - 2);
});

test('a message list replaces the history; a string turn then continues it', T, async () => {
  const messages = [
    { role: 'system', content: 'You are a pirate.' },
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: 'Arr!' },
    { role: 'user', content: 'Who are you?' },
  ];
  const [chunks, replaced] = await run(shared.generate(messages, { maxTokens: 8, temperature: 0 }));
  assert.equal(chunks.join(''), replaced.text);
  const follow = await shared.chat('And then?', { maxTokens: 4, temperature: 0 });
  assert.ok(follow.usage.cached_tokens >= replaced.usage.prompt_tokens);
  assert.ok(follow.usage.prompt_tokens > replaced.usage.prompt_tokens);
});

test('stop sequences and completion mode', T, async () => {
  await shared.reset();
  const stopped = await shared.chat('Count from one to twenty in words, separated by commas.', { maxTokens: 40, temperature: 0, stop: ',' });
  assert.ok(!stopped.text.includes(','), stopped.text);
  const completion = await shared.chat('The capital of France is', { mode: 'completion', maxTokens: 4, temperature: 0 });
  assert.ok(completion.usage.completion_tokens > 0 && completion.usage.completion_tokens <= 4);
});

test('abort through an AbortSignal mid-generation: stop_reason "aborted", then the next generate works', T, async () => {
  await shared.reset();
  const controller = new AbortController();
  const stream = shared.generate(LONG, { maxTokens: 400, temperature: 0 }, { signal: controller.signal });
  const chunks = [];
  for await (const text of stream) {
    chunks.push(text);
    if (chunks.length === 1) controller.abort();
  }
  const result = stream.result;
  assert.equal(result.stop_reason, 'aborted');
  assert.ok(result.usage.completion_tokens < 400);
  assert.equal(chunks.join(''), result.text);
  const next = await shared.chat('Go on.', { maxTokens: 4, temperature: 0 });
  assert.ok(['max_tokens', 'eos'].includes(next.stop_reason));
  // The partial reply joined the history: the next turn reused it.
  assert.ok(next.usage.cached_tokens >= result.usage.prompt_tokens);
});

test('breaking out of for-await aborts, and the worker is idle when the loop is left', T, async () => {
  await shared.reset();
  const stream = shared.generate(LONG, { maxTokens: 400, temperature: 0 });
  for await (const text of stream) {
    assert.ok(text.length > 0);
    break;
  }
  assert.ok(stream.finished);
  assert.equal(stream.result.stop_reason, 'aborted');
  const next = await shared.generate('Hi', { maxTokens: 2 }).final(); // not busy
  assert.equal(next.type, 'done');
});

test('busy: a second job while one streams is refused (retryable); ping answers during the generation', T, async () => {
  await shared.reset();
  const stream = shared.generate(LONG, { maxTokens: 400, temperature: 0 });
  const first = await stream.next();
  assert.equal(first.done, false);
  const busy = await shared.generate('x').final().catch((e) => e);
  assert.ok(busy instanceof BusyError, String(busy));
  assert.equal(busy.retryable, true);
  assert.equal(busy.code, 'busy');
  await assert.rejects(shared.load(), BusyError);
  await assert.rejects(shared.reset(), BusyError);
  const rtt = await shared.ping();
  assert.ok(rtt >= 0);
  assert.equal(stream.finished, false, 'the pong came while the generation ran');
  const result = await stream.abort();
  assert.equal(result.stop_reason, 'aborted');
  assert.equal(result.text, stream.text);
});

test('bad input: BadRequestError for invalid message lists and fields; the session survives', T, async () => {
  await shared.reset();
  const first = await shared.chat('Hello there.', { maxTokens: 8, temperature: 0 });
  const bad = [
    [],
    // (A list ending with an assistant message is a prefill since issue 15: one with nothing to reply to is not.)
    [{ role: 'assistant', content: 'b' }],
    [{ role: 'user', content: 'a' }, { role: 'system', content: 's' }, { role: 'user', content: 'c' }],
  ];
  for (const input of bad) {
    const err = await shared.generate(input).final().catch((e) => e);
    assert.ok(err instanceof BadRequestError, String(err));
    assert.equal(err.code, 'invalid_request');
    assert.equal(err.retryable, false);
  }
  const field = await shared.generate('hi', { maxTokens: 0 }).final().catch((e) => e);
  assert.ok(field instanceof BadRequestError && /max_tokens/.test(field.message), String(field));
  const follow = await shared.chat('Again.', { maxTokens: 4, temperature: 0 });
  assert.ok(follow.usage.cached_tokens >= first.usage.prompt_tokens);
});

test('load errors: a missing file is ModelNotFoundError, an aborted load is AbortedError; the model stays', T, async () => {
  await assert.rejects(shared.load({ ...LOAD, modelPath: '/nonexistent/dir/model.gguf' }), (err) => err instanceof ModelNotFoundError && err.code === 'model_not_found');
  // init.log_level: a failed job's log frame comes before its error reply.
  assert.ok(logs.some((l) => l.level === 'warning' && l.message.includes('model_not_found')), JSON.stringify(logs));
  // Aborted right after it was sent: the worker stops it while the weights load.
  const controller = new AbortController();
  const aborted = shared.load({ ...LOAD, nCtx: 1024 }, { signal: controller.signal });
  controller.abort();
  await assert.rejects(aborted, AbortedError);
  assert.equal((await shared.generate('Hi', { maxTokens: 2 }).final()).type, 'done');
});

test('unloadable files are LoadFailedError (a folder, garbage bytes); the model stays', T, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'llama-worker-node-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const folder = join(dir, 'folder.gguf');
  mkdirSync(folder);
  const garbage = join(dir, 'garbage.gguf');
  writeFileSync(garbage, randomBytes(4096));
  for (const path of [folder, garbage]) {
    const err = await shared.load({ ...LOAD, modelPath: path }).catch((e) => e);
    assert.ok(err instanceof LoadFailedError && err.code === 'load_failed' && err.retryable === false, String(err));
    assert.ok(err.message.includes(path), err.message);
  }
  assert.equal((await shared.generate('Hi', { maxTokens: 2 }).final()).type, 'done');
});

test('an input that cannot fit the context is ContextOverflowError; the session goes on', T, async () => {
  const small = await shared.load({ ...LOAD, nCtx: 256 });
  assert.equal(small.n_ctx, 256);
  const longText = Array.from({ length: 90 }, (_, i) => `Paragraph ${i}: the quick brown fox jumps over the lazy dog near the river bank.`).join(' ');
  const err = await shared.chat(longText, { maxTokens: 8 }).catch((e) => e);
  assert.ok(err instanceof ContextOverflowError && err.code === 'context_overflow' && !err.retryable, String(err));
  assert.ok((await shared.chat('Short question?', { maxTokens: 4 })).usage.completion_tokens >= 1);
  await shared.load(LOAD);
});

test('cleanup frees the model (NoModelError), load brings it back', T, async () => {
  await shared.cleanup({ timeout: 30_000 });
  assert.equal(shared.model, null);
  await assert.rejects(shared.generate('Hi').final(), NoModelError);
  await assert.rejects(shared.reset(), NoModelError);
  await shared.load(LOAD);
  assert.equal((await shared.generate('Hi', { maxTokens: 2 }).final()).type, 'done');
});

test('crash: SIGKILL mid-generation rejects what is pending with WorkerCrashedError (signal SIGKILL) at once', T, async (t) => {
  const victim = client();
  await victim.start();
  // A fresh worker has no model yet.
  await assert.rejects(victim.generate('Hi').final(), (err) => err instanceof NoModelError && err.code === 'no_model');
  await victim.load(LOAD);
  const stream = victim.generate(LONG, { maxTokens: 400, temperature: 0 });
  assert.equal((await stream.next()).done, false);
  const t0 = Date.now();
  process.kill(victim.pid, 'SIGKILL');
  const err = await (async () => {
    for await (const _ of stream);
  })().catch((e) => e);
  const elapsed = Date.now() - t0;
  assert.ok(err instanceof WorkerCrashedError, String(err));
  assert.equal(err.signal, 'SIGKILL');
  assert.equal(err.exitCode, null);
  assert.equal(typeof err.stderrTail, 'string');
  t.diagnostic(`crash reported ${elapsed} ms after the kill`);
  assert.ok(elapsed < 3000, `reported after ${elapsed} ms`);
  await assert.rejects(victim.ping(), WorkerCrashedError);
  assert.equal(victim.alive, false);
});

test('shutdown: close() during a generation aborts it, the worker exits 0 and its pid is gone', T, async () => {
  const worker = client();
  await worker.start();
  await worker.load(LOAD);
  const pid = worker.pid;
  assert.equal(worker.ready.pid, pid);
  const stream = worker.generate(LONG, { maxTokens: 400, temperature: 0 });
  assert.equal((await stream.next()).done, false);
  const info = await worker.close();
  assert.deepEqual(info, { exitCode: 0, signal: null });
  assert.equal((await stream.final()).stop_reason, 'aborted');
  assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' });
});

test('the llama-worker console script works as the command', { ...T, skip: !existsSync(CONSOLE_SCRIPT) && `no ${CONSOLE_SCRIPT}` }, async () => {
  const worker = client({ command: CONSOLE_SCRIPT });
  const ready = await worker.start();
  assert.equal(ready.protocol_version, 1);
  assert.ok((await worker.ping({ timeout: 30_000 })) >= 0);
  assert.deepEqual(await worker.close(), { exitCode: 0, signal: null });
  assert.equal(pidExists(worker.pid), false);
});
