// Failure paths against the REAL Python worker (issue 13): user callbacks that
// throw while a generation streams, a reply too large for the frame limit,
// and cancellation of the jobs that can run long (load, preload, save,
// restore), after which the next job is never busy. No sleeps: every wait is
// on a reply, bounded by the test timeout.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { AbortedError, BusyError, ReplyTooLargeError } from '../src/index.js';
import { LOAD, clientFactory } from './real-worker.js';

// Generous: CI machines are shared and noisy.
const T = { timeout: 120_000 };
// A conversation of about 2,000 tokens: evaluating it takes far longer than a frame takes to arrive.
const HISTORY = Array.from({ length: 40 }, (_, i) => [
  { role: 'user', content: `Note ${i}: the quick brown fox jumps over the lazy dog near the river bank.` },
  { role: 'assistant', content: `Noted ${i}: a fox, a dog, a river bank.` },
]).flat();

const client = clientFactory();
const dir = mkdtempSync(join(tmpdir(), 'llama-worker-node-failures-'));
after(() => rmSync(dir, { recursive: true, force: true }));

let shared;
const reported = [];
before(async () => {
  // logLevel "debug": the worker logs every prompt evaluation as a `log` frame, in the middle of a generation's frames.
  shared = client({
    logLevel: 'debug',
    onLog: () => {
      throw new Error('onLog failed');
    },
  });
  shared.on('callbackError', (error, info) => reported.push([info.callback, error.message]));
  shared.on('log', () => {
    throw new Error('log listener failed');
  });
  await shared.start();
  await shared.load(LOAD);
});

/** A job request right after a cancelled one: it must not be refused as busy. */
async function nextJobIsNotBusy() {
  const err = await shared.reset({ session: 'probe' }).catch((e) => e);
  assert.ok(!(err instanceof BusyError), 'the next job was refused as busy');
  assert.equal(err, undefined);
}

test('a throwing onLog and log listener while a generation streams: it completes with the streamed text; the client stays usable', T, async () => {
  reported.length = 0;
  await shared.reset();
  const stream = shared.generate('Write one sentence about the sea.', { maxTokens: 16, temperature: 0 });
  const chunks = [];
  for await (const text of stream) chunks.push(text);
  assert.ok(chunks.length > 0);
  assert.equal(chunks.join(''), stream.result.text);
  assert.ok(reported.some(([callback]) => callback === 'onLog'), JSON.stringify(reported));
  assert.ok(reported.some(([callback]) => callback === 'log'), JSON.stringify(reported));
  const next = await shared.chat('And another?', { maxTokens: 4, temperature: 0 });
  assert.equal(next.type, 'done');
  assert.ok((await shared.ping()) >= 0);
});

test('a tokenize whose reply exceeds the frame limit is ReplyTooLargeError; the client stays usable', T, async (t) => {
  const text = 'a '.repeat(7_000_000); // 14 MB: the request fits 16 MiB, its token ids as JSON do not
  const t0 = Date.now();
  const err = await shared.tokenize(text).catch((e) => e);
  t.diagnostic(`answered in ${Date.now() - t0} ms`);
  assert.ok(err instanceof ReplyTooLargeError, String(err));
  assert.equal(err.code, 'reply_too_large');
  assert.equal(err.retryable, false);
  assert.equal(shared.alive, true);
  assert.ok((await shared.ping()) >= 0);
  assert.equal((await shared.tokenize('a a')).length > 0, true);
});

test('an already aborted signal sends nothing, for jobs and control calls alike', T, async () => {
  const controller = new AbortController();
  controller.abort();
  const { signal } = controller;
  const frames = shared.writeStats.frames;
  await assert.rejects(shared.load(LOAD, { signal }), (err) => err === signal.reason && err.name === 'AbortError');
  await assert.rejects(shared.preload('Hi', {}, { signal }), (err) => err === signal.reason);
  await assert.rejects(shared.saveSession(join(dir, 'never.llws'), {}, { signal }), (err) => err === signal.reason);
  await assert.rejects(shared.restoreSession(join(dir, 'never.llws'), {}, { signal }), (err) => err === signal.reason);
  await assert.rejects(shared.generate('Hi', {}, { signal }).final(), (err) => err === signal.reason);
  await assert.rejects(shared.tokenize('Hi', {}, { signal }), (err) => err === signal.reason);
  assert.equal(shared.writeStats.frames, frames);
});

test('cancelling preload, saveSession, restoreSession and load: each settles once the worker ended it; the next job is not busy', T, async () => {
  // Two sessions with a long conversation that was never evaluated.
  const toPreload = shared.session('cancel-preload');
  const toSave = shared.session('cancel-save');
  await toPreload.reset({ history: HISTORY });
  await toSave.reset({ history: HISTORY });

  // preload: interrupted, complete false.
  let controller = new AbortController();
  const preload = toPreload.preload('What was note 3 about?', {}, { signal: controller.signal });
  controller.abort();
  assert.equal((await preload).complete, false);
  await nextJobIsNotBusy();

  // saveSession: the conversation must be evaluated before it is written; aborted, AbortedError.
  controller = new AbortController();
  const save = toSave.save(join(dir, 'aborted.llws'), { signal: controller.signal });
  controller.abort();
  await assert.rejects(save, AbortedError);
  await nextJobIsNotBusy();

  // restoreSession: the worker finishes what it started (or stops it); either way the call waits for that.
  const small = shared.session('small');
  await small.chat('Say OK.', { maxTokens: 2, temperature: 0 });
  const path = join(dir, 'small.llws');
  await small.save(path);
  controller = new AbortController();
  const restore = shared.session('restored').restore(path, { signal: controller.signal });
  controller.abort();
  const restored = await restore.catch((e) => e);
  assert.ok(restored instanceof AbortedError || restored.type === 'restored', String(restored));
  await nextJobIsNotBusy();

  // load: aborted while the weights load, AbortedError; the model stays.
  controller = new AbortController();
  const load = shared.load({ ...LOAD, nCtx: 1024 }, { signal: controller.signal });
  controller.abort();
  await assert.rejects(load, AbortedError);
  await nextJobIsNotBusy();
  assert.equal((await shared.chat('Hi', { maxTokens: 2, temperature: 0 })).type, 'done');
});
