#!/usr/bin/env node
// Node client of helios.v1.WorldService (@grpc/grpc-js, the .proto loaded at run time by
// @grpc/proto-loader: no generated code), one scenario per run:
//
//   node client.js --target 127.0.0.1:50051 --token T --scenario stream|unauthenticated|errors
//
// Output is one fact per line, `WORD key=value ...`; the last line is `OK scenario=NAME ...`
// (exit 0) or `FAIL scenario=NAME reason=...` (exit 1). The checks are those of the C++ harness
// (tests/interop/cpp/interop_main.cc); docs/interop.md lists them.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const UNARY_TIMEOUT_MS = 60000;
const MAX_RECEIVE_BYTES = 64 << 20;
const PROMPT = 'a lighthouse on a cliff above a calm sea, golden hour';
const SWITCH_PROMPT = 'the same lighthouse in a night storm, lightning';

class Failure extends Error {}

const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));
const codeName = (code) => STATUS_NAMES[code] || `CODE_${code}`;

function parseArgs(argv) {
  const args = {
    target: '',
    token: '',
    scenario: '',
    width: 64,
    height: 64,
    seed: 7,
    protoRoot: path.resolve(__dirname, '..', '..', '..', 'proto'),
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Failure(`missing a value after ${key}`);
    if (key === '--target') args.target = value;
    else if (key === '--token') args.token = value;
    else if (key === '--scenario') args.scenario = value;
    else if (key === '--width') args.width = Number(value);
    else if (key === '--height') args.height = Number(value);
    else if (key === '--seed') args.seed = Number(value);
    else if (key === '--proto-root') args.protoRoot = value;
    else throw new Failure(`unknown option ${key}`);
  }
  if (!args.target) throw new Failure('--target is required');
  return args;
}

function loadService(protoRoot) {
  const definition = protoLoader.loadSync('helios/v1/world.proto', {
    includeDirs: [protoRoot],
    keepCase: true, // field names as in the .proto (session_id, not sessionId)
    longs: Number, // uint64 counters stay far below 2^53 here
    enums: String,
    defaults: true, // absent proto3 fields read as their zero value
    oneofs: true, // `kind` names the member of a oneof that is set
  });
  return grpc.loadPackageDefinition(definition).helios.v1.WorldService;
}

// -------------------------------------------------------------------------------------------------
// Calls
// -------------------------------------------------------------------------------------------------

class World {
  constructor(Service, target, token) {
    this.stub = new Service(target, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': MAX_RECEIVE_BYTES,
    });
    this.token = token;
  }

  metadata() {
    const md = new grpc.Metadata();
    if (this.token) md.set('authorization', `Bearer ${this.token}`);
    return md;
  }

  // A unary call with the token and a deadline; resolves to the response, rejects with the
  // ServiceError (err.code is the gRPC status code).
  unary(method, request) {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + UNARY_TIMEOUT_MS);
      this.stub[method](request, this.metadata(), { deadline }, (err, response) =>
        err ? reject(err) : resolve(response),
      );
    });
  }

  // The status code a unary call ends with ('OK' when it succeeds).
  async code(method, request) {
    try {
      await this.unary(method, request);
      return 'OK';
    } catch (err) {
      if (err.code === undefined) throw err;
      return codeName(err.code);
    }
  }

  openStream() {
    return new StreamReader(this.stub.Stream(this.metadata()));
  }

  close() {
    this.stub.close();
  }
}

// Pull-style reading of a duplex call: `await next()` gives the next message, null at a clean end,
// or throws the call's error.
class StreamReader {
  constructor(call) {
    this.call = call;
    this.queue = [];
    this.waiting = null;
    this.ended = false;
    this.error = null;
    call.on('data', (m) => {
      this.queue.push(m);
      this.wake();
    });
    call.on('error', (e) => {
      this.error = e;
      this.wake();
    });
    call.on('end', () => {
      this.ended = true;
      this.wake();
    });
  }

