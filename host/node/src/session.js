// Session: a handle on one chat session of the worker (`client.session(name)`).
//
// Only a convenience over the client's public API: each method is the
// client's call with `session` bound to the handle's name, and a different
// `session` among the options is a mistake (TypeError). It holds no state of
// its own besides the name, so it can never disagree with the worker.

/**
 * @import { LlamaWorkerClient, GenerateInput, GenerateOptions, PreloadOptions, ResetOptions, CallOptions, ChatCallOptions } from './index.js'
 * @import { SessionInfo } from './protocol.js'
 */

/** The session of requests that name none. */
export const DEFAULT_SESSION = 'default';

/**
 * Options with `session` set to `name`; a different `session` among them is a mistake.
 * @template {object} O
 * @param {O | null | undefined} options
 * @param {string} name
 * @param {string} what
 * @returns {O & { session: string }}
 */
function bindSession(options, name, what) {
  if (options == null) return /** @type {O & { session: string }} */ ({ session: name });
  if (typeof options !== 'object' || Array.isArray(options)) throw new TypeError(`${what} options must be an object`);
  const given = /** @type {{ session?: unknown }} */ (options).session;
  if (given !== undefined && given !== name) {
    throw new TypeError(`${what}: option session ${JSON.stringify(given)} on the session ${JSON.stringify(name)}`);
  }
  return { ...options, session: name };
}

/**
 * One chat session of a worker: `client.session('notes')`. The client's
 * calls bound to this session's name. Sessions share the model; each has its
 * own history and system prompt, and the worker keeps the KV state of
 * recently used ones in RAM, so switching between them does not evaluate
 * their prompts again.
 */
export class Session {
  /**
   * @param {LlamaWorkerClient} client
   * @param {string} name
   */
  constructor(client, name) {
    /** The client this session belongs to. */
    this.client = client;
    /** The session name sent to the worker. */
    this.name = name;
  }

  /**
   * As client.generate(), in this session.
   * @param {GenerateInput} input
   * @param {GenerateOptions} [options]
   * @param {CallOptions} [callOptions]
   */
  generate(input, options = {}, callOptions = {}) {
    return this.client.generate(input, bindSession(options, this.name, 'generate'), callOptions);
  }

  /**
   * As client.chat(), in this session.
   * @param {GenerateInput} input
   * @param {GenerateOptions} [options]
   * @param {ChatCallOptions} [callOptions]
   */
  chat(input, options = {}, callOptions = {}) {
    return this.client.chat(input, bindSession(options, this.name, 'chat'), callOptions);
  }

  /**
   * As client.chatJson(), in this session.
   * @template [T=unknown]
   * @param {GenerateInput} input
   * @param {GenerateOptions} [options]
   * @param {ChatCallOptions} [callOptions]
   * @returns {Promise<T>}
   */
  chatJson(input, options = {}, callOptions = {}) {
    return this.client.chatJson(input, bindSession(options, this.name, 'chatJson'), callOptions);
  }

  /**
   * As client.countTokens(), in this session (`input` omitted: the conversation as it stands).
   * @param {GenerateInput | null} [input]
   * @param {CallOptions} [callOptions]
   */
  countTokens(input = null, callOptions = {}) {
    return this.client.countTokens(input, { session: this.name }, callOptions);
  }

  /**
   * As client.reset(): a string (or null) is the system prompt, or {systemPrompt, history}.
   * @param {string | null | ResetOptions} [options]
   * @param {CallOptions} [callOptions]
   * @returns {Promise<void>}
   */
  async reset(options = {}, callOptions = {}) {
    const bound = typeof options === 'string' || options === null ? { systemPrompt: options } : options;
    await this.client.reset(bindSession(bound, this.name, 'reset'), callOptions);
  }

  /**
   * As client.preload(), in this session.
   * @param {GenerateInput} input
   * @param {PreloadOptions} [options]
   * @param {CallOptions} [callOptions]
   */
  preload(input, options = {}, callOptions = {}) {
    return this.client.preload(input, bindSession(options, this.name, 'preload'), callOptions);
  }

  /**
   * Write this session to `path` (client.saveSession()).
   * @param {string} path
   * @param {CallOptions} [callOptions]
   */
  save(path, callOptions = {}) {
    return this.client.saveSession(path, { session: this.name }, callOptions);
  }

  /**
   * Replace this session with a saved one (client.restoreSession()).
   * @param {string} path
   * @param {CallOptions} [callOptions]
   */
  restore(path, callOptions = {}) {
    return this.client.restoreSession(path, { session: this.name }, callOptions);
  }

  /**
   * Forget this session on the worker (client.closeSession()); the handle stays usable.
   * @param {CallOptions} [callOptions]
   */
  close(callOptions = {}) {
    return this.client.closeSession(this.name, callOptions);
  }

  /**
   * This session's entry of client.sessions() ({session, messages, tokens,
   * kv_cached, active, kv_bytes, system_prompt}); all zero when the worker
   * does not know it (yet).
   * @param {CallOptions} [callOptions]
   * @returns {Promise<SessionInfo>}
   */
  async info(callOptions = {}) {
    const listing = await this.client.sessions(callOptions);
    const found = listing.sessions.find((s) => s.session === this.name);
    return found ?? { session: this.name, messages: 0, tokens: 0, kv_cached: false, active: false, kv_bytes: 0, system_prompt: null };
  }
}
