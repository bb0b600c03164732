// The helios.v1 WebSocket protocol for browsers (docs/web.md): a socket that sends JSON messages
// and hands back JSON events and parsed binary frames. No dependencies; the page (page.js) and any
// other web client can import it.

export const SOCKET_PATH = "/v1/realtime/world";
export const SUBPROTOCOL = "helios.v1";
export const HEADER_VERSION = 1;
export const ENCODINGS = { 1: "rgb24", 2: "jpeg", 3: "h264" };

// The socket of the server that served this page (ws: or wss: as the page's own scheme).
export function defaultUrl(loc = window.location) {
  return (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + SOCKET_PATH;
}

// Wall-clock milliseconds since the Unix epoch with sub-millisecond resolution (the frame
// header's timestamp is the server's clock in the same unit).
export function nowMs() {
  return performance.timeOrigin + performance.now();
}

// One binary frame message -> its header fields and the encoded payload (a view, not a copy).
// Header, little-endian: u8 version, u8 encoding, u8 flags (bit 0 keyframe), u8 header bytes,
// u32 chunk index, u32 frame index, u16 index in chunk, u16 width, u16 height, u16 reserved,
// u32 action seq, f64 server time in ms.
export function readFrame(buffer) {
  const v = new DataView(buffer);
  const version = v.getUint8(0);
  if (version !== HEADER_VERSION) throw new Error(`unknown frame header version ${version}`);
  const size = v.getUint8(3);
  return {
    encoding: ENCODINGS[v.getUint8(1)] || String(v.getUint8(1)),
    keyframe: (v.getUint8(2) & 1) === 1,
    chunkIndex: v.getUint32(4, true),
    frameIndex: v.getUint32(8, true),
    indexInChunk: v.getUint16(12, true),
    width: v.getUint16(14, true),
    height: v.getUint16(16, true),
    actionSeq: v.getUint32(20, true),
    timestampMs: v.getFloat64(24, true),
    payload: new Uint8Array(buffer, size),
  };
}

// A helios socket. Events: "open", "message" (detail: a JSON message), "frame" (detail: a parsed
// frame with `receivedMs`), "close" (detail: {code, reason}). The token, when given, travels in
// the first message, never in the URL.
export class HeliosSocket extends EventTarget {
  constructor(url = defaultUrl(), { token = "" } = {}) {
    super();
    this.url = url;
    this.token = token;
    this.ws = null;
    this.sentFirst = false;
  }

  open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url, [SUBPROTOCOL]);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        this.dispatchEvent(new Event("open"));
        resolve(this);
      };
      ws.onmessage = (e) => {
        if (typeof e.data === "string") {
          this.dispatchEvent(new CustomEvent("message", { detail: JSON.parse(e.data) }));
        } else {
          const frame = readFrame(e.data);
          frame.receivedMs = nowMs();
          this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
        }
      };
      ws.onclose = (e) => {
        this.dispatchEvent(new CustomEvent("close", { detail: { code: e.code, reason: e.reason } }));
        if (!opened) reject(new Error(`cannot connect to ${this.url} (close code ${e.code})`));
      };
    });
  }

  send(type, fields = {}) {
    const message = { type, ...fields };
    if (!this.sentFirst && this.token) message.token = this.token;
    this.sentFirst = true;
    this.ws.send(JSON.stringify(message));
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  close() {
    if (this.ws !== null) this.ws.close();
  }
}