  wake() {
    if (this.waiting) {
      const resolve = this.waiting;
      this.waiting = null;
      resolve();
    }
  }

  async next() {
    while (true) {
      if (this.queue.length > 0) return this.queue.shift();
      if (this.error) throw this.error;
      if (this.ended) return null;
      await new Promise((resolve) => {
        this.waiting = resolve;
      });
    }
  }

  write(message) {
    this.call.write(message);
  }

  // Half-close and wait for the end of the call.
  async finish() {
    this.call.end();
    // In lockstep nothing may follow the last CHUNK_DONE.
    const extra = await this.next();
    if (extra !== null) throw new Failure(`a ${extra.kind} message arrived after the half-close`);
  }
}

// -------------------------------------------------------------------------------------------------
// Checks
// -------------------------------------------------------------------------------------------------

function expect(condition, what) {
  if (!condition) throw new Failure(what);
}

function expectEq(got, want, what) {
  if (got !== want) throw new Failure(`${what}: expected ${want}, got ${got}`);
}

async function expectCode(world, method, request, want, check) {
  const got = await world.code(method, request);
  console.log(`CHECK name=${check} want=${want} got=${got}`);
  expectEq(got, want, check);
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buffer) {
  let crc = 0xffffffff;
  for (const byte of buffer) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return ((crc ^ 0xffffffff) >>> 0).toString(16).padStart(8, '0');
}

// One RGB24 frame of chunk `chunk` at position `index`; frame_index counts frames since Reset.
function checkFrame(f, g, chunk, index, actionSeq, where) {
  expectEq(f.chunk_index, chunk, `${where} chunk_index`);
  expectEq(f.index_in_chunk, index, `${where} index_in_chunk`);
  expectEq(f.frame_index, chunk * g.framesPerChunk + index, `${where} frame_index`);
  expectEq(f.width, g.width, `${where} width`);
  expectEq(f.height, g.height, `${where} height`);
  expectEq(f.encoding, 'FRAME_ENCODING_RGB24', `${where} encoding`);
  expectEq(f.data.length, g.width * g.height * 3, `${where} RGB24 byte count`);
  expectEq(f.action_seq, actionSeq, `${where} action_seq`);
}

// A unary Reset / Step answer with FRAME_SELECTION_LAST: one frame, the chunk's last.
function checkLastFrameChunk(c, g, chunk, actionSeq, where) {
  expectEq(c.chunk_index, chunk, `${where} chunk.chunk_index`);
  expectEq(c.frames.length, 1, `${where} frames with FRAME_SELECTION_LAST`);
  checkFrame(c.frames[0], g, chunk, g.framesPerChunk - 1, actionSeq, where);
}

// Sends one lockstep action and checks the chunk's frames up to its CHUNK_DONE.
async function streamChunk(stream, g, chunk, seq, action, where) {
  stream.write({ action: { seq, action } });
  let next = 0;
  let lastCrc = '';
  while (true) {
    const m = await stream.next();
    expect(m !== null, `${where}: the stream ended before CHUNK_DONE`);
    if (m.kind === 'frame') {
      checkFrame(m.frame, g, chunk, next, seq, `${where} frame ${next}`);
      lastCrc = crc32(m.frame.data);
      next += 1;
      continue;
    }
    const e = m.event;
    expectEq(e.type, 'SESSION_EVENT_TYPE_CHUNK_DONE', `${where} event (${e.message})`);
    expectEq(next, g.framesPerChunk, `${where} frames before CHUNK_DONE`);
    expectEq(e.chunk_index, chunk, `${where} CHUNK_DONE chunk_index`);
    console.log(`CHUNK index=${chunk} frames=${next} action_seq=${seq} last_crc32=${lastCrc}`);
    return;
  }
}

