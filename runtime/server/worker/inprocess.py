"""The engine worker in this process: the third `EngineClient`, beside the ZeroMQ and Ray pools.

`InProcessClient` runs the worker loop (`loop.Worker`) over a `QueueTransport` in a thread, so the
engine's requests, frames, cancels and errors are the protocol's, exactly as behind a socket — only
nothing is encoded. A Ray Serve replica (`replica.py`) answers through one; `LocalClient` wraps one
with its own event loop for synchronous callers: the SDK's local backend (`helios_sdk/backend.py`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ...chunk import FRAMES_PER_CHUNK
from ..protocol.client import EngineClient, WorkerError, WorkerHandle
from ..protocol.messages import Cancel, Close, Frame, Reply, Request, Reset, Result, Step
from .loop import QueueTransport, Worker

log = logging.getLogger("helios.worker")
T = TypeVar("T")


class InProcessClient(EngineClient):
    """One worker (index 0) whose loop runs in a thread of this process, started at once; replies
    go to the event loop that sent the latest request (one caller loop at a time). `engine`: a
    WorldEngine (or anything with its API); `info`: what GetServerInfo would report of it."""

    def __init__(self, engine: Any, info: dict[str, Any] | None = None, min_free_bytes: int = 2 << 30):
        handle = WorkerHandle(0, str(engine.device), b"in-process", capacity=engine.max_sessions)
        handle.info = dict(info or {})
        super().__init__([handle])
        self.engine = engine
        self.transport = QueueTransport(self._from_worker)
        self.worker = Worker(engine, self.transport, min_free_bytes=min_free_bytes)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name="helios-engine", daemon=True)
        self.thread.start()
        handle.ready.set()

    async def start(self) -> None:
        """Nothing to start: the loop runs from construction."""

    async def close(self) -> None:
        self.transport.close()
        await asyncio.to_thread(self.thread.join, 10)

    def _run(self) -> None:
        try:
            self.worker.run()
        except Exception:  # the worker is lost: its callers hear UNAVAILABLE
            log.exception("the engine loop failed")
            self.workers[0].ready.clear()
            if self.loop is not None and not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self._lose, self.workers[0], "the engine loop stopped")

    def _from_worker(self, reply: Reply) -> None:
        """Worker thread -> the event loop of the waiting request."""
        try:
            self.loop.call_soon_threadsafe(self._deliver, reply)  # type: ignore[union-attr]
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    async def _send(self, worker: WorkerHandle, request: Request) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport.put(request)

    async def _cancel(self, worker: WorkerHandle, rid: int) -> None:
        self.transport.put(Cancel(rid))


# ---------------------------------------------------------------------------------------------------
# For synchronous callers
# ---------------------------------------------------------------------------------------------------


@dataclass
class ChunkFrames:
    """One chunk as a synchronous caller gets it."""

    session_id: str
    chunk_index: int
    frames: np.ndarray  # (T, H, W, 3) uint8, T = the frames asked for (33 for "all")
    indices: tuple[int, ...]  # each frame's index in the session's video
    timings: dict[str, float]


class LocalClient:
    """An `InProcessClient` on a private event loop thread, with blocking calls. Errors are
    `WorkerError`s whose `code` is a grpc.StatusCode name, as a server's."""

    def __init__(self, engine: Any, info: dict[str, Any] | None = None):
        if info is None:
            from .main import describe_model

            info = {**describe_model(engine, 0.0), "device": str(engine.device)}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="helios-local", daemon=True)
        self._thread.start()
        self.client = InProcessClient(engine, info)

    @classmethod
    def load(cls, model: str, device: str | None = None, threads: int | None = None) -> LocalClient:
        """A new engine over `WorldModel.load(model, device=device)`; its snapshot key is
        $HELIOS_SNAPSHOT_KEY when set, else its own random one. The engine runs in this process, so
        this sets torch's CPU threads here: `threads`, else $HELIOS_THREADS, else (on the CPU) the
        cores available, at most 4 (`helios_runtime.threads`); on a GPU only when asked."""
        from ... import threads as _threads
        from ...engine.engine import WorldEngine
        from ...engine.snapshot_key import key_from_env
        from ...engine.world_model import WorldModel
        from ...model.checkpoint import resolve_device

        chosen = _threads.resolve(threads, gpu=resolve_device(device).type == "cuda")
        _threads.apply(chosen)
        log.info("local engine: %s on %s, %s", model, resolve_device(device), chosen.describe())
        return cls(WorldEngine(WorldModel.load(model, device=device), snapshot_key=key_from_env()))

    @property
    def info(self) -> dict[str, Any]:
        return self.client.workers[0].info

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    async def _chunk(self, request: Reset | Step) -> ChunkFrames:
        frames: list[np.ndarray] = []
        indices: list[int] = []
        result: Result | None = None
        async for reply in self.client.request(self.client.workers[0], request):
            if isinstance(reply, Frame):
                frames.append(np.frombuffer(reply.data, np.uint8).reshape(reply.height, reply.width, 3))
                indices.append(reply.chunk_index * FRAMES_PER_CHUNK + reply.index_in_chunk)
            else:
                result = reply
        assert result is not None
        stack = np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)
        return ChunkFrames(request.session_id, result.chunk_index, stack, tuple(indices), result.timings)

    def reset(
        self,
        session_id: str,
        prompt: str,
        *,
        image: Any = None,
        video: Any = None,
        seed: int = 0,
        width: int = 0,
        height: int = 0,
    ) -> ChunkFrames:
        """Start (or restart) a session; `image` (H, W, 3) or `video` (T, H, W, 3) uint8."""
        request = Reset(session_id, prompt, seed, width, height)
        if image is not None and video is not None:
            raise WorkerError("INVALID_ARGUMENT", "reset takes an image or a video, not both")
        for source, pixels, dims in (("image", image, 3), ("video", video, 4)):
            if pixels is not None:
                array = np.ascontiguousarray(pixels)
                if array.dtype != np.uint8 or array.ndim != dims or array.shape[-1] != 3:
                    raise WorkerError(
                        "INVALID_ARGUMENT",
                        f"{source} must be {'(H, W, 3)' if dims == 3 else '(T, H, W, 3)'} uint8 RGB, "
                        f"got {array.dtype} {array.shape}",
                    )
                request.source, request.shape = source, (1, *array.shape) if dims == 3 else array.shape
                request.pixels = array.tobytes()
        return self._run(self._chunk(request))

    def step_many(self, requests: Sequence[tuple[str, Any]]) -> list[ChunkFrames]:
        """Step the sessions together: the worker takes steps that wait at the same time in one
        `step_many` call (stepped one after another: docs/engine.md, "Batching and replay")."""

        async def steps() -> list[ChunkFrames]:
            return list(await asyncio.gather(*(self._chunk(Step(sid, action)) for sid, action in requests)))

        return self._run(steps())

    def close_session(self, session_id: str) -> None:
        self._run(self.client.call(self.client.workers[0], Close(session_id)))

    def close(self) -> None:
        self._run(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
