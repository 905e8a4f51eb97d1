// Chat sessions against the REAL Python worker with the real default model:
// separate histories per session, the session listing, preload (complete and
// interrupted), save/restore across workers, damaged session files.
//
// The worker's interpreter: $LLAMA_WORKER_PYTHON, else the repository's
// .venv. The model is tiny and its answers poor: the assertions are about
// behaviour (token counts, message counts), never about what it says. No
// sleeps: every wait is on a reply, bounded by the test timeout.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { BadRequestError, BusyError, DEFAULT_SESSION, Session, SessionFileError } from '../src/index.js';
import { LOAD, LONG, clientFactory } from './real-worker.js';

// Generous: CI machines are shared and noisy.
const T = { timeout: 120_000 };
const GREEDY = { maxTokens: 8, temperature: 0 };
// A prompt of about 2,000 tokens: its evaluation takes far longer than a frame takes to arrive.
const BIG = Array.from({ length: 110 }, (_, i) => `Note ${i}: the quick brown fox jumps over the lazy dog.`).join(' ');

const client = clientFactory();
const dir = mkdtempSync(join(tmpdir(), 'llama-worker-node-sessions-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** The worker's listing of one session (undefined when it has none of that name). */
async function listed(c, name) {
  return (await c.sessions()).sessions.find((s) => s.session === name);
}

let shared;
before(async () => {
  shared = client();
  await shared.start();
  await shared.load(LOAD);
});

test('session handles: one per name, requests carry the name, a conflicting session option is refused', T, async () => {
  const a = shared.session('handles');
  assert.ok(a instanceof Session);
  assert.equal(shared.session('handles'), a);
  assert.equal(a.name, 'handles');
  assert.equal(a.client, shared);
  assert.equal(shared.session().name, DEFAULT_SESSION);
  assert.throws(() => shared.session(''), TypeError);
  assert.throws(() => shared.session(42), TypeError);
  assert.throws(() => a.generate('x', { session: 'other' }), TypeError);
  assert.throws(() => shared.preload('x', { sesion: 'typo' }), TypeError);
  const stream = a.generate('Hi', { maxTokens: 2, temperature: 0 });
  assert.equal(stream.request.session, 'handles');
  assert.equal((await stream.final()).type, 'done');
  // The same turn through the client's own option.
  const viaOption = shared.generate('Hi again', { maxTokens: 2, temperature: 0, session: 'handles' });
  assert.equal(viaOption.request.session, 'handles');
  await viaOption.final();
  assert.equal((await a.info()).messages, 4);
  // A session the worker does not know yet: zeros.
  assert.deepEqual(await shared.session('never-used').info(), {
    session: 'never-used', messages: 0, tokens: 0, kv_cached: false, active: false, kv_bytes: 0, system_prompt: null,
  });
});

test('two sessions keep separate histories; switching back reuses the cached KV state', T, async () => {
  const alice = shared.session('alice');
  const bob = shared.session('bob');
  const a1 = await alice.chat('My name is Alice. Say OK.', GREEDY);
  const b1 = await bob.chat('My name is Bob and I live in a lighthouse by the sea. Say OK.', GREEDY);
  assert.equal((await alice.info()).messages, 2, "Bob's turn is not in Alice's history");
  const a2 = await alice.chat('What is my name?', GREEDY);
  // Alice's second turn continues her conversation, and its KV state was kept while Bob used the context.
  assert.ok(a2.usage.prompt_tokens > a1.usage.prompt_tokens + a1.usage.completion_tokens - 2, JSON.stringify(a2.usage));
  assert.ok(a2.usage.cached_tokens >= a1.usage.prompt_tokens, JSON.stringify({ a1: a1.usage, a2: a2.usage }));
  const b2 = await bob.chat('Where do I live?', GREEDY);
  assert.ok(b2.usage.cached_tokens >= b1.usage.prompt_tokens, JSON.stringify({ b1: b1.usage, b2: b2.usage }));

  const listing = await shared.sessions();
  assert.equal(listing.type, 'session_list');
  assert.ok(listing.cache_budget_bytes > 0);
  assert.ok(listing.cache_bytes >= 0 && listing.cache_bytes <= listing.cache_budget_bytes);
  const byName = Object.fromEntries(listing.sessions.map((s) => [s.session, s]));
  assert.equal(byName.alice.messages, 4);
  assert.equal(byName.bob.messages, 4);
  assert.ok(byName[DEFAULT_SESSION], 'the default session is always listed');
  assert.equal(byName.bob.active, true, 'Bob ran last: his state is in the context');
  assert.equal(byName.alice.active, false);
  assert.ok(byName.bob.tokens >= b2.usage.prompt_tokens);
  assert.equal(listing.sessions.filter((s) => s.active).length, 1);

  // reset clears one session only.
  await bob.reset('You are terse.');
  const bobInfo = await bob.info();
  assert.equal(bobInfo.messages, 0);
  assert.equal(bobInfo.system_prompt, 'You are terse.');
  assert.equal((await alice.info()).messages, 4);
  await shared.reset({ session: 'alice' });
  assert.equal((await alice.info()).messages, 0);
});

test('preload, then generate the same input: the prompt is already in the cache', T, async () => {
  const s = shared.session('preload');
  const input = 'Summarise the plot of Hamlet in one short sentence, please.';
  const pre = await s.preload(input, { maxTokens: 8 });
  assert.equal(pre.type, 'preloaded');
  assert.equal(pre.session, 'preload');
  assert.equal(pre.complete, true);
  assert.ok(pre.prompt_tokens > 10, JSON.stringify(pre));
  // A preload generates nothing and leaves the history alone.
  const info = await s.info();
  assert.equal(info.messages, 0);
  assert.equal(info.active, true);
  assert.ok(info.tokens >= pre.prompt_tokens - 1, JSON.stringify(info));
  const result = await s.chat(input, GREEDY);
  assert.equal(result.usage.prompt_tokens, pre.prompt_tokens);
  assert.ok(result.usage.cached_tokens >= pre.prompt_tokens - 3, JSON.stringify({ pre, usage: result.usage }));

  // Preloading what was typed so far helps the full turn too.
  const typed = 'Now tell me who Ophelia is';
  const partial = await s.preload(typed);
  assert.equal(partial.complete, true);
  assert.ok(partial.cached_tokens >= result.usage.prompt_tokens, JSON.stringify({ partial, usage: result.usage }));
  const full = await s.chat(`${typed}, in a few words.`, GREEDY);
  // More than what the cache held before that preload: the preloaded part of the new turn was reused.
  assert.ok(full.usage.cached_tokens > partial.cached_tokens, JSON.stringify({ partial, usage: full.usage }));
});

test('a preload interrupted by a generate resolves with complete=false; the generate runs after it, never busy', T, async () => {
  const s = shared.session('interrupted');
  await s.reset();
  const preload = s.preload(BIG, { maxTokens: 8 });
  // Sent at once behind the preload: it interrupts it.
  const stream = s.generate('Say hello.', GREEDY);
  const order = [];
  const [pre, done] = await Promise.all([
    preload.then((msg) => {
      order.push('preloaded');
      return msg;
    }),
    stream.final().then((msg) => {
      order.push('done');
      return msg;
    }),
  ]);
  assert.equal(pre.complete, false, JSON.stringify(pre));
  assert.ok(pre.prompt_tokens > 1000, JSON.stringify(pre));
  assert.deepEqual(order, ['preloaded', 'done']);
  assert.ok(['max_tokens', 'eos'].includes(done.stop_reason), done.stop_reason);
  assert.ok(done.usage.prompt_tokens < 100, 'the generate is its own turn, not the preloaded input');
  assert.equal((await s.info()).messages, 2);

  // An AbortSignal interrupts a preload the same way.
  const controller = new AbortController();
  const aborted = s.preload(BIG, {}, { signal: controller.signal });
  controller.abort();
  assert.equal((await aborted).complete, false);
  // ...and so does any other job request, e.g. a reset (its own reply is ok, not busy).
  const third = s.preload(BIG);
  await s.reset();
  assert.equal((await third).complete, false);
  // Only a preload gives way: a job behind a running generate is still busy.
  const running = shared.generate(LONG, { maxTokens: 400, temperature: 0 });
  assert.equal((await running.next()).done, false);
  await assert.rejects(s.preload('x'), BusyError);
  // The listing is answered at once, during the generation.
  const listing = await shared.sessions();
  assert.ok(listing.sessions.length >= 2);
  assert.equal(running.finished, false, 'the listing came while the generation ran');
  assert.equal((await running.abort()).stop_reason, 'aborted');
});

test('save, then restore into a new worker: the same history, and the next turn reuses the saved KV state', T, async () => {
  const s = shared.session('saver');
  await s.reset('You are a helpful assistant.');
  const turns = ['My favourite fruit is the mango. Say OK.', 'And my favourite colour is teal. Say OK.'];
  const history = [];
  for (const input of turns) {
    const result = await s.chat(input, GREEDY);
    history.push({ role: 'user', content: input }, { role: 'assistant', content: result.text });
  }
  const path = join(dir, 'saver.llws');
  const saved = await s.save(path);
  assert.equal(saved.type, 'saved');
  assert.equal(saved.path, path);
  assert.ok(saved.bytes > 0 && readFileSync(path).length === saved.bytes);
  assert.equal(saved.session.session, 'saver');
  assert.equal(saved.session.messages, 4);
  assert.ok(saved.session.tokens > 20);

  const other = client();
  await other.start();
  await other.load(LOAD);
  const restored = await other.session('saver').restore(path);
  assert.equal(restored.type, 'restored');
  assert.deepEqual(restored.history, history);
  assert.equal(restored.session.session, 'saver');
  assert.equal(restored.session.messages, 4);
  assert.equal(restored.session.system_prompt, 'You are a helpful assistant.');
  assert.equal(restored.session.tokens, saved.session.tokens);
  assert.equal(restored.session.kv_cached, true);
  // kv_bytes left out: the worker may copy the state to RAM while idle, at any moment.
  const { kv_bytes: _a, ...info } = await other.session('saver').info();
  const { kv_bytes: _b, ...expected } = restored.session;
  assert.deepEqual(info, expected);
  const next = await other.session('saver').chat('What is my favourite fruit?', GREEDY);
  assert.ok(next.usage.cached_tokens > 0, JSON.stringify(next.usage));
  assert.ok(next.usage.cached_tokens >= saved.session.tokens - 4, JSON.stringify({ saved: saved.session, usage: next.usage }));
  assert.ok(next.usage.prompt_tokens > saved.session.tokens);
  assert.equal((await listed(other, 'saver')).messages, 6);

  // Restoring under another name (the default session) on the first worker works too.
  const again = await shared.restoreSession(path);
  assert.equal(again.session.session, DEFAULT_SESSION);
  assert.deepEqual(again.history, history);
});

test('damaged or missing session files are SessionFileError (bad_session_file); the session is unchanged', T, async () => {
  const s = shared.session('victim');
  await s.chat('Hello there.', GREEDY);
  const good = join(dir, 'victim.llws');
  await s.save(good);
  // (kv_bytes is left out: the worker copies the state to RAM when idle, at a time of its choosing.)
  const summary = ({ messages, tokens, system_prompt }) => ({ messages, tokens, system_prompt });
  const before = summary(await s.info());
  assert.equal(before.messages, 2);
  const bytes = readFileSync(good);
  const garbage = join(dir, 'garbage.llws');
  writeFileSync(garbage, randomBytes(4096));
  const truncated = join(dir, 'truncated.llws');
  writeFileSync(truncated, bytes.subarray(0, bytes.length - 100));
  const flipped = join(dir, 'flipped.llws');
  const copy = Buffer.from(bytes);
  copy[copy.length - 10] ^= 0xff;
  writeFileSync(flipped, copy);
  for (const path of [garbage, truncated, flipped, join(dir, 'missing.llws'), dir]) {
    const err = await s.restore(path).catch((e) => e);
    assert.ok(err instanceof SessionFileError, `${path}: ${err}`);
    assert.equal(err.code, 'bad_session_file', `${path}: ${err.message}`);
    assert.equal(err.retryable, false);
  }
  assert.deepEqual(summary(await s.info()), before);
  // A bad path for saving is a BadRequestError.
  await assert.rejects(s.save(join(dir, 'no', 'such', 'folder.llws')), BadRequestError);
  // The intact file still restores.
  assert.equal((await s.restore(good)).session.messages, 2);
});

test('a file saved with another KV layout is SessionFileError (session_mismatch)', T, async () => {
  const path = join(dir, 'layout.llws');
  const s = shared.session('layout');
  await s.chat('Hello.', GREEDY);
  await s.save(path);
  const other = client();
  await other.start();
  const model = await other.load({ ...LOAD, flashAttn: true, sessionCacheBytes: 0 });
  assert.equal(model.session_cache_bytes, 0);
  const err = await other.session('layout').restore(path).catch((e) => e);
  assert.ok(err instanceof SessionFileError, String(err));
  assert.equal(err.code, 'session_mismatch', err.message);
  assert.equal(err.retryable, false);
  assert.equal((await other.sessions()).cache_budget_bytes, 0);
});

test('closeSession forgets a session; closing "default" empties it', T, async () => {
  const s = shared.session('closing');
  await s.chat('Hi.', { maxTokens: 2, temperature: 0 });
  assert.equal((await listed(shared, 'closing')).messages, 2);
  await s.close();
  assert.equal(await listed(shared, 'closing'), undefined);
  // The handle stays usable: the worker creates the session again on first use.
  await s.chat('Hi again.', { maxTokens: 2, temperature: 0 });
  assert.equal((await s.info()).messages, 2);
  await shared.closeSession('closing');
  await shared.chat('Hello.', { maxTokens: 2, temperature: 0 });
  assert.ok((await listed(shared, DEFAULT_SESSION)).messages >= 2);
  await shared.session().close();
  const def = await listed(shared, DEFAULT_SESSION);
  assert.equal(def.messages, 0);
});