// Handshake, CreateSession and a Reset; returns the session's geometry.
async function openWorld(world, args) {
  const info = await world.unary('GetServerInfo', {});
  const encodings = info.encodings.map((e) => e.replace('FRAME_ENCODING_', ''));
  console.log(
    `INFO api_version=${info.api_version} model=${(info.model || {}).name} ` +
      `frames_per_chunk=${info.frames_per_chunk} fps=${info.fps} size_multiple=${info.size_multiple} ` +
      `encodings=${encodings.join(',')} auth_required=${info.auth_required}`,
  );
  expectEq(info.api_version.split('.')[0], '1', 'GetServerInfo.api_version major');
  expect(encodings.includes('RGB24'), 'GetServerInfo.encodings lacks RGB24');
  expect(info.frames_per_chunk > 0, 'GetServerInfo.frames_per_chunk is 0');

  const created = await world.unary('CreateSession', { width: args.width, height: args.height });
  expect(created.session_id !== '', 'CreateSession returned an empty session_id');
  expectEq(created.width, args.width, 'CreateSession.width');
  expectEq(created.height, args.height, 'CreateSession.height');
  console.log(`SESSION id=${created.session_id} width=${created.width} height=${created.height}`);
  const g = { width: created.width, height: created.height, framesPerChunk: info.frames_per_chunk };

  const reset = await world.unary('Reset', {
    session_id: created.session_id,
    prompt: PROMPT,
    seed: args.seed,
    frames: { encoding: 'FRAME_ENCODING_RGB24', selection: 'FRAME_SELECTION_LAST' },
  });
  checkLastFrameChunk(reset.chunk, g, 0, 0, 'Reset');
  const data = reset.chunk.frames[0].data;
  console.log(`RESET chunk=0 frames=1 bytes=${data.length} crc32=${crc32(data)}`);
  return { session: created.session_id, g };
}

// -------------------------------------------------------------------------------------------------
// Scenarios
// -------------------------------------------------------------------------------------------------

const LAST = { encoding: 'FRAME_ENCODING_RGB24', selection: 'FRAME_SELECTION_LAST' };
const NONE = { encoding: 'FRAME_ENCODING_RGB24', selection: 'FRAME_SELECTION_NONE' };

// Reset, a unary Step with a prompt, then a lockstep Stream: 2 chunks as they are, a 3rd after a
// prompt switch sent as a stream action.
async function scenarioStream(Service, args) {
  const world = new World(Service, args.target, args.token);
  const { session, g } = await openWorld(world, args);

  const step = await world.unary('Step', {
    session_id: session,
    action: { prompt: { text: `${PROMPT}, seen from the sea` } },
    frames: LAST,
    action_seq: 1,
  });
  checkLastFrameChunk(step.chunk, g, 1, 1, 'Step');
  console.log(`STEP chunk=1 frames=1 action_seq=1 crc32=${crc32(step.chunk.frames[0].data)}`);

  const stream = world.openStream();
  const frames = { encoding: 'FRAME_ENCODING_RGB24' };
  stream.write({ start: { session_id: session, mode: 'STREAM_MODE_LOCKSTEP', frames } });
  const first = await stream.next();
  expect(first !== null && first.kind === 'event', 'the stream did not open with an event');
  expectEq(first.event.type, 'SESSION_EVENT_TYPE_STARTED', 'first stream event');
  console.log('STREAM started mode=LOCKSTEP');
  await streamChunk(stream, g, 2, 2, {}, 'lockstep chunk 2');
  await streamChunk(stream, g, 3, 3, {}, 'lockstep chunk 3');
  console.log(`LOCKSTEP frames=${2 * g.framesPerChunk} chunks=2`);
  await streamChunk(stream, g, 4, 4, { prompt: { text: SWITCH_PROMPT } }, 'prompt switch chunk 4');
  console.log(`PROMPT_SWITCH chunk=4 frames=${g.framesPerChunk} action_seq=4`);
  await stream.finish();
  console.log('STREAM_END status=OK');
  await world.unary('CloseSession', { session_id: session });
  world.close();
  console.log(`OK scenario=stream frames=${3 * g.framesPerChunk} chunks=3`);
}

