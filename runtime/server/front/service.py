"""The helios.v1 WorldService on grpc.aio: validation, sessions, encoding, streams.

Each RPC checks its input (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED),
forwards the work to the session's engine worker (`workers.py`) and encodes the frames that come
back (RGB24, JPEG or H.264, in threads, never in the worker). No exception escapes as UNKNOWN: every
failure becomes a status code, and only the request that failed is affected.

Streams: the client's first message is StreamStart; in lockstep every action yields one chunk; in
free-run the world keeps generating and the newest action applies at the next chunk boundary. A
stream's outgoing frames wait in a bounded buffer of two chunks; when the consumer falls behind, the
oldest waiting frames are dropped (latest frame wins) and a FRAMES_DROPPED event says how many.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk._proto.helios.v1 import world_pb2_grpc as pb_grpc

from ...chunk import FPS, FRAMES_PER_CHUNK
from . import metrics
from .encoding import DEFAULT_JPEG_QUALITY, H264Encoder, decode_image, decode_video, encode_jpeg
from .settings import API_VERSION, SERVER_VERSION, ServerSettings
from .zmq_pool import EnginePool, WorkerError, WorkerHandle

log = logging.getLogger("helios.front")

MAX_PROMPT_CHARS = 4000
MAX_PENDING_ACTIONS = 16
SELECTIONS = {
    pb.FRAME_SELECTION_UNSPECIFIED: "all",
    pb.FRAME_SELECTION_ALL: "all",
    pb.FRAME_SELECTION_LAST: "last",
    pb.FRAME_SELECTION_NONE: "none",
}


class RpcError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def invalid(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass
class SessionEntry:
    id: str
    worker: WorkerHandle
    generation: int
    width: int
    height: int
    live: bool = False  # has been Reset (or restored / forked)
    closed: bool = False
    lost: bool = False  # its worker crashed
    chunk: int = 0  # chunks generated since the last reset (the next chunk's index)
    last_active: float = 0.0
    streaming: bool = False


class SnapshotStore:
    """Snapshots kept on the server for Restore-by-id, bounded by total bytes (oldest dropped)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.items: OrderedDict[str, bytes] = OrderedDict()
        self.size = 0

    def put(self, data: bytes) -> str:
        sid = uuid.uuid4().hex
        self.items[sid] = data
        self.size += len(data)
        while self.size > self.max_bytes and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.size -= len(old)
        return sid

    def get(self, sid: str) -> bytes | None:
        return self.items.get(sid)


# ---------------------------------------------------------------------------------------------------
# Conversions and checks
# ---------------------------------------------------------------------------------------------------


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise invalid(f"{what} must be finite, got {value}")
    return float(value)


def _text(value: str, what: str) -> str:
    if len(value) > MAX_PROMPT_CHARS:
        raise invalid(f"{what} is {len(value)} characters; the limit is {MAX_PROMPT_CHARS}")
    if "\x00" in value:
        raise invalid(f"{what} contains a NUL character")
    return value


def action_to_wire(action: pb.Action) -> dict[str, Any] | None:
    """A proto Action -> the worker's msgpack form (None: continue)."""
    kind = action.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "prompt":
        return {"type": "prompt", "text": _text(action.prompt.text, "prompt.text")}
    if kind == "blend":
        if not action.blend.prompts:
            raise invalid("blend needs at least one weighted prompt")
        texts = [_text(p.text, "blend.prompts.text") for p in action.blend.prompts]
        weights = [_finite(p.weight, "blend weight") for p in action.blend.prompts]
        return {"type": "blend", "texts": texts, "weights": weights}
    if kind == "transition":
        chunks = action.transition.chunks or 3
        return {
            "type": "transition",
            "text": _text(action.transition.text, "transition.text"),
            "chunks": chunks,
        }
    c = action.control
    control = {
        "keys": list(c.keys),
        "mouse": {"dx": _finite(c.mouse_dx, "mouse_dx"), "dy": _finite(c.mouse_dy, "mouse_dy")},
        "camera": {
            "yaw": _finite(c.camera_yaw, "camera_yaw"),
            "pitch": _finite(c.camera_pitch, "camera_pitch"),
            "zoom": _finite(c.camera_zoom, "camera_zoom"),
        },
    }
    return {"type": "control", "control": control}


