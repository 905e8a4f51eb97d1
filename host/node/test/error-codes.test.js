// The client's error-code table against the protocol itself, not against a
// copy of it: the codes are the ErrorCode enum of protocol/schema.json (the
// `code` of the `error` message), and which of them are retryable is
// RETRYABLE_CODES of protocol/errors.py (the schema does not carry it).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { BY_CODE } from '../src/errors.js';
import { LlamaWorkerError, errorClassForCode, errorFromFrame } from '../src/index.js';

const schema = JSON.parse(readFileSync(new URL('../../../protocol/schema.json', import.meta.url), 'utf8'));
const errorsPy = readFileSync(new URL('../../../protocol/errors.py', import.meta.url), 'utf8');

/** The ErrorCode enum, reached from the `error` message's `code` property. */
function schemaErrorCodes() {
  const code = schema.$defs.Error.properties.code;
  const def = code.$ref ? schema.$defs[code.$ref.replace('#/$defs/', '')] : code;
  assert.ok(Array.isArray(def.enum), 'the code of Error is an enum');
  return [...def.enum].sort();
}

/** RETRYABLE_CODES of protocol/errors.py, as wire values (ErrorCode.BUSY -> "busy"). */
function retryableCodes() {
  const members = Object.fromEntries([...errorsPy.matchAll(/^\s+([A-Z_]+) = "([a-z_]+)"$/gm)].map((m) => [m[1], m[2]]));
  const block = errorsPy.match(/^RETRYABLE_CODES\b[^=]*=\s*frozenset\(([\s\S]*?)\)\s*$/m);
  assert.ok(block, 'RETRYABLE_CODES = frozenset(...) found in protocol/errors.py');
  const names = [...block[1].matchAll(/ErrorCode\.([A-Z_]+)/g)].map((m) => m[1]);
  assert.ok(names.length > 0, 'RETRYABLE_CODES lists ErrorCode members');
  return names.map((name) => {
    assert.ok(members[name], `ErrorCode.${name} is a member of ErrorCode`);
    return members[name];
  }).sort();
}

test('the code -> class table has exactly the ErrorCode values of protocol/schema.json', () => {
  const codes = schemaErrorCodes();
  assert.ok(codes.length >= 17, `the schema lists the codes (${codes.length})`);
  assert.deepEqual(Object.keys(BY_CODE).sort(), codes);
  for (const code of codes) {
    const Cls = errorClassForCode(code);
    assert.notEqual(Cls, LlamaWorkerError, `${code} has a class of its own`);
    assert.ok(Cls.prototype instanceof LlamaWorkerError, `${code}: ${Cls.name} is a LlamaWorkerError`);
  }
  assert.equal(errorClassForCode('a_code_from_a_newer_worker'), LlamaWorkerError);
});

test('retryable agrees with protocol/errors.py RETRYABLE_CODES, for every code', () => {
  const retryable = new Set(retryableCodes());
  assert.ok(retryable.has('busy'), `RETRYABLE_CODES read from protocol/errors.py: ${[...retryable]}`);
  for (const code of schemaErrorCodes()) {
    const Cls = errorClassForCode(code);
    // The class default (an error the client raises itself) and the class an error frame becomes.
    assert.equal(new Cls('x', { code }).retryable, retryable.has(code), `${code}: ${Cls.name} retryable by default`);
    const fromFrame = errorFromFrame({ id: 1, code, message: 'x', retryable: retryable.has(code) });
    assert.ok(fromFrame instanceof Cls, `${code}: errorFromFrame gives ${Cls.name}`);
    assert.equal(fromFrame.code, code);
    assert.equal(fromFrame.retryable, retryable.has(code));
  }
});
