// Framing of the llama-worker protocol (PROTOCOL.md section 2): a 4-byte
// big-endian payload length, then that many bytes of UTF-8 JSON holding one
// object with a string `type`.

/**
 * The one default limit on a frame's payload, both ways (PROTOCOL.md section
 * 2.3): the largest worker frame this client reads (announced in
 * `init.max_frame_size`, so the worker never writes a larger one), and the
 * worker's default `--max-frame-size` for requests.
 */
export const DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024;

/** The worker's default `--max-frame-size` (the same limit; kept as its own name). */
export const WORKER_DEFAULT_MAX_FRAME_SIZE = DEFAULT_MAX_FRAME_SIZE;

/** The least `init.max_frame_size` a host may announce: an `error` frame must always fit. */
export const MIN_FRAME_SIZE = 4096;

/**
 * A decoded payload: a JSON object with a string `type` (a WorkerMessage when
 * the worker keeps to the protocol; the client checks what it relies on).
 * @typedef {Record<string, unknown> & { type: string }} DecodedMessage
 */

const HEADER = 4;
const MAX_UINT32 = 0xffffffff;

/**
 * UTF-8 decoding that rejects invalid bytes (lenient only on Node builds without ICU, where `fatal` is unsupported).
 * @returns {(bytes: Buffer) => string}
 */
function strictUtf8Decoder() {
  try {
    const decoder = new TextDecoder('utf-8', { fatal: true });
    return (bytes) => decoder.decode(bytes);
  } catch {
    return (bytes) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('utf8');
  }
}

/**
 * A frame that cannot be decoded. `fatal` means the stream can no longer be
 * trusted; `id` is the request id the payload names, when it is a JSON object
 * with a readable (integer or string) `id`, else null.
 */
export class FrameError extends Error {
  /**
   * @param {string} message
   * @param {{ fatal: boolean, payload?: Buffer, id?: number | string | null }} details
   */
  constructor(message, details) {
    super(message);
    this.name = 'FrameError';
    this.fatal = details.fatal;
    this.payload = details.payload;
    this.id = details.id ?? null;
  }
}

/**
 * Encode one message as a frame.
 * @param {object} message a JSON-serialisable object with a string `type`
 * @returns {Buffer}
 */
export function encodeFrame(message) {
  const json = JSON.stringify(message);
  if (typeof json !== 'string') throw new TypeError('a frame must hold a JSON object');
  const length = Buffer.byteLength(json, 'utf8');
  if (length > MAX_UINT32) throw new RangeError(`frame payload of ${length} bytes does not fit a 32-bit length`);
  const frame = Buffer.allocUnsafe(HEADER + length);
  frame.writeUInt32BE(length, 0);
  frame.write(json, HEADER, 'utf8');
  return frame;
}

/**
 * Incremental decoder: feed it whatever `data` events deliver (frames split
 * across reads, several frames per read, one byte at a time) and get back the
 * whole frames. Buffers are only joined once per frame, so a large frame
 * arriving in many small reads costs linear time.
 */
export class FrameDecoder {
  /** @param {{ maxFrameSize?: number }} [options] */
  constructor(options = {}) {
    this.maxFrameSize = options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE;
    /** @type {Buffer[]} */
    this._chunks = [];
    /** index of the first unconsumed chunk */
    this._head = 0;
    this._buffered = 0;
    /** @type {number | null} payload length of the frame being read */
    this._expected = null;
    this._failed = false;
    this._utf8 = strictUtf8Decoder();
  }

  /** Bytes received and not yet returned as frames. */
  get buffered() {
    return this._buffered + (this._expected === null ? 0 : HEADER);
  }

  /**
   * Feed bytes; returns the decoded items in order: parsed message objects,
   * or FrameError instances for payloads that are not valid messages (the
   * stream stays aligned after those). Throws a fatal FrameError when a length
   * prefix exceeds maxFrameSize: nothing after it can be trusted.
   * @param {Buffer | Uint8Array} data
   * @returns {Array<DecodedMessage | FrameError>}
   */
  push(data) {
    if (this._failed) throw new FrameError('the decoder already failed on a fatal frame', { fatal: true });
    if (data.length > 0) {
      this._chunks.push(Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.length));
      this._buffered += data.length;
    }
    const out = [];
    for (;;) {
      if (this._expected === null) {
        if (this._buffered < HEADER) break;
        const length = this._take(HEADER).readUInt32BE(0);
        if (length > this.maxFrameSize) {
          this._failed = true;
          this._chunks = [];
          this._head = 0;
          this._buffered = 0;
          throw new FrameError(`frame of ${length} bytes exceeds the limit of ${this.maxFrameSize} bytes`, { fatal: true });
        }
        this._expected = length;
      }
      if (this._buffered < this._expected) break;
      const payload = this._take(this._expected);
      this._expected = null;
      out.push(this._decode(payload));
    }
    return out;
  }

  /**
   * @param {Buffer} payload
   * @returns {DecodedMessage | FrameError}
   */
  _decode(payload) {
    let text;
    try {
      text = this._utf8(payload);
    } catch {
      return new FrameError('frame payload is not valid UTF-8', { fatal: false, payload });
    }
    let value;
    try {
      value = JSON.parse(text);
    } catch (err) {
      return new FrameError(`frame payload is not valid JSON: ${/** @type {Error} */ (err).message}`, { fatal: false, payload });
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      return new FrameError('frame payload is not a JSON object', { fatal: false, payload });
    }
    if (typeof value.type !== 'string') {
      const id = Number.isInteger(value.id) || typeof value.id === 'string' ? value.id : null;
      return new FrameError('frame payload has no string "type"', { fatal: false, payload, id });
    }
    return value;
  }

  /**
   * Remove and return the first n buffered bytes (n <= buffered).
   * @param {number} n
   * @returns {Buffer}
   */
  _take(n) {
    this._buffered -= n;
    if (n === 0) return Buffer.alloc(0);
    const chunks = this._chunks;
    let head = this._head;
    let out;
    if (chunks[head].length >= n) {
      const first = chunks[head];
      out = first.subarray(0, n);
      if (first.length === n) head += 1;
      else chunks[head] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let filled = 0;
      while (filled < n) {
        const chunk = chunks[head];
        const want = n - filled;
        if (chunk.length <= want) {
          chunk.copy(out, filled);
          filled += chunk.length;
          head += 1;
        } else {
          chunk.copy(out, filled, 0, want);
          chunks[head] = chunk.subarray(want);
          filled += want;
        }
      }
    }
    // Drop consumed chunks in bulk (shifting one at a time would be quadratic).
    if (head === chunks.length) {
      this._chunks = [];
      head = 0;
    } else if (head > 64 && head * 2 > chunks.length) {
      this._chunks = chunks.slice(head);
      head = 0;
    }
    this._head = head;
    return out;
  }
}
