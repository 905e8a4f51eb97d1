// Reasoning models (issue 15) against scripts/fake-worker.js: thought chunks
// (`chunk.reasoning`) never reach the iteration, `text` or onChunk; the
// callbacks get the right kinds in order; a throwing callback breaks nothing;
// endReasoning() resolves on `ok` and rejects with NotReasoningError on
// `not_reasoning`; generate's `reasoning` option is checked and sent under the
// wire names. The real worker's side is reasoning-real.test.js.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';

import { BadRequestError, LlamaWorkerClient, NotReasoningError, ProtocolViolationError, REASONING_FIELDS, errorFromFrame, toReasoning } from '../src/index.js';

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

test('thought chunks never reach the iteration; the callbacks get each kind, in order', T, async () => {
  const client = await fake();
  const events = [];
  const stream = client.generate('one two three', { reasoning: {} }, {
    onChunk: (text) => events.push(['onChunk', text]),
    onReasoningChunk: (text) => events.push(['onReasoningChunk', text]),
    onResponseChunk: (chunk) => events.push(['onResponseChunk', chunk.type, chunk.text]),
  });
  const iterated = [];
  for await (const text of stream) iterated.push(text);
  assert.deepEqual(iterated, ['one ', 'two ', 'three'], 'the iteration yields answer text only, never ""');
  assert.deepEqual(events, [
    ['onReasoningChunk', 'ONE '],
    ['onResponseChunk', 'reasoning', 'ONE '],
    ['onReasoningChunk', 'TWO '],
    ['onResponseChunk', 'reasoning', 'TWO '],
    ['onReasoningChunk', 'THREE'],
    ['onResponseChunk', 'reasoning', 'THREE'],
    ['onChunk', 'one '],
    ['onResponseChunk', 'text', 'one '],
    ['onChunk', 'two '],
    ['onResponseChunk', 'text', 'two '],
    ['onChunk', 'three'],
    ['onResponseChunk', 'text', 'three'],
  ]);
  assert.equal(stream.text, 'one two three');
  assert.equal(stream.reasoning, 'ONE TWO THREE');
  assert.equal(stream.result.text, 'one two three');
  assert.equal(stream.result.reasoning, 'ONE TWO THREE', 'done.reasoning passed through');
  assert.equal(stream.result.usage.reasoning_tokens, 4, 'usage.reasoning_tokens passed through');
  assert.deepEqual(stream.request.reasoning, {});
  await client.close();
});

test('chat() routes the same way, and a reply without thoughts has reasoning null', T, async () => {
  const client = await fake();
  const answer = [];
  const thought = [];
  const kinds = [];
  const result = await client.chat('a b', { reasoning: { budgetTokens: 1 } }, {
    onChunk: (text) => answer.push(text),
    onReasoningChunk: (text) => thought.push(text),
    onResponseChunk: ({ type }) => kinds.push(type),
  });
  assert.deepEqual(answer, ['a ', 'b']);
  assert.deepEqual(thought, ['A '], 'budgetTokens is sent as budget_tokens (the fake thinks at most that many chunks)');
  assert.deepEqual(kinds, ['reasoning', 'text', 'text']);
  assert.equal(result.reasoning, 'A ');

  const plain = client.generate('a b', { reasoning: false });
  const done = await plain.final();
  assert.deepEqual(plain.request.reasoning, { enabled: false });
  assert.equal(done.reasoning, null);
  assert.equal(done.usage.reasoning_tokens, 0);
  assert.equal(plain.reasoning, '');
  assert.equal(done.text, 'a b');
  await client.close();
});

