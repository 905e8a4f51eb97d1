// The client's plumbing against scripts/fake-worker.js, a scriptable stand-in
// for the worker: back-pressure, split frames, unknown messages, crashes with
// their stderr tail, handshake timeout, close escalation, unreadable output.
// The real worker is exercised by conformance.test.js.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';

import {
  BadRequestError,
  BusyError,
  ClientClosedError,
  LlamaWorkerClient,
  ProtocolMismatchError,
  ProtocolViolationError,
  WorkerCrashedError,
  WorkerTimeoutError,
} from '../src/index.js';

const FAKE = fileURLToPath(new URL('../scripts/fake-worker.js', import.meta.url));

const clients = new Set();
// A failed assertion must not leave a worker behind (it would keep the test process alive).
after(() => Promise.all([...clients].map((c) => c.close())));

function fake(flags = '', options = {}) {
  const client = new LlamaWorkerClient({ command: [process.execPath, FAKE], env: { FAKE_WORKER: flags }, ...options });
  clients.add(client);
  return client;
}

function pidExists(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    if (err.code === 'ESRCH') return false;
    throw err;
  }
}

test('handshake, LLAMA_WORKER_PARENT_PID, streaming over frames split in 3-byte writes', async () => {
  const client = fake('dribble');
  const ready = await client.start();
  assert.equal(ready.worker_version, `fake parent=${process.pid}`);
  assert.equal(ready.pid, client.pid);
  const stream = client.generate('one two three four', { maxTokens: 9 });
  const chunks = [];
  for await (const text of stream) chunks.push(text);
  assert.deepEqual(chunks, ['one ', 'two ', 'three ', 'four']);
  assert.equal(stream.result.text, chunks.join(''));
  assert.equal(stream.request.max_tokens, 9);
  assert.deepEqual(await client.close(), { exitCode: 0, signal: null });
  assert.equal(pidExists(client.pid), false);
});

test('writes respect back-pressure (wait for drain) and large requests arrive intact, in order', async () => {
  const client = fake();
  await client.start();
  const sizes = [1, 2, 3, 4].map((i) => i * 1024 * 1024 + i);
  for (const size of sizes) {
    const result = await client.generate('z'.repeat(size)).final();
    assert.equal(result.usage.prompt_tokens, size);
  }
  // Several large frames queued at once, and a ping behind them.
  const streams = sizes.map((size) => client.generate(`${'q'.repeat(size)}`));
  const ping = client.ping();
  const results = await Promise.allSettled(streams.map((s) => s.final()));
  await ping;
  // The fake runs one generation at a time: each is served whole or refused as busy, never garbled.
  assert.equal(results[0].status, 'fulfilled');
  results.forEach((r, i) => {
    if (r.status === 'fulfilled') assert.equal(r.value.usage.prompt_tokens, sizes[i]);
    else assert.ok(r.reason instanceof BusyError, String(r.reason));
  });
  const stats = client.writeStats;
  assert.ok(stats.drainWaits > 0, `stdin.write() returned false at least once: ${JSON.stringify(stats)}`);
  assert.ok(stats.bytes > 2 * sizes.reduce((a, b) => a + b, 0));
  await client.close();
});

test('a request above maxRequestSize is refused before it is sent', async () => {
  const client = fake('', { maxRequestSize: 1000 });
  await client.start();
  const stream = client.generate('x'.repeat(2000));
  await assert.rejects(stream.final(), (err) => err instanceof BadRequestError && err.code === 'frame_too_large');
  assert.equal((await client.generate('small').final()).text, 'small');
  await client.close();
});

test('unknown message types and log frames do not disturb a request', async () => {
  const logs = [];
  const client = fake('extras', { onLog: (level, message) => logs.push([level, message]) });
  await client.start();
  const unknown = once(client, 'unknownMessage');
  const result = await client.generate('a b').final();
  assert.equal(result.text, 'a b');
  assert.equal((await unknown)[0].type, 'from_the_future');
  assert.deepEqual(logs, [['warning', 'fake: about to finish']]);
  await client.close();
});

test('worker death: pending calls reject within a second with exit code and stderr tail; later calls too', async () => {
  const client = fake('die', { stderrTailBytes: 256 });
  await client.start();
  const exitEvent = once(client, 'exit');
  const t0 = Date.now();
  const err = await client.generate('anything').final().catch((e) => e);
  assert.ok(err instanceof WorkerCrashedError, String(err));
  assert.ok(Date.now() - t0 < 1500, `took ${Date.now() - t0} ms`);
  assert.equal(err.exitCode, 7);
  assert.equal(err.signal, null);
  assert.match(err.stderrTail, /last words\n$/);
  assert.ok(err.stderrTail.length <= 256);
  assert.equal(err.retryable, true);
  const [event] = await exitEvent;
  assert.equal(event.expected, false);
  assert.equal(event.error, err);
  await assert.rejects(client.ping(), (e) => e === err);
  assert.equal(client.alive, false);
  await client.close(); // harmless after a crash
});