// A wrong token and a missing token are refused on unary calls and on the stream.
async function scenarioUnauthenticated(Service, args) {
  const wrong = new World(Service, args.target, `${args.token}-wrong`);
  await expectCode(wrong, 'GetServerInfo', {}, 'UNAUTHENTICATED', 'wrong_token_info');
  await expectCode(wrong, 'CreateSession', { width: args.width, height: args.height }, 'UNAUTHENTICATED',
    'wrong_token_create');
  const stream = wrong.openStream();
  stream.write({ start: { session_id: 'no-such-session', mode: 'STREAM_MODE_LOCKSTEP' } });
  let got = 'OK';
  try {
    await stream.next();
  } catch (err) {
    got = codeName(err.code);
  }
  console.log(`CHECK name=wrong_token_stream want=UNAUTHENTICATED got=${got}`);
  expectEq(got, 'UNAUTHENTICATED', 'wrong_token_stream');
  const missing = new World(Service, args.target, '');
  await expectCode(missing, 'GetServerInfo', {}, 'UNAUTHENTICATED', 'missing_token_info');
  const right = new World(Service, args.target, args.token);
  await right.unary('GetServerInfo', {});
  for (const w of [wrong, missing, right]) w.close();
  console.log('OK scenario=unauthenticated checks=4');
}

// Status codes a client can act on: NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION.
async function scenarioErrors(Service, args) {
  const world = new World(Service, args.target, args.token);
  await expectCode(world, 'Step', { session_id: 'no-such-session', frames: NONE }, 'NOT_FOUND',
    'step_unknown_session');
  await expectCode(world, 'Reset', { session_id: 'no-such-session', prompt: PROMPT, frames: NONE },
    'NOT_FOUND', 'reset_unknown_session');
  await expectCode(world, 'CreateSession', { width: args.width + 1, height: args.height },
    'INVALID_ARGUMENT', 'create_bad_size');
  const { session } = await openWorld(world, args);
  // TransitionAction.chunks must be 1..64 (0: default).
  await expectCode(world, 'Step',
    { session_id: session, action: { transition: { text: 'a desert', chunks: 1000 } }, frames: NONE },
    'INVALID_ARGUMENT', 'step_bad_action');
  // A MoveAction for a model without moves (tiny reads actions as prompt phrases).
  await expectCode(world, 'Step',
    { session_id: session, action: { move: { move: 'e' } }, frames: NONE },
    'INVALID_ARGUMENT', 'step_move_without_moves');
  await world.unary('CloseSession', { session_id: session });
  await expectCode(world, 'Step', { session_id: session, frames: NONE }, 'FAILED_PRECONDITION',
    'step_after_close');
  await expectCode(world, 'CloseSession', { session_id: session }, 'OK', 'close_twice');
  world.close();
  console.log('OK scenario=errors checks=7');
}

const SCENARIOS = {
  stream: scenarioStream,
  unauthenticated: scenarioUnauthenticated,
  errors: scenarioErrors,
};

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
    if (!(args.scenario in SCENARIOS)) throw new Failure(`unknown scenario '${args.scenario}'`);
  } catch (err) {
    console.error(`client.js: ${err.message}`);
    console.error(
      'usage: node client.js --target HOST:PORT --token TOKEN --scenario stream|unauthenticated|errors',
    );
    return 2;
  }
  try {
    await SCENARIOS[args.scenario](loadService(args.protoRoot), args);
    return 0;
  } catch (err) {
    // A gRPC error that no check expected reads as its status, like the C++ harness prints it.
    const reason = err.code !== undefined ? `${codeName(err.code)}: ${err.details}` : err.message;
    console.log(`FAIL scenario=${args.scenario} reason=${reason}`);
    return 1;
  }
}

main().then((code) => {
  process.exitCode = code;
});
