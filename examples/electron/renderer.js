'use strict';
// The page: no Node.js, no Electron APIs; only the MessagePort the preload
// forwarded. Chunks arrive as {type: 'chunk'} messages and are appended as
// they come; {type: 'done'} carries the final result.
const $ = (id) => document.getElementById(id);
let port = null;
let nextId = 1;
let current = null; // { id, element } of the generation in flight
let state = 'starting';

window.addEventListener('message', (event) => {
  if (event.source !== window || event.data !== 'llama:port') return;
  port = event.ports[0];
  port.onmessage = (e) => onHostMessage(e.data);
});

function onHostMessage(message) {
  switch (message.type) {
    case 'status':
      state = message.state;
      $('status').textContent = describeStatus(message);
      $('restart').hidden = !(state === 'crashed' || state === 'failed');
      updateButtons();
      break;
    case 'chunk':
      if (current && message.id === current.id) current.element.textContent += message.text;
      break;
    case 'done': {
      if (!current || message.id !== current.id) break;
      const { stop_reason: stop, usage, timings } = message.result;
      note(`${stop} · ${usage.completion_tokens} tokens · ${timings.tokens_per_second.toFixed(1)} tok/s · ${usage.cached_tokens}/${usage.prompt_tokens} prompt tokens cached`);
      current = null;
      updateButtons();
      break;
    }
    case 'error':
      note(`${message.error.name}: ${message.error.message}${message.error.retryable ? ' (retry later)' : ''}`);
      if (current && message.id === current.id) current = null;
      updateButtons();
      break;
    case 'ok':
      break;
  }
}

function describeStatus(s) {
  if (s.state === 'loading') return `loading the model… ${Math.round((s.progress ?? 0) * 100)}%`;
  if (s.state === 'ready') return `ready: ${s.model.name} (context ${s.model.n_ctx} tokens)`;
  if (s.state === 'crashed') return `the worker crashed: ${s.error.message}`;
  if (s.state === 'failed') return `the worker could not start: ${s.error.message}`;
  return s.state;
}

function note(text) {
  const div = document.createElement('div');
  div.className = 'meta';
  div.textContent = text;
  $('transcript').append(div);
}

function updateButtons() {
  const ready = state === 'ready';
  $('send').disabled = !ready || current !== null;
  $('stop').disabled = current === null;
  $('reset').disabled = !ready || current !== null;
}

$('form').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('prompt').value.trim();
  if (!text || !port || current) return;
  $('prompt').value = '';
  const user = document.createElement('div');
  user.className = 'user';
  user.textContent = text;
  const reply = document.createElement('div');
  $('transcript').append(user, reply);
  current = { id: nextId++, element: reply };
  // A string continues the conversation the worker keeps; options use the client's camelCase names.
  port.postMessage({ type: 'generate', id: current.id, input: text, options: { maxTokens: 256, temperature: 0.7 } });
  updateButtons();
});

$('stop').addEventListener('click', () => {
  if (current) port.postMessage({ type: 'abort', id: current.id });
});

$('reset').addEventListener('click', () => {
  port.postMessage({ type: 'reset', id: nextId++ });
  $('transcript').textContent = '';
});

$('restart').addEventListener('click', () => port.postMessage({ type: 'restart' }));
