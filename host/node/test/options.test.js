// Option names (camelCase and wire), input normalisation, and the error classes.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  AbortedError,
  BadRequestError,
  BusyError,
  ContextOverflowError,
  GenerationFailedError,
  IncompleteOutputError,
  InternalError,
  LlamaWorkerError,
  LoadFailedError,
  ModelError,
  ModelNotFoundError,
  NoModelError,
  NotInitializedError,
  NotReasoningError,
  ProtocolMismatchError,
  SessionFileError,
  errorFromFrame,
  resolveCommand,
  toResponseFormat,
} from '../src/index.js';
import {
  COUNT_FIELDS,
  DETOKENIZE_FIELDS,
  GENERATE_FIELDS,
  LOAD_FIELDS,
  PRELOAD_FIELDS,
  RESET_FIELDS,
  TOKENIZE_FIELDS,
  toWireFields,
  toWireInput,
} from '../src/options.js';

test('camelCase and wire names map to the wire names', () => {
  assert.deepEqual(toWireFields({ maxTokens: 5, top_p: 0.5, temperature: 0, stop: ['x'], undefinedOne: undefined }, GENERATE_FIELDS, 'generate'), {
    max_tokens: 5,
    top_p: 0.5,
    temperature: 0,
    stop: ['x'],
  });
  assert.deepEqual(toWireFields({ modelPath: null, n_ctx: 512, systemPrompt: 'Be brief.' }, LOAD_FIELDS, 'load'), {
    model_path: null,
    n_ctx: 512,
    system_prompt: 'Be brief.',
  });
  assert.deepEqual(toWireFields(undefined, LOAD_FIELDS, 'load'), {});
  assert.deepEqual(toWireFields({ sessionCacheBytes: 0 }, LOAD_FIELDS, 'load'), { session_cache_bytes: 0 });
  assert.deepEqual(toWireFields({ session: 'a', maxTokens: 3 }, GENERATE_FIELDS, 'generate'), { session: 'a', max_tokens: 3 });
  assert.deepEqual(toWireFields({ session: 'a', systemPrompt: '' }, RESET_FIELDS, 'reset'), { session: 'a', system_prompt: '' });
  assert.deepEqual(toWireFields({ session: 'a', max_tokens: 3 }, PRELOAD_FIELDS, 'preload'), { session: 'a', max_tokens: 3 });
  assert.deepEqual(toWireFields({ responseFormat: 'json' }, GENERATE_FIELDS, 'generate'), { response_format: 'json' });
  assert.deepEqual(toWireFields({ response_format: null }, GENERATE_FIELDS, 'generate'), { response_format: null });
  assert.deepEqual(toWireFields({ special: true }, TOKENIZE_FIELDS, 'tokenize'), { special: true });
  assert.deepEqual(toWireFields({ special: false }, DETOKENIZE_FIELDS, 'detokenize'), { special: false });
  assert.deepEqual(toWireFields({ session: 'a' }, COUNT_FIELDS, 'countTokens'), { session: 'a' });
  assert.throws(() => toWireFields({ input: 'x' }, COUNT_FIELDS, 'countTokens'), /unknown countTokens option "input"/);
});

test('responseFormat: "json", a bare JSON Schema, or {type, schema}, as host/client.py response_format() takes them', () => {
  const schema = { type: 'object', properties: { a: { type: 'integer' } }, required: ['a'] };
  assert.equal(toResponseFormat(null), null);
  assert.deepEqual(toResponseFormat('json'), { type: 'json' });
  // A bare schema (its "type" is a JSON Schema type) is wrapped.
  assert.deepEqual(toResponseFormat(schema), { type: 'json_schema', schema });
  assert.deepEqual(toResponseFormat({}), { type: 'json_schema', schema: {} });
  assert.deepEqual(toResponseFormat({ enum: ['a', 'b'] }), { type: 'json_schema', schema: { enum: ['a', 'b'] } });
  // The wire form passes as it is.
  assert.deepEqual(toResponseFormat({ type: 'json' }), { type: 'json' });
  assert.deepEqual(toResponseFormat({ type: 'json_schema', schema: { type: 'string' } }), { type: 'json_schema', schema: { type: 'string' } });
  assert.deepEqual(toResponseFormat({ type: 'json', schema: null }), { type: 'json', schema: null });
  // The worker refuses what does not fit (json_schema without a schema, json with one): sent as it is.
  assert.deepEqual(toResponseFormat({ type: 'json_schema' }), { type: 'json_schema' });
  // type "json"/"json_schema" beside other keys: a bare schema (a property named "schema" is just a keyword then).
  const odd = { type: 'json', schema: {}, title: 'x' };
  assert.deepEqual(toResponseFormat(odd), { type: 'json_schema', schema: odd });
  for (const bad of ['yaml', 'JSON', '', 42, true, [schema], () => {}]) {
    assert.throws(() => toResponseFormat(bad), TypeError, String(bad));
  }
  assert.throws(() => toResponseFormat({ type: 'json_schema', schema: 'x' }), /responseFormat.schema/);
  assert.throws(() => toResponseFormat({ type: 'json_schema', schema: [] }), TypeError);
});

