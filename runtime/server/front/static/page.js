// The play page: connects to the server that served it, starts a session, plays its frames on a
// canvas at the model's play-out rate and turns the keyboard into session.action messages.
//
// Play-out: decoded frames wait in a jitter buffer; play starts once a few are there (or their
// chunk is complete) and shows one frame per 1/fps s. The buffer holds at most two chunks: when
// frames come faster than they play, the oldest waiting ones are dropped (newest wins).
// Lockstep (the default) is paced by the page: the next chunk is asked for, with the keys held or
// tapped since the last ask, when less than one chunk is left to play, so the world runs at
// play-out speed whether the server is faster or slower. Free-run: the server keeps generating;
// held keys are resent every 250 ms so each chunk boundary sees them.
//
// `window.helios` exposes the state for tests and benches: the frames received (indices, action
// seq, transport and decode times), the actions sent, errors, stats, and the decoded pixels of the
// last 132 frames (`pixels(frameIndex)`).

import { HeliosSocket, defaultUrl, nowMs } from "./helios.js";

const params = new URLSearchParams(window.location.search);
const MOVE_KEYS = {
  KeyW: "w", ArrowUp: "w", KeyA: "a", ArrowLeft: "a", KeyS: "s", ArrowDown: "s", KeyD: "d", ArrowRight: "d",
};
const PAN_KEYS = { KeyJ: [-1, 0], KeyL: [1, 0], KeyI: [0, 1], KeyK: [0, -1] }; // [yaw, pitch] signs
const PAN_DEGREES = 15;
const RING = 132; // decoded frames kept for pixels()
const RECORDS = 4000; // frame records kept in helios.frames
const MAX_QUEUE_CHUNKS = 2;
const PREBUFFER = 4;
const RESEND_MS = 250;

const $ = (id) => document.getElementById(id);

let socket = null;
let queue = []; // frame indices waiting to be shown
let ring = new Map(); // frame index -> {bitmap, header}
let decodeChain = Promise.resolve();
let pendingDecode = 0;
let outstanding = null; // lockstep: the seq of the chunk asked for and not done yet
let seqCounter = 0;
let sentAt = new Map(); // seq -> ms, until its first frame arrives
let playing = false;
let chunkComplete = false;
let stopping = false;
let restartWhenDone = false;
let shownTimes = [];
const held = new Set();
const tapped = new Set();

const H = (window.helios = {
  state: "idle",
  info: null,
  session: null,
  done: null,
  frames: [],
  chunks: [],
  sent: [],
  errors: [],
  shown: 0,
  lastShown: -1,
  pace: params.get("pace") !== "0",
  stats: { fps: 0, chunk: -1, latencyMs: null, buffered: 0, dropped: 0, serverDropped: 0 },
  connect,
  start,
  stop,
  act,
  prompt,
  pixels,
});

function setState(state, detail = "") {
  H.state = state;
  $("state").textContent = detail ? `${state}: ${detail}` : state;
  $("state").dataset.state = state;
}

function showError(code, message) {
  H.errors.push({ code, message, atMs: nowMs() });
  $("error").textContent = `${code}: ${message}`;
}

// --- connection ----------------------------------------------------------------------------------

async function connect() {
  if (socket !== null) socket.close();
  setState("connecting");
  const s = new HeliosSocket(defaultUrl(), { token: $("token").value.trim() });
  socket = s;
  s.addEventListener("message", (e) => onMessage(e.detail));
  s.addEventListener("frame", (e) => onFrame(e.detail));
  s.addEventListener("close", (e) => {
    if (socket !== s) return;
    H.closeCode = e.detail.code;
    if (H.state !== "unauthenticated") setState("closed", `code ${e.detail.code}`);
  });
  try {
    await s.open();
  } catch (err) {
    showError("UNAVAILABLE", err.message);
    return;
  }
  setState("connected");
  s.send("server.info");
}

function onMessage(m) {
  switch (m.type) {
    case "server.info":
      H.info = m;
      showInfo(m);
      if (!params.get("fps") && m.fps) playAt(m.fps);
      if (params.get("autostart") !== "0") start();
      break;
    case "video.start":
      H.session = m;
      H.done = null;
      $("view").width = m.width;
      $("view").height = m.height;
      setState("playing", `${m.mode}, ${m.encoding}`);
      break;
    case "chunk.done":
      H.chunks.push(m);
      if (H.chunks.length > 200) H.chunks.shift();
      H.stats.chunk = m.chunk_index;
      chunkComplete = true;
      if (outstanding !== null && m.action_seq >= outstanding) outstanding = null;
      break;
    case "frames.dropped":
      H.stats.serverDropped += m.count;
      break;
    case "session.snapshot":
      H.snapshot = m;
      break;
    case "session.done":
      H.done = m;
      H.session = null;
      outstanding = null;
      setState("stopped", m.message || m.reason);
      if (restartWhenDone) {
        restartWhenDone = false;
        start();
      }
      break;
    case "error":
      showError(m.code, m.message);
      if (m.request === "session.start") setState("stopped", "the session did not start");
      if (m.code === "UNAUTHENTICATED") {
        setState("unauthenticated", "enter the server's token and connect");
        $("token").focus();
      }
      break;
    default:
      break;
  }
}

