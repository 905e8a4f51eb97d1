// Failure paths against scripts/fake-worker.js (issue 13): unreadable output
// is fatal and says why, an invalid reply fails only its request, a silent
// worker cannot hang a call, user callbacks that throw are reported and break
// nothing, and cancellation is one model (signal, timeout) for every call.
// Waits are on events and replies, bounded by generous test timeouts; the
// short timeouts below are the client's own, never assertions on timing.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';

import {
  AbortedError,
  BadRequestError,
  DEFAULT_MAX_FRAME_SIZE,
  LlamaWorkerClient,
  ProtocolViolationError,
  ReplyTooLargeError,
  WorkerCrashedError,
  WorkerTimeoutError,
  errorFromFrame,
} from '../src/index.js';

const FAKE = fileURLToPath(new URL('../scripts/fake-worker.js', import.meta.url));
const T = { timeout: 30_000 };

const clients = new Set();
after(() => Promise.all([...clients].map((c) => c.close())));

async function fake(flags = '', options = {}) {
  const client = new LlamaWorkerClient({ command: [process.execPath, FAKE], env: { FAKE_WORKER: flags }, ...options });
  clients.add(client);
  await client.start();
  return client;
}

/** Replace console.error while `fn` runs; resolves with what it was called with. */
async function capturingConsoleError(fn) {
  const calls = [];
  const original = console.error;
  console.error = (...args) => calls.push(args);
  try {
    await fn();
  } finally {
    console.error = original;
  }
  return calls;
}

// -- limits -----------------------------------------------------------------------

test('one frame limit: init.max_frame_size is maxFrameSize (16 MiB by default); ready.max_frame_size bounds requests', T, async () => {
  assert.equal(DEFAULT_MAX_FRAME_SIZE, 16 * 1024 * 1024);
  const plain = await fake();
  assert.equal(plain.ready.fake_init.max_frame_size, DEFAULT_MAX_FRAME_SIZE);
  assert.equal(plain.maxRequestSize, DEFAULT_MAX_FRAME_SIZE);
  const raised = await fake('', { maxFrameSize: 64 * 1024 * 1024 });
  assert.equal(raised.ready.fake_init.max_frame_size, 64 * 1024 * 1024);
  assert.throws(() => new LlamaWorkerClient({ command: [process.execPath, FAKE], maxFrameSize: 4095 }), RangeError);

  // The worker's announced request limit applies unless maxRequestSize was given.
  const limited = await fake('small-limit');
  assert.equal(limited.maxRequestSize, 5000);
  const frames = limited.writeStats.frames;
  await assert.rejects(limited.generate('x'.repeat(6000)).final(), (err) => err instanceof BadRequestError && err.code === 'frame_too_large');
  assert.equal(limited.writeStats.frames, frames, 'nothing was sent');
  assert.equal((await limited.generate('small').final()).text, 'small');
  const chosen = await fake('small-limit', { maxRequestSize: 10_000 });
  assert.equal(chosen.maxRequestSize, 10_000);
  assert.equal((await chosen.generate('y'.repeat(6000)).final()).usage.prompt_tokens, 6000);
  await Promise.all([plain.close(), raised.close(), limited.close(), chosen.close()]);
});

test('reply_too_large is ReplyTooLargeError (not retryable)', () => {
  const err = errorFromFrame({ type: 'error', id: 3, code: 'reply_too_large', message: 'too big', retryable: false });
  assert.ok(err instanceof ReplyTooLargeError);
  assert.equal(err.code, 'reply_too_large');
  assert.equal(err.retryable, false);
  assert.equal(err.requestId, 3);
});

// -- fatal output -------------------------------------------------------------------

