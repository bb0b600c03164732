"""`StreamSession`: the state machine of one `Stream` RPC (docs/server.md, Streams).

Three tasks share one outbox: `read_actions` takes the client's actions (rejecting bad ones with an
ACTION_REJECTED event), `produce` asks the worker for one chunk at a time and pushes its frames and
a CHUNK_DONE event, and `run` (the RPC's own task) encodes and writes what the outbox holds.

- lockstep: every action yields one chunk, in order; at most `MAX_PENDING_ACTIONS` wait.
- free-run: the world keeps generating; the newest action applies at the next chunk boundary.
Outgoing frames wait in a bounded buffer (`stream_buffer_frames`); when the consumer falls behind,
the oldest waiting frames are dropped (latest frame wins) and a FRAMES_DROPPED event says how many.
Events are not dropped: when `MAX_PENDING_EVENTS` wait (a client flooding bad actions), the reader
stops reading until the writer catches up, so HTTP/2 flow control pushes back on the client and the
outbox stays bounded either way.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk.actions import Action

from ..protocol.client import EngineClient, WorkerError
from ..protocol.messages import Frame, Step
from . import codec, metrics
from .encoding import FrameEncoder

log = logging.getLogger("helios.front")
MAX_PENDING_ACTIONS = 16
MAX_PENDING_EVENTS = 64  # events (rejections, ...) waiting to be written; the reader waits beyond


class StreamSession:
    """One attached stream. `check_session()` raises `RpcError` once the session may not go on
    (closed, lost with its worker); `session` is the front's record of it."""

    def __init__(
        self,
        session: Any,
        pool: EngineClient,
        encoder: FrameEncoder,
        free_run: bool,
        buffer_frames: int,
        check_session: Callable[[], None],
    ):
        self.s = session
        self.pool = pool
        self.encoder = encoder
        self.free_run = free_run
        self.limit = buffer_frames
        self.check_session = check_session
        self.stop = asyncio.Event()  # end now: drain, session gone, or a free-run client half-closed
        self.client_done = asyncio.Event()
        self.outbox: collections.deque[tuple[str, Any]] = collections.deque()
        self.wake = asyncio.Event()
        self.actions: asyncio.Queue[tuple[int, Action]] = asyncio.Queue()
        self.latest: tuple[int, Action] | None = None  # free-run: the newest action wins
        self.dropped = 0
        self.events_waiting = 0
        self.frames_waiting = 0
        self.room = asyncio.Event()  # set by the writer whenever it takes an event
        self.applied = 0  # free-run: the seq of the action applied last

    # --- the outbox ---------------------------------------------------------------------------------

    def push(self, kind: str, item: Any) -> None:
        if kind == "frame":
            if self.frames_waiting >= self.limit:  # drop the oldest waiting frame: latest frame wins
                for i, (k, _) in enumerate(self.outbox):
                    if k == "frame":
                        del self.outbox[i]
                        self.frames_waiting -= 1
                        self.dropped += 1
                        metrics.FRAMES_DROPPED.inc()
                        break
            self.frames_waiting += 1
        elif kind == "event":
            self.events_waiting += 1
        self.outbox.append((kind, item))
        self.wake.set()

    def event(self, kind: int, **fields: Any) -> pb.StreamResponse:
        return pb.StreamResponse(event=pb.SessionEvent(type=kind, session_id=self.s.id, **fields))

    def reject(self, message: str, seq: int = 0) -> None:
        self.push("event", self.event(pb.SESSION_EVENT_TYPE_ACTION_REJECTED, action_seq=seq, message=message))

    # --- the client's actions -----------------------------------------------------------------------

    async def read_actions(self, requests: AsyncIterator[pb.StreamRequest]) -> None:
        async for msg in requests:
            while self.events_waiting >= MAX_PENDING_EVENTS:  # back-pressure: stop reading
                self.room.clear()
                await self.room.wait()
            if isinstance(msg, codec.BadRequest):
                self.reject(msg.message)
                continue
            if msg.WhichOneof("kind") != "action":
                self.reject("only actions may follow StreamStart")
                continue
            seq = msg.action.seq
            try:
                action = codec.action(msg.action.action, self.s.worker.actions)
            except codec.RpcError as exc:
                self.reject(exc.message, seq)
                continue
            if self.free_run:
                self.latest = (seq, action)
            elif self.actions.qsize() >= MAX_PENDING_ACTIONS:
                self.reject(f"more than {MAX_PENDING_ACTIONS} actions are waiting", seq)
            else:
                self.actions.put_nowait((seq, action))
        self.client_done.set()  # the client half-closed: lockstep finishes its queued actions first
        if self.free_run:
            self.stop.set()
        self.wake.set()

    async def next_action(self) -> tuple[int, Action] | None:
        """The action of the next chunk; None: the stream ends."""
        if self.free_run:
            seq, action = self.latest or (self.applied, None)  # frames keep the last applied seq
            self.latest = None
            self.applied = seq
            return seq, action
        while True:
            if self.actions.empty() and self.client_done.is_set():
                return None
            getter = asyncio.create_task(self.actions.get())
            waiters = {asyncio.create_task(self.stop.wait()), asyncio.create_task(self.client_done.wait())}
            done, _ = await asyncio.wait({getter, *waiters}, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if getter in done:
                return getter.result()
            getter.cancel()
            if self.stop.is_set() or self.actions.empty():
                return None

    # --- generation ---------------------------------------------------------------------------------

    async def produce(self) -> None:
        while not self.stop.is_set():
            nxt = await self.next_action()
            if nxt is None:
                return
            seq, action = nxt
            try:
                self.check_session()
            except codec.RpcError as exc:
                self.push("event", self.event(pb.SESSION_EVENT_TYPE_CLOSED, message=exc.message))
                self.stop.set()
                return
            try:
                chunk_index, timings = self.s.chunk, {}
                async for reply in self.pool.request(self.s.worker, Step(self.s.id, action)):
                    if isinstance(reply, Frame):
                        self.push("frame", (reply, seq))
                    else:
                        chunk_index, timings = reply.chunk_index, reply.timings
                self.s.chunk = chunk_index + 1
                done = self.event(
                    pb.SESSION_EVENT_TYPE_CHUNK_DONE,
                    chunk_index=chunk_index,
                    action_seq=seq,
                    timings=codec.timings(timings),
                )
                self.push("event", done)
            except WorkerError as exc:
                if exc.code == "INVALID_ARGUMENT":
                    self.reject(exc.message, seq)
                    continue
                message = exc.message
                if exc.code == "UNAVAILABLE":  # the worker died under this chunk: the session with it
                    self.s.lost = True
                    message = codec.lost(self.s.id, exc.message).message
                self.push("event", self.event(pb.SESSION_EVENT_TYPE_CLOSED, message=message))
                self.stop.set()
                return

    # --- the writer ---------------------------------------------------------------------------------

    async def _report_dropped(self, context: grpc.aio.ServicerContext) -> None:
        """Say how many frames were dropped since the last report (taken before the write awaits,
        so drops during it are counted in the next report, never lost)."""
        if self.dropped:
            count, self.dropped = self.dropped, 0
            await context.write(self.event(pb.SESSION_EVENT_TYPE_FRAMES_DROPPED, dropped_frames=count))

    async def run(
        self, requests: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> BaseException | None:
        """Write STARTED, then frames and events until the stream ends; return the producer's
        exception (a bug), if it failed."""
        reader = asyncio.create_task(self.read_actions(requests))
        producer = asyncio.create_task(self.produce())
        encode_s = 0.0  # this chunk's frames, encoded here as they are written
        try:
            await context.write(self.event(pb.SESSION_EVENT_TYPE_STARTED))
            while True:
                while self.outbox:
                    kind, item = self.outbox.popleft()
                    if kind == "frame":
                        self.frames_waiting -= 1
                    if kind == "event":
                        self.events_waiting -= 1
                        self.room.set()
                        await self._report_dropped(context)
                        if item.event.type == pb.SESSION_EVENT_TYPE_CHUNK_DONE:
                            item.event.timings.encode_seconds = encode_s
                            encode_s = 0.0
                        await context.write(item)
                        continue
                    await self._report_dropped(context)
                    f, seq = item
                    t0 = time.monotonic()
                    payload, key = await self.encoder.encode_raw(f.data, f.width, f.height)
                    encode_s += time.monotonic() - t0
                    msg = codec.frame(self.s.id, f, payload, key, self.encoder.encoding, seq)
                    await context.write(pb.StreamResponse(frame=msg))
                    metrics.FRAMES_SENT.labels(encoding=self.encoder.label).inc()
                if producer.done():
                    await self._report_dropped(context)
                    break
                self.wake.clear()
                if not self.outbox:
                    waker = asyncio.create_task(self.wake.wait())
                    await asyncio.wait({waker, producer}, return_when=asyncio.FIRST_COMPLETED)
                    waker.cancel()
            return None if producer.cancelled() else producer.exception()
        finally:
            self.stop.set()
            reader.cancel()
            producer.cancel()
