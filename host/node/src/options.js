// Request options: the client accepts camelCase names (JavaScript style) and
// the protocol's own snake_case names, and sends the wire names.

/** load(): camelCase option -> wire field of the `load` message. */
export const LOAD_FIELDS = Object.freeze({
  modelPath: 'model_path',
  nCtx: 'n_ctx',
  nThreads: 'n_threads',
  nGpuLayers: 'n_gpu_layers',
  seed: 'seed',
  chatFormat: 'chat_format',
  systemPrompt: 'system_prompt',
  useExtraBufts: 'use_extra_bufts',
  nBatch: 'n_batch',
  flashAttn: 'flash_attn',
  sessionCacheBytes: 'session_cache_bytes',
});

/** generate(): camelCase option -> wire field of the `generate` message (`input` is the first argument). */
export const GENERATE_FIELDS = Object.freeze({
  maxTokens: 'max_tokens',
  temperature: 'temperature',
  topP: 'top_p',
  stop: 'stop',
  topK: 'top_k',
  minP: 'min_p',
  repeatPenalty: 'repeat_penalty',
  seed: 'seed',
  mode: 'mode',
  session: 'session',
  responseFormat: 'response_format',
  reasoning: 'reasoning',
  tools: 'tools',
  toolChoice: 'tool_choice',
  parallelToolCalls: 'parallel_tool_calls',
});

/** generate()'s `reasoning` object: camelCase name -> wire field of the protocol's Reasoning. */
export const REASONING_FIELDS = Object.freeze({
  enabled: 'enabled',
  budgetTokens: 'budget_tokens',
  effort: 'effort',
  keepInHistory: 'keep_in_history',
});

/** The `reasoning.effort` values of the protocol. */
const EFFORTS = ['low', 'medium', 'high'];

/** reset(): camelCase option -> wire field of the `reset` message. */
export const RESET_FIELDS = Object.freeze({
  systemPrompt: 'system_prompt',
  session: 'session',
  history: 'history',
});

/** preload(): camelCase option -> wire field of the `preload` message (`input` is the first argument). */
export const PRELOAD_FIELDS = Object.freeze({
  maxTokens: 'max_tokens',
  session: 'session',
});

/** tokenize(): camelCase option -> wire field of the `tokenize` message (`text` is the first argument). */
export const TOKENIZE_FIELDS = Object.freeze({
  special: 'special',
});

/** detokenize(): camelCase option -> wire field of the `detokenize` message (`ids` is the first argument). */
export const DETOKENIZE_FIELDS = Object.freeze({
  special: 'special',
});

/** countTokens(): camelCase option -> wire field of the `count` message (`input` is the first argument). */
export const COUNT_FIELDS = Object.freeze({
  session: 'session',
});

/**
 * Map user options to wire fields. Undefined values are left out (the worker's
 * default applies); null is sent as null ("omitted" in the protocol). Unknown
 * names throw a TypeError, so a typo does not silently fall back to a default.
 * @param {object | null | undefined} options
 * @param {Readonly<Record<string, string>>} table
 * @param {string} what
 */
export function toWireFields(options, table, what) {
  if (options == null) return {};
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new TypeError(`${what} options must be an object`);
  }
  const wireNames = new Set(Object.values(table));
  /** @type {Record<string, unknown>} */
  const out = {};
  /** @type {Record<string, string>} */
  const givenAs = {};
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined) continue;
    let wire;
    if (Object.prototype.hasOwnProperty.call(table, key)) wire = table[key];
    else if (wireNames.has(key)) wire = key;
    else {
      const names = Object.entries(table).map(([camel, w]) => (camel === w ? camel : `${camel}/${w}`));
      throw new TypeError(`unknown ${what} option ${JSON.stringify(key)}; known: ${names.join(', ')}`);
    }
    if (wire in out && out[wire] !== value) {
      throw new TypeError(`${what} option ${wire} given twice (${givenAs[wire]} and ${key}) with different values`);
    }
    out[wire] = value;
    givenAs[wire] = key;
  }
  return out;
}

/** The optional fields of the protocol's ChatMessage, kept when a message has them. */
const MESSAGE_FIELDS = /** @type {const} */ (['reasoning', 'tool_calls', 'tool_call_id', 'name']);

