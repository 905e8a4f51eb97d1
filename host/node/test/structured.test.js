// Structured output and token counting (issue 9) against the REAL Python
// worker with the real default model: a JSON Schema reply that parses and
// matches its schema, a reply cut short (incomplete), an invalid schema,
// tokenize/detokenize round trips, countTokens against usage.prompt_tokens,
// and the token requests answered during a generation.
//
// The worker's interpreter: $LLAMA_WORKER_PYTHON, else the repository's
// .venv. The model is tiny and its answers poor: the assertions are about
// shape (the grammar allows nothing else) and counts, never about what it
// says. Strings and arrays are bounded in the schema so a reply can finish
// within max_tokens. No sleeps: every wait is on a reply, bounded by the test
// timeout.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';

import { BadRequestError, IncompleteOutputError, NoModelError } from '../src/index.js';
import { LOAD, LONG, clientFactory } from './real-worker.js';

// Generous: CI machines are shared and noisy, and constrained decoding costs more per token.
const T = { timeout: 180_000 };

// A nested object with an enum, a bounded integer and a bounded array: the
// 135M model finishes it well within 200 tokens.
const KINDS = ['cat', 'dog', 'fish'];
const PET_SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string', maxLength: 12 },
    kind: { enum: KINDS },
    age: { type: 'integer', minimum: 0, maximum: 30 },
    owner: {
      type: 'object',
      properties: {
        city: { type: 'string', maxLength: 12 },
        verified: { type: 'boolean' },
      },
      required: ['city', 'verified'],
      additionalProperties: false,
    },
    tags: { type: 'array', items: { type: 'string', maxLength: 8 }, minItems: 1, maxItems: 3 },
  },
  required: ['name', 'kind', 'age', 'owner', 'tags'],
  additionalProperties: false,
};

/** Check `pet` against PET_SCHEMA by hand (keys, types, enum, bounds). */
function assertPet(pet) {
  const shown = JSON.stringify(pet);
  assert.ok(pet !== null && typeof pet === 'object' && !Array.isArray(pet), shown);
  assert.deepEqual(Object.keys(pet).sort(), ['age', 'kind', 'name', 'owner', 'tags'], shown);
  assert.equal(typeof pet.name, 'string', shown);
  assert.ok(pet.name.length <= 12, shown);
  assert.ok(KINDS.includes(pet.kind), shown);
  assert.ok(Number.isInteger(pet.age) && pet.age >= 0 && pet.age <= 30, shown);
  assert.ok(pet.owner !== null && typeof pet.owner === 'object' && !Array.isArray(pet.owner), shown);
  assert.deepEqual(Object.keys(pet.owner).sort(), ['city', 'verified'], shown);
  assert.equal(typeof pet.owner.city, 'string', shown);
  assert.ok(pet.owner.city.length <= 12, shown);
  assert.equal(typeof pet.owner.verified, 'boolean', shown);
  assert.ok(Array.isArray(pet.tags) && pet.tags.length >= 1 && pet.tags.length <= 3, shown);
  for (const tag of pet.tags) assert.ok(typeof tag === 'string' && tag.length <= 8, shown);
}

const client = clientFactory();

let shared;
before(async () => {
  shared = client();
  await shared.start();
  await shared.load(LOAD);
});

test('loaded.model reports backends, n_layer and gpu_layers_offloaded', T, () => {
  const model = shared.model;
  assert.ok(Array.isArray(model.backends) && model.backends.length > 0, JSON.stringify(model.backends));
  assert.ok(model.backends.every((b) => typeof b === 'string' && b.length > 0), JSON.stringify(model.backends));
  assert.ok(Number.isInteger(model.n_layer) && model.n_layer > 0, String(model.n_layer));
  assert.ok(Number.isInteger(model.gpu_layers_offloaded), String(model.gpu_layers_offloaded));
  assert.ok(model.gpu_layers_offloaded >= 0 && model.gpu_layers_offloaded <= model.n_layer + 1, JSON.stringify(model));
  // Nothing asked for the GPU: nothing offloaded.
  if (model.n_gpu_layers === 0) assert.equal(model.gpu_layers_offloaded, 0);
});