test('a throwing onReasoningChunk (or onResponseChunk) is reported and breaks neither the stream nor the client', T, async () => {
  const client = await fake();
  const reported = [];
  client.on('callbackError', (error, { callback }) => reported.push([callback, error.message]));
  const iterated = [];
  const stream = client.generate('x y', { reasoning: { enabled: true } }, {
    onReasoningChunk: () => {
      throw new Error('thought boom');
    },
    onResponseChunk: async () => {
      throw new Error('async boom');
    },
  });
  for await (const text of stream) iterated.push(text);
  assert.deepEqual(iterated, ['x ', 'y']);
  assert.equal(stream.result.reasoning, 'X Y');
  // The async callback's rejections are reported a microtask later: wait for the last one.
  while (reported.filter(([name]) => name === 'onResponseChunk').length < 4) await once(client, 'callbackError');
  assert.deepEqual(reported.filter(([name]) => name === 'onReasoningChunk'), [['onReasoningChunk', 'thought boom'], ['onReasoningChunk', 'thought boom']]);
  assert.equal(reported.filter(([name]) => name === 'onResponseChunk').length, 4);
  assert.ok(client.alive);
  assert.equal((await client.chat('still fine')).text, 'still fine');
  await client.close();
});

test('endReasoning() on a thinking generation resolves (ok); the model answers; no thought after the answer', T, async () => {
  const client = await fake();
  const order = [];
  let firstThought;
  const thinking = new Promise((resolve) => {
    firstThought = resolve;
  });
  const stream = client.generate('ponder', { reasoning: {} }, {
    onResponseChunk: ({ type }) => {
      order.push(type);
      if (type === 'reasoning') firstThought();
    },
  });
  await thinking;
  assert.equal(stream.reasoning, 'pondering');
  await stream.endReasoning();
  const result = await stream.final();
  assert.equal(result.stop_reason, 'eos');
  assert.equal(result.text, 'the answer');
  assert.equal(result.reasoning, 'pondering');
  assert.deepEqual(order, ['reasoning', 'text', 'text']);
  // Answering, or finished: nothing to end.
  await assert.rejects(stream.endReasoning(), (err) => err instanceof NotReasoningError && err.code === 'not_reasoning' && err.retryable === false);
  await client.close();
});

test('client.endReasoning(): ok for the target (or whatever runs); not_reasoning is NotReasoningError', T, async () => {
  const client = await fake();
  // Nothing runs: the worker answers not_reasoning.
  const idle = await client.endReasoning().catch((e) => e);
  assert.ok(idle instanceof NotReasoningError, String(idle));
  assert.ok(idle instanceof BadRequestError, 'a NotReasoningError is a BadRequestError (as host/exceptions.py NotReasoning)');
  assert.equal(idle.code, 'not_reasoning');
  assert.equal(idle.retryable, false);
  assert.equal(typeof idle.requestId, 'number');

  for (const target of ['by id', 'whatever runs']) {
    let thought = () => {};
    const thinking = new Promise((resolve) => {
      thought = resolve;
    });
    const stream = client.generate('ponder', { reasoning: {} }, { onReasoningChunk: () => thought() });
    await thinking;
    // A wrong target is not thinking.
    await assert.rejects(client.endReasoning(stream.id + 1000), NotReasoningError);
    await client.endReasoning(target === 'by id' ? stream.id : undefined);
    assert.equal((await stream.final()).text, 'the answer', target);
  }

  // A generation that never thought (no `reasoning`), while it runs: not_reasoning from the worker.
  const hang = client.generate('hang');
  await assert.rejects(hang.endReasoning(), NotReasoningError);
  assert.equal((await hang.abort()).stop_reason, 'aborted');
  await assert.rejects(client.endReasoning({}), /takes a request id/);
  await assert.rejects(client.endReasoning(null, { timeout: -1 }), /endReasoning: timeout must be/);
  await client.close();
});

test('endReasoning() of a generation that could not be sent is NotReasoningError, nothing sent', T, async () => {
  const client = await fake('', { maxRequestSize: 1000 });
  const stream = client.generate('z'.repeat(2000), { reasoning: {} });
  await assert.rejects(stream.final(), BadRequestError);
  const frames = client.writeStats.frames;
  await assert.rejects(stream.endReasoning(), NotReasoningError);
  assert.equal(client.writeStats.frames, frames);
  await client.close();
});

test('a chunk whose reasoning is not a string fails only its generation', T, async () => {
  const client = await fake('invalid-reply');
  const violation = once(client, 'protocolError');
  const err = await client.generate('bad reasoning', { reasoning: {} }).final().catch((e) => e);
  assert.ok(err instanceof ProtocolViolationError, String(err));
  assert.match(err.message, /chunk message without a valid reasoning/);
  await violation;
  assert.equal((await client.chat('ok then')).text, 'ok then');
  await client.close();
});