function showInfo(m) {
  const millions = (m.model.parameters / 1e6).toFixed(m.model.parameters < 1e7 ? 2 : 0);
  const devices = m.workers.map((w) => w.device || "?").join(", ");
  $("model").textContent =
    `${m.model.name} · ${millions} M parameters · sampler ${m.model.sampler} · ` +
    `${m.default_width}×${m.default_height} · ${m.fps} fps · ${m.frames_per_chunk} frames a chunk · ` +
    `workers: ${devices} · sessions ${m.active_sessions}/${m.max_sessions} · server ${m.server_version}`;
}

// --- a session -----------------------------------------------------------------------------------

function clearBuffers() {
  H.frames = [];
  H.chunks = [];
  for (const entry of ring.values()) entry.bitmap.close();
  ring = new Map();
  queue = [];
  sentAt = new Map();
  outstanding = null;
  playing = false;
  chunkComplete = false;
  stopping = false;
}

function start(options = {}) {
  if (socket === null || !socket.isOpen) {
    connect();
    return;
  }
  if (H.session !== null) {
    restartWhenDone = true;
    stop();
    return;
  }
  clearBuffers();
  const fields = {
    prompt: $("prompt").value,
    seed: Number($("seed").value) || 0,
    mode: $("mode").value,
    encoding: $("encoding").value,
    ...options,
  };
  socket.send("session.start", fields);
  setState("starting", "the first chunk is being made");
}

function stop() {
  if (socket === null || H.session === null) return;
  stopping = true;
  socket.send("session.stop");
}

// Send one action (keys, camera, mouse, move, pan) with the next seq.
function act(fields = {}) {
  const seq = ++seqCounter;
  const at = nowMs();
  socket.send("session.action", { seq, ...fields });
  sentAt.set(seq, at);
  H.sent.push({ seq, ...fields, atMs: at });
  if (H.session !== null && H.session.mode === "lockstep") outstanding = seq;
  return seq;
}

function prompt(text, chunks = Number($("transition").value) || 0) {
  const seq = ++seqCounter;
  socket.send("session.prompt_update", { seq, prompt: text, transition_duration_chunks: chunks });
  sentAt.set(seq, nowMs());
  H.sent.push({ seq, prompt: text, atMs: nowMs() });
  if (H.session !== null && H.session.mode === "lockstep") outstanding = seq;
  return seq;
}

// --- frames --------------------------------------------------------------------------------------

function onFrame(f) {
  const record = {
    chunk: f.chunkIndex,
    frame: f.frameIndex,
    inChunk: f.indexInChunk,
    seq: f.actionSeq,
    encoding: f.encoding,
    bytes: f.payload.byteLength,
    receivedMs: f.receivedMs,
    transportMs: f.receivedMs - f.timestampMs,
    decodeMs: null,
  };
  H.frames.push(record);
  if (H.frames.length > RECORDS) H.frames.splice(0, H.frames.length - RECORDS);
  for (const [seq, at] of sentAt) {
    if (seq > f.actionSeq) continue;
    if (seq === f.actionSeq) H.stats.latencyMs = f.receivedMs - at;
    sentAt.delete(seq); // this one arrived, or a newer one superseded it
  }
  pendingDecode += 1;
  decodeChain = decodeChain.then(() => decode(f, record));
}

async function decode(f, record) {
  const t0 = nowMs();
  let bitmap;
  try {
    if (f.encoding === "jpeg") {
      bitmap = await createImageBitmap(new Blob([f.payload], { type: "image/jpeg" }));
    } else if (f.encoding === "rgb24") {
      const rgba = new Uint8ClampedArray(f.width * f.height * 4);
      for (let i = 0, j = 0; i < f.payload.length; i += 3, j += 4) {
        rgba[j] = f.payload[i];
        rgba[j + 1] = f.payload[i + 1];
        rgba[j + 2] = f.payload[i + 2];
        rgba[j + 3] = 255;
      }
      bitmap = await createImageBitmap(new ImageData(rgba, f.width, f.height));
    } else {
      throw new Error(`this page shows jpeg and rgb24 frames, not ${f.encoding}`);
    }
  } catch (err) {
    pendingDecode -= 1;
    showError("DECODE", err.message);
    return;
  }
  record.decodeMs = nowMs() - t0;
  pendingDecode -= 1;
  const header = { ...f, payload: undefined };
  ring.set(f.frameIndex, { bitmap, header });
  while (ring.size > RING) {
    const [oldest, entry] = ring.entries().next().value;
    entry.bitmap.close();
    ring.delete(oldest);
  }
  queue.push(f.frameIndex);
  const limit = MAX_QUEUE_CHUNKS * framesPerChunk();
  while (queue.length > limit) {
    queue.shift(); // newest wins
    H.stats.dropped += 1;
  }
}

