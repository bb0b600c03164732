"""The engine worker's loop: it owns a WorldEngine and answers the front (process main: `main.py`).

The loop drains every request that has arrived, answers the cheap ones (fork, snapshot, close, ...)
at once, and runs all pending steps together through `WorldEngine.step_many`, which batches sessions
whose sizes and settings match. Decoded frames leave as soon as they exist (one message each), so
the front can stream them while the chunk is still decoding. The worker never waits on the network
or on encoding: those happen in the front. Protocol: `../protocol/messages.py`.

Codec, protocol -> engine calls: `Reset` -> `WorldEngine.reset`, `Step`s -> `step_many`, ...;
an engine error leaves as `Error` with the status code its class carries (`engine/errors.py`).

Cancelling: every running request has its own `CancelToken`, which the engine reads before each
forward, between decoded frames and before the chunk commits; a cancelled step leaves its session
unchanged and the other steps of the same `step_many` call finish. A transport that receives on its
own thread (ZeroMQ's I/O thread, the in-process queue) sets it the moment a `Cancel` arrives
(`Worker.cancel`); the denoising loop never touches the network.

Liveness: the loop thread stamps `Progress` per message handled and per token read (each forward,
each decoded frame); ZeroMQ's I/O thread sends that age to the front in a `Heartbeat` every
`HEARTBEAT_S`, and the front's watchdog restarts a worker whose loop stopped moving.

The loop only sees a `Transport`: a worker process uses ZeroMQ (`ZmqTransport`); a Ray Serve replica
and the in-process client run the same loop in a thread over a queue (`QueueTransport`).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
import zmq

from ...chunk import LAST_FRAME
from ...engine.cancel import CancelToken
from ...engine.engine import ChunkResult, WorldEngine
from ...engine.errors import Cancelled, CapacityExceeded, EngineError
from ..protocol.channel import WorkerKeys
from ..protocol.messages import (
    HEARTBEAT_S,
    Cancel,
    Close,
    Error,
    Fork,
    Frame,
    Heartbeat,
    Reply,
    Request,
    Reset,
    Restore,
    Result,
    Snapshot,
    Step,
    decode,
    encode,
)
from .seams import Seams

log = logging.getLogger("helios.worker")
CANCELS_KEPT = 4096  # cancels of requests not seen yet (or already finished) remembered at most


def status_code(exc: BaseException) -> str:
    """The status code name a failed request answers with: an engine error's own; a device out of
    memory: RESOURCE_EXHAUSTED; anything else is a bug: INTERNAL."""
    if isinstance(exc, EngineError):
        return exc.code
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "RESOURCE_EXHAUSTED"
    return "INTERNAL"


class Progress:
    """When the loop thread last moved (stamped by that thread; read by the I/O thread)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def stamp(self) -> None:
        self.last = time.monotonic()

    def stalled_s(self) -> float:
        return time.monotonic() - self.last


class LoopToken(CancelToken):
    """A request's cancel token whose every read also stamps the loop's progress: the engine reads
    it before each forward and between decoded frames, so a long chunk still shows the loop alive."""

    __slots__ = ("_progress",)

    def __init__(self, progress: Progress):
        super().__init__()
        self._progress = progress

    def is_set(self) -> bool:
        self._progress.stamp()
        return super().is_set()

    __call__ = is_set


# ---------------------------------------------------------------------------------------------------
# Transports: how messages reach the loop and leave it
# ---------------------------------------------------------------------------------------------------


class Transport(Protocol):
    """What the worker loop needs from its link to the front.

    `on_cancel`, when the transport has it, is set by the worker: the transport calls it with a
    Cancel's target from whatever thread receives it, as soon as it arrives."""

    def send(self, reply: Reply) -> None: ...

    def receive(self, timeout_ms: int) -> list[Request]:
        """Wait up to `timeout_ms` for a request, then return every request waiting (maybe none)."""
        ...

    def closed(self) -> bool:
        """True once the front is gone and the loop should end."""
        ...


class QueueTransport:
    """The loop driven in a thread of the process that owns it (a Ray Serve replica, the in-process
    client): requests come through a thread-safe queue, replies go to `deliver` (called on the worker
    thread), and nothing is encoded, so frames stay the bytes the engine made."""

    def __init__(self, deliver: Callable[[Reply], None]):
        self.deliver = deliver
        self.incoming: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self.stopped = threading.Event()
        self.on_cancel: Callable[[int], None] | None = None

    def put(self, request: Request) -> None:
        """Hand the loop a request or a cancel (any thread)."""
        if isinstance(request, Cancel) and self.on_cancel is not None:
            self.on_cancel(request.target)
        else:
            self.incoming.put(request)

    def close(self) -> None:
        self.stopped.set()

    def send(self, reply: Reply) -> None:
        self.deliver(reply)

    def receive(self, timeout_ms: int) -> list[Request]:
        try:
            requests = [self.incoming.get(timeout=timeout_ms / 1000)]
        except queue.Empty:
            return []
        while True:
            try:
                requests.append(self.incoming.get_nowait())
            except queue.Empty:
                return requests

    def closed(self) -> bool:
        return self.stopped.is_set()


