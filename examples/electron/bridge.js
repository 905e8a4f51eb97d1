'use strict';
// The host side of the renderer bridge: one LlamaWorkerClient (one worker
// process, one model, one chat session) served to any number of
// MessagePorts. It runs in the Electron main process (main.js, the default)
// or in a utility process (llama-host.js); the code is the same, because
// both get MessagePortMain objects.
//
// Port protocol (structured-clone objects, not the worker's wire protocol):
//   renderer -> host  {type: 'generate', id, input, options}   input: string or [{role, content}]
//                     {type: 'abort', id}                       stop generation `id`
//                     {type: 'reset', id, systemPrompt}         clear the conversation
//                     {type: 'restart'}                         after 'crashed' / 'failed'
//   host -> renderer  {type: 'status', state, progress?, model?, error?}
//                                       state: starting | loading | ready | crashed | failed | closed
//                     {type: 'chunk', id, text}                 one streamed piece of generation `id`
//                     {type: 'done', id, result}                the worker's `done` (text, stop_reason, usage...)
//                     {type: 'ok', id}                          reset done
//                     {type: 'error', id, error: {name, code, message, retryable}}
// `id` is chosen by the renderer; it is not the worker's request id.

/** A plain, structured-clonable description of an error. */
function describe(err) {
  return {
    name: err?.name ?? 'Error',
    code: err?.code ?? 'internal',
    message: err?.message ?? String(err),
    retryable: Boolean(err?.retryable),
  };
}

/**
 * @param {import('llama-worker-client').ClientOptions} workerOptions where the worker is and how to run it
 * @param {import('llama-worker-client').LoadOptions} loadOptions what to load at start
 */
async function createHost(workerOptions = {}, loadOptions = {}) {
  // The client is plain ESM; a CommonJS module loads it with import() (Electron 28+).
  const { LlamaWorkerClient } = await import('llama-worker-client');

  /** @type {Set<Electron.MessagePortMain>} */
  const ports = new Set();
  let client = null;
  let status = { state: 'starting' };
  let closing = null;

  function broadcast(message) {
    for (const port of ports) port.postMessage(message);
  }

  function setStatus(next) {
    status = next;
    broadcast({ type: 'status', ...status });
  }

  async function start() {
    const current = new LlamaWorkerClient(workerOptions);
    client = current;
    setStatus({ state: 'starting' });
    current.on('exit', (event) => {
      // Pending generations already failed with WorkerCrashedError; tell every window.
      if (!event.expected && client === current) {
        setStatus({ state: 'crashed', error: { ...describe(event.error), stderrTail: event.error?.stderrTail.slice(-2000) } });
      }
    });
    try {
      await current.start();
      setStatus({ state: 'loading', progress: 0 });
      const model = await current.load(loadOptions, {
        onProgress: (progress) => setStatus({ state: 'loading', progress }),
      });
      setStatus({ state: 'ready', model: { name: model.name, path: model.path, n_ctx: model.n_ctx } });
    } catch (err) {
      if (client === current && status.state !== 'crashed') setStatus({ state: 'failed', error: describe(err) });
    }
  }

  async function generate(port, running, { id, input, options }) {
    const controller = new AbortController();
    running.set(id, controller);
    try {
      // Iterate the client's stream; each chunk goes straight to the renderer.
      const stream = client.generate(input, options ?? {}, { signal: controller.signal });
      for await (const text of stream) port.postMessage({ type: 'chunk', id, text });
      port.postMessage({ type: 'done', id, result: stream.result });
    } catch (err) {
      // BusyError (retryable), BadRequestError, ContextOverflowError, WorkerCrashedError...
      port.postMessage({ type: 'error', id, error: describe(err) });
    } finally {
      running.delete(id);
    }
  }

  async function handle(port, running, message) {
    switch (message?.type) {
      case 'generate':
        await generate(port, running, message);
        break;
      case 'abort':
        // Sends `abort` with the generation's target; it ends with stop_reason "aborted".
        running.get(message.id)?.abort();
        break;
      case 'reset':
        try {
          await client.reset({ systemPrompt: message.systemPrompt ?? null });
          port.postMessage({ type: 'ok', id: message.id });
        } catch (err) {
          port.postMessage({ type: 'error', id: message.id, error: describe(err) });
        }
        break;
      case 'restart':
        if ((status.state === 'crashed' || status.state === 'failed') && !closing) {
          await client?.close();
          await start();
        }
        break;
      default:
        port.postMessage({ type: 'error', id: message?.id ?? null, error: describe(new Error(`unknown message ${message?.type}`)) });
    }
  }

  /** Serve one renderer's port. Closing the port aborts what it started. */
  function connect(port) {
    ports.add(port);
    /** @type {Map<unknown, AbortController>} */
    const running = new Map();
    port.on('message', (event) => {
      handle(port, running, event.data);
    });
    port.on('close', () => {
      ports.delete(port);
      for (const controller of running.values()) controller.abort();
    });
    port.start();
    port.postMessage({ type: 'status', ...status });
  }

  /** Shut the worker down in order (cleanup, end stdin, signals) and tell the windows. */
  function close() {
    closing ??= (async () => {
      await client?.close();
      setStatus({ state: 'closed' });
      for (const port of ports) port.close();
    })();
    return closing;
  }

  start();
  return { connect, close, get status() { return status; } };
}

module.exports = { createHost, describe };