function framesPerChunk() {
  return (H.session && H.session.frames_per_chunk) || (H.info && H.info.frames_per_chunk) || 33;
}

async function pixels(frameIndex) {
  const entry = ring.get(frameIndex);
  if (!entry) return null;
  const { width, height } = entry.bitmap;
  const canvas = new OffscreenCanvas(width, height);
  const g = canvas.getContext("2d");
  g.drawImage(entry.bitmap, 0, 0);
  const data = g.getImageData(0, 0, width, height).data;
  let binary = "";
  for (let i = 0; i < data.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
  }
  return { width, height, rgba: btoa(binary) };
}

// --- play-out ------------------------------------------------------------------------------------

function tick() {
  if (!playing && (queue.length >= PREBUFFER || (chunkComplete && queue.length > 0))) playing = true;
  if (playing && queue.length > 0) {
    const index = queue.shift();
    const entry = ring.get(index);
    if (entry) {
      $("view").getContext("2d").drawImage(entry.bitmap, 0, 0);
      H.shown += 1;
      H.lastShown = index;
      shownTimes.push(performance.now());
    }
  } else if (queue.length === 0) {
    playing = false; // a stall: buffer again before playing on
    chunkComplete = false;
  }
  pace();
  showStatus();
}

// Lockstep: ask for the next chunk when less than one chunk is left to play.
function pace() {
  if (!H.pace || H.session === null || H.session.mode !== "lockstep" || stopping) return;
  if (outstanding !== null || socket === null || !socket.isOpen) return;
  if (queue.length + pendingDecode < framesPerChunk()) act(sampleInput());
}

function showStatus() {
  const now = performance.now();
  while (shownTimes.length && now - shownTimes[0] > 1000) shownTimes.shift();
  H.stats.fps = shownTimes.length;
  H.stats.buffered = queue.length;
  const s = H.stats;
  const latency = s.latencyMs === null ? "–" : `${s.latencyMs.toFixed(0)} ms`;
  $("chunk").textContent = s.chunk < 0 ? "–" : String(s.chunk);
  $("fps").textContent = String(s.fps);
  $("latency").textContent = latency;
  $("buffered").textContent = `${s.buffered} frames`;
  $("dropped").textContent = `${s.dropped} here, ${s.serverDropped} by the server`;
}

// --- keyboard ------------------------------------------------------------------------------------

function sampleInput() {
  const codes = new Set([...held, ...tapped]);
  tapped.clear();
  const keys = [...new Set([...codes].filter((c) => c in MOVE_KEYS).map((c) => MOVE_KEYS[c]))];
  let yaw = 0;
  let pitch = 0;
  for (const c of codes) {
    if (c in PAN_KEYS) {
      yaw += PAN_KEYS[c][0] * PAN_DEGREES;
      pitch += PAN_KEYS[c][1] * PAN_DEGREES;
    }
  }
  const out = { keys };
  if (yaw || pitch) out.camera = { yaw, pitch };
  return out;
}

function freeRun() {
  return H.session !== null && H.session.mode === "free_run" && !stopping && socket !== null && socket.isOpen;
}

function typing(e) {
  const tag = e.target && e.target.tagName;
  return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT";
}

document.addEventListener("keydown", (e) => {
  if (typing(e) || !(e.code in MOVE_KEYS || e.code in PAN_KEYS)) return;
  e.preventDefault(); // the arrows would scroll
  if (e.repeat) return;
  held.add(e.code);
  tapped.add(e.code);
  if (freeRun()) act(sampleInput());
});

document.addEventListener("keyup", (e) => {
  if (!held.delete(e.code)) return;
  if (freeRun()) act(sampleInput());
});

window.addEventListener("blur", () => held.clear());

// Leaving the page closes its socket, which frees the session on the server; a browser may keep
// the page (and a socket) alive in its back/forward cache otherwise. Coming back reconnects.
window.addEventListener("pagehide", () => {
  if (socket !== null) socket.close();
});
window.addEventListener("pageshow", (e) => {
  if (e.persisted) connect();
});

setInterval(() => {
  if (freeRun() && held.size > 0) act(sampleInput());
}, RESEND_MS);

// --- controls ------------------------------------------------------------------------------------

$("connect").addEventListener("click", () => connect());
$("start").addEventListener("click", () => start());
$("stop").addEventListener("click", () => stop());
$("prompt-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (H.session !== null) prompt($("prompt").value);
  else start();
  $("prompt").blur(); // the keys go to the world again
});

let timer = null;
function playAt(fps) {
  if (timer !== null) clearInterval(timer);
  timer = setInterval(tick, 1000 / fps);
}
playAt(Number(params.get("fps")) || 16);
if (params.get("connect") !== "0") connect();
