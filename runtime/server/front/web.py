"""The browser gateway: a WebSocket endpoint and a page, in the server process (docs/web.md).

    helios serve --web-port 8000      # the page at http://127.0.0.1:8000/, the socket at /v1/realtime/world

One socket drives one session at a time through the *same* WorldService the gRPC clients use: a
socket's `session.start` becomes CreateSession + Reset (or Restore) and then a `Stream`, called as
the gRPC server calls them, with `WebContext` in place of the gRPC call's context. So sessions,
workers, the stream state machine (lockstep / free-run, bounded buffers, drops), every input check
and every status code are gRPC's; this module only adapts messages (`web_messages.py`) and guards
the socket: token auth (in the first message or a subprotocol, never in the URL), an Origin check
(same-origin by default, `--web-origin` to allow others), message size and rate limits. A socket's
session is closed when the socket closes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import hmac
import json
import logging
import ssl
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from aiohttp import WSCloseCode, WSMsgType, web

from helios_sdk._proto.helios.v1 import world_pb2 as pb

from ...chunk import FPS, FRAMES_PER_CHUNK
from . import web_messages as wm
from .service import WorldService
from .settings import ServerSettings
from .stream import MAX_PENDING_ACTIONS

log = logging.getLogger("helios.web")

STATIC = Path(__file__).resolve().parent / "static"
SOCKET_PATH = "/v1/realtime/world"
SUBPROTOCOL = "helios.v1"
BEARER_PREFIX = "helios.bearer."  # + the token, base64url without padding (a subprotocol is a token)
URL_TOKEN_KEYS = {"token", "access_token", "auth", "authorization", "bearer"}
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    # The page loads only its own files and talks only to its own origin (no CDN, no inline script).
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'",
}


@dataclass(frozen=True)
class WebLimits:
    """What one socket may cost. The size limits count a message's UTF-8 bytes."""

    max_message_bytes: int = 8 << 20  # a session.start with its image (base64: 6 MB of PNG / JPEG)
    max_control_bytes: int = 64 << 10  # every other message
    # Larger messages are not read at all: the socket is closed with 1009 (message too big). Between
    # the limits above and this one, the message is read and refused with RESOURCE_EXHAUSTED.
    read_limit_bytes: int = 16 << 20
    messages_per_second: float = 20.0  # sustained, per socket (a held key resent 4 times a second is 4)
    burst: int = 40
    max_sockets: int = 64
    # One address may not take every socket: the rest get HTTP 429. (Behind a reverse proxy every
    # client has the proxy's address: raise this there, or limit per client at the proxy.)
    max_sockets_per_address: int = 16
    auth_timeout_s: float = 10.0  # a socket that has not authenticated by then is closed
    heartbeat_s: float = 30.0  # pings find a peer that vanished without closing


class WebAbort(Exception):
    """What `context.abort` raises for a web caller: the RPC's status code, by name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class SocketGone(Exception):
    """The socket closed while something was being sent."""


class WebContext:
    """What WorldService's RPC methods use of a grpc.aio call context: `abort`, `write` (a stream's
    responses, to the socket) and `time_remaining` (a socket has no deadline)."""

    def __init__(self, connection: Connection):
        self.connection = connection

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise WebAbort(code.name, details)

    async def write(self, response: pb.StreamResponse) -> None:
        await self.connection.on_stream(response)

    def time_remaining(self) -> float | None:
        return None


class RateLimit:
    """A token bucket: `rate` messages a second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class Live:
    """The session a socket drives (one at a time)."""

    start: wm.Start
    feed: asyncio.Queue = field(default_factory=asyncio.Queue)  # StreamRequests; None ends the stream
    task: asyncio.Task | None = None
    session_id: str | None = None
    attached: bool = False  # video.start was sent
    stopping: bool = False
    closed_message: str | None = None  # the stream's CLOSED event
    chunks: int = 0


def _utf8_size_over(text: str, limit: int) -> bool:
    if len(text) > limit:  # at least one byte per character
        return True
    return len(text) * 4 > limit and len(text.encode()) > limit


