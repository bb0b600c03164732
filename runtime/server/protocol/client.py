"""The one client of the engine protocol: the request/reply loop, cancellation and worker loss.

`EngineClient` is what the front's service uses, whatever carries the messages:

- `front/zmq_pool.WorkerPool`: worker processes behind a ZeroMQ ROUTER socket;
- `front/ray_pool.RayWorkerPool`: Ray Serve replicas on a cluster;
- `worker/inprocess.InProcessClient`: the worker loop in a thread of this process (what a Ray replica
  runs, and what the SDK's local backend wraps).

A subclass says only how a request leaves (`_send`), how a cancel leaves (`_cancel`) and, when it
matters, what to release after a request (`_done`); it hands each reply to `_deliver` and reports a
worker that died with `_lose`. Everything else — request ids, routing replies back to the caller,
turning an `Error` into `WorkerError`, cancelling the work of a caller that went away, failing the
requests of a lost worker with UNAVAILABLE, bounding the cheap calls in time, closing a session a
Fork or Restore made for a caller that had gone (cancelled, or out of time) — is written here once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from helios_sdk.actions import ActionSpace

from .messages import Close, Error, Fork, Frame, Reply, Request, Restore, Result

log = logging.getLogger("helios.front")


class WorkerError(Exception):
    """A worker answered with an error or was lost (UNAVAILABLE); `code` is a grpc.StatusCode name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class WorkerHandle:
    index: int
    device: str | None
    identity: bytes  # the worker's name: its ZeroMQ identity, its Serve deployment, ...
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    info: dict[str, Any] = field(default_factory=dict)
    generation: int = 0  # bumped at every restart: sessions remember the generation they live in
    load: int = 0  # sessions placed on it
    capacity: int = 0  # sessions its engine can hold
    # `info["actions"]` parsed, once per ready message (`actions`): the front checks every action
    # a client sends against it.
    _actions: tuple[dict[str, Any] | None, ActionSpace | None] = field(
        default=(None, None), repr=False, compare=False
    )

    @property
    def actions(self) -> ActionSpace | None:
        """The structured actions its engine's model understands, as its ready message said (None:
        it did not say; the engine checks alone)."""
        if self._actions[0] is not self.info:
            data = self.info.get("actions")
            self._actions = (self.info, ActionSpace.from_dict(data) if data else None)
        return self._actions[1]


