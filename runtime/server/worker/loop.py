"""The engine worker's loop: it owns a WorldEngine and answers the front (process main: `main.py`).

The loop drains every request that has arrived, answers the cheap ones (fork, snapshot, close, ...)
at once, and runs all pending steps together through `WorldEngine.step_many`, which batches sessions
whose sizes and settings match. Decoded frames leave as soon as they exist (one ZeroMQ message each),
so the front can stream them while the chunk is still decoding. The worker never waits on the
network or on encoding: those happen in the front. Cancel messages are read between denoising
steps. Protocol: `../protocol/`.

The loop only sees a `Transport`: a worker process uses its ZeroMQ socket (`ZmqTransport`); a Ray
Serve replica (`replica.py`) runs the same loop in a thread over in-process queues (`QueueTransport`).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
import zmq

from ...chunk import LAST_FRAME
from ...engine.actions import Blend, Prompt, Transition
from ...engine.engine import WorldEngine
from ...engine.errors import (
    Cancelled,
    CapacityExceeded,
    EngineError,
    InvalidInput,
    SessionClosed,
    SessionNotFound,
)
from ...engine.snapshot import SnapshotError
from ..protocol.messages import pack, unpack

log = logging.getLogger("helios.worker")

CODES = {
    InvalidInput: "INVALID_ARGUMENT",
    SnapshotError: "INVALID_ARGUMENT",
    SessionNotFound: "NOT_FOUND",
    SessionClosed: "FAILED_PRECONDITION",
    CapacityExceeded: "RESOURCE_EXHAUSTED",
    Cancelled: "CANCELLED",
}


def error_code(exc: BaseException) -> str:
    for cls, code in CODES.items():
        if isinstance(exc, cls):
            return code
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "RESOURCE_EXHAUSTED"
    return "INTERNAL"


def to_action(spec: dict[str, Any] | None) -> Any:
    """The front's msgpack action -> an engine action (validated again by the engine)."""
    if not spec:
        return None
    kind = spec.get("type")
    if kind == "prompt":
        return Prompt(spec["text"])
    if kind == "blend":
        return Blend(tuple(spec["texts"]), tuple(spec["weights"]))
    if kind == "transition":
        return Transition(spec["text"], int(spec["chunks"]))
    if kind == "control":
        return spec["control"]
    raise InvalidInput(f"unknown action type {kind!r}")


# ---------------------------------------------------------------------------------------------------
# Transports: how messages reach the loop and leave it
# ---------------------------------------------------------------------------------------------------

Message = tuple[dict[str, Any], list[bytes]]  # (header, raw blobs), as in protocol.py


class Transport(Protocol):
    """What the worker loop needs from its link to the front; messages are already unpacked."""

    def send(self, header: dict[str, Any], blobs: list[bytes]) -> None: ...

    def receive(self, timeout_ms: int) -> list[Message]:
        """Wait up to `timeout_ms` for a message, then return every message waiting (maybe none)."""
        ...

    def closed(self) -> bool:
        """True once the front is gone and the loop should end."""
        ...


class ZmqTransport:
    """A worker process's DEALER socket, connected to the front's ROUTER (msgpack headers)."""

    def __init__(self, socket: zmq.Socket):
        self.socket = socket
        self.parent = os.getppid()

    def send(self, header: dict[str, Any], blobs: list[bytes]) -> None:
        self.socket.send_multipart(pack(header, *blobs), copy=False)

    def receive(self, timeout_ms: int) -> list[Message]:
        if not self.socket.poll(timeout_ms):
            return []
        messages = []
        while True:
            try:
                messages.append(unpack(self.socket.recv_multipart(flags=zmq.NOBLOCK)))
            except zmq.Again:
                return messages

    def closed(self) -> bool:
        if os.getppid() != self.parent:  # the front died (we were re-parented): free the device and go
            log.error("the front process is gone; exiting")
            return True
        return False


class QueueTransport:
    """The loop driven in a thread of the process that owns it (a Ray Serve replica): requests come
    through a thread-safe queue, replies go to `deliver` (called on the worker thread), and nothing
    is packed, so frames stay the bytes the engine made."""

    def __init__(self, deliver: Callable[[dict[str, Any], list[bytes]], None]):
        self.deliver = deliver
        self.incoming: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.stopped = threading.Event()

    def put(self, header: dict[str, Any], blobs: list[bytes]) -> None:
        """Hand the loop a request or a cancel (any thread)."""
        self.incoming.put((header, blobs))

    def close(self) -> None:
        self.stopped.set()

    def send(self, header: dict[str, Any], blobs: list[bytes]) -> None:
        self.deliver(header, blobs)

    def receive(self, timeout_ms: int) -> list[Message]:
        try:
            messages = [self.incoming.get(timeout=timeout_ms / 1000)]
        except queue.Empty:
            return []
        while True:
            try:
                messages.append(self.incoming.get_nowait())
            except queue.Empty:
                return messages

    def closed(self) -> bool:
        return self.stopped.is_set()


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------