# ---------------------------------------------------------------------------------------------------
# One socket
# ---------------------------------------------------------------------------------------------------


class Connection:
    def __init__(self, gateway: WebGateway, ws: web.WebSocketResponse, authed: bool):
        self.gw = gateway
        self.service: WorldService = gateway.service
        self.ws = ws
        self.authed = authed
        self.send_lock = asyncio.Lock()
        self.rate = RateLimit(gateway.limits.messages_per_second, gateway.limits.burst)
        self.rate_refused = 0
        self.rate_reported = 0.0
        self.live: Live | None = None
        self.seq = 0  # the last action seq given or taken

    # --- sending ------------------------------------------------------------------------------------

    async def send_json(self, message: dict[str, Any]) -> None:
        await self._send(json.dumps(message, separators=(",", ":")), binary=False)

    async def _send(self, data: str | bytes, binary: bool) -> None:
        async with self.send_lock:
            if self.ws.closed:
                raise SocketGone()
            try:
                await (self.ws.send_bytes(data) if binary else self.ws.send_str(data))
            except (ConnectionError, RuntimeError) as exc:
                raise SocketGone() from exc

    async def error(
        self, code: str, message: str, request: str | None = None, seq: int | None = None
    ) -> None:
        out: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if request is not None:
            out["request"] = request
        if seq is not None:
            out["seq"] = seq
        if self.live is not None and self.live.session_id is not None:
            out["session_id"] = self.live.session_id
        with contextlib.suppress(SocketGone):
            await self.send_json(out)

    async def fatal(self, code: str, message: str) -> None:
        """Say why, then close the socket (auth failures)."""
        await self.error(code, message)
        await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=code.encode())

    # --- the stream's responses ---------------------------------------------------------------------

    async def on_stream(self, response: pb.StreamResponse) -> None:
        live = self.live
        if response.WhichOneof("kind") == "frame":
            await self._send(wm.frame_message(response.frame), binary=True)
            return
        e = response.event
        if e.type == pb.SESSION_EVENT_TYPE_CHUNK_DONE:
            if live is not None:
                live.chunks += 1
            await self.send_json(
                {
                    "type": "chunk.done",
                    "session_id": e.session_id,
                    "chunk_index": e.chunk_index,
                    "action_seq": e.action_seq,
                    "timings": wm.timings(e.timings),
                }
            )
        elif e.type == pb.SESSION_EVENT_TYPE_FRAMES_DROPPED:
            await self.send_json(
                {"type": "frames.dropped", "session_id": e.session_id, "count": e.dropped_frames}
            )
        elif e.type == pb.SESSION_EVENT_TYPE_ACTION_REJECTED:
            # The stream checked the action as gRPC checks it (codec.action, the engine's adapter).
            await self.error(
                "INVALID_ARGUMENT", e.message, request="session.action", seq=e.action_seq or None
            )
        elif e.type == pb.SESSION_EVENT_TYPE_CLOSED and live is not None:
            live.closed_message = e.message
        # STARTED: video.start has said so already.

    # --- the client's messages ----------------------------------------------------------------------

    async def run(self) -> None:
        limits = self.gw.limits
        deadline = time.monotonic() + limits.auth_timeout_s
        try:
            while True:
                timeout = None if self.authed else max(0.01, deadline - time.monotonic())
                try:
                    msg = await self.ws.receive(timeout=timeout)
                except asyncio.TimeoutError:
                    await self.fatal("UNAUTHENTICATED", f"no token within {limits.auth_timeout_s:g} s")
                    return
                if msg.type == WSMsgType.TEXT:
                    if not await self.on_text(msg.data):
                        return
                elif msg.type == WSMsgType.BINARY:
                    if not self.authed:
                        await self.fatal(
                            "UNAUTHENTICATED", "the first message must be JSON carrying the token"
                        )
                        return
                    if self._rate_ok():
                        await self.error(
                            "INVALID_ARGUMENT", "binary messages are not accepted; send JSON text messages"
                        )
                elif msg.type == WSMsgType.ERROR:  # e.g. over read_limit_bytes: aiohttp closed with 1009
                    log.info("web socket closed: %s", msg.data)
                    return
                else:  # CLOSE, CLOSING, CLOSED
                    return
        finally:
            await self.end_session()
            if not self.ws.closed:
                await self.ws.close()

    def _rate_ok(self) -> bool:
        if self.rate.take():
            return True
        self.rate_refused += 1
        return False

    async def _report_rate(self) -> None:
        """At most one rate error a second, counting the messages refused since the last one."""
        now = time.monotonic()
        if now - self.rate_reported >= 1.0:
            self.rate_reported = now
            count, self.rate_refused = self.rate_refused, 0
            limits = self.gw.limits
            await self.error(
                "RESOURCE_EXHAUSTED",
                f"rate limit: {count} message(s) refused; at most {limits.messages_per_second:g} a second "
                f"(bursts of {limits.burst})",
            )

    async def on_text(self, text: str) -> bool:
        """Handle one text message; False: the socket must close."""
        limits = self.gw.limits
        if not self.authed:
            if not await self._authenticate(text):
                return False
        elif not self._rate_ok():
            await self._report_rate()
            return True
        if _utf8_size_over(text, limits.max_message_bytes):
            await self.error(
                "RESOURCE_EXHAUSTED", f"the message is over the {limits.max_message_bytes}-byte limit"
            )
            return True
        kind = None  # the message's type, once it parsed
        try:
            msg = wm.parse(text)
            kind = msg["type"]
            if kind != "session.start" and _utf8_size_over(text, limits.max_control_bytes):
                raise wm.WebError(
                    "RESOURCE_EXHAUSTED", f"a {kind} message is limited to {limits.max_control_bytes} bytes"
                )
            await self.dispatch(msg)
        except (wm.WebError, WebAbort) as exc:
            await self.error(exc.code, exc.message, request=kind, seq=getattr(exc, "seq", None))
        except SocketGone:
            return False
        except Exception as exc:  # a bug: INTERNAL, logged; the socket and other sessions go on
            log.exception("web message %s failed", kind)
            await self.error("INTERNAL", f"internal error: {type(exc).__name__}: {exc}", request=kind)
        return True

    async def _authenticate(self, text: str) -> bool:
        token = None
        with contextlib.suppress(ValueError, RecursionError):
            first = json.loads(text)
            if isinstance(first, dict) and isinstance(first.get("token"), str):
                token = first["token"]
        if token is None:
            await self.fatal("UNAUTHENTICATED", 'this server needs a token: put "token" in the first message')
            return False
        if not self.gw.token_ok(token):
            await self.fatal("UNAUTHENTICATED", "wrong token")
            return False
        self.authed = True
        return True

    async def dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "server.info":
            info = await self.service.GetServerInfo(pb.GetServerInfoRequest(), WebContext(self))
            limits = {k: v for k, v in asdict(self.gw.limits).items() if k != "heartbeat_s"}
            await self.send_json(wm.server_info(info, {**limits, "max_pending_actions": MAX_PENDING_ACTIONS}))
        elif kind == "session.start":
            if self.live is not None:
                raise wm.WebError(
                    "FAILED_PRECONDITION", "this socket already drives a session; session.stop it first"
                )
            live = Live(wm.start(msg))
            self.live = live
            live.task = asyncio.create_task(self.run_session(live))
        elif kind in ("session.action", "session.prompt_update"):
            live = self._live(kind)
            given = wm.seq(msg)
            seq = given if given is not None else self.seq + 1
            action = wm.action(msg) if kind == "session.action" else wm.prompt_update(msg)
            self.seq = max(self.seq, seq)
            self._enqueue(live, seq, action)
            if kind == "session.prompt_update":
                await self.send_json({"type": "session.prompt_update.accepted", "seq": seq})
        elif kind == "session.stop":
            live = self._live(kind)
            live.stopping = True
            live.feed.put_nowait(None)  # a free-run stream ends at the chunk boundary, a lockstep one
            stream = self._stream(live)  # drops what waits: the chunk being made is the last
            if stream is not None:
                stream.stop.set()
        elif kind == "session.snapshot":
            live = self._live(kind)
            if not live.attached:
                raise wm.WebError("FAILED_PRECONDITION", "the session has no world yet (its reset runs)")
            reply = await self.service.Snapshot(
                pb.SnapshotRequest(session_id=live.session_id), WebContext(self)
            )
            await self.send_json(
                {
                    "type": "session.snapshot",
                    "session_id": live.session_id,
                    "snapshot_id": reply.snapshot_id,
                    "size_bytes": reply.size_bytes,
                    "sha256": reply.sha256,
                }
            )

    def _live(self, kind: str) -> Live:
        live = self.live
        if live is None:
            raise wm.WebError(
                "FAILED_PRECONDITION", f"{kind} before session.start: no session on this socket"
            )
        if live.stopping:
            raise wm.WebError("FAILED_PRECONDITION", "the session is stopping")
        return live

    def _stream(self, live: Live) -> Any:
        """The service's StreamSession attached to this socket's session, once there is one."""
        return next((s for s in self.service.streams if s.s.id == live.session_id), None)

    def _enqueue(self, live: Live, seq: int, action: pb.Action) -> None:
        request = pb.StreamRequest(action=pb.StreamAction(seq=seq, action=action))
        stream = self._stream(live)
        waiting = live.feed.qsize() + (stream.actions.qsize() if stream is not None else 0)
        if live.start.mode == pb.STREAM_MODE_FREE_RUN:
            while live.feed.qsize() >= MAX_PENDING_ACTIONS:  # the newest action wins anyway
                live.feed.get_nowait()
        elif waiting >= MAX_PENDING_ACTIONS:
            raise wm.WebError(
                "RESOURCE_EXHAUSTED",
                f"more than {MAX_PENDING_ACTIONS} actions are waiting; send the next after a chunk.done",
                seq,
            )
        live.feed.put_nowait(request)

    # --- a session's life ---------------------------------------------------------------------------

    async def run_session(self, live: Live) -> None:
        """CreateSession + Reset (or Restore), video.start and the first chunk, then the Stream until
        it ends; the session is closed whatever happens."""
        context = WebContext(self)
        st = live.start
        reason, message = "stopped", ""
        try:
            first: pb.Chunk | None = None
            image: bytes | pb.Image | None = None
            if st.restore is not None:
                restored = await self.service.Restore(pb.RestoreRequest(snapshot_id=st.restore), context)
                live.session_id = restored.session_id
                s = self.service.sessions.get(restored.session_id)
                if s is None:  # closed or lost in the meantime
                    raise WebAbort("ABORTED", "the restored session ended before its stream started")
                width, height, chunk_index = s.width, s.height, restored.chunk_index
            else:
                created = await self.service.CreateSession(
                    pb.CreateSessionRequest(width=st.width, height=st.height), context
                )
                live.session_id = created.session_id
                width, height, chunk_index = created.width, created.height, 0
                request = pb.ResetRequest(
                    session_id=created.session_id,
                    prompt=st.prompt,
                    negative_prompt=st.negative_prompt,
                    seed=st.seed,
                    frames=st.frames,
                )
                image = st.image if st.image is not None else await self._world_image(st, width, height)
                if isinstance(image, bytes):
                    request.image.CopyFrom(pb.Image(data=image))
                elif image is not None:
                    request.image.CopyFrom(image)
                first = (await self.service.Reset(request, context)).chunk
            await self.send_json(
                {
                    "type": "video.start",
                    "session_id": live.session_id,
                    "width": width,
                    "height": height,
                    "fps": FPS,
                    "frames_per_chunk": FRAMES_PER_CHUNK,
                    "encoding": wm.ENCODING_NAMES[st.encoding],
                    "mode": "free_run" if st.mode == pb.STREAM_MODE_FREE_RUN else "lockstep",
                    "chunk_index": chunk_index,
                    "started_from": "snapshot" if st.restore else ("image" if image is not None else "text"),
                }
            )
            live.attached = True
            if first is not None:
                for f in first.frames:
                    await self._send(wm.frame_message(f), binary=True)
                live.chunks += 1
                await self.send_json(
                    {
                        "type": "chunk.done",
                        "session_id": live.session_id,
                        "chunk_index": first.chunk_index,
                        "action_seq": 0,
                        "timings": wm.timings(first.timings),
                    }
                )
            if not live.stopping:
                await self.service.Stream(self._requests(live), context)
            if live.closed_message is not None:
                reason, message = "closed", live.closed_message
        except WebAbort as exc:
            await self.error(exc.code, exc.message, request=None if live.attached else "session.start")
            reason, message = "error", exc.message
        except SocketGone:
            reason = "socket closed"
        except Exception as exc:  # a bug: INTERNAL, logged; the session is closed below
            log.exception("web session %s failed", live.session_id)
            await self.error("INTERNAL", f"internal error: {type(exc).__name__}: {exc}")
            reason, message = "error", f"internal error: {type(exc).__name__}"
        finally:
            if live.session_id is not None and not self.service.draining:  # draining: the workers go
                with contextlib.suppress(WebAbort):  # closing twice is fine
                    await self.service.CloseSession(
                        pb.CloseSessionRequest(session_id=live.session_id), context
                    )
            self.live = None
            if live.attached and reason != "socket closed":
                done = {"type": "session.done", "session_id": live.session_id, "reason": reason}
                done.update(message=message, chunks=live.chunks)
                with contextlib.suppress(SocketGone):
                    await self.send_json(done)

    async def _requests(self, live: Live):
        """The Stream's requests: StreamStart, then the socket's actions until session.stop."""
        st = live.start
        yield pb.StreamRequest(
            start=pb.StreamStart(session_id=live.session_id, mode=st.mode, frames=st.frames)
        )
        while True:
            item = await live.feed.get()
            if item is None:
                return
            yield item

    async def _world_image(self, st: wm.Start, width: int, height: int) -> pb.Image | None:
        """The procedural world's first frame for the prompt and seed, on the toy world (`start`
        auto) or when asked (`start` world): the toy model keeps its agent and the scene's look far
        better from an image than from text (as `helios record --start`)."""
        model = self.service.pool.workers[0].info.get("name", "")
        if st.start == "text" or (st.start == "auto" and model != "toy"):
            return None
        from ...sim import ProceduralWorld

        try:
            world = await asyncio.to_thread(ProceduralWorld, st.prompt, st.seed, height, width)
        except ValueError as exc:
            if st.start == "world":
                raise WebAbort("INVALID_ARGUMENT", f"start 'world': {exc}") from None
            return None  # auto: a prompt outside the world's grammar starts from text
        frame = world.frame()  # (H, W, 3) uint8
        return pb.Image(data=frame.tobytes(), width=width, height=height)

    async def end_session(self) -> None:
        """The socket closed: stop its session's work and close the session."""
        live = self.live
        if live is None or live.task is None:
            return
        live.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await live.task


