// Reasoning models (issue 15) through the REAL Python worker. No small thinking
// model ships on PyPI, so the fixtures are the default model carrying
// published reasoning templates (`python -m tests.models reasoning DIR`, the
// Python suite's own fixtures: Qwen3, DeepSeek-R1 distill, gpt-oss, SmolLM3,
// and a ChatML template that shows kept thoughts). A 135M model does not think
// well: these tests assert mechanism (how the stream is split, that budgets
// and endReasoning() close the thought, what the history keeps), never what
// the model says. No sleeps: every wait is on an event or a reply.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { NotReasoningError } from '../src/index.js';
import { LOAD, LONG, PYTHON, REPO_ROOT, clientFactory } from './real-worker.js';

// Generous: CI machines are shared and noisy, and some cases load a model.
const T = { timeout: 180_000 };
const GREEDY = Object.freeze({ temperature: 0, repeatPenalty: 1 });
/** Think tags and Harmony markers: neither may appear in any text or thought. */
const MARKERS = /<\/?think>|<\|(channel|message|start|end|return|call)\|>/;
/** A prefill that keeps the fixture "thinking" (counting) for hundreds of tokens, deterministically. */
const COUNTING = [
  { role: 'user', content: 'Think.' },
  { role: 'assistant', content: '<think>\nLet me count from 1 to 1000: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,' },
];

const client = clientFactory();
/** name -> GGUF path of the reasoning fixtures; "default" is the worker's own default model (null). */
let fixtures;
let folder;
let worker;
/** The fixture loaded in `worker` now. */
let loaded = null;

before(() => {
  folder = mkdtempSync(join(tmpdir(), 'llama-worker-node-reasoning-'));
  const out = execFileSync(PYTHON, ['-m', 'tests.models', 'reasoning', folder], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 120_000 });
  fixtures = { ...JSON.parse(out), default: null };
  worker = client();
  return worker.start();
});
after(() => rmSync(folder, { recursive: true, force: true }));

/** Load a fixture into the shared worker unless it is loaded already; resolves with the model info. */
async function use(name) {
  if (loaded !== name) {
    loaded = null;
    await worker.load({ ...LOAD, modelPath: fixtures[name], nCtx: 2048 });
    loaded = name;
  }
  await worker.reset();
  return worker.model;
}

/**
 * Run one generation with every chunk callback and the iteration, and check
 * that they agree with each other and with the result: [result, parts, stream]
 * with parts the {type, text} chunks in order.
 */
async function collect(input, options, callOptions = {}) {
  const parts = [];
  const thoughts = [];
  const answers = [];
  const stream = worker.generate(input, options, {
    onResponseChunk: (chunk) => parts.push(chunk),
    onReasoningChunk: (text) => thoughts.push(text),
    onChunk: (text) => answers.push(text),
    ...callOptions,
  });
  const iterated = [];
  for await (const text of stream) iterated.push(text);
  const result = stream.result;
  assert.deepEqual(iterated, answers, 'the iteration yields exactly the answer chunks');
  assert.deepEqual(parts.filter((p) => p.type === 'text').map((p) => p.text), answers);
  assert.deepEqual(parts.filter((p) => p.type === 'reasoning').map((p) => p.text), thoughts);
  assert.ok(parts.every((p) => p.text !== ''), 'no empty chunk');
  assert.equal(answers.join(''), result.text);
  assert.equal(stream.text, result.text);
  assert.equal(result.reasoning, thoughts.length ? thoughts.join('') : null, 'done.reasoning is the joined thought chunks (null: none)');
  assert.equal(stream.reasoning, thoughts.join(''));
  for (const text of [result.text, result.reasoning ?? '']) assert.doesNotMatch(text, MARKERS, 'no tag or channel marker leaks');
  return [result, parts, stream];
}

test('loaded.model.reasoning: think_tags for Qwen3, DeepSeek-R1, SmolLM3; harmony for gpt-oss; none for the default model', T, async () => {
  const expected = { default: ['none', false], qwen3: ['think_tags', true], smollm3: ['think_tags', true], 'gpt-oss': ['harmony', true], 'deepseek-r1': ['think_tags', true] };
  for (const [name, [family, canDisable]] of Object.entries(expected)) {
    const model = await use(name);
    assert.deepEqual([model.reasoning, model.reasoning_can_disable], [family, canDisable], name);
  }
});

