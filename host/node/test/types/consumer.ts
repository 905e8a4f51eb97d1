// The published typings (src/index.d.ts) as a TypeScript user meets them:
// imported by the package name (so package.json's `exports`/`types` are
// exercised too), every part of the public API used once, and the mistakes
// the typings must refuse marked with @ts-expect-error (an expectation that
// no longer fails is itself an error). Only type-checked (`npm run
// typecheck`), never run.

import {
  AbortedError,
  BusyError,
  DEFAULT_SESSION,
  Generation,
  IncompleteOutputError,
  LlamaWorkerClient,
  LlamaWorkerError,
  NotReasoningError,
  PROTOCOL_VERSION,
  Session,
  WorkerCrashedError,
  errorClassForCode,
  toReasoning,
  toResponseFormat,
} from 'llama-worker-client';
import type {
  ClientOptions,
  Done,
  ErrorCode,
  ExitInfo,
  GenerateCallOptions,
  GenerateOptions,
  ModelInfo,
  Reasoning,
  ReasoningInput,
  ResponseChunk,
  SessionInfo,
  TokenCount,
} from 'llama-worker-client';

export async function usage(): Promise<void> {
  const options: ClientOptions = { python: '/app/.venv/bin/python', requestTimeout: null, logLevel: 'info', onLog: (level, message) => console.log(level, message) };
  // `await using`: the client is AsyncDisposable (close() when the block ends).
  await using client = await LlamaWorkerClient.start(options);
  const version: 1 = PROTOCOL_VERSION;
  const ready = client.ready;
  if (ready !== null) console.log(ready.worker_version, ready.max_frame_size, version);

  const model: ModelInfo = await client.load({ nCtx: 4096, flash_attn: true }, { onProgress: (fraction) => console.log(fraction.toFixed(2)) });
  console.log(model.n_ctx, model.backends);

  const controller = new AbortController();
  const stream: Generation = client.generate('Name three colors.', { maxTokens: 64, stop: '\n\n' }, { signal: controller.signal, timeout: 30_000 });
  for await (const text of stream) {
    const piece: string = text;
    console.log(piece);
  }
  const result: Done | null = stream.result;
  if (result) console.log(result.stop_reason, result.usage.prompt_tokens, result.incomplete);
  const final: Done = await client.generate([{ role: 'user', content: 'Hi' }], { temperature: 0 }).final();
  console.log(final.text, stream.id, stream.request.max_tokens);

  const reply = await client.chat('Hi', { responseFormat: 'json' }, { onChunk: (text) => console.log(text) });
  console.log(reply.timings);
  // A reasoning model: the thought streams apart from the answer.
  const kind: 'none' | 'think_tags' | 'harmony' | undefined = model.reasoning;
  const canDisable: boolean | undefined = model.reasoning_can_disable;
  console.log(kind, canDisable);
  const thoughts: GenerateCallOptions = {
    onReasoningChunk: (thought) => console.log(thought.length),
    onResponseChunk: (chunk: ResponseChunk) => console.log(chunk.type === 'reasoning' ? `(${chunk.text})` : chunk.text),
  };
  const thinking = client.generate('Is 91 prime?', { reasoning: { budgetTokens: 256, effort: 'low' }, maxTokens: 512 }, thoughts);
  for await (const text of thinking) console.log(text);
  const soFar: string = thinking.reasoning;
  await thinking.endReasoning({ timeout: 1000 }).catch((err: unknown) => err instanceof NotReasoningError);
  const thought: string | null | undefined = thinking.result?.reasoning;
  const spent: number | undefined = thinking.result?.usage.reasoning_tokens;
  console.log(soFar, thought, spent);
  await client.endReasoning(thinking.id, { timeout: 1000 });
  await client.endReasoning();
  const wire: Reasoning | null = toReasoning({ budget_tokens: 0, keep_in_history: true });
  const off: ReasoningInput = false;
  await client.chat(
    [
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello.', reasoning: 'Greet back.' },
      { role: 'user', content: 'Name a colour.' },
      { role: 'assistant', content: 'My favourite colour is' },
    ],
    { reasoning: off, response_format: null },
    { onChunk: (text) => console.log(text), onReasoningChunk: (text) => console.log(text) },
  );
  await client.session('notes').generate('x', { reasoning: wire }, { onResponseChunk: ({ type, text }) => console.log(type, text) }).final();

  const pet = await client.chatJson<{ name: string }>('Describe a pet.', { responseFormat: { type: 'object', properties: { name: { type: 'string' } } } });
  console.log(pet.name);

  const ids: number[] = await client.tokenize('Grüße', { special: true });
  const text: string = await client.detokenize(ids);
  const count: TokenCount = await client.countTokens(null, { session: 'notes' });
  console.log(text, count.tokens, count.n_ctx);

  const notes: Session = client.session('notes');
  await notes.chat('My name is Ada.', { maxTokens: 16 });
  await notes.reset('You are terse.');
  await notes.reset({ systemPrompt: null, history: [{ role: 'user', content: 'hi' }] });
  const info: SessionInfo = await notes.info({ timeout: 1000 });
  const saved = await notes.save('/tmp/notes.llws');
  const restored = await client.restoreSession(saved.path, { session: 'notes' });
  const pre = await client.preload('Summarise', { max_tokens: 32, session: DEFAULT_SESSION });
  console.log(info.kv_cached, restored.history?.length, pre.complete, (await client.sessions()).cache_budget_bytes);

  client.on('exit', ({ exitCode, signal, expected, error }) => console.log(exitCode, signal, expected, error?.stderrTail));
  client.on('log', (msg) => console.log(msg.level, msg.message));
  client.on('callbackError', (error, { callback }) => console.log(callback, error));
  client.on('protocolError', (error) => console.log(error.requestId));

  try {
    await client.ping({ timeout: null });
    await client.abort();
    await client.cleanup();
  } catch (err) {
    if (err instanceof BusyError || err instanceof AbortedError) console.log(err.retryable);
    if (err instanceof WorkerCrashedError) console.log(err.exitCode, err.signal);
    if (err instanceof IncompleteOutputError) console.log(err.result.stop_reason);
    if (err instanceof LlamaWorkerError) {
      const code: ErrorCode | (string & {}) = err.code;
      console.log(code, errorClassForCode(code).name);
    }
  }
  console.log(toResponseFormat('json')?.type);
  const exit: ExitInfo = await client.close();
  console.log(exit.exitCode);
}

