#!/usr/bin/env node
// A scriptable stand-in for the llama-worker, used by test/client.test.js and
// test/failures.test.js to exercise the client's failure paths
// deterministically (the real worker is driven by the other suites). It speaks
// just enough of the protocol; the FAKE_WORKER environment variable
// (comma-separated flags) picks its misbehaviour:
//
//   no-ready      never answer `init`
//   stubborn      ignore end of stdin and SIGTERM (only SIGKILL ends it)
//   die           on `generate`, write to stderr and exit with code 7
//   bad-frame     on `ping`, write a frame whose payload is not JSON, then the `pong`
//   huge-frame    on `ping`, write a length prefix of ~4 GiB
//   garbage       on `ping`, write a line of text (a stray print) instead of a frame
//   truncated     on `ping`, write the first 10 bytes of a 100-byte frame, then exit 0
//   lost-request  on `ping`, answer `error` bad_frame with id null (as if the ping were unreadable)
//   invalid-reply tokenize: `tokens` without ids; detokenize: a frame without `type`;
//                 count: a `pong`; generate of "bad chunk": a chunk without text
//   silent        answer `init`, then nothing else (until stdin ends)
//   chatty        write a line to stderr on every `ping`
//   dribble       write every frame in 3-byte pieces
//   extras        before each `done`, a frame of an unknown type and a `log`, in one write with it
//   version2      answer `init` with protocol_version 2
//   small-limit   announce `ready.max_frame_size` 5000
//
// `generate` streams the input's words as chunks (input "hang" streams nothing
// and waits for an abort). With `reasoning` (not `enabled: false`) it thinks
// first: a thought chunk for each word in upper case (at most
// `budget_tokens`), then the answer; `done.reasoning` and
// `usage.reasoning_tokens` (the thought chunks plus one end marker) say so.
// Input "ponder" with `reasoning` thinks "pondering" and then waits, thinking,
// for `end_reasoning` (then answers "the answer") or an abort. `end_reasoning`
// answers `ok` while a generation thinks, else `not_reasoning`; `load`, `preload` and `save_session` with the path
// or input "hang" wait for an abort too. `ready.worker_version` reports the
// LLAMA_WORKER_PARENT_PID it was given and `ready.fake_init` the `init`
// received; each `done.usage.prompt_tokens` is the input's length (so large
// requests can be checked end to end).

import { FrameDecoder, encodeFrame } from '../src/framing.js';

const flags = new Set((process.env.FAKE_WORKER ?? '').split(',').filter(Boolean));
const decoder = new FrameDecoder({ maxFrameSize: 64 * 1024 * 1024 });
/** The running job: { id, end(aborted) } */
let running = null;

let outTail = Promise.resolve();
function writeRaw(bytes) {
  if (!flags.has('dribble')) {
    process.stdout.write(bytes);
    return;
  }
  outTail = outTail.then(async () => {
    for (let i = 0; i < bytes.length; i += 3) {
      process.stdout.write(bytes.subarray(i, i + 3));
      await new Promise((resolve) => setImmediate(resolve));
    }
  });
}
const send = (...messages) => writeRaw(Buffer.concat(messages.map(encodeFrame)));
const error = (id, code, message, retryable = false) => send({ type: 'error', id, code, message, retryable });

function rawFrame(payload, length = payload.length) {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(length);
  return Buffer.concat([header, payload]);
}

/** Start a job, or answer `busy`. `end(aborted)` sends its terminal reply. */
function startJob(id, end) {
  if (running) {
    error(id, 'busy', `busy with ${running.id}`, true);
    return null;
  }
  running = { id, end };
  return running;
}

function endJob(aborted) {
  const job = running;
  if (!job) return;
  running = null;
  job.end(aborted);
}