/**
 * Normalise a generate input: a string (the next user turn, or the text to
 * continue in completion mode) or a list of {role, content} messages with the
 * protocol's optional fields when given (`reasoning`, an assistant turn's
 * thoughts; `tool_calls`, `tool_call_id`, `name`); other properties are
 * dropped. The roles and contents are the worker's to check.
 * @param {unknown} input
 * @returns {string | import('./protocol.js').ChatMessage[]}
 */
export function toWireInput(input) {
  if (typeof input === 'string') return input;
  if (Array.isArray(input)) {
    return input.map((m, i) => {
      if (m === null || typeof m !== 'object') throw new TypeError(`input[${i}] must be a {role, content} object`);
      const message = /** @type {import('./protocol.js').ChatMessage} */ (m);
      /** @type {import('./protocol.js').ChatMessage} */
      const out = { role: message.role, content: message.content };
      for (const field of MESSAGE_FIELDS) {
        if (message[field] !== undefined) Object.assign(out, { [field]: message[field] });
      }
      return out;
    });
  }
  throw new TypeError('input must be a string or an array of {role, content} messages');
}

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
function isPlainObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/**
 * Normalise a generate `responseFormat` into the wire's ResponseFormat, with
 * the rules of host/client.py's `response_format()`: null stays null
 * (omitted); "json" is {type: "json"} (any JSON object); an object whose
 * `type` is "json" or "json_schema" and whose keys are only type/schema is
 * sent as it is; any other object is a bare JSON Schema, sent as
 * {type: "json_schema", schema}.
 * @param {unknown} value
 * @returns {import('./protocol.js').ResponseFormat | null}
 */
export function toResponseFormat(value) {
  if (value === null) return null;
  if (value === 'json') return { type: 'json' };
  if (isPlainObject(value)) {
    const { type, schema } = value;
    if ((type === 'json' || type === 'json_schema') && Object.keys(value).every((k) => k === 'type' || k === 'schema')) {
      if (schema === undefined) return { type };
      if (schema !== null && !isPlainObject(schema)) {
        throw new TypeError(`responseFormat.schema must be a JSON Schema object or null, not ${JSON.stringify(schema)}`);
      }
      return { type, schema };
    }
    return { type: 'json_schema', schema: value };
  }
  throw new TypeError(`responseFormat: expected 'json', a JSON Schema object or {type, schema}, not ${JSON.stringify(value) ?? String(value)}`);
}

/**
 * Normalise a generate `reasoning` option into the wire's Reasoning, checked
 * against the schema: null stays null (omitted: the model's own default);
 * `true`/`false` are {enabled: true}/{enabled: false}; an object takes
 * `enabled` (boolean or null), `budgetTokens`/`budget_tokens` (an integer
 * >= 0, or null), `effort` ("low", "medium", "high" or null) and
 * `keepInHistory`/`keep_in_history` (boolean), sent under the wire names.
 * Anything else is a TypeError, so a typo does not silently think.
 * @param {unknown} value
 * @returns {import('./protocol.js').Reasoning | null}
 */
export function toReasoning(value) {
  if (value === null) return null;
  if (typeof value === 'boolean') return { enabled: value };
  if (!isPlainObject(value)) {
    throw new TypeError(`reasoning: expected an object ({enabled, budgetTokens, effort, keepInHistory}), a boolean or null, not ${JSON.stringify(value) ?? String(value)}`);
  }
  const fields = toWireFields(value, REASONING_FIELDS, 'reasoning');
  const { enabled, budget_tokens: budget, effort, keep_in_history: keep } = fields;
  if (enabled !== undefined && enabled !== null && typeof enabled !== 'boolean') {
    throw new TypeError(`reasoning.enabled must be a boolean or null, not ${JSON.stringify(enabled)}`);
  }
  if (budget !== undefined && budget !== null && !(Number.isSafeInteger(budget) && /** @type {number} */ (budget) >= 0)) {
    throw new TypeError(`reasoning.budgetTokens must be an integer >= 0 or null, not ${JSON.stringify(budget) ?? String(budget)}`);
  }
  if (effort !== undefined && effort !== null && !EFFORTS.includes(/** @type {string} */ (effort))) {
    throw new TypeError(`reasoning.effort must be "low", "medium", "high" or null, not ${JSON.stringify(effort) ?? String(effort)}`);
  }
  if (keep !== undefined && typeof keep !== 'boolean') {
    throw new TypeError(`reasoning.keepInHistory must be a boolean, not ${JSON.stringify(keep) ?? String(keep)}`);
  }
  return /** @type {import('./protocol.js').Reasoning} */ (fields);
}