test('a bare JSON Schema as responseFormat: the reply parses and matches the schema', T, async () => {
  await shared.reset();
  const stream = shared.generate('Describe a pet as JSON.', { maxTokens: 200, temperature: 0, responseFormat: PET_SCHEMA });
  // The bare schema went out wrapped, as host/client.py's response_format() does it.
  assert.deepEqual(stream.request.response_format, { type: 'json_schema', schema: PET_SCHEMA });
  const chunks = [];
  for await (const text of stream) chunks.push(text);
  const result = stream.result;
  assert.equal(chunks.join(''), result.text);
  assert.equal(result.stop_reason, 'eos', JSON.stringify(result));
  assert.equal(result.incomplete, false);
  assertPet(JSON.parse(result.text));

  // chatJson() parses it; the wire form {type, schema} under its wire name, in a session.
  const pet = await shared.session('pets').chatJson('Describe another pet.', {
    max_tokens: 200,
    temperature: 0,
    response_format: { type: 'json_schema', schema: PET_SCHEMA },
  });
  assertPet(pet);
  assert.equal((await shared.session('pets').info()).messages, 2, 'a structured reply joins the history');

  // A plain reply has incomplete false: the flag belongs to structured replies only.
  const plain = await shared.chat('Hi', { maxTokens: 3, temperature: 0 });
  assert.equal(plain.incomplete, false);
});

test('a structured reply cut short by maxTokens is incomplete; chatJson rejects with IncompleteOutputError', T, async () => {
  const result = await shared.chat('Describe a pet.', { maxTokens: 3, temperature: 0, responseFormat: { type: 'json_schema', schema: PET_SCHEMA } });
  assert.equal(result.stop_reason, 'max_tokens');
  assert.equal(result.incomplete, true, JSON.stringify(result));
  assert.throws(() => JSON.parse(result.text), SyntaxError);

  const err = await shared.chatJson('Describe a pet.', { maxTokens: 3, temperature: 0, responseFormat: PET_SCHEMA }).catch((e) => e);
  assert.ok(err instanceof IncompleteOutputError, String(err));
  assert.equal(err.code, 'incomplete_output');
  assert.equal(err.retryable, false);
  assert.equal(err.result.type, 'done');
  assert.equal(err.result.incomplete, true);
  assert.equal(err.result.stop_reason, 'max_tokens');
  assert.match(err.message, /max_tokens/);
});

test('chatJson defaults to "json" (any JSON object); the shorthand goes out as {type: "json"}', T, async () => {
  const stream = shared.generate('Give me a JSON object.', { maxTokens: 2, temperature: 0, responseFormat: 'json' });
  assert.deepEqual(stream.request.response_format, { type: 'json' });
  const result = await stream.final();
  assert.ok(result.text.startsWith('{'), JSON.stringify(result.text));
  // Cut short at once: whatever the model says, it is an object that has not ended.
  const err = await shared.chatJson('Give me a JSON object.', { maxTokens: 2, temperature: 0 }).catch((e) => e);
  assert.ok(err instanceof IncompleteOutputError, String(err));
  assert.ok(err.result.text.startsWith('{'), JSON.stringify(err.result.text));
});

test('an invalid schema is BadRequestError (invalid_request, "response_format.schema: ..."); the worker goes on', T, async () => {
  for (const schema of [
    { type: 'frobnicate' },
    { $ref: '#/$defs/Missing' },
    { $ref: '#/$defs/A', $defs: { A: { type: 'object', properties: { a: { $ref: '#/$defs/A' } } } } },
  ]) {
    const err = await shared.chat('x', { responseFormat: { type: 'json_schema', schema } }).catch((e) => e);
    assert.ok(err instanceof BadRequestError, String(err));
    assert.equal(err.code, 'invalid_request');
    assert.equal(err.retryable, false);
    assert.match(err.message, /^response_format\.schema:/, err.message);
  }
  // The same through a bare schema and chatJson().
  await assert.rejects(shared.chatJson('x', { responseFormat: { type: 'string', pattern: 'no anchors' } }), (err) => err instanceof BadRequestError && err.message.includes('response_format.schema'));
  // json_schema needs a schema, json takes none.
  await assert.rejects(shared.chat('x', { responseFormat: { type: 'json_schema' } }), BadRequestError);
  // What the client itself cannot send is a TypeError, before anything is sent.
  for (const bad of ['yaml', 42, true, [PET_SCHEMA], { type: 'json_schema', schema: 'x' }]) {
    assert.throws(() => shared.generate('x', { responseFormat: bad }), TypeError, JSON.stringify(bad));
  }
  assert.equal((await shared.chat('Still there?', { maxTokens: 2, temperature: 0 })).type, 'done');
});