test('DeepSeek-R1 with a budget: thought chunks to onReasoningChunk, then the answer; reasoning_tokens within the budget', T, async () => {
  await use('deepseek-r1'); // its generation prompt opens <think>: the reply starts inside the thought
  const [result, parts] = await collect('Is 91 prime?', { maxTokens: 64, reasoning: { budgetTokens: 16 }, ...GREEDY });
  assert.equal(typeof result.reasoning, 'string');
  assert.ok(result.reasoning.length > 0, 'a thought');
  const kinds = parts.map((p) => p.type);
  assert.deepEqual(kinds, [...kinds].sort((a, b) => (a === 'text') - (b === 'text')), 'every thought chunk comes before the answer');
  const spent = result.usage.reasoning_tokens;
  assert.ok(spent >= 1 && spent <= 20, `reasoning_tokens ${spent}: the budget (16) and the end marker`);
  assert.ok(spent <= result.usage.completion_tokens);
});

test('thinking switched off (DeepSeek-R1, Qwen3): reasoning null, reasoning_tokens 0, no thought chunk', T, async () => {
  for (const name of ['deepseek-r1', 'qwen3']) {
    await use(name);
    for (const reasoning of [{ enabled: false }, false]) {
      const [result, parts] = await collect('Is 91 prime?', { maxTokens: 24, reasoning, ...GREEDY });
      assert.equal(result.reasoning, null, name);
      assert.equal(result.usage.reasoning_tokens, 0, name);
      assert.ok(parts.every((p) => p.type === 'text'), name);
    }
  }
});

test('endReasoning() after the first thought chunk: ok (or NotReasoningError only if the thought had ended); no thought after the answer', T, async (t) => {
  await use('deepseek-r1');
  const kinds = [];
  let firstThought = () => {};
  const thinking = new Promise((resolve) => {
    firstThought = resolve;
  });
  const stream = worker.generate(COUNTING, { maxTokens: 300, reasoning: {}, ...GREEDY }, {
    onResponseChunk: ({ type }) => {
      kinds.push(type);
      if (type === 'reasoning') firstThought();
    },
  });
  const ended = await Promise.race([thinking.then(() => stream.endReasoning().then(() => 'ok', (err) => err)), stream.final().then(() => 'finished')]);
  if (ended !== 'ok') {
    // Only a race with the model closing its own thought may make it not_reasoning.
    assert.ok(ended instanceof NotReasoningError || ended === 'finished', String(ended));
    assert.ok(kinds.includes('text') || stream.finished, `the thought had ended: ${kinds}`);
  }
  const result = await stream.final();
  t.diagnostic(`endReasoning: ${ended}; reasoning_tokens ${result.usage.reasoning_tokens} of ${result.usage.completion_tokens}; ${result.stop_reason}`);
  const answerFrom = kinds.indexOf('text');
  assert.ok(answerFrom === -1 || !kinds.slice(answerFrom).includes('reasoning'), `no thought chunk after the first answer chunk: ${kinds}`);
  if (ended === 'ok') assert.ok(result.usage.reasoning_tokens < 200, `the thought ended long before max_tokens (${result.usage.reasoning_tokens})`);
  assert.equal(result.reasoning, stream.reasoning || null);
  // Finished: nothing to end, whether asked of the generation or of the client by its id.
  await assert.rejects(stream.endReasoning(), NotReasoningError);
  await assert.rejects(worker.endReasoning(stream.id), NotReasoningError);
});