class ZmqTransport(QueueTransport):
    """A worker process's DEALER socket, connected to the front's ROUTER (a CURVE client with
    `keys`: `protocol/channel.py`). An I/O thread owns the socket (ZeroMQ sockets are
    single-threaded): it decodes requests into the loop's queue, sets cancels at once, sends the
    replies the loop hands it over an inproc pipe, and a `Heartbeat` every `HEARTBEAT_S` carrying
    how long the loop has not moved (`progress`, set by the worker)."""

    def __init__(self, endpoint: str, identity: bytes, keys: WorkerKeys | None = None):
        super().__init__(self._forward)
        self.progress: Progress | None = None
        self.parent = os.getppid()
        self.context = zmq.Context()
        pipe = f"inproc://helios-replies-{uuid.uuid4().hex}"
        self._pipe_in = self.context.socket(zmq.PAIR)  # the I/O thread's end
        self._pipe_in.bind(pipe)
        self._pipe_out = self.context.socket(zmq.PAIR)  # the loop's end
        self._pipe_out.connect(pipe)
        self._dealer = self.context.socket(zmq.DEALER)
        self._dealer.setsockopt(zmq.IDENTITY, identity)
        self._dealer.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.apply(self._dealer)
        self._dealer.connect(endpoint)
        for s in (self._pipe_in, self._pipe_out):
            s.setsockopt(zmq.LINGER, 0)
        self._thread = threading.Thread(target=self._io, name="helios-worker-io", daemon=True)
        self._thread.start()

    def _forward(self, reply: Reply) -> None:
        self._pipe_out.send_multipart(encode(reply), copy=False)

    def _io(self) -> None:
        poller = zmq.Poller()
        poller.register(self._dealer, zmq.POLLIN)
        poller.register(self._pipe_in, zmq.POLLIN)
        next_beat = 0.0
        while not self.stopped.is_set():
            if time.monotonic() >= next_beat:
                stalled = self.progress.stalled_s() if self.progress is not None else 0.0
                try:  # never block on a heartbeat (the front may be gone)
                    self._dealer.send_multipart(encode(Heartbeat(stalled)), flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
                next_beat = time.monotonic() + HEARTBEAT_S
            ready = dict(poller.poll(100))
            if self._dealer in ready:
                while True:
                    try:
                        parts = self._dealer.recv_multipart(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        self.put(decode(parts))  # type: ignore[arg-type]
                    except ValueError as exc:
                        log.error("dropped a message from the front: %s", exc)
            if self._pipe_in in ready:
                while True:
                    try:
                        parts = self._pipe_in.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._dealer.send_multipart(parts, copy=False)

    def closed(self) -> bool:
        if os.getppid() != self.parent:  # the front died (we were re-parented): free the device and go
            log.error("the front process is gone; exiting")
            return True
        return super().closed()

    def close(self) -> None:
        super().close()
        self._thread.join(5)
        for s in (self._dealer, self._pipe_in, self._pipe_out):
            s.close()
        self.context.term()


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------


class Worker:
    """`seams`: test-only faults (`seams.py`), None in production."""

    def __init__(
        self,
        engine: WorldEngine,
        transport: Transport,
        min_free_bytes: int = 2 << 30,
        seams: Seams | None = None,
    ):
        self.engine = engine
        self.transport = transport
        self.min_free_bytes = min_free_bytes
        self.seams = seams
        self.inbox: collections.deque[Request] = collections.deque()
        # Set from the receiving thread: tokens of running requests, ids cancelled before they ran.
        self.tokens: dict[int, CancelToken] = {}
        self.cancelled: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.progress = Progress()
        if hasattr(transport, "on_cancel"):
            transport.on_cancel = self.cancel
        if hasattr(transport, "progress"):
            transport.progress = self.progress

    # --- messaging ----------------------------------------------------------------------------------

    def send(self, reply: Reply) -> None:
        self.transport.send(reply)

    def cancel(self, target: int) -> None:
        """Stop request `target`: at once when it runs, at its turn when it waits (any thread)."""
        self.cancelled[target] = None  # first, so a request starting now sees it (`_token`)
        while len(self.cancelled) > CANCELS_KEPT:
            self.cancelled.popitem(last=False)
        token = self.tokens.get(target)
        if token is not None:
            token.set()

    def _poll(self, timeout_ms: int) -> None:
        """Move every waiting request into the inbox (cancels that come this way are applied)."""
        for request in self.transport.receive(timeout_ms):
            if isinstance(request, Cancel):
                self.cancel(request.target)
            else:
                self.inbox.append(request)

    def _token(self, rid: int) -> CancelToken:
        """Request `rid`'s own token (a cancel stops that request only)."""
        token = LoopToken(self.progress)
        self.tokens[rid] = token
        if rid in self.cancelled:  # after registering: no cancel slips between
            token.set()
        return token

    def _finished(self, rid: int) -> None:
        self.tokens.pop(rid, None)
        self.cancelled.pop(rid, None)

    def frame_sender(self, rid: int, chunk_index: int, which: str) -> Callable[[int, torch.Tensor], None]:
        def on_frame(index: int, frame: torch.Tensor) -> None:
            if self.seams is not None:
                self.seams.frame_delay()
            if which == "none" or (which == "last" and index != LAST_FRAME):
                return
            h, w, _ = frame.shape
            self.send(Frame(rid, chunk_index, index, w, h, frame.numpy().tobytes()))

        return on_frame

    def reply(self, result: Result) -> None:
        self._finished(result.id)
        self.send(result)

    def fail(self, rid: int, exc: BaseException) -> None:
        code = status_code(exc)
        if code == "INTERNAL":
            log.exception("request %s failed", rid)
        self._finished(rid)
        self.send(Error(rid, code, str(exc)))

    # --- the loop -----------------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            self.progress.stamp()
            if self.transport.closed():
                return
            self._poll(100 if not self.inbox else 0)
            steps = []
            while self.inbox:
                request = self.inbox.popleft()
                if request.id in self.cancelled:  # its caller went away while it waited
                    self.fail(request.id, Cancelled("the request was cancelled before it started"))
                elif isinstance(request, Step):
                    steps.append(request)
                else:
                    self.handle(request)
            if steps:
                self.run_steps(steps)

    def handle(self, request: Request) -> None:
        rid = request.id
        try:
            if isinstance(request, Reset):
                self.reset(request)
            elif isinstance(request, Fork):
                self.admit(None)
                self.reply(Result(rid, session_id=self.engine.fork(request.session_id)))
            elif isinstance(request, Snapshot):
                self.reply(Result(rid, data=self.engine.snapshot(request.session_id)))
            elif isinstance(request, Restore):
                self.admit(None)
                sid = self.engine.restore(request.data)
                s = self.engine.session(sid)
                self.reply(Result(rid, s.chunk, session_id=sid, width=s.width, height=s.height))
            elif isinstance(request, Close):
                self.engine.close(request.session_id)
                self.reply(Result(rid))
            else:
                raise TypeError(f"the worker does not serve {type(request).__name__} requests")
        except Exception as exc:  # never let one request take the worker down
            self.fail(rid, exc)
        self.progress.stamp()

    def admit(self, session_id: str | None) -> None:
        """GPU-memory admission: a new session needs `min_free_bytes` free on the device."""
        device = self.engine.device
        if device.type != "cuda" or session_id in self.engine.sessions:
            return
        free, _ = torch.cuda.mem_get_info(device)
        if free < self.min_free_bytes:
            raise CapacityExceeded(
                f"GPU memory: {free / 2**30:.1f} GiB free on {device}, a new session needs "
                f"{self.min_free_bytes / 2**30:.1f} GiB"
            )

    def reset(self, r: Reset) -> None:
        self.admit(r.session_id)
        source = {}
        if r.source in ("image", "video"):
            pixels = np.frombuffer(r.pixels, dtype=np.uint8).reshape(r.shape)  # (T, H, W, 3)
            source = {"image": pixels[0]} if r.source == "image" else {"video": pixels}
        result = self.engine.reset(
            r.prompt,
            seed=r.seed,
            height=r.height or None,
            width=r.width or None,
            negative_prompt=r.negative_prompt or None,
            session_id=r.session_id,
            on_frame=self.frame_sender(r.id, 0, r.frames),
            cancel=self._token(r.id),
            **source,
        )
        self.reply(Result(r.id, result.chunk_index, result.timings))

    def run_steps(self, steps: list[Step]) -> None:
        """Step every pending session; one request per session per call (later ones wait a round).
        Each request is answered as soon as its chunk commits or it is cancelled."""
        batch, later, seen = [], [], set()
        for s in steps:
            (later if s.session_id in seen else batch).append(s)
            seen.add(s.session_id)
        self.inbox.extendleft(reversed(later))
        if self.seams is not None:
            for s in batch:
                self.seams.hang_if_asked(s.action)
        answered: set[int] = set()
        try:
            self._step_batch(batch, answered)
        except (EngineError, ValueError) as exc:
            rest = [s for s in batch if s.id not in answered]
            if len(rest) <= 1:
                for s in rest:
                    self.fail(s.id, exc)
                return
            for s in rest:  # one bad request must not fail the others: run them one by one
                try:
                    self._step_batch([s], answered)
                except Exception as single:
                    self.fail(s.id, single)
        except Exception as exc:
            for s in batch:
                if s.id not in answered:
                    self.fail(s.id, exc)

    def _step_batch(self, batch: list[Step], answered: set[int]) -> None:
        requests, callbacks = [], []
        for s in batch:
            requests.append((s.session_id, s.action))
            chunk = self.engine.session(s.session_id).chunk
            callbacks.append(self.frame_sender(s.id, chunk, s.frames))

        def on_result(i: int, outcome: ChunkResult | Cancelled) -> None:
            rid = batch[i].id
            answered.add(rid)
            if isinstance(outcome, Cancelled):
                self.fail(rid, outcome)
            else:
                self.reply(Result(rid, outcome.chunk_index, outcome.timings))

        self.engine.step_many(
            requests,
            on_frame=callbacks,
            cancel=[self._token(s.id) for s in batch],
            on_result=on_result,
        )
