"""An engine worker inside a Ray Serve replica (the replica half of the Ray scale-out).

`EngineReplica` is what Serve runs in each replica: a `WorldModel` + `WorldEngine` and the same
engine loop as a worker process (`loop.Worker`), driven in a background thread over in-process
queues instead of ZeroMQ. Replies travel back as the Serve call's stream: one message per decoded
frame, then the result. The front's half, `RayWorkerPool`, and why there is one Serve deployment per
engine slot, are in `front/ray_pool.py`.

`ray` is imported only when this is used: the runtime works without it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ...engine.fastpath import FastPathChoice
from ..protocol.client import WorkerError
from ..protocol.messages import Error, Reply, Request

log = logging.getLogger("helios.worker")  # what runs in a replica logs as a worker does

RAY_HINT = "the Ray scale-out needs Ray Serve: pip install 'helios-world-sdk[ray]'"
STALE = "the engine replica was restarted and its sessions were lost"


def import_ray() -> tuple[Any, Any]:
    """`ray` and `ray.serve`, or an ImportError that says how to install them."""
    # Ray's C++ core puts a crash handler on SIGTERM in every driver (read when ray is imported);
    # it turns the front's own SIGTERM drain into an abort (exit 134) that cuts the disconnect short.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise ImportError(f"{RAY_HINT} ({exc})") from exc
    return ray, serve


@dataclass(frozen=True)
class ReplicaConfig:
    """What every engine replica is built from (pickled to the replica)."""

    model: str
    max_sessions: int
    warm_up: bool = True
    gpus: float = 0.0  # > 0: the replica runs on the GPU Ray gave it, else on the CPU
    min_free_gib: float = 2.0  # GPU memory a new session needs free (as the worker's --min-free-gib)
    fast: FastPathChoice = field(default_factory=FastPathChoice)  # the front's HELIOS_EAGER / _COMPILE
    # The front's snapshot key (all replicas share it; None: the replica's own) and frame-size
    # limits. The key travels inside the cluster with this config; repr never shows it.
    snapshot_key: bytes | None = field(default=None, repr=False)
    max_height: int | None = None  # None: the engine's default
    max_width: int | None = None
    seam_blend: int | None = None  # frames eased at a chunk boundary; None: the model's own


# ---------------------------------------------------------------------------------------------------
# In the replica
# ---------------------------------------------------------------------------------------------------


class EngineReplica:
    """One engine worker inside a Ray Serve replica (deployed as `serve.deployment(EngineReplica)`).

    The constructor loads the model and warms it up, so Serve reports the replica healthy only when
    it can take sessions. The engine loop runs in a thread behind an `InProcessClient`; the
    replica's event loop only moves messages, so heartbeats and new requests are answered while a
    chunk is being denoised."""

    def __init__(self, config: ReplicaConfig):
        from ...engine.engine import WorldEngine
        from ...engine.world_model import WorldModel
        from .inprocess import InProcessClient
        from .main import describe_model, warm_up

        device = "cuda" if config.gpus > 0 else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES to our GPU
        model = WorldModel.load(config.model, device=device, fast=config.fast)
        self.engine = WorldEngine(
            model,
            max_sessions=config.max_sessions,
            snapshot_key=config.snapshot_key,
            max_height=config.max_height,
            max_width=config.max_width,
            seam_blend=config.seam_blend,
        )
        warm = warm_up(self.engine) if config.warm_up else 0.0
        self.incarnation = uuid.uuid4().hex  # new for every replica Serve starts in this slot
        self.static = {
            **describe_model(self.engine, warm),
            "pid": os.getpid(),
            "device": str(model.device),
            "host": _node_address(),
            "replica": _replica_id(),
            "incarnation": self.incarnation,
            "capacity": config.max_sessions,
        }
        self.client = InProcessClient(self.engine, self.static, int(config.min_free_gib * 2**30))
        self.transport, self.thread = self.client.transport, self.client.thread
        log.info("engine replica ready: %s on %s (warm-up %.1f s)", model.name, model.device, warm)

    def info(self) -> dict[str, Any]:
        """The worker's ready message (model, device, host, pid), with its current load."""
        return {**self.static, "sessions": len(self.engine.sessions)}

    async def watch(self, period_s: float) -> AsyncIterator[dict[str, Any]]:
        """A heartbeat for the front's watcher: `info()` now and every `period_s` after. The call
        never ends on its own, so a replica that dies fails it at once."""
        while True:
            yield self.info()
            await asyncio.sleep(period_s)

    async def request(self, request: Request, incarnation: str | None = None) -> AsyncIterator[Reply]:
        """One protocol request: yields its frames, then its result or an `Error`. A caller that
        cancels the call cancels the work (between denoising steps). `incarnation`: the replica the
        front meant; another one (this slot's replica was replaced) refuses with UNAVAILABLE."""
        if incarnation is not None and incarnation != self.incarnation:
            yield Error(request.id, "UNAVAILABLE", STALE)
            return
        front_id = request.id  # the client numbers its own requests; replies carry the front's id
        try:
            async for reply in self.client.request(self.client.workers[0], request):
                reply.id = front_id
                yield reply
        except WorkerError as exc:
            yield Error(front_id, exc.code, exc.message)

    def check_health(self) -> None:
        """Serve's health probe: a replica whose engine loop died is replaced."""
        if not self.thread.is_alive():
            raise RuntimeError("the engine loop has stopped")

    def __del__(self) -> None:
        transport = getattr(self, "transport", None)
        if transport is not None:
            transport.close()


class EngineFleet:
    """The application's ingress. A Serve application needs one, but the gRPC front is the real
    entry point and calls each engine deployment directly; this one only names them."""

    def __init__(self, names: list[str], *engines: Any):
        self.names = names

    def engines(self) -> list[str]:
        return self.names


def _node_address() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # informational only
        return ""


def _replica_id() -> str:
    """Serve's id of this replica (as in its logs and `serve status`), when it can be had."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # informational only
        return ""
