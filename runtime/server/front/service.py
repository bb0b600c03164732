"""The helios.v1 WorldService on grpc.aio: sessions, RPCs, encoding; streams in `stream.py`.

Each RPC checks its input (`codec.py`: INVALID_ARGUMENT, and here NOT_FOUND, FAILED_PRECONDITION,
RESOURCE_EXHAUSTED), sends the work to the session's engine worker as a protocol message through
the pool (`protocol/client.py`) and encodes the frames that come back (RGB24, JPEG or H.264, in
threads, never in the worker). No exception escapes as UNKNOWN: every failure becomes a status code
(a worker's errors carry theirs), and only the request that failed is affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk._proto.helios.v1 import world_pb2_grpc as pb_grpc

from ...chunk import FPS, FRAMES_PER_CHUNK
from ..protocol.client import EngineClient, WorkerError, WorkerHandle
from ..protocol.messages import Close, Fork, Frame, Reset, Restore, Snapshot, Step
from . import codec, metrics
from .codec import RpcError, invalid, lost, shown
from .encoding import FrameEncoder, InputLimits, decode_image, decode_video
from .settings import API_VERSION, SERVER_VERSION, ServerSettings
from .stream import StreamSession

log = logging.getLogger("helios.front")


MAX_SESSION_ID_CHARS = 128  # longer ids are never ours: NOT_FOUND, and only a prefix is echoed
ENDED_KEPT = 10_000  # ids of closed / lost sessions remembered for a precise error, at most
# A stock gRPC client (grpcurl, a default Unity / Unreal channel) refuses replies over 4 MiB: unary
# replies with default options stay under it (the chunk's last frame, JPEG when raw would not fit).
STOCK_CLIENT_BYTES = 4 * 1024 * 1024
REPLY_OVERHEAD_BYTES = 4096


@dataclass
class StepRecord:
    """A session's latest Step with a non-zero action_seq: a retry of the same seq gets this reply
    (or waits for it) instead of advancing the world again."""

    seq: int
    task: asyncio.Task  # -> pb.Chunk


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
    busy: int = 0  # requests running on it now: a busy session is never idle-expired
    last_step: StepRecord | None = None


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
        self.sessions: dict[str, FrontSession] = {}  # open ones only
        self.ended: OrderedDict[str, str] = OrderedDict()  # closed / lost id -> why, bounded
        self.admitting = 0  # sessions admitted whose worker call has not answered yet
        self.limits = InputLimits()
        self.snapshots = SnapshotStore(settings.snapshot_store_bytes)
        self.draining = False
        self.stream_stops: set[asyncio.Event] = set()
        self.streams: set[StreamSession] = set()  # attached now (metrics, tests)
        pool.on_lost = self._worker_lost

    # --- plumbing -----------------------------------------------------------------------------------

    def _worker_lost(self, worker: WorkerHandle) -> None:
        metrics.WORKER_RESTARTS.inc()
        for s in list(self.sessions.values()):
            if s.worker is worker and not s.closed:
                s.lost = True
                if not s.busy and not s.streaming:  # busy ones end when their request does
                    self._forget(s, "lost")
        metrics.SESSIONS.set(self._open_count())

    def _forget(self, s: FrontSession, why: str) -> None:
        """Drop a closed or lost session's record; remember its id (bounded) for a precise error."""
        self.sessions.pop(s.id, None)
        self.ended[s.id] = why
        while len(self.ended) > ENDED_KEPT:
            self.ended.popitem(last=False)

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
        s = self.sessions.get(session_id) if len(session_id) <= MAX_SESSION_ID_CHARS else None
        if s is None:
            why = self.ended.get(session_id)
            if why == "lost":
                raise lost(session_id)
            if why is not None:
                raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"session {shown(session_id)} is closed")
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"no session {shown(session_id)}")
        if s.closed:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"session {shown(session_id)} is closed")
        if s.lost or s.generation != s.worker.generation:
            s.lost = True
            raise lost(session_id)
        if need_live and not s.live:
            raise RpcError(
                grpc.StatusCode.FAILED_PRECONDITION, f"session {session_id!r} has not been Reset yet"
            )
        s.last_active = time.monotonic()
        return s

    def _open_count(self) -> int:
        return sum(1 for s in self.sessions.values() if not s.closed and not s.lost)

    @contextlib.contextmanager
    def _admit(self) -> Iterator[WorkerHandle]:
        """A slot for one new session, held from the check until the session is added (or the
        attempt failed): concurrent Fork / Restore / CreateSession never exceed max_sessions.
        The check and the reservation run with no await between them, so they are atomic on the
        event loop."""
        if not any(w.ready.is_set() for w in self.pool.workers):
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "the engine workers are starting; retry shortly")
        if self._open_count() + self.admitting >= self.settings.max_sessions:
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server holds its maximum of {self.settings.max_sessions} sessions",
            )
        self.admitting += 1
        try:
            yield self.pool.least_loaded()
        finally:
            self.admitting -= 1

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

    @staticmethod
    def _unary_options(s: FrontSession, options: pb.FrameOptions) -> pb.FrameOptions:
        """Unary defaults that fit a stock client's 4 MiB: an unspecified selection is the chunk's
        last frame; an unspecified encoding is RGB24 when that frame fits, else JPEG."""
        out = pb.FrameOptions()
        out.CopyFrom(options)
        if out.selection == pb.FRAME_SELECTION_UNSPECIFIED:
            out.selection = pb.FRAME_SELECTION_LAST
        if out.encoding == pb.FRAME_ENCODING_UNSPECIFIED:
            frames = FRAMES_PER_CHUNK if out.selection == pb.FRAME_SELECTION_ALL else 1
            raw = frames * s.width * s.height * 3 + REPLY_OVERHEAD_BYTES
            out.encoding = pb.FRAME_ENCODING_RGB24 if raw <= STOCK_CLIENT_BYTES else pb.FRAME_ENCODING_JPEG
        return out

    async def _chunk(
        self, s: FrontSession, request: Reset | Step, options: pb.FrameOptions, rpc: str, action_seq: int = 0
    ) -> pb.Chunk:
        """Run one reset/step on the worker and build the Chunk reply (frames per the selection).

        It runs to its end even when the RPC is cancelled (a client cancel, a deadline): the
        worker is told to stop, and the step either stops before it commits (the session is
        unchanged) or has committed, in which case the reply is built anyway, so a retry of the
        same action_seq can have it (`Step`)."""
        options = self._unary_options(s, options)
        request.frames = codec.selection(options)
        encoder = FrameEncoder(options)
        if encoder.encoding == pb.FRAME_ENCODING_RGB24 and request.frames != "none":
            frames = FRAMES_PER_CHUNK if request.frames == "all" else 1
            size = frames * s.width * s.height * 3 + REPLY_OVERHEAD_BYTES
            if size > self.settings.max_message_bytes:  # refused before the world moves
                raise RpcError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{frames} raw frame(s) of {s.width}×{s.height} take {size} bytes, over the "
                    f"{self.settings.max_message_bytes}-byte message limit: ask for JPEG or H.264, "
                    "selection LAST, or use Stream (one message per frame)",
                )
        work = asyncio.ensure_future(self._run_chunk(s, request, encoder, rpc, action_seq))
        s.busy += 1
        work.add_done_callback(lambda _: self._idle(s, work))
        if isinstance(request, Step) and action_seq:
            s.last_step = StepRecord(action_seq, work)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            if request.id:  # running on the worker: ask it to stop (it may have committed already)
                await self.pool.cancel(s.worker, request.id)
            else:  # not sent yet: it never runs
                work.cancel()
            raise

    def _idle(self, s: FrontSession, work: asyncio.Future | None = None) -> None:
        if work is not None and not work.cancelled():
            work.exception()  # retrieved here: a step nobody waits for any more may fail quietly
        s.busy -= 1
        s.last_active = time.monotonic()
        if s.lost and not s.busy and not s.streaming:
            self._forget(s, "lost")

    async def _run_chunk(
        self, s: FrontSession, request: Reset | Step, encoder: FrameEncoder, rpc: str, action_seq: int
    ) -> pb.Chunk:
        start = time.monotonic()
        chunk = pb.Chunk(session_id=s.id)
        encode_s = 0.0
        first = True
        metrics.QUEUE_DEPTH.inc()
        try:
            async for reply in self.pool.request(s.worker, request):  # sets request.id
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
        except WorkerError as exc:
            if exc.code == "UNAVAILABLE":  # the worker died under this request: its sessions with it
                s.lost = True
                raise lost(s.id, exc.message) from None
            raise
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
            actions = self.pool.workers[0].actions  # as its engine's action adapter described itself
            return pb.GetServerInfoResponse(
                api_version=API_VERSION,
                server_version=SERVER_VERSION,
                model=pb.ModelInfo(
                    name=info.get("name", ""),
                    parameters=info.get("parameters", 0),
                    sampler=info.get("sampler", ""),
                    steps_per_stage=info.get("steps", []),
                    actions=actions.to_proto() if actions else None,
                    seam_blend_frames=info.get("seam_blend", 0),
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
            with self._admit() as worker:
                s = self._add_session(worker, width, height)
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
            s.busy += 1  # decoding the source may take a while: not idle meanwhile
            try:  # (a worker lost meanwhile is noticed by the next call on the session)
                if reset.source != "none":
                    pixels = await asyncio.to_thread(self._decode_source, request, self.limits)
                    reset.shape, reset.pixels = pixels.shape, pixels.tobytes()
                s.last_step = None
                chunk = await self._chunk(s, reset, request.frames, "Reset")
            finally:
                s.busy -= 1
            s.live = True
            return pb.ResetResponse(chunk=chunk)

        return await self._run(context, body())

    @staticmethod
    def _decode_source(request: pb.ResetRequest, limits: InputLimits) -> np.ndarray:
        """Image / Video -> (T, H, W, 3) uint8; INVALID_ARGUMENT when undecodable or over `limits`
        (sizes read from the headers before decoding, frames counted before each is decoded)."""
        try:
            if request.WhichOneof("source") == "image":
                img = request.image
                return decode_image(img.data, img.width, img.height, limits)[None]
            video = request.video
            if video.frames:
                frames: list[np.ndarray] = []
                for f in video.frames:
                    limits.check_total(len(frames) + 1, 1, 1)
                    frames.append(decode_image(f.data, f.width, f.height, limits))
                    if frames[-1].shape != frames[0].shape:
                        raise ValueError("video frames differ in size")
                    limits.check_total(len(frames), frames[0].shape[1], frames[0].shape[0])
                return np.stack(frames)
            return decode_video(video.data, limits=limits)
        except ValueError as exc:
            raise invalid(str(exc)) from exc

    async def Step(self, request, context):
        async def body():
            s = self._session(request.session_id)
            if s.streaming:
                raise RpcError(
                    grpc.StatusCode.FAILED_PRECONDITION, "the session has a stream attached; step it there"
                )
            seq = request.action_seq
            last = s.last_step
            if seq and last is not None and seq == last.seq:
                retried = await self._retried(last)
                if retried is not None:
                    return pb.StepResponse(chunk=retried)
            elif seq and last is not None and seq < last.seq:
                raise RpcError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"action_seq {seq} is older than this session's last step ({last.seq}); "
                    "sequence numbers must grow",
                )
            step = Step(s.id, codec.action(request.action, s.worker.actions))
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise RpcError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the step started"
                )
            chunk = await self._chunk(s, step, request.frames, "Step", seq)
            return pb.StepResponse(chunk=chunk)

        return await self._run(context, body())

    async def _retried(self, last: StepRecord) -> pb.Chunk | None:
        """The reply of a retried Step (same action_seq): its chunk when the first attempt
        committed (waiting for it if it still runs), None when it did not (it may run again), or
        the first attempt's own error."""
        try:
            return await asyncio.shield(last.task)
        except asyncio.CancelledError:
            if last.task.cancelled():
                return None  # the first attempt was cancelled before it committed
            raise
        except WorkerError as exc:
            if exc.code in ("CANCELLED", "DEADLINE_EXCEEDED"):
                return None
            raise

    async def Fork(self, request, context):
        async def body():
            s = self._session(request.session_id)
            with self._admit():
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
                        f"no snapshot {shown(request.snapshot_id)} (it may have expired)",
                    )
            elif source == "data":
                blob = request.data
            else:
                raise invalid("Restore needs a snapshot_id or data")
            with self._admit() as worker:
                reply = await self.pool.call(worker, Restore(blob))
                s = self._add_session(worker, reply.width, reply.height, reply.session_id)
            s.live, s.chunk = True, reply.chunk_index
            return pb.RestoreResponse(session_id=s.id, chunk_index=reply.chunk_index)

        return await self._run(context, body())

    async def CloseSession(self, request, context):
        async def body():
            s = self.sessions.get(request.session_id)
            if s is None:
                if request.session_id in self.ended:  # closing twice is allowed
                    return pb.CloseSessionResponse()
                raise RpcError(grpc.StatusCode.NOT_FOUND, f"no session {shown(request.session_id)}")
            await self._close(s)
            return pb.CloseSessionResponse()

        return await self._run(context, body())

    async def _close(self, s: FrontSession) -> None:
        if s.closed:
            return
        s.closed = True
        s.last_step = None
        s.worker.load = max(0, s.worker.load - 1)
        self._forget(s, "closed")
        metrics.SESSIONS.set(self._open_count())
        if s.live and not s.lost and s.generation == s.worker.generation:
            try:
                await self.pool.call(s.worker, Close(s.id))
            except WorkerError as exc:
                log.warning("closing %s on its worker failed: %s", s.id, exc.message)

    async def expire_idle(self) -> None:
        """Close sessions idle for longer than the timeout (never one with a request running or a
        stream attached: a long Reset or a slow worker is not idleness)."""
        now = time.monotonic()
        for s in list(self.sessions.values()):
            idle = not s.closed and not s.streaming and not s.busy
            if idle and now - s.last_active > self.settings.idle_timeout_s:
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
            if isinstance(first, codec.BadRequest):
                raise invalid(first.message)
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
        s.last_step = None  # the stream advances the session: an older unary reply is stale now
        metrics.STREAMS.inc()
        self.stream_stops.add(stream.stop)
        self.streams.add(stream)
        try:
            bug = await stream.run(request_iterator, context)
            if bug is not None:
                log.error("stream producer failed", exc_info=bug)
                await self._abort(context, grpc.StatusCode.INTERNAL, f"internal error: {bug!r}")
            if s.lost:  # after its CLOSED event: the stream's status says what a unary call would
                await self._abort(context, grpc.StatusCode.ABORTED, lost(s.id).message)
            if self.draining:
                await context.write(
                    stream.event(pb.SESSION_EVENT_TYPE_CLOSED, message="the server is shutting down")
                )
        finally:
            s.streaming = False
            s.last_active = time.monotonic()
            if s.lost and not s.busy:
                self._forget(s, "lost")
            self.stream_stops.discard(stream.stop)
            self.streams.discard(stream)
            metrics.STREAMS.dec()

    async def drain(self) -> None:
        """Stop accepting work; let attached streams finish their chunk and end with a CLOSED event."""
        self.draining = True
        for stop in list(self.stream_stops):
            stop.set()