for (const [flags, why] of [
  ['huge-frame', /unreadable output from the worker: frame of \d+ bytes exceeds the limit/],
  ['garbage', /unreadable output from the worker: frame of \d+ bytes exceeds the limit/],
  ['bad-frame', /unreadable output from the worker: frame payload is not valid JSON/],
  ['truncated', /exited with code 0 \(the worker's output ended inside a frame/],
  ['lost-request', /the worker could not read a request \(bad_frame/],
]) {
  test(`fatal output (${flags}): every pending call fails with WorkerCrashedError saying why, cause ProtocolViolationError`, T, async () => {
    const client = await fake(flags);
    const violations = [];
    client.on('protocolError', (err) => violations.push(err));
    const exit = once(client, 'exit');
    const running = client.generate('hang');
    const [ping, generation] = await Promise.allSettled([client.ping(), running.final()]);
    for (const result of [ping, generation]) {
      assert.equal(result.status, 'rejected');
      assert.ok(result.reason instanceof WorkerCrashedError, String(result.reason));
      assert.match(result.reason.message, why);
      assert.ok(result.reason.cause instanceof ProtocolViolationError, String(result.reason.cause));
    }
    assert.equal(ping.reason, generation.reason, 'one crash for every pending call');
    assert.deepEqual(violations, [ping.reason.cause]);
    assert.equal((await exit)[0].error, ping.reason);
    await assert.rejects(client.sessions(), (err) => err === ping.reason);
    assert.equal(client.alive, false);
    await client.close();
  });
}

// -- invalid replies ----------------------------------------------------------------

test('an invalid reply with a readable id fails exactly that call (ProtocolViolationError); the rest goes on', T, async () => {
  const client = await fake('invalid-reply');
  const violations = [];
  client.on('protocolError', (err) => violations.push(err));
  const stream = client.generate('one two three');
  const [tokens, text, count] = await Promise.allSettled([client.tokenize('abc'), client.detokenize([97]), client.countTokens('hi')]);
  for (const [result, what] of [[tokens, /tokens message without a valid ids/], [text, /unreadable frame/], [count, /a pong message/]]) {
    assert.equal(result.status, 'rejected');
    assert.ok(result.reason instanceof ProtocolViolationError, String(result.reason));
    assert.match(result.reason.message, what);
    assert.equal(typeof result.reason.requestId, 'number');
  }
  assert.equal(violations.length, 3);
  assert.equal((await stream.final()).text, 'one two three');
  assert.ok((await client.ping()) >= 0);
  assert.equal(client.alive, true);

  // A bad event of a running job: that generation fails, the worker is told to abort it, the next one is not busy.
  await assert.rejects(client.generate('bad chunk').final(), (err) => err instanceof ProtocolViolationError && /chunk message without a valid text/.test(err.message));
  assert.equal((await client.generate('next one').final()).text, 'next one');
  await client.close();
});

// -- a silent worker ------------------------------------------------------------------

test('a silent worker: every call settles with WorkerTimeoutError (control calls by default, the others when given a timeout)', T, async () => {
  const client = await fake('silent', { requestTimeout: 200, abortTimeout: 200, cleanupTimeout: 200 });
  const calls = {
    ping: client.ping(),
    sessions: client.sessions(),
    tokenize: client.tokenize('a'),
    detokenize: client.detokenize([1]),
    countTokens: client.countTokens('a'),
    reset: client.reset(),
    closeSession: client.closeSession('x'),
    saveSession: client.saveSession('/tmp/x'),
    restoreSession: client.restoreSession('/tmp/x'),
    preload: client.preload('a'),
    cleanup: client.cleanup(),
    abort: client.abort(),
    ping500: client.ping({ timeout: 500 }),
    generate: client.generate('a', {}, { timeout: 200 }).final(),
    chat: client.chat('a', {}, { timeout: 200 }),
    load: client.load({}, { timeout: 200 }),
  };
  const results = await Promise.allSettled(Object.values(calls));
  Object.keys(calls).forEach((name, i) => {
    assert.equal(results[i].status, 'rejected', name);
    assert.ok(results[i].reason instanceof WorkerTimeoutError, `${name}: ${results[i].reason}`);
  });
  assert.match(results[0].reason.message, /no reply to ping \(request \d+\) within 200 ms/);
  assert.match(results.at(-1).reason.message, /no reply to load .* within 200 ms; it was aborted/);
  assert.equal(client.alive, true, 'a timeout is not a crash');
  assert.deepEqual(await client.close(), { exitCode: 0, signal: null });
});

test('a load that makes no progress for loadStallTimeout is aborted with WorkerTimeoutError; the next load is not busy', T, async () => {
  const client = await fake('', { loadStallTimeout: 100 });
  await assert.rejects(client.load({ modelPath: 'hang' }), (err) => err instanceof WorkerTimeoutError && /no progress/.test(err.message));
  assert.equal((await client.load()).name, 'fake');
  assert.equal(client.model.name, 'fake');
  await client.close();
});

// -- user code ------------------------------------------------------------------------

test('throwing onLog and log/unknownMessage listeners: a done in the same read still settles; callbackError reports each', T, async () => {
  const reported = [];
  const client = await fake('extras', {
    onLog: () => {
      throw new Error('onLog');
    },
  });
  client.on('callbackError', (error, info) => reported.push([info.callback, error.message]));
  const seen = [];
  client.on('log', () => {
    throw new Error('log 1');
  });
  client.on('log', (msg) => seen.push(msg.message)); // still called after the first one threw
  client.on('unknownMessage', () => {
    throw new Error('unknown');
  });
  client.on('unknownMessage', async () => {
    throw new Error('async unknown');
  });
  const stream = client.generate('a b c');
  const chunks = [];
  for await (const text of stream) chunks.push(text);
  assert.equal(stream.result.text, 'a b c');
  assert.equal(chunks.join(''), 'a b c');
  assert.deepEqual(seen, ['fake: about to finish']);
  await client.ping(); // lets the async listener's rejection arrive
  assert.deepEqual(reported.sort(), [['log', 'log 1'], ['onLog', 'onLog'], ['unknownMessage', 'async unknown'], ['unknownMessage', 'unknown']]);
  assert.equal((await client.generate('again').final()).text, 'again');
  await client.close();
});

test('without a callbackError listener a throwing callback goes to console.error; a throwing callbackError listener too', T, async () => {
  const client = await fake('chatty', {
    onStderr: () => {
      throw new Error('onStderr');
    },
  });
  const noListener = await capturingConsoleError(async () => {
    const stderr = once(client, 'stderr');
    await client.ping();
    await stderr;
  });
  assert.equal(noListener.length, 1);
  assert.match(String(noListener[0][0]), /onStderr threw/);
  assert.equal(noListener[0][1].message, 'onStderr');

  client.on('callbackError', () => {
    throw new Error('the reporter itself');
  });
  const throwingListener = await capturingConsoleError(async () => {
    const stderr = once(client, 'stderr');
    await client.ping();
    await stderr;
  });
  assert.equal(throwingListener.length, 1);
  assert.match(String(throwingListener[0][0]), /'callbackError' listener threw/);
  assert.equal(throwingListener[0][1].message, 'the reporter itself');
  assert.equal(client.alive, true);
  await client.close();
});

test('throwing onProgress, onChunk, exit and protocolError listeners never lose a result or leave a call unsettled', T, async () => {
  const reported = [];
  const onError = (error, info) => reported.push(info.callback);
  const client = await fake();
  client.on('callbackError', onError);
  const model = await client.load({}, {
    onProgress: () => {
      throw new Error('onProgress');
    },
  });
  assert.equal(model.name, 'fake');
  const result = await client.chat('x y z', {}, {
    onChunk: () => {
      throw new Error('onChunk');
    },
  });
  assert.equal(result.text, 'x y z');
  assert.deepEqual(reported, ['onProgress', 'onChunk', 'onChunk', 'onChunk']);
  await client.close();

  const dying = await fake('die');
  dying.on('callbackError', onError);
  dying.on('exit', () => {
    throw new Error('exit listener');
  });
  await assert.rejects(dying.generate('x').final(), WorkerCrashedError);
  await dying.exited;
  assert.equal(reported.at(-1), 'exit');

  const fatal = await fake('huge-frame');
  fatal.on('callbackError', onError);
  fatal.on('protocolError', () => {
    throw new Error('protocolError listener');
  });
  await assert.rejects(fatal.ping(), WorkerCrashedError);
  assert.ok(reported.includes('protocolError'));
});

// -- cancellation ---------------------------------------------------------------------

test('an already aborted signal: every call throws signal.reason and sends nothing', T, async () => {
  const client = await fake();
  const controller = new AbortController();
  const reason = new Error('the user left');
  controller.abort(reason);
  const signal = controller.signal;
  const frames = client.writeStats.frames;
  const calls = {
    ping: () => client.ping({ signal }),
    load: () => client.load({}, { signal }),
    generate: () => client.generate('a', {}, { signal }).final(),
    chat: () => client.chat('a', {}, { signal }),
    chatJson: () => client.chatJson('a', {}, { signal }),
    preload: () => client.preload('a', {}, { signal }),
    reset: () => client.reset(null, { signal }),
    closeSession: () => client.closeSession('x', { signal }),
    saveSession: () => client.saveSession('/tmp/x', {}, { signal }),
    restoreSession: () => client.restoreSession('/tmp/x', {}, { signal }),
    sessions: () => client.sessions({ signal }),
    tokenize: () => client.tokenize('a', {}, { signal }),
    detokenize: () => client.detokenize([1], {}, { signal }),
    countTokens: () => client.countTokens('a', {}, { signal }),
    cleanup: () => client.cleanup({ signal }),
    abort: () => client.abort(null, { signal }),
    sessionSave: () => client.session('s').save('/tmp/x', { signal }),
  };
  for (const [name, call] of Object.entries(calls)) {
    await assert.rejects(call(), (err) => err === reason, name);
  }
  assert.equal(client.writeStats.frames, frames, 'no frame was written');
  await assert.rejects(client.ping({ signl: signal }), TypeError); // a typo is not ignored
  assert.throws(() => client.generate('a', {}, { timeout: 'soon' }), TypeError);
  await assert.rejects(client.ping({ timeout: -1 }), TypeError);
  await client.close();
});

test('aborting a job through its signal aborts it in the worker and waits for its end: the next job is never busy', T, async () => {
  const client = await fake();
  const abortSoon = () => {
    const controller = new AbortController();
    setImmediate(() => controller.abort());
    return controller.signal;
  };
  // load: the worker's answer, AbortedError.
  await assert.rejects(client.load({ modelPath: 'hang' }, { signal: abortSoon() }), AbortedError);
  assert.equal((await client.load()).name, 'fake');
  // preload: resolves with complete false.
  assert.equal((await client.preload('hang', {}, { signal: abortSoon() })).complete, false);
  assert.equal((await client.preload('more')).complete, true);
  // saveSession: AbortedError.
  await assert.rejects(client.saveSession('hang', {}, { signal: abortSoon() }), AbortedError);
  assert.equal((await client.saveSession('/tmp/file')).path, '/tmp/file');
  // generate: stop_reason "aborted", as before.
  assert.equal((await client.generate('hang', {}, { signal: abortSoon() }).final()).stop_reason, 'aborted');
  // A timeout: WorkerTimeoutError, and still aborted first.
  await assert.rejects(client.saveSession('hang', {}, { timeout: 50 }), WorkerTimeoutError);
  await assert.rejects(client.generate('hang', {}, { timeout: 50 }).final(), WorkerTimeoutError);
  assert.equal((await client.chat('done now')).text, 'done now');
  await client.close();
});

test('a control call cancelled through its signal rejects with the reason; its late reply is dropped', T, async () => {
  const client = await fake('silent', { requestTimeout: null, cleanupTimeout: 200 });
  const controller = new AbortController();
  const pending = client.sessions({ signal: controller.signal });
  controller.abort(new Error('never mind'));
  await assert.rejects(pending, /never mind/);
  await client.close();
});
