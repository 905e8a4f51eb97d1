// The published typings (src/index.d.ts) against the sources: what the JSDoc
// of the JavaScript modules says each export is must be assignable to what
// index.d.ts promises (the d.ts may not promise a method, a property or a
// return type the code does not have). consumer.ts checks the d.ts against
// real usage; this file ties it to the code. Only type-checked, never run.

import type * as Declared from 'llama-worker-client';

import type * as ClientModule from '../../src/client.js';
import type * as ErrorsModule from '../../src/errors.js';
import type * as FramingModule from '../../src/framing.js';
import type * as GenerationModule from '../../src/generation.js';
import type * as OptionsModule from '../../src/options.js';
import type * as ProcessModule from '../../src/process.js';
import type * as SessionModule from '../../src/session.js';

/** Compiles only when Actual is assignable to Promised. */
type Conforms<Actual extends Promised, Promised> = [Actual, Promised];

export type Checks = [
  Conforms<ClientModule.LlamaWorkerClient, Declared.LlamaWorkerClient>,
  Conforms<ConstructorParameters<typeof Declared.LlamaWorkerClient>, ConstructorParameters<typeof ClientModule.LlamaWorkerClient>>,
  Conforms<typeof ClientModule.PROTOCOL_VERSION, typeof Declared.PROTOCOL_VERSION>,
  Conforms<GenerationModule.Generation, Declared.Generation>,
  Conforms<SessionModule.Session, Declared.Session>,
  Conforms<typeof SessionModule.DEFAULT_SESSION, typeof Declared.DEFAULT_SESSION>,
  Conforms<typeof ProcessModule.PARENT_ENV_VAR, typeof Declared.PARENT_ENV_VAR>,
  Conforms<typeof ProcessModule.defaultPython, typeof Declared.defaultPython>,
  Conforms<typeof ProcessModule.resolveCommand, typeof Declared.resolveCommand>,
  Conforms<typeof ErrorsModule.errorFromFrame, typeof Declared.errorFromFrame>,
  Conforms<typeof ErrorsModule.errorClassForCode, typeof Declared.errorClassForCode>,
  Conforms<ErrorsModule.LlamaWorkerError, Declared.LlamaWorkerError>,
  Conforms<ErrorsModule.WorkerCrashedError, Declared.WorkerCrashedError>,
  Conforms<ErrorsModule.IncompleteOutputError, Declared.IncompleteOutputError>,
  Conforms<typeof FramingModule.encodeFrame, typeof Declared.encodeFrame>,
  Conforms<FramingModule.FrameDecoder, Declared.FrameDecoder>,
  Conforms<FramingModule.FrameError, Declared.FrameError>,
  Conforms<typeof OptionsModule.toResponseFormat, typeof Declared.toResponseFormat>,
  Conforms<typeof OptionsModule.GENERATE_FIELDS, typeof Declared.GENERATE_FIELDS>,
  Conforms<typeof OptionsModule.REASONING_FIELDS, typeof Declared.REASONING_FIELDS>,
  Conforms<typeof OptionsModule.toReasoning, typeof Declared.toReasoning>,
  Conforms<ErrorsModule.NotReasoningError, Declared.NotReasoningError>,
];