function generate(msg) {
  if (flags.has('die')) {
    process.stderr.write('fake worker: about to die\n'.repeat(20));
    process.stderr.write('fake worker: last words\n', () => process.exit(7));
    return;
  }
  const input = typeof msg.input === 'string' ? msg.input : JSON.stringify(msg.input);
  const thinks = msg.reasoning != null && msg.reasoning.enabled !== false;
  const state = { text: '', count: 0, timer: null, thinking: thinks, thought: null, thoughtCount: 0, words: [], step: null };
  const job = startJob(msg.id, (aborted) => {
    clearTimeout(state.timer);
    const done = {
      type: 'done',
      id: msg.id,
      text: state.text,
      reasoning: state.thought,
      stop_reason: aborted ? 'aborted' : 'eos',
      usage: { prompt_tokens: input.length, cached_tokens: 0, completion_tokens: state.count, reasoning_tokens: state.thoughtCount },
      timings: { ttft_ms: 0, total_ms: 0, tokens_per_second: 0, prompt_ms: 0 },
      truncated_messages: 0,
      seed: null,
    };
    if (flags.has('extras')) {
      send({ type: 'from_the_future', id: msg.id, payload: 1 }, { type: 'log', id: null, level: 'warning', message: 'fake: about to finish' }, done);
    } else {
      send(done);
    }
  });
  if (!job || input === 'hang') return;
  job.state = state;
  if (flags.has('invalid-reply') && input === 'bad chunk') {
    send({ type: 'chunk', id: msg.id, text: 42 });
    return; // and wait for the abort
  }
  if (flags.has('invalid-reply') && input === 'bad reasoning') {
    send({ type: 'chunk', id: msg.id, text: '', reasoning: 42 });
    return; // and wait for the abort
  }
  const pondering = thinks && input === 'ponder';
  const words = pondering ? ['the ', 'answer'] : input.length > 1000 ? ['long'] : input.split(/(?<= )/);
  let thoughts = pondering ? ['pondering'] : thinks ? words.map((w) => w.toUpperCase()) : [];
  const budget = msg.reasoning?.budget_tokens;
  if (thinks && budget != null) thoughts = thoughts.slice(0, budget);
  const think = (piece) => {
    state.thought = (state.thought ?? '') + piece;
    state.thoughtCount += 1;
    state.count += 1;
    send({ type: 'chunk', id: msg.id, text: '', reasoning: piece });
  };
  const step = () => {
    if (running !== job) return;
    if (state.thinking) {
      const piece = thoughts.shift();
      if (piece !== undefined) think(piece);
      if (thoughts.length === 0 && pondering) return; // thinks on until end_reasoning
      if (thoughts.length === 0) endThought();
      state.timer = setTimeout(step, 1);
      return;
    }
    const word = words.shift();
    if (word === undefined) {
      endJob(false);
      return;
    }
    state.text += word;
    state.count += 1;
    send({ type: 'chunk', id: msg.id, text: word });
    state.timer = setTimeout(step, 1);
  };
  const endThought = () => {
    state.thinking = false;
    state.thoughtCount += 1; // the end-of-thought marker
    state.count += 1;
  };
  state.endThought = () => {
    endThought();
    clearTimeout(state.timer);
    state.timer = setTimeout(step, 1);
  };
  step();
}

