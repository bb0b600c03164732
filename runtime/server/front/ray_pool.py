"""Scale-out on a Ray cluster: each engine worker is a Ray Serve replica, usually on one GPU.

    helios serve --ray auto --replicas 8        # on a node of a running cluster (`ray start --head`)

`RayWorkerPool` is the front's pool, an `EngineClient` like the local `WorkerPool` (the service,
its session affinity and its least-loaded placement are unchanged); `worker/replica.py`'s
`EngineReplica` is what runs in each replica: a `WorldModel` + `WorldEngine` and the same engine
loop as a worker process, behind an in-process client instead of ZeroMQ. A request is one streaming
Serve call carrying the protocol's objects: one `Frame` per decoded frame, then the `Result`.

Why one Serve deployment per engine slot (`engine-0` ... `engine-{N-1}`, `num_replicas=1` each, in
one application) rather than one deployment with N replicas: a session's state (its multi-term
memory, prompt embeddings, rng) lives in one replica's GPU memory, so every call for it must reach
that replica. Serve's router picks a replica per request by load (power of two choices); model
multiplexing only prefers replicas that already hold an id and falls back to any replica. A handle
per deployment is a handle to exactly one replica, and the front keeps the session -> slot map it
already keeps for worker processes. Serve still does what it is good at: placing each replica on a
node with a free GPU, restarting a replica whose process died, and carrying the streams. (A Serve
application must have an ingress deployment; ours, `fleet`, reserves no CPU and only names the
engines: the gRPC front is the real entry point, and no Serve HTTP proxy runs.)

Failure: a watcher per slot holds a streaming `watch` call open on the replica (a heartbeat with
its load every second). When the replica's process dies, that call and every call in flight fail
at once with `RayActorError`; the slot is then marked lost (its `generation` goes up, its sessions
get UNAVAILABLE, `on_lost` runs) while the other slots carry on. Serve starts a new replica; its
first heartbeat, which carries a new incarnation id, makes the slot ready again. Every request
names the incarnation it was meant for, so a call that reaches a replacement replica (the old one
died before anyone noticed) is refused as lost instead of answering NOT_FOUND for a session that
died with its replica.

`ray` is imported only when this pool is used: the runtime works without it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from typing import Any

from ...engine.fastpath import FastPathChoice
from ...engine.snapshot_key import new_key
from ..protocol.client import EngineClient, WorkerError, WorkerHandle
from ..protocol.messages import Error, Request
from ..worker.replica import STALE, EngineFleet, EngineReplica, ReplicaConfig, import_ray

log = logging.getLogger("helios.front")

HEARTBEAT_S = 1.0  # how often a replica reports its load on the watch stream
STALL_S = 30.0  # no heartbeat for this long: the replica takes no new sessions until it answers
# Serve's own liveness probe of a replica (default 10 s): a shorter period restarts a dead replica
# sooner; the probe is a no-op call, cheap next to a chunk.
HEALTH_CHECK_PERIOD_S = 2.0


# ---------------------------------------------------------------------------------------------------
# In the front
# ---------------------------------------------------------------------------------------------------


class RayWorkerPool(EngineClient):
    """Engine workers as Ray Serve replicas: the same interface and errors as `WorkerPool`."""

    def __init__(
        self,
        model: str,
        replicas: int,
        max_sessions: int,
        warm_up: bool = True,
        on_lost: Callable[[WorkerHandle], None] | None = None,
        json_logs: bool = False,
        address: str = "auto",
        gpus: float | None = None,
        cpus: float = 1.0,
        app: str = "helios",
        snapshot_key: bytes | None = None,
        max_size: tuple[int, int] | None = None,  # (height, width): the server's frame-size limits
        seam_blend: int | None = None,  # frames eased at a chunk boundary (None: the model's own)
    ):
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {replicas}")
        if gpus is not None and not 0 <= gpus <= 1:
            raise ValueError(
                f"a replica runs one engine on one GPU (or a fraction of one); got {gpus} GPUs per replica"
            )
        self.model = model
        self.max_sessions = max_sessions
        self.warm_up = warm_up
        self.json_logs = json_logs
        self.address = address
        self.gpus = gpus
        self.cpus = cpus
        self.app = app
        self.seam_blend = seam_blend
        # One key for every replica (and every one Serve restarts), so each restores the others'
        # snapshots; it reaches them inside their pickled config, never a command line.
        self.snapshot_key = snapshot_key or new_key()
        self.max_size = max_size or (None, None)
        self.names = [f"engine-{i}" for i in range(replicas)]
        slots = [WorkerHandle(i, None, n.encode(), capacity=max_sessions) for i, n in enumerate(self.names)]
        super().__init__(slots, on_lost)
        self.handles: list[Any] = []  # one Serve handle per slot, streaming (every call here streams)
        self.incarnations: list[str | None] = [None] * replicas
        self.calls: dict[int, tuple[Any, asyncio.Task]] = {}  # request id -> its Serve stream, its pump
        self.tasks: list[asyncio.Task] = []
        self.deployed: asyncio.Future[None] | None = None
        self.owns_ray = False  # we called ray.init: disconnect (and stop a local cluster) on close
        self.ray_thread: concurrent.futures.ThreadPoolExecutor | None = None  # ray.init / shutdown
        self.closing = False

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the cluster now, deploy in the background (loading a model on every replica takes
        a while). Joining comes before the front's gRPC server starts: a local cluster started
        beside a running gRPC server was seen to leave its agent processes behind for a minute."""
        import_ray()
        self.ray_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="helios-ray")
        await asyncio.get_running_loop().run_in_executor(self.ray_thread, self._connect)
        self.deployed = asyncio.ensure_future(self._deploy_and_watch())

    async def _deploy_and_watch(self) -> None:
        self.handles = await asyncio.to_thread(self._deploy)
        self.tasks += [asyncio.create_task(self._watch(w)) for w in self.workers]

    def _connect(self) -> None:
        """Join the cluster (or start a local one), on `ray_thread`. Off the main thread on purpose:
        Ray then installs no SIGTERM handler of its own and the front's drain keeps working. The
        same thread disconnects: a local cluster's agent processes linger for a minute when the
        thread that started them has gone."""
        ray, _ = import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address)
            self.owns_ray = True

    def _deploy(self) -> list[Any]:
        ray, serve = import_ray()
        total = ray.cluster_resources()
        gpus = self.gpus
        if gpus is None:
            gpus = 1.0 if total.get("GPU", 0) >= 1 else 0.0
        for kind, each in (("GPU", gpus), ("CPU", self.cpus)):
            if len(self.names) * each > total.get(kind, 0):
                # An autoscaling cluster may still grow; otherwise wait_ready times out saying so.
                log.warning(
                    "%d replicas need %g %s in all; the cluster has %g now",
                    len(self.names),
                    len(self.names) * each,
                    kind,
                    total.get(kind, 0),
                )
        log.info(
            "deploying %d engine replicas of %s on Ray (%s GPU, %s CPU each) as Serve application %r",
            len(self.names),
            self.model,
            gpus,
            self.cpus,
            self.app,
        )
        serve.start(proxy_location="Disabled")  # no HTTP proxy: the gRPC front is the only way in
        # Replicas do not see our environment: its fast-path switches travel in their config.
        fast = FastPathChoice.from_env()
        config = ReplicaConfig(
            self.model,
            self.max_sessions,
            self.warm_up,
            gpus,
            fast=fast,
            snapshot_key=self.snapshot_key,
            max_height=self.max_size[0],
            max_width=self.max_size[1],
            seam_blend=self.seam_blend,
        )
        engines = [
            serve.deployment(EngineReplica)
            .options(
                name=name,
                num_replicas=1,
                ray_actor_options={"num_cpus": self.cpus, "num_gpus": gpus},
                # Every open stream and step is an ongoing request; the front does its own admission.
                max_ongoing_requests=4 * self.max_sessions + 16,
                health_check_period_s=HEALTH_CHECK_PERIOD_S,
                graceful_shutdown_timeout_s=5,
            )
            .bind(config)
            for name in self.names
        ]
        fleet = (
            serve.deployment(EngineFleet)
            .options(name="fleet", num_replicas=1, ray_actor_options={"num_cpus": 0})
            .bind(self.names, *engines)
        )
        logging_config = {"encoding": "JSON"} if self.json_logs else None
        try:
            serve.run(fleet, name=self.app, route_prefix=None, logging_config=logging_config)
        except RuntimeError as exc:  # Serve names the deployments; the replicas' errors say why
            raise RuntimeError(f"{exc} {self._why_failed(serve)}".strip()) from exc
        return [
            serve.get_deployment_handle(name, app_name=self.app).options(stream=True) for name in self.names
        ]

    def _why_failed(self, serve: Any) -> str:
        """The last line of each failed deployment's message: the replica constructor's error."""
        try:
            deployments = serve.status().applications[self.app].deployments
        except Exception:  # the status is a courtesy; the error stands without it
            return ""
        lines = [
            f"{name}: {d.message.strip().splitlines()[-1]}"
            for name, d in deployments.items()
            if d.message.strip() and "FAILED" in str(d.status)
        ]
        return "; ".join(lines)

    async def wait_ready(self, timeout: float) -> None:
        assert self.deployed is not None, "start() first"
        try:
            await asyncio.wait_for(self._all_ready(), timeout)
        except TimeoutError:
            waiting = [self.names[w.index] for w in self.workers if not w.ready.is_set()]
            raise TimeoutError(
                f"Ray Serve replicas {waiting} of application {self.app!r} were not ready after "
                f"{timeout:.0f} s; `serve status` says why (for example: no node with a free GPU)"
            ) from None

    async def _all_ready(self) -> None:
        assert self.deployed is not None
        await asyncio.shield(self.deployed)  # raises the deployment's error, if any
        await asyncio.gather(*(w.ready.wait() for w in self.workers))

    async def close(self) -> None:
        self.closing = True
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.deployed is not None and not self.deployed.done():
            self.deployed.cancel()
        ray, serve = import_ray()
        if ray.is_initialized():

            def delete() -> None:
                try:
                    serve.delete(self.app)  # frees the replicas' GPUs for the next front
                    if self.owns_ray and self.address == "local":
                        serve.shutdown()
                except Exception as exc:
                    log.warning("deleting Serve application %r failed: %s", self.app, exc)

            await asyncio.to_thread(delete)
            if self.owns_ray:
                await asyncio.get_running_loop().run_in_executor(self.ray_thread, ray.shutdown)
        if self.ray_thread is not None:
            self.ray_thread.shutdown(wait=False)

    # --- liveness -----------------------------------------------------------------------------------

    async def _watch(self, w: WorkerHandle) -> None:
        """Hold a heartbeat stream open on the slot's replica; a dead replica fails it at once."""
        ray, _ = import_ray()
        while not self.closing:
            generation = w.generation
            stream = self.handles[w.index].watch.remote(HEARTBEAT_S)
            beat: asyncio.Future | None = None
            try:
                while True:
                    beat = asyncio.ensure_future(stream.__anext__())
                    # The first heartbeat waits for the replica to load its model; after that a
                    # silence means a replica too busy (or stuck) to answer: no new sessions there.
                    done, _ = await asyncio.wait({beat}, timeout=STALL_S if w.ready.is_set() else None)
                    if not done:
                        log.warning(
                            "engine replica %s: no heartbeat for %.0f s", self.names[w.index], STALL_S
                        )
                        w.ready.clear()
                        await beat
                    self._beat(w, beat.result())
            except asyncio.CancelledError:
                if beat is not None:
                    beat.add_done_callback(_quiet)  # it ends with Serve's RequestCancelledError
                    beat.cancel()
                stream.cancel()
                raise
            except ray.exceptions.RayActorError as exc:
                self._lost(w, generation, f"its process died ({type(exc).__name__})")
            except Exception as exc:  # a transient Serve error: try again shortly
                if not self.closing:
                    log.warning("engine replica %s: heartbeat failed: %r", self.names[w.index], exc)
                    w.ready.clear()
            finally:
                stream.cancel()
            await asyncio.sleep(0.2)  # the next watch call waits in Serve's queue for a new replica

    def _beat(self, w: WorkerHandle, info: dict[str, Any]) -> None:
        known = self.incarnations[w.index]
        if known is not None and info["incarnation"] != known:
            # Replaced before any call noticed that the old replica died.
            self._lost(w, w.generation, "it was replaced")
        self.incarnations[w.index] = info["incarnation"]
        w.info = info
        w.device = info.get("device")
        if not w.ready.is_set():
            log.info(
                "engine replica %s ready: pid %s, %s on %s",
                self.names[w.index],
                info.get("pid"),
                info.get("device"),
                info.get("host"),
            )
            w.ready.set()

    def _lost(self, w: WorkerHandle, generation: int, why: str) -> None:
        """Mark the slot's replica lost (once per generation): fail its calls, tell the service."""
        if w.generation != generation or self.closing:
            return
        log.error("engine replica %s was lost: %s; Serve starts a new one", self.names[w.index], why)
        w.ready.clear()
        self.incarnations[w.index] = None
        self._lose(w, _lost_message(self.names[w.index]))

    # --- requests -----------------------------------------------------------------------------------

    def _check_available(self, worker: WorkerHandle) -> None:
        if self.incarnations[worker.index] is None:  # not started yet, or lost and not replaced yet
            raise WorkerError("UNAVAILABLE", "the engine replica is starting; retry shortly")

    async def _send(self, worker: WorkerHandle, request: Request) -> None:
        """One streaming Serve call per request, named for the replica incarnation it is meant for."""
        incarnation = self.incarnations[worker.index]
        stream = self.handles[worker.index].request.remote(request, incarnation)
        pump = asyncio.create_task(self._pump(stream, worker, worker.generation, request.id))
        self.calls[request.id] = (stream, pump)

    async def _cancel(self, worker: WorkerHandle, rid: int) -> None:
        call = self.calls.get(rid)
        if call is not None:  # cancelling the call cancels the work in the replica
            call[0].cancel()

    def _done(self, worker: WorkerHandle, rid: int) -> None:
        call = self.calls.pop(rid, None)
        if call is not None:
            call[1].cancel()

    async def _pump(self, stream: Any, worker: WorkerHandle, generation: int, rid: int) -> None:
        """Move the Serve stream's replies to the request; turn Ray's errors into protocol errors."""
        ray, serve = import_ray()
        lost = _lost_message(self.names[worker.index])
        try:
            async for reply in stream:
                if isinstance(reply, Error) and reply.message == STALE:  # reached a replacement
                    self._lost(worker, generation, "it was replaced")
                    reply = Error(rid, "UNAVAILABLE", lost)
                self._deliver(reply)
        except asyncio.CancelledError:
            raise
        except ray.exceptions.RayActorError as exc:
            self._lost(worker, generation, f"its process died ({type(exc).__name__})")
            self._deliver(Error(rid, "UNAVAILABLE", lost))  # when another call noticed first
        except serve.exceptions.BackPressureError as exc:
            self._deliver(Error(rid, "RESOURCE_EXHAUSTED", str(exc)))
        except Exception as exc:  # a bug in the replica (RayTaskError) or in Serve: this call fails
            log.error("engine replica %s call failed: %r", self.names[worker.index], exc)
            message = f"the engine replica call failed: {type(exc).__name__}: {exc}"
            self._deliver(Error(rid, "INTERNAL", message))


def _quiet(future: asyncio.Future) -> None:
    """Retrieve a dropped future's outcome, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


def _lost_message(name: str) -> str:
    return f"the engine worker was lost (Ray Serve replica {name} died); its sessions are gone"
