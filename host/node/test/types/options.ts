// The option interfaces of index.d.ts against the client's option tables
// (src/options.js) and the wire messages (src/protocol.d.ts, generated from
// protocol/schema.json): each interface names exactly the table's camelCase
// names and wire names, all optional, and accepts everything the wire field
// does. (test/typings.test.js checks, at run time, that each table covers
// the schema's fields.) Only type-checked, never run.

import type {
  Count,
  CountOptions,
  Detokenize,
  DetokenizeOptions,
  Generate,
  GenerateOptions,
  Load,
  LoadOptions,
  Preload,
  PreloadOptions,
  Reasoning,
  ReasoningOptions,
  Reset,
  ResetOptions,
  Tokenize,
  TokenizeOptions,
} from 'llama-worker-client';

import type * as Tables from '../../src/options.js';

type Equal<A, B> = (<G>() => G extends A ? 1 : 2) extends <G>() => G extends B ? 1 : 2 ? true : false;
type Expect<T extends true> = T;

/** The wire field an option name stands for: the table's value for a camelCase name, else the name itself. */
type WireOf<Table, K> = K extends keyof Table ? Table[K] : K;

/** The wire fields a table maps to are exactly the message's fields besides the excluded ones. */
type CoversMessage<Table, Message, Excluded extends keyof Message> = Equal<Table[keyof Table], Exclude<keyof Message, Excluded>>;

/** The interface names exactly each camelCase name and each wire name of the table. */
type NamesBoth<Options, Table> = Equal<keyof Options, keyof Table | Table[keyof Table]>;

/** Every name is optional. */
type AllOptional<Options> = Equal<Options, Partial<Options>>;

/** Every option accepts whatever its wire field accepts (undefined: leave it out). */
type AcceptsWire<Options, Table, Message> = {
  [K in keyof Options]-?: WireOf<Table, K> extends keyof Message ? (Message[WireOf<Table, K>] extends Options[K] ? true : false) : false;
}[keyof Options] extends true
  ? true
  : false;

type Options<Interface, Table, Message, Excluded extends keyof Message> = [
  CoversMessage<Table, Message, Excluded>,
  NamesBoth<Interface, Table>,
  AllOptional<Interface>,
  AcceptsWire<Interface, Table, Message>,
];
type AllTrue<T extends readonly boolean[]> = T[number] extends true ? true : false;


export type Checks = [
  Expect<AllTrue<Options<LoadOptions, typeof Tables.LOAD_FIELDS, Load, 'type' | 'id'>>>,
  Expect<AllTrue<Options<GenerateOptions, typeof Tables.GENERATE_FIELDS, Generate, 'type' | 'id' | 'input'>>>,
  Expect<AllTrue<Options<ResetOptions, typeof Tables.RESET_FIELDS, Reset, 'type' | 'id'>>>,
  Expect<AllTrue<Options<PreloadOptions, typeof Tables.PRELOAD_FIELDS, Preload, 'type' | 'id' | 'input'>>>,
  Expect<AllTrue<Options<TokenizeOptions, typeof Tables.TOKENIZE_FIELDS, Tokenize, 'type' | 'id' | 'text'>>>,
  Expect<AllTrue<Options<DetokenizeOptions, typeof Tables.DETOKENIZE_FIELDS, Detokenize, 'type' | 'id' | 'ids'>>>,
  Expect<AllTrue<Options<CountOptions, typeof Tables.COUNT_FIELDS, Count, 'type' | 'id' | 'input'>>>,
  Expect<AllTrue<Options<ReasoningOptions, typeof Tables.REASONING_FIELDS, Reasoning, never>>>,
];
