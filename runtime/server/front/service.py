"""The helios.v1 WorldService on grpc.aio: sessions, RPCs, encoding; streams in `stream.py`.

Each RPC checks its input (`codec.py`: INVALID_ARGUMENT, and here NOT_FOUND, FAILED_PRECONDITION,
RESOURCE_EXHAUSTED), sends the work to the session's engine worker as a protocol message through
the pool (`protocol/client.py`) and encodes the frames that come back (RGB24, JPEG or H.264, in
threads, never in the worker). No exception escapes as UNKNOWN: every failure becomes a status code
(a worker's errors carry theirs), and only the request that failed is affected.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import grpc
import numpy as np

from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk._proto.helios.v1 import world_pb2_grpc as pb_grpc

from ...chunk import FPS, FRAMES_PER_CHUNK
from ..protocol.client import EngineClient, WorkerError, WorkerHandle
from ..protocol.messages import Close, Fork, Frame, Reset, Restore, Result, Snapshot, Step
from . import codec, metrics
from .codec import RpcError, invalid
from .encoding import FrameEncoder, decode_image, decode_video
from .settings import API_VERSION, SERVER_VERSION, ServerSettings
from .stream import StreamSession

log = logging.getLogger("helios.front")


@dataclass
class FrontSession:
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
# The servicer
# ---------------------------------------------------------------------------------------------------


class WorldService(pb_grpc.WorldServiceServicer):
    def __init__(self, settings: ServerSettings, pool: EngineClient):
        self.settings = settings
        self.pool = pool
        self.sessions: dict[str, FrontSession] = {}
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
            await self._abort(context, codec.status(exc.code), exc.message)
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

    def _session(self, session_id: str, need_live: bool = True) -> FrontSession:
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
    ) -> FrontSession:
        entry = FrontSession(sid or uuid.uuid4().hex, worker, worker.generation, width, height)
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
        self, s: FrontSession, request: Reset | Step, options: pb.FrameOptions, rpc: str, action_seq: int = 0
    ) -> pb.Chunk:
        """Run one reset/step on the worker and build the Chunk reply (frames per the selection)."""
        request.frames = codec.selection(options)
        encoder = FrameEncoder(options)
        start = time.monotonic()
        chunk = pb.Chunk(session_id=s.id)
        encode_s = 0.0
        first = True
        metrics.QUEUE_DEPTH.inc()
        try:
            async for reply in self.pool.request(s.worker, request):
                if isinstance(reply, Frame):
                    if first:
                        metrics.FIRST_FRAME_SECONDS.observe(time.monotonic() - start)
                        first = False
                    t0 = time.monotonic()
                    payload, key = await encoder.encode_raw(reply.data, reply.width, reply.height)
                    encode_s += time.monotonic() - t0
                    chunk.frames.append(codec.frame(s.id, reply, payload, key, encoder.encoding, action_seq))
                    metrics.FRAMES_SENT.labels(encoding=encoder.label).inc()
                else:
                    chunk.chunk_index = reply.chunk_index
                    chunk.timings.CopyFrom(codec.timings(reply.timings, encode_s))
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
            reset = Reset(
                s.id,
                prompt=codec.text(request.prompt, "prompt"),
                negative_prompt=codec.text(request.negative_prompt, "negative_prompt"),
                seed=request.seed % 2**63,
                width=s.width,
                height=s.height,
                source=request.WhichOneof("source") or "none",
            )
            if reset.source != "none":
                pixels = await asyncio.to_thread(self._decode_source, request)
                reset.shape, reset.pixels = pixels.shape, pixels.tobytes()
            chunk = await self._chunk(s, reset, request.frames, "Reset")
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
            step = Step(s.id, codec.action(request.action))
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise RpcError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the step started"
                )
            chunk = await self._chunk(s, step, request.frames, "Step", request.action_seq)
            return pb.StepResponse(chunk=chunk)

        return await self._run(context, body())

    async def Fork(self, request, context):
        async def body():
            s = self._session(request.session_id)
            self._admit()
            reply = await self.pool.call(s.worker, Fork(s.id))
            twin = self._add_session(s.worker, s.width, s.height, reply.session_id)
            twin.live, twin.chunk = True, s.chunk
            return pb.ForkResponse(session_id=twin.id)

        return await self._run(context, body())

    async def Snapshot(self, request, context):
        async def body():
            s = self._session(request.session_id)
            blob = (await self.pool.call(s.worker, Snapshot(s.id))).data
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
            reply: Result = await self.pool.call(worker, Restore(blob))
            s = self._add_session(worker, reply.width, reply.height, reply.session_id)
            s.live, s.chunk = True, reply.chunk_index
            return pb.RestoreResponse(session_id=s.id, chunk_index=reply.chunk_index)

        return await self._run(context, body())

    async def CloseSession(self, request, context):
        async def body():
            s = self.sessions.get(request.session_id)
            if s is None:
                raise RpcError(grpc.StatusCode.NOT_FOUND, f"no session {request.session_id!r}")
            await self._close(s)
            return pb.CloseSessionResponse()

        return await self._run(context, body())

    async def _close(self, s: FrontSession) -> None:
        if s.closed:
            return
        s.closed = True
        s.worker.load = max(0, s.worker.load - 1)
        metrics.SESSIONS.set(self._open_count())
        if s.live and not s.lost and s.generation == s.worker.generation:
            try:
                await self.pool.call(s.worker, Close(s.id))
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
        stream = StreamSession(
            s,
            self.pool,
            encoder,
            free_run=start.mode == pb.STREAM_MODE_FREE_RUN,
            buffer_frames=self.settings.stream_buffer_frames,
            check_session=lambda: self._session(s.id),
        )
        s.streaming = True
        metrics.STREAMS.inc()
        self.stream_stops.add(stream.stop)
        try:
            bug = await stream.run(request_iterator, context)
            if bug is not None:
                log.error("stream producer failed", exc_info=bug)
                await self._abort(context, grpc.StatusCode.INTERNAL, f"internal error: {bug!r}")
            if self.draining:
                await context.write(
                    stream.event(pb.SESSION_EVENT_TYPE_CLOSED, message="the server is shutting down")
                )
        finally:
            s.streaming = False
            s.last_active = time.monotonic()
            self.stream_stops.discard(stream.stop)
            metrics.STREAMS.dec()

    async def drain(self) -> None:
        """Stop accepting work; let attached streams finish their chunk and end with a CLOSED event."""
        self.draining = True
        for stop in list(self.stream_stops):
            stop.set()