class FrameEncoder:
    """Encodes a session's frames for one request or one stream (H.264 keeps state)."""

    def __init__(self, options: pb.FrameOptions):
        self.encoding = options.encoding or pb.FRAME_ENCODING_RGB24
        if self.encoding not in (pb.FRAME_ENCODING_RGB24, pb.FRAME_ENCODING_JPEG, pb.FRAME_ENCODING_H264):
            raise invalid(f"unknown frame encoding {options.encoding}")
        if options.jpeg_quality > 100:
            raise invalid(f"jpeg_quality must be 1..100 (0: default), got {options.jpeg_quality}")
        self.quality = options.jpeg_quality or DEFAULT_JPEG_QUALITY
        self.h264: H264Encoder | None = None

    async def encode_raw(self, raw: bytes, width: int, height: int) -> tuple[bytes, bool]:
        """A worker's RGB24 bytes -> (payload, keyframe). RGB24 passes through with no copy and no
        thread hop; JPEG / H.264 encode in a thread so the event loop never waits on them."""
        if self.encoding == pb.FRAME_ENCODING_RGB24:
            return raw, True
        frame = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
        return await asyncio.to_thread(self.encode, frame)

    def encode(self, frame: np.ndarray) -> tuple[bytes, bool]:
        if self.encoding == pb.FRAME_ENCODING_JPEG:
            return encode_jpeg(frame, self.quality), True
        if self.encoding == pb.FRAME_ENCODING_H264:
            if self.h264 is None:
                self.h264 = H264Encoder(frame.shape[1], frame.shape[0], keyframe_every=FRAMES_PER_CHUNK)
            return self.h264.encode(frame)
        return frame.tobytes(), True

    @property
    def label(self) -> str:
        return pb.FrameEncoding.Name(self.encoding).removeprefix("FRAME_ENCODING_").lower()


# ---------------------------------------------------------------------------------------------------
# The servicer
# ---------------------------------------------------------------------------------------------------