# ---------------------------------------------------------------------------------------------------
# Registration: request bytes that do not parse are INVALID_ARGUMENT, not UNKNOWN
# ---------------------------------------------------------------------------------------------------


def add_to_server(service: WorldService, server: grpc.aio.Server) -> None:
    """Register `service` like the generated `add_WorldServiceServicer_to_server`, except that a
    request that does not parse (not protobuf, invalid UTF-8 in a string field) reaches the
    method as a `codec.BadRequest` and is answered INVALID_ARGUMENT (a stream's later messages:
    an ACTION_REJECTED event), where gRPC's own deserialisation failure would answer UNKNOWN."""
    descriptor = pb.DESCRIPTOR.services_by_name["WorldService"]
    handlers = {}
    for method in descriptor.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        impl = getattr(service, method.name)
        kwargs = {
            "request_deserializer": codec.parser(request_type),
            "response_serializer": response_type.SerializeToString,
        }
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(impl, **kwargs)
        elif not method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(_checked(service, impl), **kwargs)
        else:  # the API has no such methods; refuse to register one silently wrong
            raise TypeError(f"{method.name}: half-streaming methods are not handled")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(descriptor.full_name, handlers),))


def _checked(service: WorldService, impl):
    async def unary(request, context):
        if isinstance(request, codec.BadRequest):
            await service._abort(context, grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await impl(request, context)

    return unary
