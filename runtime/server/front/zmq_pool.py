"""Engine worker processes behind the front's ZeroMQ ROUTER socket.

`WorkerPool` starts one worker process per device (`worker/main.py`), reads every reply on the
ROUTER socket and hands it to the request waiting for it, notices a worker that dies and starts a
replacement. The request/reply loop, cancellation and worker loss are `protocol/client.py`'s
`EngineClient`; `ray_pool.RayWorkerPool` is the other pool, whose workers are Ray Serve replicas.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable

import zmq
import zmq.asyncio

from ...engine.snapshot_key import KEY_ENV, new_key
from ..protocol.client import EngineClient, WorkerHandle
from ..protocol.messages import Cancel, Ready, Request, decode, encode

log = logging.getLogger("helios.front")


class WorkerPool(EngineClient):
    def __init__(
        self,
        model: str,
        devices: list[str | None],
        max_sessions: int,
        warm_up: bool = True,
        on_lost: Callable[[WorkerHandle], None] | None = None,
        json_logs: bool = False,
        snapshot_key: bytes | None = None,
        max_size: tuple[int, int] | None = None,  # (height, width): the server's frame-size limits
    ):
        workers = [WorkerHandle(i, d, f"w{i}".encode(), capacity=max_sessions) for i, d in enumerate(devices)]
        super().__init__(workers, on_lost)
        self.model = model
        self.max_sessions = max_sessions
        self.warm_up = warm_up
        self.json_logs = json_logs
        # One key for every worker and restart, so each restores the others' snapshots.
        self.snapshot_key = snapshot_key or new_key()
        self.max_size = max_size
        self.context = zmq.asyncio.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.tasks: list[asyncio.Task] = []
        self.closing = False

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self.tasks.append(asyncio.create_task(self._read_loop()))
        for w in self.workers:
            await self._spawn(w)
            self.tasks.append(asyncio.create_task(self._watch(w)))

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
        if self.max_size is not None:
            cmd += ["--max-height", str(self.max_size[0]), "--max-width", str(self.max_size[1])]
        w.ready.clear()
        env = {**os.environ, KEY_ENV: self.snapshot_key.hex()}  # a secret: never on the command line
        w.process = await asyncio.create_subprocess_exec(*cmd, env=env)
        log.info("started worker %d (pid %d)", w.index, w.process.pid)

    async def _watch(self, w: WorkerHandle) -> None:
        """Restart a worker that exits; fail whatever it was doing."""
        while not self.closing:
            assert w.process is not None
            code = await w.process.wait()
            if self.closing:
                return
            log.error("worker %d (pid %d) exited with %s; restarting it", w.index, w.process.pid, code)
            self._lose(w, "the engine worker was lost")
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

    # --- messages -----------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            identity, *parts = await self.socket.recv_multipart()
            reply = decode(parts)
            if isinstance(reply, Ready):
                w = next(w for w in self.workers if w.identity == identity)
                w.info = reply.info
                w.ready.set()
                log.info("worker %d ready: %s", w.index, w.info)
                continue
            self._deliver(reply)

    async def _send(self, worker: WorkerHandle, request: Request) -> None:
        await self.socket.send_multipart([worker.identity, *encode(request)])

    async def _cancel(self, worker: WorkerHandle, rid: int) -> None:
        if not worker.ready.is_set():  # a restarting worker has forgotten the request anyway
            return
        try:
            await self.socket.send_multipart([worker.identity, *encode(Cancel(rid))])
        except zmq.ZMQError:
            pass