test('unknown or conflicting option names are refused', () => {
  assert.throws(() => toWireFields({ maxToken: 5 }, GENERATE_FIELDS, 'generate'), /unknown generate option "maxToken".*maxTokens\/max_tokens/);
  assert.throws(() => toWireFields({ maxTokens: 5, max_tokens: 6 }, GENERATE_FIELDS, 'generate'), /given twice/);
  assert.deepEqual(toWireFields({ maxTokens: 5, max_tokens: 5 }, GENERATE_FIELDS, 'generate'), { max_tokens: 5 });
  assert.throws(() => toWireFields('x', GENERATE_FIELDS, 'generate'), TypeError);
});

test('inputs: strings pass, messages keep only role and content', () => {
  assert.equal(toWireInput('hi'), 'hi');
  assert.deepEqual(toWireInput([{ role: 'user', content: 'hi', extra: 1 }]), [{ role: 'user', content: 'hi' }]);
  assert.throws(() => toWireInput(42), TypeError);
  assert.throws(() => toWireInput([null]), TypeError);
});

test('the worker command: python -m worker by default, or any command', () => {
  assert.deepEqual(resolveCommand({ python: '/venv/bin/python' }), ['/venv/bin/python', '-m', 'worker']);
  assert.deepEqual(resolveCommand({ command: 'llama-worker' }), ['llama-worker']);
  assert.deepEqual(resolveCommand({ command: ['uv', 'run', 'llama-worker'] }), ['uv', 'run', 'llama-worker']);
  assert.equal(resolveCommand({})[1], '-m');
  assert.throws(() => resolveCommand({ command: [] }), TypeError);
});

test('every error code maps to its class, like host/exceptions.py', () => {
  const expected = {
    bad_frame: BadRequestError,
    frame_too_large: BadRequestError,
    invalid_request: BadRequestError,
    unknown_type: BadRequestError,
    protocol_mismatch: ProtocolMismatchError,
    not_initialized: NotInitializedError,
    no_model: NoModelError,
    busy: BusyError,
    model_not_found: ModelNotFoundError,
    load_failed: LoadFailedError,
    context_overflow: ContextOverflowError,
    aborted: AbortedError,
    generation_failed: GenerationFailedError,
    internal: InternalError,
    session_mismatch: SessionFileError,
    bad_session_file: SessionFileError,
    not_reasoning: NotReasoningError,
  };
  for (const [code, Cls] of Object.entries(expected)) {
    const retryable = ['busy', 'aborted', 'generation_failed'].includes(code);
    const err = errorFromFrame({ type: 'error', id: 7, code, message: 'm', retryable });
    assert.equal(err.constructor, Cls, code);
    assert.ok(err instanceof LlamaWorkerError && err instanceof Error);
    assert.equal(err.code, code);
    assert.equal(err.retryable, retryable);
    assert.equal(err.requestId, 7);
    assert.equal(err.name, Cls.name);
  }
  assert.ok(new NoModelError('x') instanceof ModelError);
  assert.ok(new NotInitializedError('x') instanceof BadRequestError);
  assert.equal(new BusyError('x').retryable, true);
  assert.equal(new BusyError('x').code, 'busy');
  const result = { type: 'done', id: 3, text: '{"a"', stop_reason: 'max_tokens', incomplete: true };
  const incomplete = new IncompleteOutputError('cut short', { result });
  assert.ok(incomplete instanceof LlamaWorkerError);
  assert.equal(incomplete.code, 'incomplete_output');
  assert.equal(incomplete.retryable, false);
  assert.equal(incomplete.result, result);
  assert.equal(incomplete.name, 'IncompleteOutputError');
  // A client-side error: no worker code maps to it.
  assert.equal(errorFromFrame({ id: 1, code: 'incomplete_output', message: 'm', retryable: false }).constructor, LlamaWorkerError);
  const unknown = errorFromFrame({ id: null, code: 'from_the_future', message: 'm', retryable: false });
  assert.equal(unknown.constructor, LlamaWorkerError);
  assert.equal(unknown.code, 'from_the_future');
});