test('a worker that cannot be spawned fails start() with WorkerCrashedError', async () => {
  const client = new LlamaWorkerClient({ command: ['/nonexistent/llama-worker'] });
  await assert.rejects(client.start(), (err) => err instanceof WorkerCrashedError && /could not be started/.test(err.message) && err.cause?.code === 'ENOENT');
  await client.close();
});

test('handshake timeout kills the worker', async () => {
  const client = fake('no-ready', { handshakeTimeout: 300 });
  await assert.rejects(client.start(), WorkerTimeoutError);
  await client.exited;
  assert.equal(pidExists(client.pid), false);
});

test('a worker speaking another protocol version: ProtocolMismatchError, and no process left', async () => {
  const client = fake('version2');
  await assert.rejects(client.start(), (err) => err instanceof ProtocolMismatchError && err.code === 'protocol_mismatch');
  await client.exited;
  assert.equal(pidExists(client.pid), false);
});

test('close() escalates: end stdin, then SIGTERM, then SIGKILL, each bounded', async () => {
  const client = fake('stubborn', { exitTimeout: 200, termTimeout: 200 });
  await client.start();
  const t0 = Date.now();
  const info = await client.close();
  assert.deepEqual(info, { exitCode: null, signal: 'SIGKILL' });
  assert.ok(Date.now() - t0 < 3000);
  assert.equal(pidExists(client.pid), false);
  assert.equal(await client.close(), info, 'idempotent');
  await assert.rejects(client.ping(), ClientClosedError);
  assert.throws(() => client.generate('x', { nope: 1 }), TypeError);
  await assert.rejects(client.generate('x').final(), ClientClosedError);
});

test('Symbol.asyncDispose (`await using`) closes the worker in order', async () => {
  const client = fake();
  await client.start();
  assert.equal(typeof client[Symbol.asyncDispose], 'function');
  assert.equal(Object.keys(LlamaWorkerClient.prototype).length, 0, 'a method like the others, not enumerable');
  assert.equal(await client[Symbol.asyncDispose](), undefined);
  assert.equal(client.alive, false);
  assert.deepEqual(await client.exited, { exitCode: 0, signal: null });
  assert.equal(pidExists(client.pid), false);
});

test('close() during a generation: cleanup aborts it, then the worker exits 0', async () => {
  const client = fake();
  await client.start();
  const stream = client.generate('hang');
  const info = await client.close();
  assert.deepEqual(info, { exitCode: 0, signal: null });
  assert.equal((await stream.final()).stop_reason, 'aborted');
});

test('AbortSignal and break both abort; return() waits until the worker ended the generation', async () => {
  const client = fake();
  await client.start();
  const controller = new AbortController();
  const stream = client.generate('hang', {}, { signal: controller.signal });
  setImmediate(() => controller.abort());
  assert.equal((await stream.final()).stop_reason, 'aborted');
  // A signal aborted before the call: nothing is sent, the generation fails with its reason.
  const pre = new AbortController();
  pre.abort();
  const frames = client.writeStats.frames;
  const refused = client.generate('hang', {}, { signal: pre.signal });
  assert.equal(refused.id, null);
  await assert.rejects(refused.final(), (err) => err === pre.signal.reason);
  assert.equal(client.writeStats.frames, frames);
  const words = client.generate(Array.from({ length: 200 }, (_, i) => `w${i} `).join(''));
  for await (const text of words) {
    assert.equal(text, 'w0 ');
    break;
  }
  assert.ok(words.finished);
  assert.equal(words.result.stop_reason, 'aborted');
  assert.equal((await client.generate('next').final()).text, 'next');
  await client.close();
});

test('unreadable output is fatal: the worker is killed and the call fails with WorkerCrashedError saying why', async () => {
  const client = fake('bad-frame');
  await client.start();
  const violation = once(client, 'protocolError');
  const bad = await client.ping().catch((e) => e);
  assert.ok(bad instanceof WorkerCrashedError, String(bad));
  assert.match(bad.message, /killed by the client: unreadable output from the worker: frame payload is not valid JSON/);
  assert.ok(bad.cause instanceof ProtocolViolationError);
  assert.equal((await violation)[0], bad.cause);
  await client.close();

  const fatal = fake('huge-frame');
  await fatal.start();
  const err = await fatal.ping().catch((e) => e);
  assert.ok(err instanceof WorkerCrashedError, String(err));
  assert.equal(err.signal, 'SIGKILL');
  assert.match(err.message, /killed by the client: unreadable output/);
  await fatal.close();
});

test('ping with a timeout', async () => {
  const client = fake();
  await client.start();
  assert.ok((await client.ping({ timeout: 5000 })) >= 0);
  await client.close();
});
