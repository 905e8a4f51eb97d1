// The typings match protocol/schema.json: src/protocol.d.ts is what
// scripts/gen-typings.js makes of the current schema, and an independent
// regex reading of it agrees with the schema on every message of both unions
// (field names, required vs optional, the `type` literal), which checks the
// generator itself. The rest is tsc's (`npm run typecheck`): index.d.ts
// against a TypeScript consumer, the sources and the option tables
// (test/types/). Here: the tables against the schema, and index.js's exports.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { COUNT_FIELDS, DETOKENIZE_FIELDS, GENERATE_FIELDS, LOAD_FIELDS, PRELOAD_FIELDS, REASONING_FIELDS, RESET_FIELDS, TOKENIZE_FIELDS } from '../src/options.js';
import { OUTPUT_PATH, SCHEMA_PATH, renderTypings } from '../scripts/gen-typings.js';

const schema = JSON.parse(readFileSync(SCHEMA_PATH, 'utf8'));
const defs = schema.$defs;
const protocolDts = readFileSync(OUTPUT_PATH, 'utf8');
const indexDts = readFileSync(new URL('../src/index.d.ts', import.meta.url), 'utf8');

/** interface name -> { field -> { optional, type } }, read with regexes (no TypeScript needed). */
function parseInterfaces(source) {
  const stripped = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '');
  const out = {};
  for (const m of stripped.matchAll(/(?:export\s+)?interface\s+(\w+)(?:\s+extends\s+[\w<>, ]+)?\s*\{([^{}]*)\}/g)) {
    const fields = {};
    for (const line of m[2].split(/[;\n]/)) {
      const f = line.trim().match(/^(\w+)(\?)?\s*:\s*(.+)$/);
      if (f) fields[f[1]] = { optional: Boolean(f[2]), type: f[3].trim() };
    }
    out[m[1]] = fields;
  }
  return out;
}

function parseUnion(source, name) {
  const m = source.match(new RegExp(`export\\s+type\\s+${name}\\s*=\\s*([^;]+);`));
  assert.ok(m, `no union ${name}`);
  return m[1].split('|').map((s) => s.trim());
}

const refName = (ref) => ref.replace('#/$defs/', '');

test('src/protocol.d.ts is generated from the current schema (run `npm run gen-typings`)', () => {
  assert.equal(protocolDts, renderTypings(schema), 'src/protocol.d.ts is stale: run `node scripts/gen-typings.js`');
});

test('every message of HostMessage and WorkerMessage has the schema fields, required or optional as in the schema', () => {
  const interfaces = parseInterfaces(protocolDts);
  const checked = [];
  for (const union of ['HostMessage', 'WorkerMessage']) {
    const members = defs[union].anyOf.map((m) => refName(m.$ref));
    assert.deepEqual(parseUnion(protocolDts, union).sort(), [...members].sort(), `${union} members`);
    for (const [type, ref] of Object.entries(defs[union].discriminator.mapping)) {
      const name = refName(ref);
      const def = defs[name];
      const fields = interfaces[name];
      assert.ok(fields, `interface ${name} missing`);
      assert.deepEqual(Object.keys(fields).sort(), Object.keys(def.properties).sort(), `${name}: field names`);
      const required = new Set(def.required ?? []);
      for (const [field, info] of Object.entries(fields)) {
        assert.equal(info.optional, !required.has(field), `${name}.${field}: ${required.has(field) ? 'required' : 'optional'} in the schema`);
      }
      assert.equal(fields.type.type, JSON.stringify(type), `${name}.type literal`);
      checked.push(name);
    }
  }
  // Nested objects too (ModelInfo, Usage, Timings, ChatMessage).
  for (const [name, def] of Object.entries(defs)) {
    if (def.type !== 'object' || checked.includes(name)) continue;
    const fields = interfaces[name];
    assert.ok(fields, `interface ${name} missing`);
    const required = new Set(def.required ?? []);
    assert.deepEqual(Object.keys(fields).sort(), Object.keys(def.properties).sort(), `${name}: field names`);
    for (const [field, info] of Object.entries(fields)) assert.equal(info.optional, !required.has(field), `${name}.${field}`);
  }
  // Enums (ErrorCode, stop_reason...) list the schema's values.
  assert.deepEqual(parseUnion(protocolDts, 'ErrorCode').map((s) => JSON.parse(s)).sort(), [...defs.ErrorCode.enum].sort());
  assert.deepEqual(interfaces.Done.stop_reason.type.split(' | ').map((s) => JSON.parse(s)).sort(), [...defs.Done.properties.stop_reason.enum].sort());
});

test('the option tables cover every field of their message in the schema', () => {
  // That index.d.ts's option interfaces name each table entry in both spellings, all optional and
  // typed as the wire field, is checked by tsc (test/types/options.ts, `npm run typecheck`).
  const cases = [
    ['Load', LOAD_FIELDS, ['type', 'id']],
    ['Generate', GENERATE_FIELDS, ['type', 'id', 'input']],
    ['Reset', RESET_FIELDS, ['type', 'id']],
    ['Preload', PRELOAD_FIELDS, ['type', 'id', 'input']],
    ['Tokenize', TOKENIZE_FIELDS, ['type', 'id', 'text']],
    ['Detokenize', DETOKENIZE_FIELDS, ['type', 'id', 'ids']],
    ['Count', COUNT_FIELDS, ['type', 'id', 'input']],
    ['Reasoning', REASONING_FIELDS, []],
  ];
  for (const [message, table, excluded] of cases) {
    const wireFields = Object.keys(defs[message].properties).filter((f) => !excluded.includes(f));
    assert.deepEqual([...Object.values(table)].sort(), [...wireFields].sort(), `${message}: the client's option table covers the schema`);
  }
});

test('index.js exports exactly the values index.d.ts declares', async () => {
  // tsc checks index.d.ts against the modules behind it (test/types/conformance.ts), but not
  // index.js itself, which index.d.ts stands in for: its export list is checked here.
  const declared = [...indexDts.matchAll(/^export declare (?:const|function|class) (\w+)/gm)].map((m) => m[1]);
  const exported = Object.keys(await import('../src/index.js'));
  assert.deepEqual([...exported].sort(), [...declared].sort());
});
