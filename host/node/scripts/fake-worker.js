#!/usr/bin/env node
// A scriptable stand-in for the llama-worker, used by test/client.test.js to
// exercise the client's failure paths deterministically (the real worker is
// driven by test/conformance.test.js). It speaks just enough of the protocol;
// the FAKE_WORKER environment variable (comma-separated flags) picks its
// misbehaviour:
//
//   no-ready      never answer `init`
//   stubborn      ignore end of stdin and SIGTERM (only SIGKILL ends it)
//   die           on `generate`, write to stderr and exit with code 7
//   bad-frame     on `ping`, write an unparseable frame before the `pong`
//   huge-frame    on `ping`, write a length prefix of ~4 GiB
//   dribble       write every frame in 3-byte pieces
//   extras        before each `done`, send a frame of an unknown type and a `log`
//   version2      answer `init` with protocol_version 2
//
// `generate` streams the input's words as chunks (input "hang" streams nothing
// and waits for an abort); `ready.worker_version` reports the
// LLAMA_WORKER_PARENT_PID it was given; each `done.usage.prompt_tokens` is the
// input's length (so large requests can be checked end to end).

import { FrameDecoder, encodeFrame } from '../src/framing.js';

const flags = new Set((process.env.FAKE_WORKER ?? '').split(',').filter(Boolean));
const decoder = new FrameDecoder({ maxFrameSize: 64 * 1024 * 1024 });
let running = null; // { id, text, timer }

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
const send = (msg) => writeRaw(encodeFrame(msg));

function finish(stopReason) {
  const job = running;
  if (!job) return;
  running = null;
  clearTimeout(job.timer);
  if (flags.has('extras')) {
    send({ type: 'from_the_future', id: job.id, payload: 1 });
    send({ type: 'log', id: null, level: 'warning', message: 'fake: about to finish' });
  }
  send({
    type: 'done',
    id: job.id,
    text: job.text,
    stop_reason: stopReason,
    usage: { prompt_tokens: job.inputLength, cached_tokens: 0, completion_tokens: job.count },
    timings: { ttft_ms: 0, total_ms: 0, tokens_per_second: 0, prompt_ms: 0 },
    truncated_messages: 0,
    seed: null,
  });
}

function handle(msg) {
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
      });
      return;
    case 'ping':
      if (flags.has('bad-frame')) {
        const junk = Buffer.from('{not json');
        const header = Buffer.alloc(4);
        header.writeUInt32BE(junk.length);
        writeRaw(Buffer.concat([header, junk]));
      }
      if (flags.has('huge-frame')) {
        writeRaw(Buffer.from([0xff, 0xff, 0xff, 0xf0]));
        return;
      }
      send({ type: 'pong', id: msg.id });
      return;
    case 'generate': {
      if (flags.has('die')) {
        process.stderr.write('fake worker: about to die\n'.repeat(20));
        process.stderr.write('fake worker: last words\n', () => process.exit(7));
        return;
      }
      if (running) {
        send({ type: 'error', id: msg.id, code: 'busy', message: `busy with ${running.id}`, retryable: true });
        return;
      }
      const input = typeof msg.input === 'string' ? msg.input : JSON.stringify(msg.input);
      running = { id: msg.id, text: '', count: 0, inputLength: input.length, timer: null };
      if (input === 'hang') return;
      const words = input.length > 1000 ? ['long'] : input.split(/(?<= )/);
      const job = running;
      const step = () => {
        if (running !== job) return;
        const word = words.shift();
        if (word === undefined) {
          finish('eos');
          return;
        }
        job.text += word;
        job.count += 1;
        send({ type: 'chunk', id: job.id, text: word });
        job.timer = setTimeout(step, 1);
      };
      step();
      return;
    }
    case 'abort':
      if (running && (msg.target == null || msg.target === running.id)) finish('aborted');
      send({ type: 'ok', id: msg.id });
      return;
    case 'cleanup':
      finish('aborted');
      send({ type: 'ok', id: msg.id });
      return;
    default:
      send({ type: 'error', id: msg.id ?? null, code: 'unknown_type', message: `fake: ${msg.type}`, retryable: false });
  }
}

process.stdin.on('data', (data) => {
  for (const item of decoder.push(data)) {
    if (item instanceof Error) send({ type: 'error', id: null, code: 'bad_frame', message: item.message, retryable: false });
    else handle(item);
  }
});
process.stdin.on('end', () => {
  if (flags.has('stubborn')) return;
  finish('aborted');
  outTail.then(() => process.exit(0));
});
if (flags.has('stubborn')) {
  process.on('SIGTERM', () => {});
  setInterval(() => {}, 1 << 30);
}
