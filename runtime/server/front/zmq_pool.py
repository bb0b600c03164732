"""The front's side of the engine workers: processes, the ZeroMQ ROUTER socket, request routing.

`WorkerPool` starts one worker process per device, routes replies back to the coroutine that made
the request (by request id), notices a worker that dies (its pending requests fail with
UNAVAILABLE and `on_lost` hears which worker went), and starts a replacement.

`EnginePool` is what the service relies on; `ray_pool.RayWorkerPool` is the other pool, whose
workers are Ray Serve replicas spread over a cluster.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from ..protocol.messages import pack, unpack

log = logging.getLogger("helios.front")


class WorkerError(Exception):
    """A worker answered with an error (code is a grpc.StatusCode name) or was lost (UNAVAILABLE)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class WorkerHandle:
    index: int
    device: str | None
    identity: bytes
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    info: dict[str, Any] = field(default_factory=dict)
    generation: int = 0  # bumped at every restart: sessions remember the generation they live in
    load: int = 0  # sessions placed on it
    capacity: int = 0  # sessions its engine can hold


class EnginePool:
    """The interface the service uses: `workers`, placement, requests, and `on_lost`.

    `request` yields a request's frame messages, then its result, and raises WorkerError; leaving it
    early cancels the work. `on_lost(worker)` runs when a worker dies, after its `generation` was
    bumped and its pending requests failed with UNAVAILABLE."""

    workers: list[WorkerHandle]
    on_lost: Callable[[WorkerHandle], None] | None

    async def start(self) -> None:
        raise NotImplementedError

    async def wait_ready(self, timeout: float) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def request(
        self, worker: WorkerHandle, header: dict[str, Any], *blobs: bytes
    ) -> AsyncIterator[tuple[dict[str, Any], list[bytes]]]:
        raise NotImplementedError

    def least_loaded(self) -> WorkerHandle:
        ready = [w for w in self.workers if w.ready.is_set()] or self.workers
        return min(ready, key=lambda w: w.load)

    async def call(
        self, worker: WorkerHandle, header: dict[str, Any], *blobs: bytes
    ) -> tuple[dict[str, Any], list[bytes]]:
        """A request whose only reply is its result."""
        async for reply, data in self.request(worker, header, *blobs):
            if reply.get("kind") == "result":
                return reply, data
        raise WorkerError("INTERNAL", "the worker sent no result")


class WorkerPool(EnginePool):
    def __init__(
        self,
        model: str,
        devices: list[str | None],
        max_sessions: int,
        warm_up: bool = True,
        on_lost: Callable[[WorkerHandle], None] | None = None,
        json_logs: bool = False,
    ):
        self.model = model
        self.max_sessions = max_sessions
        self.warm_up = warm_up
        self.json_logs = json_logs
        self.on_lost = on_lost
        self.context = zmq.asyncio.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.workers = [
            WorkerHandle(i, d, f"w{i}".encode(), capacity=max_sessions) for i, d in enumerate(devices)
        ]
        self.pending: dict[int, tuple[WorkerHandle, asyncio.Queue]] = {}
        self.ids = itertools.count(1)
        self.tasks: list[asyncio.Task] = []
        self.closing = False

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self.tasks.append(asyncio.create_task(self._read_loop()))
        for w in self.workers:
            await self._spawn(w)
            self.tasks.append(asyncio.create_task(self._watch(w)))

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in self.workers)), timeout)

    async def _spawn(self, w: WorkerHandle) -> None:
        cmd = [
            sys.executable,
            "-m",
            "helios_runtime.server.worker.main",
            "--endpoint",
            self.endpoint,
            "--model",
            self.model,
            "--max-sessions",
            str(self.max_sessions),
            "--identity",
            w.identity.decode(),
        ]
        if w.device:
            cmd += ["--device", w.device]
        if not self.warm_up:
            cmd.append("--no-warm-up")
        if self.json_logs:
            cmd.append("--json-logs")
        w.ready.clear()
        w.process = await asyncio.create_subprocess_exec(*cmd, env=os.environ.copy())
        log.info("started worker %d (pid %d)", w.index, w.process.pid)

    async def _watch(self, w: WorkerHandle) -> None:
        """Restart a worker that exits; fail whatever it was doing."""
        while not self.closing:
            assert w.process is not None
            code = await w.process.wait()
            if self.closing:
                return
            log.error("worker %d (pid %d) exited with %s; restarting it", w.index, w.process.pid, code)
            w.generation += 1
            w.load = 0
            for rid, (owner, queue) in list(self.pending.items()):
                if owner is w:
                    queue.put_nowait(
                        (
                            {"kind": "error", "code": "UNAVAILABLE", "message": "the engine worker was lost"},
                            [],
                        )
                    )
                    self.pending.pop(rid, None)
            if self.on_lost is not None:
                self.on_lost(w)
            await self._spawn(w)

    async def close(self) -> None:
        self.closing = True
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                w.process.terminate()
        for w in self.workers:
            if w.process is not None:
                try:
                    await asyncio.wait_for(w.process.wait(), 10)
                except TimeoutError:
                    w.process.kill()
        for t in self.tasks:
            t.cancel()
        self.socket.close()
        self.context.term()

    # --- requests -----------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            parts = await self.socket.recv_multipart()
            identity, header_blobs = parts[0], parts[1:]
            header, blobs = unpack(header_blobs)
            if header.get("kind") == "ready":
                w = next(w for w in self.workers if w.identity == identity)
                w.info = header["model"]
                w.ready.set()
                log.info("worker %d ready: %s", w.index, w.info)
                continue
            entry = self.pending.get(header.get("id"))
            if entry is not None:
                entry[1].put_nowait((header, blobs))

    async def request(
        self, worker: WorkerHandle, header: dict[str, Any], *blobs: bytes
    ) -> AsyncIterator[tuple[dict[str, Any], list[bytes]]]:
        """Send a request; yield its frame messages, then its result. Raises WorkerError."""
        if not worker.ready.is_set():
            raise WorkerError("UNAVAILABLE", "the engine worker is starting; retry shortly")
        rid = next(self.ids)
        queue: asyncio.Queue = asyncio.Queue()
        self.pending[rid] = (worker, queue)
        finished = False
        try:
            await self.socket.send_multipart([worker.identity, *pack({**header, "id": rid}, *blobs)])
            while True:
                reply, data = await queue.get()
                kind = reply.get("kind")
                if kind == "error":
                    finished = True
                    raise WorkerError(reply["code"], reply["message"])
                if kind == "result":
                    finished = True
                    yield reply, data
                    return
                yield reply, data
        finally:
            self.pending.pop(rid, None)
            if not finished and worker.ready.is_set():
                # The caller went away mid-chunk: stop the work nobody waits for.
                try:
                    await self.socket.send_multipart(
                        [worker.identity, *pack({"op": "cancel", "target": rid, "id": 0})]
                    )
                except zmq.ZMQError:
                    pass