test('gpt-oss (Harmony): the analysis channel is the thought, the final channel the answer, no markers', T, async () => {
  await use('gpt-oss');
  const [result] = await collect('Hi', { maxTokens: 48, reasoning: { enabled: true, budgetTokens: 8, effort: 'low' }, ...GREEDY });
  assert.ok(result.usage.reasoning_tokens >= 1, 'a thought was opened and closed');
  assert.ok(result.usage.reasoning_tokens <= result.usage.completion_tokens);
  const [off] = await collect('Hi', { maxTokens: 16, reasoning: { enabled: false }, ...GREEDY });
  assert.equal(off.reasoning, null);
  assert.equal(off.usage.reasoning_tokens, 0);
});

test('keepInHistory keeps the thought in the session (the kept-thoughts template shows it in the next prompt); input messages carry reasoning', T, async () => {
  await use('kept-thoughts');
  const kept = worker.session('kept');
  const dropped = worker.session('dropped');
  const reasoning = { enabled: true, budgetTokens: 8 };
  const a = await kept.chat('Is 91 prime?', { maxTokens: 32, reasoning: { ...reasoning, keepInHistory: true }, ...GREEDY });
  const b = await dropped.chat('Is 91 prime?', { maxTokens: 32, reasoning, ...GREEDY });
  assert.ok(a.reasoning, 'a thought');
  assert.equal(a.reasoning, b.reasoning, 'greedy: the same reply in both sessions');
  assert.equal(a.text, b.text);
  const withThought = await kept.countTokens();
  const without = await dropped.countTokens();
  const thoughtTokens = (await worker.tokenize(a.reasoning)).length;
  assert.ok(withThought.tokens - without.tokens >= thoughtTokens, `${withThought.tokens} - ${without.tokens} >= ${thoughtTokens}`);

  // The same through an input list: an assistant message's reasoning reaches the template.
  const turn = (thought) => [
    { role: 'user', content: 'Is 91 prime?' },
    thought === undefined ? { role: 'assistant', content: 'No.' } : { role: 'assistant', content: 'No.', reasoning: thought },
    { role: 'user', content: 'And 97?' },
  ];
  const shown = await worker.countTokens(turn('91 = 7 x 13, so it is not prime.'));
  const plain = await worker.countTokens(turn(undefined));
  assert.ok(shown.tokens > plain.tokens, `${shown.tokens} > ${plain.tokens}`);
  await kept.close();
  await dropped.close();
});

test('a model that does not reason: NotReasoningError while it answers and once it is idle; the options are ignored', T, async () => {
  await use('default');
  const stream = worker.generate(LONG, { maxTokens: 200, ...GREEDY });
  for await (const _ of stream) {
    await assert.rejects(stream.endReasoning(), (err) => err instanceof NotReasoningError && err.code === 'not_reasoning');
    break;
  }
  assert.equal(stream.result.stop_reason, 'aborted');
  await assert.rejects(worker.endReasoning(), NotReasoningError);

  await worker.reset();
  const plain = await worker.chat('Name a colour.', { maxTokens: 16, ...GREEDY });
  await worker.reset();
  const [asked, parts] = await collect('Name a colour.', { maxTokens: 16, reasoning: { enabled: true, budgetTokens: 0, effort: 'high' }, ...GREEDY });
  // The same prompt (the template was told nothing); the text may differ with what the cache reused.
  assert.equal(asked.usage.prompt_tokens, plain.usage.prompt_tokens);
  assert.equal(asked.reasoning, null);
  assert.equal(asked.usage.reasoning_tokens, 0);
  assert.ok(parts.every((p) => p.type === 'text'));
});

test('assistant prefill: a list ending with an assistant message is continued; chunks and text hold only the continuation', T, async () => {
  await use('default');
  const prefix = 'The three primary colours are';
  const conversation = [{ role: 'user', content: 'Name the primary colours.' }, { role: 'assistant', content: prefix }];
  const without = await worker.countTokens(conversation.slice(0, 1));
  const [result] = await collect(conversation, { maxTokens: 12, ...GREEDY });
  assert.ok(!result.text.startsWith(prefix), result.text);
  // The prompt ends with the prefix (no end of turn after it, no new assistant header).
  assert.equal(result.usage.prompt_tokens, without.tokens + (await worker.tokenize(prefix)).length);
  assert.equal((await worker.session('default').info()).messages, 2, 'the prefix and its continuation joined the history as one message');
});