# ---------------------------------------------------------------------------------------------------
# The gateway
# ---------------------------------------------------------------------------------------------------


class WebGateway:
    """The aiohttp application: the page, its files and the socket endpoint."""

    def __init__(self, settings: ServerSettings, service: WorldService, limits: WebLimits | None = None):
        self.settings = settings
        self.service = service
        self.limits = limits or WebLimits()
        self.origins = {o.strip().rstrip("/").lower() for o in settings.web_origins.split(",") if o.strip()}
        self.connections: set[Connection] = set()
        self.per_address: collections.Counter[str] = collections.Counter()
        self.closing = False
        self.runner: web.AppRunner | None = None
        self.port = 0

    # --- checks -------------------------------------------------------------------------------------

    def token_ok(self, given: str) -> bool:
        expected = self.settings.token
        return not expected or hmac.compare_digest(given.encode(), expected.encode())

    def origin_ok(self, origin: str, request: web.Request) -> bool:
        """Same-origin (the page this server serves) or on the allow-list (`*`: any)."""
        if "*" in self.origins or origin.rstrip("/").lower() in self.origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == request.host.lower()

    def handshake_auth(self, request: web.Request) -> tuple[bool, str | None]:
        """(authenticated already, a reason to refuse): a subprotocol token, or none yet."""
        if URL_TOKEN_KEYS & {k.lower() for k in request.query}:
            return False, "tokens in the URL are refused (URLs end up in logs): put it in the first message"
        if not self.settings.token:
            return True, None
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        bearer = [p.removeprefix(BEARER_PREFIX) for p in offered if p.startswith(BEARER_PREFIX)]
        if not bearer:
            return False, None  # the first message must carry it
        try:
            token = base64.urlsafe_b64decode(bearer[0] + "=" * (-len(bearer[0]) % 4)).decode()
        except (binascii.Error, ValueError):
            return False, "the bearer subprotocol is not base64url"
        return (True, None) if self.token_ok(token) else (False, "wrong token")

    # --- HTTP ---------------------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers=PAGE_HEADERS)

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if self.closing:
            return web.Response(status=503, text="the server is shutting down")
        if len(self.connections) >= self.limits.max_sockets:
            return web.Response(status=503, text=f"at most {self.limits.max_sockets} sockets; retry later")
        address = request.remote or "?"
        if self.per_address[address] >= self.limits.max_sockets_per_address:
            return web.Response(
                status=429,
                text=f"at most {self.limits.max_sockets_per_address} sockets from one address; retry later",
            )
        origin = request.headers.get("Origin")
        if origin is not None and not self.origin_ok(origin, request):
            log.warning("refused a socket from origin %r", origin[:100])
            return web.Response(
                status=403, text=f"origin {origin[:100]!r} is not allowed: start the server with --web-origin"
            )
        ws = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,),
            max_msg_size=self.limits.read_limit_bytes,
            heartbeat=self.limits.heartbeat_s,
            compress=False,  # frames are JPEG already, and inflating is a way to blow memory up
        )
        if not ws.can_prepare(request).ok:
            return web.Response(
                status=426, text=f"{SOCKET_PATH} speaks WebSocket", headers={"Upgrade": "websocket"}
            )
        await ws.prepare(request)
        authed, refusal = self.handshake_auth(request)
        connection = Connection(self, ws, authed)
        self.connections.add(connection)
        self.per_address[address] += 1
        try:
            if refusal is not None:
                await connection.fatal("UNAUTHENTICATED", refusal)
            else:
                await connection.run()
        finally:
            self.connections.discard(connection)
            self.per_address[address] -= 1
            if self.per_address[address] <= 0:
                del self.per_address[address]
        return ws

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 10)
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._file)
        app.router.add_get(SOCKET_PATH, self._socket)
        return app

    def tls(self) -> ssl.SSLContext | None:
        """With --tls-cert / --tls-key the page and its socket are served over HTTPS / WSS with the
        gRPC port's certificate (--tls-client-ca: browsers must present a client certificate too);
        None: plain HTTP, for localhost."""
        st = self.settings
        if st.tls_cert is None or st.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(st.tls_cert, st.tls_key)
        if st.tls_client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(st.tls_client_ca)
        return context

    @property
    def scheme(self) -> str:
        return "https" if self.settings.tls_cert is not None else "http"

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.host, self.settings.web_port, ssl_context=self.tls())
        await site.start()
        self.port = self.runner.addresses[0][1]  # the port picked when web_port is 0

    async def close(self, timeout: float) -> None:
        """After the service drained: give sessions `timeout` s to end, then close every socket."""
        self.closing = True
        tasks = [c.live.task for c in self.connections if c.live is not None and c.live.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for c in list(self.connections):
            with contextlib.suppress(Exception):
                await c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"the server is shutting down")
        if self.runner is not None:
            await self.runner.cleanup()


async def start_web(settings: ServerSettings, service: WorldService) -> WebGateway | None:
    """The gateway on `settings.web_port`, or None when it is off (the default)."""
    if settings.web_port is None:
        return None
    gateway = WebGateway(settings, service)
    await gateway.start()
    log.info("web page at %s://%s:%d/", gateway.scheme, settings.host, gateway.port)
    return gateway
