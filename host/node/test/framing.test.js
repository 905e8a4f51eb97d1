// Framing (PROTOCOL.md section 2): the encoder, and the incremental decoder under any chunking.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { DEFAULT_MAX_FRAME_SIZE, FrameDecoder, FrameError, encodeFrame } from '../src/framing.js';

test('encodes the spec example byte for byte (section 2.2)', () => {
  const frame = encodeFrame({ type: 'ping', id: 1 });
  assert.equal(frame.toString('hex'), '000000167b2274797065223a2270696e67222c226964223a317d');
});

test('length counts UTF-8 bytes, not characters', () => {
  const frame = encodeFrame({ type: 'chunk', id: 1, text: 'héllo 🦙' });
  assert.equal(frame.readUInt32BE(0), frame.length - 4);
  assert.deepEqual(new FrameDecoder().push(frame), [{ type: 'chunk', id: 1, text: 'héllo 🦙' }]);
});

function someFrames() {
  return [
    { type: 'chunk', id: 3, text: 'a' },
    { type: 'chunk', id: 3, text: 'é🦙 multi-byte split across reads' },
    { type: 'pong', id: 'p' },
    { type: 'done', id: 3, text: 'x'.repeat(70_000), stop_reason: 'eos' },
    { type: 'ok', id: 4 },
  ];
}

test('decodes frames split at every byte', () => {
  const messages = someFrames();
  const bytes = Buffer.concat(messages.map(encodeFrame));
  const decoder = new FrameDecoder();
  const out = [];
  for (let i = 0; i < bytes.length; i += 1) out.push(...decoder.push(bytes.subarray(i, i + 1)));
  assert.deepEqual(out, messages);
  assert.equal(decoder.buffered, 0);
});

test('decodes several frames in one read and frames across random reads', () => {
  const messages = someFrames();
  const bytes = Buffer.concat(messages.map(encodeFrame));
  assert.deepEqual(new FrameDecoder().push(bytes), messages);
  let seed = 42; // Park-Miller: exact in doubles
  const random = () => (seed = (seed * 48271) % 2147483647) / 2147483647;
  for (let round = 0; round < 50; round += 1) {
    const decoder = new FrameDecoder();
    const out = [];
    let i = 0;
    while (i < bytes.length) {
      const n = 1 + Math.floor(random() * 9000);
      out.push(...decoder.push(bytes.subarray(i, i + n)));
      i += n;
    }
    assert.deepEqual(out, messages);
  }
});

test('keeps a partial frame until the rest arrives', () => {
  const frame = encodeFrame({ type: 'ok', id: 1 });
  const decoder = new FrameDecoder();
  assert.deepEqual(decoder.push(frame.subarray(0, 2)), []);
  assert.deepEqual(decoder.push(frame.subarray(2, 9)), []);
  assert.equal(decoder.buffered, 9);
  assert.deepEqual(decoder.push(frame.subarray(9)), [{ type: 'ok', id: 1 }]);
});

test('a 20 MiB frame in 64 KiB reads (under a raised limit; the default is 16 MiB)', () => {
  assert.equal(DEFAULT_MAX_FRAME_SIZE, 16 * 1024 * 1024);
  const big = { type: 'done', id: 1, text: 'y'.repeat(20 * 1024 * 1024) };
  const bytes = encodeFrame(big);
  assert.throws(() => new FrameDecoder().push(bytes.subarray(0, 4)), (err) => err instanceof FrameError && err.fatal);
  const decoder = new FrameDecoder({ maxFrameSize: 32 * 1024 * 1024 });
  const out = [];
  for (let i = 0; i < bytes.length; i += 65536) out.push(...decoder.push(bytes.subarray(i, i + 65536)));
  assert.equal(out.length, 1);
  assert.equal(out[0].text.length, big.text.length);
});

test('an oversized length prefix is fatal, checked before the payload arrives', () => {
  const decoder = new FrameDecoder({ maxFrameSize: 1024 });
  const header = Buffer.alloc(4);
  header.writeUInt32BE(1025);
  assert.throws(() => decoder.push(header), (err) => err instanceof FrameError && err.fatal);
  assert.throws(() => decoder.push(encodeFrame({ type: 'ok', id: 1 })), (err) => err instanceof FrameError && err.fatal);
  // Exactly the limit is fine.
  const ok = new FrameDecoder({ maxFrameSize: 22 });
  assert.deepEqual(ok.push(encodeFrame({ type: 'ping', id: 1 })), [{ type: 'ping', id: 1 }]);
});

test('unreadable payloads are reported and the stream stays aligned', () => {
  const raw = (payload) => {
    const header = Buffer.alloc(4);
    header.writeUInt32BE(payload.length);
    return Buffer.concat([header, payload]);
  };
  const bytes = Buffer.concat([
    raw(Buffer.from('{not json')),
    raw(Buffer.from([0xff, 0xfe, 0x00])),
    raw(Buffer.from('"a string"')),
    raw(Buffer.from('{"id": 5}')),
    raw(Buffer.alloc(0)),
    encodeFrame({ type: 'pong', id: 9 }),
  ]);
  const out = new FrameDecoder().push(bytes);
  assert.equal(out.length, 6);
  for (const item of out.slice(0, 5)) assert.ok(item instanceof FrameError && !item.fatal, String(item));
  assert.match(out[1].message, /UTF-8/);
  // A JSON object without a string type: the request id it names is kept, so the host can fail that request.
  assert.deepEqual(out.slice(0, 5).map((item) => item.id), [null, null, null, 5, null]);
  assert.deepEqual(out[5], { type: 'pong', id: 9 });
});