class WorldService(pb_grpc.WorldServiceServicer):
    def __init__(self, settings: ServerSettings, pool: EnginePool):
        self.settings = settings
        self.pool = pool
        self.sessions: dict[str, SessionEntry] = {}
        self.snapshots = SnapshotStore(settings.snapshot_store_bytes)
        self.draining = False
        self.stream_stops: set[asyncio.Event] = set()
        pool.on_lost = self._worker_lost

    # --- plumbing -----------------------------------------------------------------------------------

    def _worker_lost(self, worker: WorkerHandle) -> None:
        metrics.WORKER_RESTARTS.inc()
        for s in self.sessions.values():
            if s.worker is worker and not s.closed:
                s.lost = True

    async def _run(self, context: grpc.aio.ServicerContext, coro):
        """Run an RPC body; map every failure to its status code (never UNKNOWN)."""
        if self.draining:
            await self._abort(context, grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        try:
            return await coro
        except RpcError as exc:
            await self._abort(context, exc.code, exc.message)
        except WorkerError as exc:
            await self._abort(
                context, getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL), exc.message
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: INTERNAL, logged, and only this request fails
            if isinstance(exc, grpc.aio.AbortError):
                raise
            log.exception("internal error")
            await self._abort(
                context, grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
            )

    async def _abort(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str):
        metrics.ERRORS.labels(code=code.name).inc()
        await context.abort(code, message)

    def _session(self, session_id: str, need_live: bool = True) -> SessionEntry:
        if not session_id:
            raise invalid("session_id is required")
        s = self.sessions.get(session_id)
        if s is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"no session {session_id!r}")
        if s.closed:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"session {session_id!r} is closed")
        if s.lost or s.generation != s.worker.generation:
            s.lost = True
            raise RpcError(
                grpc.StatusCode.UNAVAILABLE,
                f"session {session_id!r} was lost with its engine worker; create a new one",
            )
        if need_live and not s.live:
            raise RpcError(
                grpc.StatusCode.FAILED_PRECONDITION, f"session {session_id!r} has not been Reset yet"
            )
        s.last_active = time.monotonic()
        return s

    def _open_count(self) -> int:
        return sum(1 for s in self.sessions.values() if not s.closed and not s.lost)

    def _admit(self) -> WorkerHandle:
        if not any(w.ready.is_set() for w in self.pool.workers):
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "the engine workers are starting; retry shortly")
        if self._open_count() >= self.settings.max_sessions:
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server holds its maximum of {self.settings.max_sessions} sessions",
            )
        return self.pool.least_loaded()

    def _add_session(
        self, worker: WorkerHandle, width: int, height: int, sid: str | None = None
    ) -> SessionEntry:
        entry = SessionEntry(sid or uuid.uuid4().hex, worker, worker.generation, width, height)
        entry.last_active = time.monotonic()
        worker.load += 1
        self.sessions[entry.id] = entry
        metrics.SESSIONS.set(self._open_count())
        return entry

    def _check_size(self, width: int, height: int) -> tuple[int, int]:
        info = self.pool.workers[0].info
        width = width or info.get("default_width", 640)
        height = height or info.get("default_height", 384)
        multiple = info.get("size_multiple", 64)
        for name, v, limit in (
            ("width", width, self.settings.max_width),
            ("height", height, self.settings.max_height),
        ):
            if v % multiple or v > limit:
                raise invalid(f"{name} must be a multiple of {multiple} pixels up to {limit}, got {v}")
        return width, height

    # --- generation ---------------------------------------------------------------------------------

    async def _chunk(
        self, s: SessionEntry, header: dict, blobs: list[bytes], options: pb.FrameOptions, rpc: str
    ):
        """Run one reset/step on the worker and build the Chunk reply (frames per the selection)."""
        selection = SELECTIONS.get(options.selection)
        if selection is None:
            raise invalid(f"unknown frame selection {options.selection}")
        encoder = FrameEncoder(options)
        start = time.monotonic()
        chunk = pb.Chunk(session_id=s.id)
        encode_s = 0.0
        first = True
        metrics.QUEUE_DEPTH.inc()
        try:
            async for reply, data in self.pool.request(s.worker, {**header, "frames": selection}, *blobs):
                if reply["kind"] == "frame":
                    if first:
                        metrics.FIRST_FRAME_SECONDS.observe(time.monotonic() - start)
                        first = False
                    t0 = time.monotonic()
                    payload, key = await encoder.encode_raw(data[0], reply["width"], reply["height"])
                    encode_s += time.monotonic() - t0
                    chunk.frames.append(
                        self._frame_msg(s, reply, payload, key, encoder, header.get("action_seq", 0))
                    )
                    metrics.FRAMES_SENT.labels(encoding=encoder.label).inc()
                else:
                    chunk.chunk_index = reply["chunk_index"]
                    t = reply.get("timings", {})
                    chunk.timings.CopyFrom(
                        pb.ChunkTimings(
                            denoise_seconds=t.get("denoise", 0.0),
                            decode_seconds=t.get("decode", 0.0),
                            encode_seconds=encode_s,
                        )
                    )
        finally:
            metrics.QUEUE_DEPTH.dec()
        s.chunk = chunk.chunk_index + 1
        metrics.CHUNK_SECONDS.labels(rpc=rpc).observe(time.monotonic() - start)
        if chunk.ByteSize() > self.settings.max_message_bytes:
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the chunk's frames take {chunk.ByteSize()} bytes, over the "
                f"{self.settings.max_message_bytes}-byte message limit: ask for JPEG or H.264, "
                "selection LAST, or use Stream (one message per frame)",
            )
        return chunk

    @staticmethod
    def _frame_msg(
        s: SessionEntry, reply: dict, payload: bytes, key: bool, enc: FrameEncoder, action_seq: int
    ):
        return pb.Frame(
            session_id=s.id,
            chunk_index=reply["chunk_index"],
            frame_index=reply["chunk_index"] * FRAMES_PER_CHUNK + reply["index_in_chunk"],
            index_in_chunk=reply["index_in_chunk"],
            timestamp_ns=time.time_ns(),
            width=reply["width"],
            height=reply["height"],
            encoding=enc.encoding,
            data=payload,
            keyframe=key,
            action_seq=action_seq,
        )

    # --- RPCs ---------------------------------------------------------------------------------------

    async def GetServerInfo(self, request, context):
        async def body():
            info = self.pool.workers[0].info
            return pb.GetServerInfoResponse(
                api_version=API_VERSION,
                server_version=SERVER_VERSION,
                model=pb.ModelInfo(
                    name=info.get("name", ""),
                    parameters=info.get("parameters", 0),
                    sampler=info.get("sampler", ""),
                    steps_per_stage=info.get("steps", []),
                ),
                default_width=info.get("default_width", 0),
                default_height=info.get("default_height", 0),
                size_multiple=info.get("size_multiple", 0),
                max_width=self.settings.max_width,
                max_height=self.settings.max_height,
                encodings=[pb.FRAME_ENCODING_RGB24, pb.FRAME_ENCODING_JPEG, pb.FRAME_ENCODING_H264],
                frames_per_chunk=FRAMES_PER_CHUNK,
                fps=FPS,
                max_sessions=self.settings.max_sessions,
                active_sessions=self._open_count(),
                max_message_bytes=self.settings.max_message_bytes,
                session_idle_timeout_seconds=int(self.settings.idle_timeout_s),
                auth_required=bool(self.settings.token),
                workers=[self._worker_info(w) for w in self.pool.workers],
            )

        return await self._run(context, body())

    @staticmethod
    def _worker_info(w: WorkerHandle) -> pb.WorkerInfo:
        return pb.WorkerInfo(
            index=w.index,
            name=w.identity.decode(),
            device=w.info.get("device") or w.device or "",
            host=w.info.get("host", ""),
            ready=w.ready.is_set(),
            sessions=w.load,
            capacity=w.capacity,
            restarts=w.generation,
        )

    async def CreateSession(self, request, context):
        async def body():
            width, height = self._check_size(request.width, request.height)
            s = self._add_session(self._admit(), width, height)
            return pb.CreateSessionResponse(session_id=s.id, width=width, height=height)

        return await self._run(context, body())

    async def Reset(self, request, context):
        async def body():
            s = self._session(request.session_id, need_live=False)
            if s.streaming:
                raise RpcError(
                    grpc.StatusCode.FAILED_PRECONDITION, "the session has a stream attached; end it first"
                )
            header = {
                "op": "reset",
                "session_id": s.id,
                "prompt": _text(request.prompt, "prompt"),
                "negative_prompt": _text(request.negative_prompt, "negative_prompt"),
                "seed": request.seed % 2**63,
                "width": s.width,
                "height": s.height,
                "source": request.WhichOneof("source") or "none",
            }
            blobs = []
            if header["source"] != "none":
                pixels = await asyncio.to_thread(self._decode_source, request)
                header["shape"] = list(pixels.shape)
                blobs.append(pixels.tobytes())
            chunk = await self._chunk(s, header, blobs, request.frames, "Reset")
            s.live = True
            return pb.ResetResponse(chunk=chunk)

        return await self._run(context, body())

    @staticmethod
    def _decode_source(request: pb.ResetRequest) -> np.ndarray:
        """Image / Video -> (T, H, W, 3) uint8; INVALID_ARGUMENT when undecodable."""
        try:
            if request.WhichOneof("source") == "image":
                img = request.image
                return decode_image(img.data, img.width, img.height)[None]
            video = request.video
            if video.frames:
                frames = [decode_image(f.data, f.width, f.height) for f in video.frames]
                if len({f.shape for f in frames}) != 1:
                    raise ValueError("video frames differ in size")
                return np.stack(frames)
            return decode_video(video.data)
        except ValueError as exc:
            raise invalid(str(exc)) from exc

    async def Step(self, request, context):
        async def body():
            s = self._session(request.session_id)
            if s.streaming:
                raise RpcError(
                    grpc.StatusCode.FAILED_PRECONDITION, "the session has a stream attached; step it there"
                )
            header = {
                "op": "step",
                "session_id": s.id,
                "action": action_to_wire(request.action),
                "action_seq": request.action_seq,
            }
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise RpcError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the step started"
                )
            return pb.StepResponse(chunk=await self._chunk(s, header, [], request.frames, "Step"))

        return await self._run(context, body())

    async def Fork(self, request, context):
        async def body():
            s = self._session(request.session_id)
            self._admit()
            reply, _ = await self.pool.call(s.worker, {"op": "fork", "session_id": s.id})
            twin = self._add_session(s.worker, s.width, s.height, reply["session_id"])
            twin.live, twin.chunk = True, s.chunk
            return pb.ForkResponse(session_id=twin.id)

        return await self._run(context, body())

    async def Snapshot(self, request, context):
        async def body():
            s = self._session(request.session_id)
            _, data = await self.pool.call(s.worker, {"op": "snapshot", "session_id": s.id})
            blob = data[0]
            response = pb.SnapshotResponse(
                snapshot_id=self.snapshots.put(blob),
                size_bytes=len(blob),
                sha256=hashlib.sha256(blob).hexdigest(),
            )
            if request.include_data:
                if len(blob) + 1024 > self.settings.max_message_bytes:
                    raise RpcError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the snapshot is {len(blob)} bytes, over the "
                        f"{self.settings.max_message_bytes}-byte message limit; "
                        f"restore it by snapshot_id {response.snapshot_id!r} instead",
                    )
                response.data = blob
            return response

        return await self._run(context, body())

    async def Restore(self, request, context):
        async def body():
            source = request.WhichOneof("source")
            if source == "snapshot_id":
                blob = self.snapshots.get(request.snapshot_id)
                if blob is None:
                    raise RpcError(
                        grpc.StatusCode.NOT_FOUND,
                        f"no snapshot {request.snapshot_id!r} (it may have expired)",
                    )
            elif source == "data":
                blob = request.data
            else:
                raise invalid("Restore needs a snapshot_id or data")
            worker = self._admit()
            reply, _ = await self.pool.call(worker, {"op": "restore"}, blob)
            s = self._add_session(worker, reply["width"], reply["height"], reply["session_id"])
            s.live, s.chunk = True, reply["chunk_index"]
            return pb.RestoreResponse(session_id=s.id, chunk_index=reply["chunk_index"])

        return await self._run(context, body())

    async def CloseSession(self, request, context):
        async def body():
            s = self.sessions.get(request.session_id)
            if s is None:
                raise RpcError(grpc.StatusCode.NOT_FOUND, f"no session {request.session_id!r}")
            await self._close(s)
            return pb.CloseSessionResponse()

        return await self._run(context, body())

    async def _close(self, s: SessionEntry) -> None:
        if s.closed:
            return
        s.closed = True
        s.worker.load = max(0, s.worker.load - 1)
        metrics.SESSIONS.set(self._open_count())
        if s.live and not s.lost and s.generation == s.worker.generation:
            try:
                await self.pool.call(s.worker, {"op": "close", "session_id": s.id})
            except WorkerError as exc:
                log.warning("closing %s on its worker failed: %s", s.id, exc.message)

    async def expire_idle(self) -> None:
        """Close sessions idle for longer than the timeout (never one with a stream attached)."""
        now = time.monotonic()
        for s in list(self.sessions.values()):
            if not s.closed and not s.streaming and now - s.last_active > self.settings.idle_timeout_s:
                log.info("session %s expired after %.0f s idle", s.id, now - s.last_active)
                await self._close(s)

    # --- streaming ----------------------------------------------------------------------------------

    async def Stream(self, request_iterator, context):
        if self.draining:
            await self._abort(context, grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        try:
            first = await request_iterator.__anext__()
        except StopAsyncIteration:
            return
        try:
            if first.WhichOneof("kind") != "start":
                raise invalid("the first message of a stream must be a StreamStart")
            start = first.start
            s = self._session(start.session_id)
            if s.streaming:
                raise RpcError(
                    grpc.StatusCode.FAILED_PRECONDITION, "the session already has a stream attached"
                )
            if start.mode not in (
                pb.STREAM_MODE_UNSPECIFIED,
                pb.STREAM_MODE_LOCKSTEP,
                pb.STREAM_MODE_FREE_RUN,
            ):
                raise invalid(f"unknown stream mode {start.mode}")
            encoder = FrameEncoder(start.frames)
        except RpcError as exc:
            await self._abort(context, exc.code, exc.message)
            return
        free_run = start.mode == pb.STREAM_MODE_FREE_RUN
        s.streaming = True
        metrics.STREAMS.inc()
        stop = asyncio.Event()  # end now: drain, session gone, or a free-run client half-closed
        client_done = asyncio.Event()
        self.stream_stops.add(stop)
        outbox: collections.deque = collections.deque()
        wake = asyncio.Event()
        actions: asyncio.Queue = asyncio.Queue()
        latest: list[tuple[int, Any] | None] = [None]  # free-run: the newest action wins
        dropped = [0]
        applied = [0]
        limit = self.settings.stream_buffer_frames

        def push(item, droppable: bool) -> None:
            if droppable:
                waiting = sum(1 for kind, _ in outbox if kind == "frame")
                if waiting >= limit:  # drop the oldest waiting frame: latest frame wins
                    for i, (kind, _) in enumerate(outbox):
                        if kind == "frame":
                            del outbox[i]
                            dropped[0] += 1
                            metrics.FRAMES_DROPPED.inc()
                            break
            outbox.append(item)
            wake.set()

        def event(kind: int, **fields) -> pb.StreamResponse:
            return pb.StreamResponse(event=pb.SessionEvent(type=kind, session_id=s.id, **fields))

        def reject(seq: int, message: str) -> None:
            push(
                ("event", event(pb.SESSION_EVENT_TYPE_ACTION_REJECTED, action_seq=seq, message=message)),
                False,
            )

        async def read_actions() -> None:
            async for msg in request_iterator:
                if msg.WhichOneof("kind") != "action":
                    push(
                        (
                            "event",
                            event(
                                pb.SESSION_EVENT_TYPE_ACTION_REJECTED,
                                message="only actions may follow StreamStart",
                            ),
                        ),
                        False,
                    )
                    continue
                try:
                    wire = action_to_wire(msg.action.action)
                except RpcError as exc:
                    push(
                        (
                            "event",
                            event(
                                pb.SESSION_EVENT_TYPE_ACTION_REJECTED,
                                action_seq=msg.action.seq,
                                message=exc.message,
                            ),
                        ),
                        False,
                    )
                    continue
                if free_run:
                    latest[0] = (msg.action.seq, wire)
                elif actions.qsize() >= MAX_PENDING_ACTIONS:
                    reject(msg.action.seq, f"more than {MAX_PENDING_ACTIONS} actions are waiting")
                else:
                    actions.put_nowait((msg.action.seq, wire))
            client_done.set()  # the client half-closed: lockstep finishes its queued actions first
            if free_run:
                stop.set()
            wake.set()

        async def produce() -> None:
            while not stop.is_set():
                if free_run:
                    # The newest action (if any came) applies now; frames keep the last applied seq.
                    seq, wire = latest[0] or (applied[0], None)
                    latest[0] = None
                    applied[0] = seq
                else:
                    if actions.empty() and client_done.is_set():
                        return
                    getter = asyncio.create_task(actions.get())
                    waiters = {asyncio.create_task(stop.wait()), asyncio.create_task(client_done.wait())}
                    done, _ = await asyncio.wait({getter, *waiters}, return_when=asyncio.FIRST_COMPLETED)
                    for w in waiters:
                        w.cancel()
                    if getter not in done:
                        getter.cancel()
                        if stop.is_set() or actions.empty():
                            return
                        continue
                    seq, wire = getter.result()
                try:
                    self._session(s.id)
                except RpcError as exc:
                    push(("event", event(pb.SESSION_EVENT_TYPE_CLOSED, message=exc.message)), False)
                    stop.set()
                    return
                header = {
                    "op": "step",
                    "session_id": s.id,
                    "action": wire,
                    "action_seq": seq,
                    "frames": "all",
                }
                try:
                    chunk_index, timings = s.chunk, {}
                    async for reply, data in self.pool.request(s.worker, header):
                        if reply["kind"] == "frame":
                            push(("frame", (reply, data[0], seq)), True)
                        else:
                            chunk_index, timings = reply["chunk_index"], reply.get("timings", {})
                    s.chunk = chunk_index + 1
                    done_timings = pb.ChunkTimings(
                        denoise_seconds=timings.get("denoise", 0.0), decode_seconds=timings.get("decode", 0.0)
                    )
                    done = event(
                        pb.SESSION_EVENT_TYPE_CHUNK_DONE,
                        chunk_index=chunk_index,
                        action_seq=seq,
                        timings=done_timings,
                    )
                    push(("event", done), False)
                except WorkerError as exc:
                    if exc.code == "INVALID_ARGUMENT":
                        push(
                            (
                                "event",
                                event(
                                    pb.SESSION_EVENT_TYPE_ACTION_REJECTED, action_seq=seq, message=exc.message
                                ),
                            ),
                            False,
                        )
                        continue
                    if exc.code == "UNAVAILABLE":
                        s.lost = True
                    push(("event", event(pb.SESSION_EVENT_TYPE_CLOSED, message=exc.message)), False)
                    stop.set()
                    return

        reader = asyncio.create_task(read_actions())
        producer = asyncio.create_task(produce())
        encode_s = 0.0  # this chunk's frames, encoded here as they are written
        try:
            await context.write(event(pb.SESSION_EVENT_TYPE_STARTED))
            while True:
                while outbox:
                    kind, item = outbox.popleft()
                    if kind == "event":
                        if item.event.type == pb.SESSION_EVENT_TYPE_CHUNK_DONE:
                            item.event.timings.encode_seconds = encode_s
                            encode_s = 0.0
                        await context.write(item)
                        continue
                    if dropped[0]:
                        await context.write(
                            event(pb.SESSION_EVENT_TYPE_FRAMES_DROPPED, dropped_frames=dropped[0])
                        )
                        dropped[0] = 0
                    reply, raw, seq = item
                    t0 = time.monotonic()
                    payload, key = await encoder.encode_raw(raw, reply["width"], reply["height"])
                    encode_s += time.monotonic() - t0
                    await context.write(
                        pb.StreamResponse(frame=self._frame_msg(s, reply, payload, key, encoder, seq))
                    )
                    metrics.FRAMES_SENT.labels(encoding=encoder.label).inc()
                if producer.done():
                    break
                wake.clear()
                if not outbox:
                    waker = asyncio.create_task(wake.wait())
                    await asyncio.wait({waker, producer}, return_when=asyncio.FIRST_COMPLETED)
                    waker.cancel()
            if not producer.cancelled() and producer.exception() is not None:
                log.error("stream producer failed", exc_info=producer.exception())
                await self._abort(
                    context, grpc.StatusCode.INTERNAL, f"internal error: {producer.exception()!r}"
                )
            if self.draining:
                await context.write(
                    event(pb.SESSION_EVENT_TYPE_CLOSED, message="the server is shutting down")
                )
        finally:
            stop.set()
            reader.cancel()
            producer.cancel()
            s.streaming = False
            s.last_active = time.monotonic()
            self.stream_stops.discard(stop)
            metrics.STREAMS.dec()

    async def drain(self) -> None:
        """Stop accepting work; let attached streams finish their chunk and end with a CLOSED event."""
        self.draining = True
        for stop in list(self.stream_stops):
            stop.set()