class EngineClient:
    """Requests to a set of engine workers; see the module docstring for the subclass contract.

    `request` yields a request's `Frame`s, then its `Result`, and raises `WorkerError`; leaving it
    early cancels the work. `on_lost(worker)` runs when a worker dies, after its `generation` was
    bumped and its pending requests failed with UNAVAILABLE."""

    workers: list[WorkerHandle]
    on_lost: Callable[[WorkerHandle], None] | None = None
    # A cheap call (fork, snapshot, restore, close) waits at most this long; it may queue behind a
    # round of steps. Steps and resets have no such bound: the pool's watchdog bounds them (a worker
    # that stops making progress is restarted and its requests fail).
    call_timeout_s: float = 60.0

    def __init__(self, workers: list[WorkerHandle], on_lost: Callable[[WorkerHandle], None] | None = None):
        self.workers = workers
        self.on_lost = on_lost
        self.pending: dict[int, tuple[WorkerHandle, asyncio.Queue[Reply]]] = {}
        self.ids = itertools.count(1)
        # Fork / Restore requests whose caller left before the result: should the worker have made
        # the session anyway (it committed before the cancel reached it), it is closed on arrival,
        # so no session lives on a worker unseen by the front, holding memory and a slot.
        self.abandoned: dict[int, WorkerHandle] = {}
        self.background: set[asyncio.Task] = set()

    # --- what a transport provides ------------------------------------------------------------------

    async def start(self) -> None:
        raise NotImplementedError

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in self.workers)), timeout)

    async def close(self) -> None:
        raise NotImplementedError

    def _check_available(self, worker: WorkerHandle) -> None:
        """Raise WorkerError(UNAVAILABLE) when `worker` cannot take a request now."""
        if not worker.ready.is_set():
            raise WorkerError("UNAVAILABLE", "the engine worker is starting; retry shortly")

    async def _send(self, worker: WorkerHandle, request: Request) -> None:
        """Send `request` (its `id` is set) to `worker`; its replies come back through `_deliver`."""
        raise NotImplementedError

    async def _cancel(self, worker: WorkerHandle, rid: int) -> None:
        """Tell `worker` to stop request `rid`, whose caller went away."""
        raise NotImplementedError

    def _done(self, worker: WorkerHandle, rid: int) -> None:
        """Release what `_send` holds for request `rid` (it ended either way)."""

    # --- the request/reply loop ---------------------------------------------------------------------

    async def request(
        self, worker: WorkerHandle, request: Request, cancel_on_exit: bool = True
    ) -> AsyncIterator[Frame | Result]:
        """Send a request; yield its frames, then its result. Raises WorkerError. A caller that
        leaves before the result cancels the work, unless `cancel_on_exit` is False."""
        self._check_available(worker)
        request.id = rid = next(self.ids)
        queue: asyncio.Queue[Reply] = asyncio.Queue()
        self.pending[rid] = (worker, queue)
        finished = False
        try:
            await self._send(worker, request)
            while True:
                reply = await queue.get()
                if isinstance(reply, Error):
                    finished = True
                    raise WorkerError(reply.code, reply.message)
                if isinstance(reply, Result):
                    finished = True
                    yield reply
                    return
                yield reply  # type: ignore[misc]
        finally:
            self.pending.pop(rid, None)
            if not finished and isinstance(request, (Fork, Restore)):
                self.abandoned[rid] = worker
            try:
                if not finished and cancel_on_exit:  # the caller went away: stop the work nobody waits for
                    await self._cancel(worker, rid)
            finally:
                self._done(worker, rid)

    async def call(self, worker: WorkerHandle, request: Request, timeout: float | None = None) -> Result:
        """A request whose only reply is its result, within `timeout` seconds (default
        `call_timeout_s`; then WorkerError DEADLINE_EXCEEDED). A timed-out request is cancelled, but
        a Close is left to run when the worker comes to it (closing twice is harmless, and it frees
        the session's memory)."""
        timeout = self.call_timeout_s if timeout is None else timeout

        async def result() -> Result:
            async for reply in self.request(worker, request, cancel_on_exit=not isinstance(request, Close)):
                if isinstance(reply, Result):
                    return reply
            raise WorkerError("INTERNAL", "the worker sent no result")

        try:
            return await asyncio.wait_for(result(), timeout)
        except asyncio.TimeoutError:
            raise WorkerError(
                "DEADLINE_EXCEEDED",
                f"the engine worker did not answer a {request.kind} request within {timeout:g} s",
            ) from None

    async def cancel(self, worker: WorkerHandle, rid: int) -> None:
        """Ask `worker` to stop request `rid` while its caller keeps waiting for the outcome: the
        request ends with a CANCELLED error, or with its result when it had finished already."""
        if rid in self.pending:
            await self._cancel(worker, rid)

    def _deliver(self, reply: Reply, worker: WorkerHandle | None = None) -> bool:
        """A reply from a worker -> the caller waiting for its request (none: it went away). With
        `worker` (the sender), a reply to a request another worker holds is refused (False)."""
        entry = self.pending.get(reply.id)
        if entry is None:
            owner = self.abandoned.pop(reply.id, None)
            if owner is not None and (worker is None or worker is owner) and isinstance(reply, Result):
                self._close_orphan(owner, reply.session_id)
            return True
        if worker is not None and entry[0] is not worker:
            log.warning(
                "dropped a %s for request %d from worker %d, which does not hold that request",
                reply.kind,
                reply.id,
                worker.index,
            )
            return False
        entry[1].put_nowait(reply)
        return True

    def _close_orphan(self, worker: WorkerHandle, session_id: str) -> None:
        """Close `session_id`, made on `worker` by a Fork / Restore whose caller had gone."""
        if not session_id:
            return

        async def close() -> None:
            log.info("closing session %s, made for a caller that had gone", session_id)
            try:
                await self.call(worker, Close(session_id))
            except WorkerError as exc:
                log.warning("closing orphaned session %s failed: %s", session_id, exc.message)

        task = asyncio.ensure_future(close())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def _lose(self, worker: WorkerHandle, message: str) -> None:
        """`worker` died: bump its generation, fail its pending requests (UNAVAILABLE), tell `on_lost`."""
        worker.generation += 1
        worker.load = 0
        for rid in [rid for rid, owner in self.abandoned.items() if owner is worker]:
            del self.abandoned[rid]  # its sessions died with it
        for rid, (owner, queue) in list(self.pending.items()):
            if owner is worker:
                queue.put_nowait(Error(rid, "UNAVAILABLE", message))
                self.pending.pop(rid, None)
        if self.on_lost is not None:
            self.on_lost(worker)

    # --- placement ----------------------------------------------------------------------------------

    def least_loaded(self) -> WorkerHandle:
        ready = [w for w in self.workers if w.ready.is_set()] or self.workers
        return min(ready, key=lambda w: w.load)