class Worker:
    def __init__(self, engine: WorldEngine, transport: Transport | zmq.Socket, min_free_bytes: int = 2 << 30):
        self.engine = engine
        # A bare socket is the worker process's DEALER (what `main` passes).
        self.transport = ZmqTransport(transport) if isinstance(transport, zmq.Socket) else transport
        self.min_free_bytes = min_free_bytes
        self.inbox: collections.deque[Message] = collections.deque()
        self.cancelled: set[int] = set()

    # --- messaging ----------------------------------------------------------------------------------

    def send(self, header: dict[str, Any], *blobs: bytes) -> None:
        self.transport.send(header, list(blobs))

    def _poll(self, timeout_ms: int) -> None:
        """Move every waiting message into the inbox (cancels are recorded, not queued)."""
        for header, blobs in self.transport.receive(timeout_ms):
            if header.get("op") == "cancel":
                self.cancelled.add(int(header["target"]))
            else:
                self.inbox.append((header, blobs))

    def _cancel_check(self, ids: list[int]):
        def check() -> bool:
            self._poll(0)
            return any(i in self.cancelled for i in ids)

        return check

    def frame_sender(self, rid: int, chunk_index: int, which: str):
        def on_frame(index: int, frame: torch.Tensor) -> None:
            if which == "none" or (which == "last" and index != LAST_FRAME):
                return
            h, w, _ = frame.shape
            self.send(
                {
                    "kind": "frame",
                    "id": rid,
                    "chunk_index": chunk_index,
                    "index_in_chunk": index,
                    "width": w,
                    "height": h,
                },
                frame.numpy().tobytes(),
            )

        return on_frame

    def fail(self, rid: int, exc: BaseException) -> None:
        code = error_code(exc)
        if code == "INTERNAL":
            log.exception("request %s failed", rid)
        self.send({"kind": "error", "id": rid, "code": code, "message": str(exc)})

    # --- the loop -----------------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            if self.transport.closed():
                return
            self._poll(100 if not self.inbox else 0)
            steps = []
            while self.inbox:
                header, blobs = self.inbox.popleft()
                if header.get("id") in self.cancelled:  # its caller went away while it waited
                    self.fail(header["id"], Cancelled("the request was cancelled before it started"))
                elif header["op"] == "step":
                    steps.append(header)
                else:
                    self.handle(header, blobs)
            if steps:
                self.run_steps(steps)
            # Forget cancels of finished requests; keep those of requests still waiting in the inbox
            # (a cancel can arrive while another batch denoises, before its request's turn).
            self.cancelled &= {h.get("id") for h, _ in self.inbox}

    def handle(self, h: dict[str, Any], blobs: list[bytes]) -> None:
        rid = h["id"]
        try:
            op = h["op"]
            if op == "reset":
                self.reset(h, blobs)
            elif op == "fork":
                self.admit(None)
                self.send({"kind": "result", "id": rid, "session_id": self.engine.fork(h["session_id"])})
            elif op == "snapshot":
                self.send({"kind": "result", "id": rid}, self.engine.snapshot(h["session_id"]))
            elif op == "restore":
                self.admit(None)
                sid = self.engine.restore(blobs[0])
                s = self.engine.session(sid)
                self.send(
                    {
                        "kind": "result",
                        "id": rid,
                        "session_id": sid,
                        "chunk_index": s.chunk,
                        "width": s.width,
                        "height": s.height,
                    }
                )
            elif op == "close":
                self.engine.close(h["session_id"])
                self.send({"kind": "result", "id": rid})
            else:
                raise InvalidInput(f"unknown worker op {op!r}")
        except (EngineError, ValueError, torch.cuda.OutOfMemoryError) as exc:
            self.fail(rid, exc)
        except Exception as exc:  # never let one request take the worker down
            self.fail(rid, exc)

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

    def reset(self, h: dict[str, Any], blobs: list[bytes]) -> None:
        self.admit(h["session_id"])
        pixels = None
        if h.get("source") in ("image", "video"):
            pixels = np.frombuffer(blobs[0], dtype=np.uint8).reshape(h["shape"])
        kwargs = {"image": pixels[0]} if h.get("source") == "image" else {}
        if h.get("source") == "video":
            kwargs = {"video": pixels}
        rid = h["id"]
        result = self.engine.reset(
            h["prompt"],
            seed=int(h["seed"]),
            height=int(h["height"]),
            width=int(h["width"]),
            negative_prompt=h.get("negative_prompt") or None,
            session_id=h["session_id"],
            on_frame=self.frame_sender(rid, 0, h.get("frames", "all")),
            cancel=self._cancel_check([rid]),
            **kwargs,
        )
        self.send({"kind": "result", "id": rid, "chunk_index": result.chunk_index, "timings": result.timings})

    def run_steps(self, steps: list[dict[str, Any]]) -> None:
        """Step every pending session; one request per session per call (later ones wait a round)."""
        batch, later, seen = [], [], set()
        for h in steps:
            (later if h["session_id"] in seen else batch).append(h)
            seen.add(h["session_id"])
        for h in reversed(later):
            self.inbox.appendleft((h, []))
        try:
            self._step_batch(batch)
        except (EngineError, ValueError) as exc:
            if len(batch) == 1 or isinstance(exc, Cancelled):
                for h in batch:
                    self.fail(h["id"], exc)
                return
            for h in batch:  # one bad request must not fail the others: run them one by one
                try:
                    self._step_batch([h])
                except Exception as single:
                    self.fail(h["id"], single)
        except Exception as exc:
            for h in batch:
                self.fail(h["id"], exc)

    def _step_batch(self, batch: list[dict[str, Any]]) -> None:
        requests, callbacks = [], []
        for h in batch:
            requests.append((h["session_id"], to_action(h.get("action"))))
            chunk = self.engine.session(h["session_id"]).chunk
            callbacks.append(self.frame_sender(h["id"], chunk, h.get("frames", "all")))
        results = self.engine.step_many(
            requests, on_frame=callbacks, cancel=self._cancel_check([h["id"] for h in batch])
        )
        for h, r in zip(batch, results, strict=True):
            self.send({"kind": "result", "id": h["id"], "chunk_index": r.chunk_index, "timings": r.timings})