export async function mistakes(client: LlamaWorkerClient): Promise<void> {
  // @ts-expect-error a typo in an option name (the client throws a TypeError for it too)
  client.generate('x', { maxToken: 5 });
  // @ts-expect-error a wrong option type
  await client.load({ nCtx: '4096' });
  // @ts-expect-error onProgress is a load call option, not a generate one
  client.generate('x', {}, { onProgress: () => {} });
  // @ts-expect-error a message needs a role the protocol knows
  client.generate([{ role: 'robot', content: 'x' }]);
  // @ts-expect-error the 'exit' listener gets one ExitEvent, not a string
  client.on('exit', (info: string) => console.log(info));
  // @ts-expect-error an event the client does not emit
  client.on('error', () => {});
  // @ts-expect-error Session handles come from client.session(), not from the constructor
  new Session(client, 'notes');
  // @ts-expect-error effort is "low", "medium" or "high"
  client.generate('x', { reasoning: { effort: 'max' } });
  // @ts-expect-error a typo inside reasoning
  client.generate('x', { reasoning: { budget: 16 } });
  // @ts-expect-error keepInHistory is a boolean, never null
  client.generate('x', { reasoning: { keepInHistory: null } });
  // @ts-expect-error onResponseChunk gets one {type, text} chunk, not a string
  client.generate('x', {}, { onResponseChunk: (chunk: string) => console.log(chunk) });
  // @ts-expect-error a chunk's type is "text" or "reasoning"
  client.generate('x', {}, { onResponseChunk: (chunk) => chunk.type === 'thought' });
  // @ts-expect-error endReasoning's target is a request id
  await client.endReasoning({ target: 3 });
  const options: GenerateOptions = { mode: 'chat' };
  // @ts-expect-error mode is "chat" or "completion"
  options.mode = 'instruct';
}