test('the reasoning option: camelCase or wire names, a boolean, null; checked against the schema', () => {
  assert.deepEqual(REASONING_FIELDS, { enabled: 'enabled', budgetTokens: 'budget_tokens', effort: 'effort', keepInHistory: 'keep_in_history' });
  assert.equal(toReasoning(null), null);
  assert.deepEqual(toReasoning(true), { enabled: true });
  assert.deepEqual(toReasoning(false), { enabled: false });
  assert.deepEqual(toReasoning({}), {});
  assert.deepEqual(toReasoning({ budgetTokens: 0, effort: 'high', keepInHistory: true, enabled: null }), {
    budget_tokens: 0,
    effort: 'high',
    keep_in_history: true,
    enabled: null,
  });
  assert.deepEqual(toReasoning({ budget_tokens: 16, keep_in_history: false, effort: null }), { budget_tokens: 16, keep_in_history: false, effort: null });
  assert.deepEqual(toReasoning({ budgetTokens: undefined }), {});
  const bad = [
    'on',
    1,
    [],
    { budgetTokens: -1 },
    { budgetTokens: 1.5 },
    { budgetTokens: '16' },
    { effort: 'max' },
    { enabled: 'yes' },
    { keepInHistory: null },
    { keepInHistory: 1 },
    { budget: 16 },
    { budgetTokens: 4, budget_tokens: 5 },
  ];
  for (const value of bad) assert.throws(() => toReasoning(value), TypeError, JSON.stringify(value));
});

test('generate() refuses a bad reasoning option unsent, and sends a good one under the wire names', T, async () => {
  const client = await fake();
  const frames = client.writeStats.frames;
  assert.throws(() => client.generate('x', { reasoning: { budgetTokens: -1 } }), /budgetTokens must be an integer >= 0/);
  assert.throws(() => client.generate('x', {}, { onReasoningChunk: 'no' }), /onReasoningChunk must be a function/);
  assert.throws(() => client.generate('x', {}, { onThought: () => {} }), /unknown call option "onThought"/);
  await assert.rejects(client.chat('x', {}, { onResponseChunk: 42 }), /chat: onResponseChunk must be a function/);
  assert.equal(client.writeStats.frames, frames, 'nothing was sent');
  const stream = client.generate('x', { reasoning: { budgetTokens: 8, effort: 'low', keepInHistory: true } });
  await stream.final();
  assert.deepEqual(stream.request.reasoning, { budget_tokens: 8, effort: 'low', keep_in_history: true });
  await client.close();
});

test('input messages keep the protocol fields they have (reasoning, tool calls); other properties are dropped', T, async () => {
  const client = await fake();
  const call = { id: 'c1', name: 'weather', arguments: { city: 'Oslo' } };
  const input = [
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: 'Hello.', reasoning: 'Greet back.', extra: 1 },
    { role: 'user', content: 'Weather?' },
    { role: 'assistant', content: '', tool_calls: [call] },
    { role: 'tool', content: '{"sky": "grey"}', tool_call_id: 'c1', name: 'weather', extra: 2 },
    { role: 'assistant', content: 'Good' },
  ];
  const stream = client.generate(input);
  await stream.final();
  assert.deepEqual(stream.request.input, [
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: 'Hello.', reasoning: 'Greet back.' },
    { role: 'user', content: 'Weather?' },
    { role: 'assistant', content: '', tool_calls: [call] },
    { role: 'tool', content: '{"sky": "grey"}', tool_call_id: 'c1', name: 'weather' },
    { role: 'assistant', content: 'Good' },
  ]);
  await client.close();
});

test('not_reasoning from an error frame is NotReasoningError', () => {
  const err = errorFromFrame({ type: 'error', id: 4, code: 'not_reasoning', message: 'not thinking', retryable: false });
  assert.ok(err instanceof NotReasoningError);
  assert.equal(err.requestId, 4);
  assert.equal(err.name, 'NotReasoningError');
});