function handle(msg) {
  if (flags.has('silent') && msg.type !== 'init') return;
  switch (msg.type) {
    case 'init':
      if (flags.has('no-ready')) return;
      send({
        type: 'ready',
        id: msg.id,
        protocol_version: flags.has('version2') ? 2 : 1,
        worker_version: `fake parent=${process.env.LLAMA_WORKER_PARENT_PID ?? ''}`,
        llama_cpp_version: '0',
        pid: process.pid,
        capabilities: [],
        max_frame_size: flags.has('small-limit') ? 5000 : null,
        fake_init: msg,
      });
      return;
    case 'ping':
      if (flags.has('chatty')) process.stderr.write('fake worker: ping\n');
      if (flags.has('bad-frame')) writeRaw(rawFrame(Buffer.from('{not json')));
      if (flags.has('huge-frame')) {
        writeRaw(Buffer.from([0xff, 0xff, 0xff, 0xf0]));
        return;
      }
      if (flags.has('garbage')) {
        writeRaw(Buffer.from('hello from a stray print()\n'));
        return;
      }
      if (flags.has('truncated')) {
        process.stdout.write(rawFrame(Buffer.from('{"type": "p'), 100), () => process.exit(0));
        return;
      }
      if (flags.has('lost-request')) {
        error(null, 'bad_frame', 'frame payload is not valid JSON');
        return;
      }
      send({ type: 'pong', id: msg.id });
      return;
    case 'generate':
      generate(msg);
      return;
    case 'load':
      if (!startJob(msg.id, (aborted) => (aborted ? error(msg.id, 'aborted', 'the load was aborted', true) : send({ type: 'loaded', id: msg.id, model: { name: 'fake', n_ctx: 64 }, load_ms: 0 })))) return;
      send({ type: 'progress', id: msg.id, fraction: 0.5 });
      if (msg.model_path !== 'hang') endJob(false);
      return;
    case 'preload':
      if (!startJob(msg.id, (aborted) => send({ type: 'preloaded', id: msg.id, session: msg.session ?? 'default', prompt_tokens: 1, cached_tokens: 0, complete: !aborted }))) return;
      if (msg.input !== 'hang') endJob(false);
      return;
    case 'save_session':
      if (!startJob(msg.id, (aborted) => (aborted ? error(msg.id, 'aborted', 'the save was aborted', true) : send({ type: 'saved', id: msg.id, path: msg.path, bytes: 1, session: {} })))) return;
      if (msg.path !== 'hang') endJob(false);
      return;
    case 'restore_session':
    case 'reset':
    case 'close_session':
      if (!startJob(msg.id, () => send(msg.type === 'restore_session' ? { type: 'restored', id: msg.id, session: {}, history: [] } : { type: 'ok', id: msg.id }))) return;
      endJob(false);
      return;
    case 'sessions':
      send({ type: 'session_list', id: msg.id, sessions: [], cache_bytes: 0, cache_budget_bytes: 0 });
      return;
    case 'tokenize':
      if (flags.has('invalid-reply')) send({ type: 'tokens', id: msg.id, count: 0 });
      else send({ type: 'tokens', id: msg.id, ids: [...msg.text].map((c) => c.codePointAt(0)), count: [...msg.text].length });
      return;
    case 'detokenize':
      if (flags.has('invalid-reply')) send({ id: msg.id, text: 'no type' });
      else send({ type: 'text', id: msg.id, text: String.fromCodePoint(...msg.ids) });
      return;
    case 'count':
      if (flags.has('invalid-reply')) send({ type: 'pong', id: msg.id });
      else send({ type: 'token_count', id: msg.id, session: msg.session ?? 'default', tokens: 1, n_ctx: 64 });
      return;
    case 'end_reasoning':
      if (running?.state?.thinking && (msg.target == null || msg.target === running.id)) {
        send({ type: 'ok', id: msg.id });
        running.state.endThought();
      } else {
        error(msg.id, 'not_reasoning', 'fake: the target is not thinking');
      }
      return;
    case 'abort':
      if (running && (msg.target == null || msg.target === running.id)) endJob(true);
      send({ type: 'ok', id: msg.id });
      return;
    case 'cleanup':
      endJob(true);
      send({ type: 'ok', id: msg.id });
      return;
    default:
      error(msg.id ?? null, 'unknown_type', `fake: ${msg.type}`);
  }
}

process.stdin.on('data', (data) => {
  for (const item of decoder.push(data)) {
    if (item instanceof Error) error(null, 'bad_frame', item.message);
    else handle(item);
  }
});
process.stdin.on('end', () => {
  if (flags.has('stubborn')) return;
  endJob(true);
  outTail.then(() => process.exit(0));
});
if (flags.has('stubborn')) {
  process.on('SIGTERM', () => {});
  setInterval(() => {}, 1 << 30);
}