test('tokenize/detokenize: a non-ASCII string round-trips; special tokens; bad ids', T, async () => {
  const text = 'Grüße aus Zürich: 東京は大きい! Ça va? 🦙 naïve café';
  const ids = await shared.tokenize(text);
  assert.ok(ids.length > 10, JSON.stringify(ids));
  assert.ok(ids.every((id) => Number.isInteger(id) && id >= 0), JSON.stringify(ids));
  assert.equal(await shared.detokenize(ids), text);
  // Any iterable of ids.
  assert.equal(await shared.detokenize(new Uint32Array(ids)), text);
  assert.deepEqual(await shared.tokenize(''), []);
  assert.equal(await shared.detokenize([]), '');

  // special: the marker text becomes the special token (fewer ids), rendered only with special.
  const marker = '<|im_start|>';
  const asText = await shared.tokenize(marker);
  const asSpecial = await shared.tokenize(marker, { special: true });
  assert.ok(asSpecial.length < asText.length, JSON.stringify({ asText, asSpecial }));
  assert.equal(await shared.detokenize(asText), marker);
  assert.ok((await shared.detokenize(asSpecial, { special: true })).includes(marker));
  assert.equal((await shared.detokenize(asSpecial)).includes(marker), false);

  // An id outside the vocabulary is the worker's invalid_request; a non-array is the client's TypeError.
  const err = await shared.detokenize([0, 1_000_000_000]).catch((e) => e);
  assert.ok(err instanceof BadRequestError && err.code === 'invalid_request', String(err));
  await assert.rejects(shared.tokenize(42), TypeError);
  await assert.rejects(shared.detokenize('12'), TypeError);
  await assert.rejects(shared.tokenize('x', { speciall: true }), TypeError);
});

test('countTokens equals usage.prompt_tokens of the same input; creates no session', T, async () => {
  const s = shared.session('counted');
  await s.close();
  // Nothing said yet, no system prompt: an empty conversation.
  const empty = await s.countTokens();
  assert.equal(empty.type, 'token_count');
  assert.equal(empty.session, 'counted');
  assert.equal(empty.tokens, 0);
  assert.equal(empty.n_ctx, shared.model.n_ctx);
  assert.equal((await shared.sessions()).sessions.some((x) => x.session === 'counted'), false, 'count creates no session');

  const first = 'What is a llama? Answer briefly.';
  const predicted = await s.countTokens(first);
  assert.equal((await shared.countTokens(first, { session: 'counted' })).tokens, predicted.tokens);
  const done = await s.chat(first, { maxTokens: 6, temperature: 0 });
  assert.equal(predicted.tokens, done.usage.prompt_tokens, JSON.stringify({ predicted, usage: done.usage }));

  // The next turn of a conversation with history.
  const second = 'And where do they live?';
  const next = await s.countTokens(second);
  assert.ok(next.tokens > done.usage.prompt_tokens);
  const done2 = await s.chat(second, { maxTokens: 6, temperature: 0 });
  assert.equal(next.tokens, done2.usage.prompt_tokens, JSON.stringify({ next, usage: done2.usage }));
  // null: the conversation as it stands (no new turn).
  const standing = await s.countTokens(null);
  assert.ok(standing.tokens > 0 && standing.tokens < done2.usage.prompt_tokens + done2.usage.completion_tokens + 8, JSON.stringify({ standing, usage: done2.usage }));

  // A message list, as generate takes it (replacing the history).
  const messages = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Name a colour.' },
  ];
  const listed = await shared.countTokens(messages, { session: 'counted-list' });
  const done3 = await shared.session('counted-list').chat(messages, { maxTokens: 4, temperature: 0 });
  assert.equal(listed.tokens, done3.usage.prompt_tokens, JSON.stringify({ listed, usage: done3.usage }));
  await assert.rejects(shared.countTokens(42), TypeError);
  await assert.rejects(shared.countTokens('x', { sesion: 'typo' }), TypeError);
});

test('tokenize, detokenize and countTokens are answered while a generation streams, before its done (never busy)', T, async () => {
  await shared.reset();
  const stream = shared.generate(LONG, { maxTokens: 400, temperature: 0 });
  assert.equal((await stream.next()).done, false);
  const [ids, text, count] = await Promise.all([shared.tokenize('hello world'), shared.detokenize([]), shared.countTokens('Hello?', { session: 'other' })]);
  assert.ok(ids.length > 0);
  assert.equal(text, '');
  assert.ok(count.tokens > 0);
  assert.equal(stream.finished, false, 'the replies came while the generation ran');
  assert.equal(await shared.detokenize(ids), 'hello world');
  assert.equal(stream.finished, false);
  const result = await stream.abort();
  assert.equal(result.stop_reason, 'aborted');
  assert.equal(result.incomplete, false);
});

test('with no model loaded the token requests are NoModelError', T, async () => {
  const fresh = client();
  await fresh.start();
  await assert.rejects(fresh.tokenize('x'), (err) => err instanceof NoModelError && err.code === 'no_model');
  await assert.rejects(fresh.detokenize([1]), NoModelError);
  await assert.rejects(fresh.countTokens('x'), NoModelError);
});
