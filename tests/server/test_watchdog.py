"""Worker liveness: the watchdog restarts a wedged or silent worker and fails only its sessions;
health is NOT_SERVING while no worker is ready and SERVING again once one is.

A worker is wedged through a test seam (`worker/seams.py`): a Step whose prompt is `HANG` sleeps in
the engine loop's thread without reading its cancel token, as a stuck kernel would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from helios_runtime.server.front.settings import ServerSettings
from helios_runtime.server.worker import seams
from helios_sdk._proto.helios.v1 import world_pb2 as pb

from .conftest import AUTH, TOKEN, Handle, new_world, start_server

ALL = pb.FrameOptions(selection=pb.FRAME_SELECTION_ALL)  # unary defaults send the last frame only

HANG = "helios-test: hang the engine loop"
WATCHDOG_S = 10.0
# A session lost with its worker: UNAVAILABLE today; ABORTED once the front maps it (issue 19).
LOST = (grpc.StatusCode.ABORTED,)  # a lost session is never retryable
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@contextlib.contextmanager
def wedgeable_server(**settings) -> Iterator[Handle]:
    with pytest.MonkeyPatch.context() as env:  # every worker process (restarts too) inherits it
        env.setenv(seams.ENV, json.dumps({"hang_prompt": HANG}))
        fixed = dict(model="tiny", port=0, token=TOKEN, warm_up=False, watchdog_s=WATCHDOG_S, drain_seconds=5)
        gen = start_server(ServerSettings(**fixed, **settings))
        try:
            yield next(gen)
        finally:
            next(gen, None)


class HealthLog:
    """Every status the standard health service's Watch reports, as it reports it."""

    def __init__(self, target: str):
        self.channel = grpc.insecure_channel(target)
        request = health_pb2.HealthCheckRequest(service="")
        self.call = health_pb2_grpc.HealthStub(self.channel).Watch(request, timeout=900)
        self.statuses: list[int] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for reply in self.call:
                self.statuses.append(reply.status)

    def wait_for(self, status: int, after: int, timeout: float) -> int:
        """The index of the first `status` reported after index `after`."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(after + 1, len(self.statuses)):
                if self.statuses[i] == status:
                    return i
            assert time.monotonic() < deadline, f"health never became {status} (saw {self.statuses})"
            time.sleep(0.05)

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


def in_background(call) -> tuple[threading.Thread, dict]:
    """Run `call` in a thread; the dict gets its "error" (or "result") and how long it took."""
    outcome: dict = {}

    def run() -> None:
        start = time.monotonic()
        try:
            outcome["result"] = call()
        except grpc.RpcError as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def hang(stub, sid: str):
    request = pb.StepRequest(session_id=sid, action=pb.Action(prompt=pb.PromptAction(text=HANG)))
    return in_background(lambda: stub.Step(request, metadata=AUTH, timeout=300))


def assert_lost(outcome: dict, why: str) -> None:
    error = outcome.get("error")
    assert error is not None, f"the step on the lost worker returned {outcome}"
    assert error.code() in LOST and "lost" in error.details() and why in error.details(), error


def workers(stub) -> list[pb.WorkerInfo]:
    return list(stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=AUTH, timeout=30).workers)


def test_the_watchdog_restarts_a_wedged_worker_and_fails_only_its_sessions():
    with wedgeable_server(devices=("cpu", "cpu"), max_sessions=4) as server:
        stub = server.stub()
        health = HealthLog(server.target)
        try:
            victim, bystander = new_world(stub), new_world(stub)
            sessions = server.server.service.sessions
            wedged = sessions[victim].worker.index
            assert sessions[bystander].worker.index != wedged
            thread, outcome = hang(stub, victim)
            expected, saw_down = 1, False
            deadline = time.monotonic() + 240
            while thread.is_alive() or not workers(stub)[wedged].ready:
                assert time.monotonic() < deadline, "the wedged worker was not restarted in 240 s"
                chunk = stub.Step(
                    pb.StepRequest(session_id=bystander, frames=ALL), metadata=AUTH, timeout=60
                ).chunk
                assert chunk.chunk_index == expected and len(chunk.frames) == 33
                expected += 1
                saw_down |= not workers(stub)[wedged].ready
            assert_lost(outcome, "no progress")
            assert outcome["seconds"] >= WATCHDOG_S, "the watchdog fired before its bound"
            assert saw_down, "GetServerInfo never showed the wedged worker as not ready"
            assert health.statuses and set(health.statuses) == {SERVING}, "one worker stayed ready"
            info = workers(stub)
            assert info[wedged].restarts == 1 and info[1 - wedged].restarts == 0
            with pytest.raises(grpc.RpcError) as lost:
                stub.Step(pb.StepRequest(session_id=victim, frames=ALL), metadata=AUTH, timeout=60)
            assert lost.value.code() in LOST
            chunk = stub.Step(
                pb.StepRequest(session_id=bystander, frames=ALL), metadata=AUTH, timeout=60
            ).chunk
            assert chunk.chunk_index == expected
        finally:
            health.close()


def test_health_follows_the_only_worker_when_it_hangs_goes_silent_or_dies():
    with wedgeable_server(max_sessions=4) as server:
        stub = server.stub()
        pool = server.server.pool
        health = HealthLog(server.target)
        try:
            seen = health.wait_for(SERVING, -1, 60)

            # Wedged: the watchdog restarts it after its bound; the step on it fails as lost.
            thread, outcome = hang(stub, new_world(stub))
            seen = health.wait_for(NOT_SERVING, seen, WATCHDOG_S + 120)
            thread.join(120)
            assert_lost(outcome, "no progress")
            assert outcome["seconds"] >= WATCHDOG_S
            seen = health.wait_for(SERVING, seen, 240)
            assert workers(stub)[0].ready and workers(stub)[0].restarts == 1

            # Silent (stopped: not even heartbeats): killed and restarted as well.
            sid = new_world(stub)
            os.kill(pool.workers[0].process.pid, signal.SIGSTOP)
            step = stub.Step.future(pb.StepRequest(session_id=sid, frames=ALL), metadata=AUTH, timeout=300)
            seen = health.wait_for(NOT_SERVING, seen, WATCHDOG_S + 120)
            with pytest.raises(grpc.RpcError) as silent:
                step.result()
            assert silent.value.code() in LOST and "sent nothing" in silent.value.details()
            seen = health.wait_for(SERVING, seen, 240)

            # Killed: NOT_SERVING until the replacement is ready.
            os.kill(pool.workers[0].process.pid, signal.SIGKILL)
            seen = health.wait_for(NOT_SERVING, seen, 60)
            seen = health.wait_for(SERVING, seen, 240)
            (state,) = workers(stub)
            assert state.ready and state.restarts == 3
            sid = new_world(stub)
            assert (
                stub.Step(
                    pb.StepRequest(session_id=sid, frames=ALL), metadata=AUTH, timeout=60
                ).chunk.chunk_index
                == 1
            )
        finally:
            health.close()
