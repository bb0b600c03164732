"""Engine worker processes behind the front's ZeroMQ ROUTER socket.

`WorkerPool` starts one worker process per device (`worker/main.py`), reads every reply on the
ROUTER socket and hands it to the request waiting for it, notices a worker that dies and starts a
replacement. The request/reply loop, cancellation and worker loss are `protocol/client.py`'s
`EngineClient`; `ray_pool.RayWorkerPool` is the other pool, whose workers are Ray Serve replicas.

The channel is authenticated (CURVE, `protocol/channel.py`): a ZAP handler here admits only the
public key of a worker this pool spawned, and names the worker it belongs to. The reply loop trusts
nothing it reads: a message that does not decode, comes from a peer that is not the worker its key
names, or does not fit the worker's state (a Ready from a worker that is not starting, a reply to a
request another worker holds) is logged and dropped, and the loop goes on.

Liveness: each worker sends a Heartbeat every second carrying how long its engine loop has not
moved; the watchdog kills a worker whose loop made no progress (or that sent nothing) for longer
than its bound — `watchdog_s`, or three times its warm-up, whichever is longer, since a new frame
size may compile as long as the warm-up did — and the worker is restarted as after a crash. A
worker silent for `CUT_OFF_S` is not ready (no new requests; health NOT_SERVING when none is ready)
until it is heard again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from ...engine.snapshot_key import KEY_ENV, new_key
from ..protocol.channel import ENV as KEYS_ENV
from ..protocol.channel import ZAP_DOMAIN, WorkerKeys, public_key_bytes, require_curve
from ..protocol.client import EngineClient, WorkerHandle
from ..protocol.messages import (
    HEARTBEAT_S,
    Cancel,
    Error,
    Frame,
    Heartbeat,
    Ready,
    Request,
    Result,
    decode,
    encode,
)

log = logging.getLogger("helios.front")
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks who may connect (the ZAP protocol, RFC 27)
CUT_OFF_S = 15.0  # a worker not heard from this long is not ready until it is heard again
WARM_UP_FACTOR = 3.0  # the watchdog's bound is at least this many times the worker's warm-up
WATCHDOG_TICK_S = 0.5


@dataclass
class Liveness:
    """What the front knows of one worker process's state (this incarnation)."""

    spawned_at: float = field(default_factory=time.monotonic)
    heard_at: float = field(default_factory=time.monotonic)  # the last message from it
    stalled_s: float = 0.0  # its loop's stall as of `heard_at` (from its last Heartbeat)
    starting: bool = True  # spawned, no Ready yet
    bound_s: float = math.inf  # the watchdog's bound once ready
    cut_off: bool = False
    killed: str = ""  # why the watchdog killed it (its requests fail with this)


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
        watchdog_s: float = 120.0,
        start_timeout_s: float = 600.0,
        threads: int | None = None,  # each worker's CPU threads (None: the worker's own default)
        seam_blend: int | None = None,  # frames eased at a chunk boundary (None: the model's own)
    ):
        require_curve()
        workers = [WorkerHandle(i, d, f"w{i}".encode(), capacity=max_sessions) for i, d in enumerate(devices)]
        super().__init__(workers, on_lost)
        self.model = model
        self.max_sessions = max_sessions
        self.warm_up = warm_up
        self.json_logs = json_logs
        # One key for every worker and restart, so each restores the others' snapshots.
        self.snapshot_key = snapshot_key or new_key()
        self.max_size = max_size
        self.watchdog_s = watchdog_s  # 0: never kill a worker for stalling
        self.start_timeout_s = start_timeout_s
        self.threads = threads
        self.seam_blend = seam_blend
        self.context = zmq.asyncio.Context()
        # The ZAP handler is bound before the ROUTER, so no connection is ever admitted unasked.
        self.zap = self.context.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(ZAP_ENDPOINT)
        self.server_public, server_secret = zmq.curve_keypair()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.curve_server = True
        self.socket.curve_secretkey = server_secret
        self.socket.zap_domain = ZAP_DOMAIN
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.keys: dict[int, WorkerKeys] = {}  # each worker's current keys
        self.admitted: dict[bytes, WorkerHandle] = {}  # raw public key -> the worker it belongs to
        self.by_identity = {w.identity: w for w in workers}
        self.live = {w.index: Liveness() for w in workers}
        self.dropped = 0  # messages the reply loop dropped
        self.denied = 0  # connections the ZAP handler refused
        self._denied_logged_at = -math.inf
        self.tasks: list[asyncio.Task] = []
        self.closing = False

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._listen()
        for w in self.workers:
            await self._spawn(w)
            self.tasks.append(asyncio.create_task(self._watch(w)))
        self.tasks.append(asyncio.create_task(self._watchdog()))

    def _listen(self) -> None:
        """Start answering connections (ZAP) and reading messages."""
        self.tasks.append(asyncio.create_task(self._zap_loop()))
        self.tasks.append(asyncio.create_task(self._read_loop()))

    def _new_keys(self, w: WorkerHandle) -> WorkerKeys:
        """A fresh keypair for a new process of `w`: the previous one's key is no longer admitted."""
        old = self.keys.pop(w.index, None)
        if old is not None:
            self.admitted.pop(public_key_bytes(old.public), None)
        keys = self.keys[w.index] = WorkerKeys.new(self.server_public)
        self.admitted[public_key_bytes(keys.public)] = w
        self.live[w.index] = Liveness()
        return keys

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
        if self.threads is not None:
            cmd += ["--threads", str(self.threads)]
        if not self.warm_up:
            cmd.append("--no-warm-up")
        if self.json_logs:
            cmd.append("--json-logs")
        if self.max_size is not None:
            cmd += ["--max-height", str(self.max_size[0]), "--max-width", str(self.max_size[1])]
        if self.seam_blend is not None:
            cmd += ["--seam-blend", str(self.seam_blend)]
        w.ready.clear()
        # Secrets in the environment, never on the command line: the snapshot key, the channel keys.
        env = {**os.environ, KEY_ENV: self.snapshot_key.hex(), KEYS_ENV: self._new_keys(w).to_env()}
        w.process = await asyncio.create_subprocess_exec(*cmd, env=env)
        log.info("started worker %d (pid %d)", w.index, w.process.pid)

    async def _watch(self, w: WorkerHandle) -> None:
        """Restart a worker that exits; fail whatever it was doing."""
        while not self.closing:
            assert w.process is not None
            code = await w.process.wait()
            if self.closing:
                return
            reason = self.live[w.index].killed
            log.error("worker %d (pid %d) exited with %s; restarting it", w.index, w.process.pid, code)
            self._lose(w, "the engine worker was lost" + (f" ({reason})" if reason else ""))
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
                except asyncio.TimeoutError:
                    w.process.kill()
        for t in self.tasks:
            t.cancel()
        self.socket.close()
        self.zap.close()
        self.context.term()

    # --- liveness -----------------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        last = time.monotonic()
        while not self.closing:
            await asyncio.sleep(WATCHDOG_TICK_S)
            now = time.monotonic()
            lag = now - last - WATCHDOG_TICK_S
            last = now
            if lag > 2.0:  # this process stalled itself: the workers' silence meanwhile is ours
                for live in self.live.values():
                    live.heard_at += lag
            for w in self.workers:
                try:
                    self._check(w, now)
                except Exception:  # keep watching the others
                    log.exception("the watchdog failed to check worker %d", w.index)

    def _check(self, w: WorkerHandle, now: float) -> None:
        live = self.live[w.index]
        if w.process is None or w.process.returncode is not None or live.killed:
            return
        if live.starting:
            if now - live.spawned_at > self.start_timeout_s:
                self._kill(w, f"it did not start within {self.start_timeout_s:g} s")
            return
        silence = now - live.heard_at
        stalled = live.stalled_s + silence
        if self.watchdog_s > 0 and stalled > live.bound_s:
            # Heartbeats still coming: the loop is stuck; none for a while: the process is.
            what = "it sent nothing" if silence > 5 * HEARTBEAT_S else "its engine loop made no progress"
            self._kill(w, f"{what} for {stalled:.0f} s; the watchdog restarted it")
        elif silence > CUT_OFF_S and not live.cut_off:
            live.cut_off = True
            w.ready.clear()
            log.warning("worker %d sent nothing for %.0f s; not ready until it is heard", w.index, silence)

    def _kill(self, w: WorkerHandle, reason: str) -> None:
        assert w.process is not None
        log.error("killing worker %d (pid %d): %s", w.index, w.process.pid, reason)
        self.live[w.index].killed = reason
        w.ready.clear()
        w.process.kill()  # `_watch` sees it exit, fails its requests and starts a new one

    # --- messages -----------------------------------------------------------------------------------

    async def _zap_loop(self) -> None:
        """Admit a connection only with the public key of a worker this pool started (ZAP, RFC 27);
        the key names the worker ("User-Id"), which the reply loop checks on every message."""
        while True:
            request = await self.zap.recv_multipart()
            version, request_id = [*request, b"", b""][:2]
            try:
                _, _, domain, address, _, mechanism, *credentials = request
                w = None
                if domain == ZAP_DOMAIN and mechanism == b"CURVE" and len(credentials) == 1:
                    w = self.admitted.get(credentials[0])
            except ValueError:
                w, address = None, b"?"
            if w is None:
                self.denied += 1
                # Logged at most once in 10 s: a refused peer retries its connection forever.
                if time.monotonic() - self._denied_logged_at > 10:
                    self._denied_logged_at = time.monotonic()
                    log.warning(
                        "refused connections without a worker key (%d so far, latest from %s)",
                        self.denied,
                        address,
                    )
                reply = [version, request_id, b"400", b"not a worker of this server", b"", b""]
            else:
                reply = [version, request_id, b"200", b"OK", w.identity, b""]
            await self.zap.send_multipart(reply)

    async def _read_loop(self) -> None:
        while True:
            try:
                frames = await self.socket.recv_multipart(copy=False)
            except zmq.ZMQError as exc:
                if self.closing:
                    return
                log.warning("the worker channel failed to receive: %s", exc)
                await asyncio.sleep(0.1)
                continue
            try:
                self._receive(frames)
            except Exception:  # a bug in handling one message must not stop the loop
                self.dropped += 1
                log.exception("dropped a worker-channel message that could not be handled")

    def _drop(self, why: str, *args: object) -> None:
        self.dropped += 1
        log.warning("dropped a worker-channel message: " + why, *args)

    def _receive(self, frames: list[zmq.Frame]) -> None:
        """One message from the ROUTER socket: [routing identity, header, *blobs]."""
        identity = frames[0].bytes
        w = self.by_identity.get(identity)
        if w is None or len(frames) < 2 or frames[1].get("User-Id") != identity.decode():
            return self._drop("it came from %r, not the worker its key names", identity)
        try:
            message = decode([f.buffer for f in frames[1:]])
        except ValueError as exc:
            return self._drop("worker %d sent %s", w.index, exc)
        live = self.live[w.index]
        live.heard_at = time.monotonic()
        if isinstance(message, Heartbeat):
            stalled = message.stalled_s
            if not isinstance(stalled, (int, float)) or not stalled >= 0:
                return self._drop("worker %d sent a heartbeat with stall %r", w.index, stalled)
            live.stalled_s = float(stalled)
            if live.cut_off and not live.killed:
                live.cut_off = False
                w.ready.set()
                log.info("worker %d is heard again; ready", w.index)
        elif isinstance(message, Ready):
            if not live.starting or not isinstance(message.info, dict):
                return self._drop("a Ready from worker %d, which is not starting", w.index)
            live.starting = False
            warm = message.info.get("warm_up_seconds", 0.0)
            warm = warm if isinstance(warm, (int, float)) and warm >= 0 else 0.0
            live.bound_s = max(self.watchdog_s, WARM_UP_FACTOR * warm)
            w.info = message.info
            w.ready.set()
            log.info("worker %d ready: %s", w.index, w.info)
        elif isinstance(message, (Frame, Result, Error)):
            if not self._deliver(message, w):
                self.dropped += 1
        else:
            self._drop("worker %d sent a %s, which only the front sends", w.index, message.kind)

    async def _send(self, worker: WorkerHandle, request: Request) -> None:
        await self.socket.send_multipart([worker.identity, *encode(request)])

    async def _cancel(self, worker: WorkerHandle, rid: int) -> None:
        if not worker.ready.is_set():  # a restarting worker has forgotten the request anyway
            return
        try:
            await self.socket.send_multipart([worker.identity, *encode(Cancel(rid))])
        except zmq.ZMQError:
            pass
