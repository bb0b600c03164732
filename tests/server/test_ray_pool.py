"""Scale-out on Ray: the front over two Ray Serve replicas of a local CPU cluster.

Sessions spread over both replicas and stay on theirs; a replica killed mid-stream fails only its
own sessions (UNAVAILABLE, a CLOSED event on its stream) while a stream on the other replica runs
on untouched; Serve starts a replacement and new sessions land on it. GetServerInfo reports each
replica's state and load throughout. The replica's engine loop is also driven without Ray, to
check that a caller who leaves cancels the work.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import grpc
import pytest

from helios_runtime.server.front.settings import ServerSettings
from helios_runtime.server.protocol.messages import Close, Reset, Restore, Snapshot, Step
from helios_runtime.server.worker.replica import EngineReplica, ReplicaConfig, import_ray
from helios_sdk._proto.helios.v1 import world_pb2 as pb

from .conftest import AUTH, TOKEN, new_world, start_server

pytestmark = pytest.mark.timeout(300)

try:
    import ray
    from ray import serve
except ImportError:
    ray = None

needs_ray = pytest.mark.skipif(
    ray is None, reason="ray is not installed (pip install 'helios-world-sdk[ray]')"
)


@pytest.fixture(scope="module")
def fleet():
    # A cluster of our own (never one a `ray start` left running); logical CPUs: two replicas
    # reserve one each, whatever cores the host has.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    settings = ServerSettings(
        model="tiny", port=0, token=TOKEN, max_sessions=8, ray="auto", replicas=2, warm_up=False
    )
    gen = start_server(settings)  # `auto` joins the cluster this process already runs
    try:
        yield next(gen)
        next(gen, None)
    finally:
        serve.shutdown()
        ray.shutdown()


def workers(stub) -> list[pb.WorkerInfo]:
    return list(stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=AUTH).workers)


def placed_on(handle, sid: str) -> int:
    return handle.server.service.sessions[sid].worker.index


@needs_ray
def test_sessions_spread_over_both_replicas_and_stream_frames(fleet):
    stub = fleet.stub()
    up = workers(stub)
    assert [w.name for w in up] == ["engine-0", "engine-1"]
    assert all(w.ready and w.capacity == 8 and w.device == "cpu" and w.host and w.restarts == 0 for w in up)
    pids = {w.info["pid"] for w in fleet.server.pool.workers}
    assert len(pids) == 2 and os.getpid() not in pids  # two replica processes, not this one

    sids = [new_world(stub, seed=i) for i in range(4)]
    assert sorted(placed_on(fleet, s) for s in sids) == [0, 0, 1, 1]
    assert [w.sessions for w in workers(stub)] == [2, 2]
    for sid in sids:
        all_frames = pb.FrameOptions(selection=pb.FRAME_SELECTION_ALL)
        chunk = stub.Step(pb.StepRequest(session_id=sid, frames=all_frames), metadata=AUTH).chunk
        assert chunk.chunk_index == 1 and len(chunk.frames) == 33
        assert len(chunk.frames[0].data) == 64 * 64 * 3
    # The same seed on either replica gives the same world: placement never changes the frames.
    a, b = new_world(stub, seed=7), new_world(stub, seed=7)
    assert placed_on(fleet, a) != placed_on(fleet, b)
    frames = [stub.Step(pb.StepRequest(session_id=s), metadata=AUTH).chunk.frames[-1].data for s in (a, b)]
    assert frames[0] == frames[1]

    actions = [pb.StreamRequest(start=pb.StreamStart(session_id=sids[0]))]
    actions += [pb.StreamRequest(action=pb.StreamAction(seq=i)) for i in (1, 2)]
    replies = list(stub.Stream(iter(actions), metadata=AUTH, timeout=60))
    assert sum(m.WhichOneof("kind") == "frame" for m in replies) == 66
    done = [m.event for m in replies if m.event.type == pb.SESSION_EVENT_TYPE_CHUNK_DONE]
    assert [e.chunk_index for e in done] == [2, 3]

    for sid in [*sids, a, b]:
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)
    assert [w.sessions for w in workers(stub)] == [0, 0]


@needs_ray
def test_a_killed_replica_fails_only_its_own_sessions(fleet):
    stub = fleet.stub()
    sids = [new_world(stub, seed=i) for i in range(4)]
    victims = [s for s in sids if placed_on(fleet, s) == 0]
    others = [s for s in sids if placed_on(fleet, s) == 1]
    assert len(victims) == len(others) == 2
    pool = fleet.server.pool
    old_pid = pool.workers[0].info["pid"]
    events: dict[str, list] = {victims[0]: [], others[0]: []}
    frames: dict[str, int] = {victims[0]: 0, others[0]: 0}

    def run_stream(sid: str, chunks: int) -> None:
        def actions():
            yield pb.StreamRequest(start=pb.StreamStart(session_id=sid))
            for i in range(1, chunks + 1):
                yield pb.StreamRequest(action=pb.StreamAction(seq=i))
                time.sleep(0.1)

        for msg in stub.Stream(actions(), metadata=AUTH, timeout=120):
            if msg.WhichOneof("kind") == "frame":
                frames[sid] += 1
            else:
                events[sid].append(msg.event)

    readers = [
        threading.Thread(target=run_stream, args=(victims[0], 40)),
        threading.Thread(target=run_stream, args=(others[0], 8)),
    ]
    for r in readers:
        r.start()
    deadline = time.monotonic() + 60
    while frames[victims[0]] < 40 and time.monotonic() < deadline:  # mid-stream
        time.sleep(0.05)
    os.kill(old_pid, signal.SIGKILL)

    # The victim's stream ends with CLOSED; its other session is ABORTED; the other replica's
    # sessions step on, one of them through a stream that never noticed.
    for r in readers:
        r.join(120)
        assert not r.is_alive()
    closed = [e for e in events[victims[0]] if e.type == pb.SESSION_EVENT_TYPE_CLOSED]
    assert closed and "lost" in closed[-1].message
    with pytest.raises(grpc.RpcError) as info:
        stub.Step(pb.StepRequest(session_id=victims[1]), metadata=AUTH)
    assert info.value.code() == grpc.StatusCode.ABORTED and "lost" in info.value.details()
    survivor = events[others[0]]
    assert [e.chunk_index for e in survivor if e.type == pb.SESSION_EVENT_TYPE_CHUNK_DONE] == list(
        range(1, 9)
    )
    assert not any(e.type == pb.SESSION_EVENT_TYPE_CLOSED for e in survivor)
    assert frames[others[0]] == 8 * 33
    assert stub.Step(pb.StepRequest(session_id=others[1]), metadata=AUTH).chunk.chunk_index == 1

    # GetServerInfo tells the replica was lost once; Serve replaces it and it takes new sessions.
    deadline = time.monotonic() + 120
    while True:
        state = workers(stub)
        if state[0].ready:
            break
        assert state[1].ready and state[1].sessions == 2
        assert time.monotonic() < deadline, "Serve did not replace the killed replica in 120 s"
        time.sleep(0.25)
    assert state[0].restarts == 1 and state[0].sessions == 0 and state[1].restarts == 0
    assert pool.workers[0].info["pid"] != old_pid
    fresh = new_world(stub, seed=3)
    assert placed_on(fleet, fresh) == 0  # the least loaded replica: the replacement
    assert stub.Step(pb.StepRequest(session_id=fresh), metadata=AUTH).chunk.chunk_index == 1
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=AUTH)
    assert info.active_sessions == 3 and [w.sessions for w in info.workers] == [1, 2]


def test_a_caller_that_leaves_cancels_the_work(one_thread):
    """The replica class without Ray: dropping a request's stream sends the engine loop a cancel,
    and the step stops before its first forward with the session unchanged."""
    replica = EngineReplica(ReplicaConfig("tiny", max_sessions=2, warm_up=False))
    try:

        async def run(request, incarnation: str | None = None) -> list:
            return [reply async for reply in replica.request(request, incarnation)]

        async def drive() -> tuple[int, int, str]:
            for sid, side in (("a", 128), ("b", 64)):  # "a" decodes for seconds, "b" is quick
                reset = Reset(sid, "a cliff", seed=1, width=side, height=side, frames="none")
                assert (await run(reset))[-1].kind == "result"
            before = {sid: replica.engine.session(sid).chunk for sid in ("a", "b")}
            busy = asyncio.create_task(run(Step("a", frames="none")))
            # While "a" decodes (seconds; its denoising took milliseconds), "b" is asked for and
            # dropped: the loop finds the request and its cancel together, before any forward.
            await asyncio.sleep(0.3)
            dropped = asyncio.create_task(run(Step("b", frames="all")))
            await asyncio.sleep(0.01)
            dropped.cancel()
            assert (await busy)[-1].kind == "result"
            await asyncio.sleep(0.5)
            stale = await run(Close("b"), incarnation="another-replica")
            a, b = (replica.engine.session(sid).chunk - before[sid] for sid in ("a", "b"))
            return a, b, stale[0].code

        a, b, stale = asyncio.run(drive())
        assert (a, b) == (1, 0)  # the dropped step did not advance its world
        assert stale == "UNAVAILABLE"  # a call meant for another incarnation of the slot is refused
        assert replica.info()["sessions"] == 2 and replica.info()["capacity"] == 2
    finally:
        replica.transport.close()
        replica.thread.join(5)


def test_replicas_of_one_config_share_its_snapshot_key_and_limits(one_thread):
    """The front hands every replica its snapshot key and frame-size limits in their config (the
    replica class without Ray): one replica restores another's snapshot; the key never shows."""
    config = ReplicaConfig(
        "tiny", max_sessions=2, warm_up=False, snapshot_key=bytes(range(32)), max_height=64, max_width=64
    )
    assert bytes(range(32)).hex() not in repr(config) and "snapshot_key" not in repr(config)
    replicas = [EngineReplica(config) for _ in range(2)]
    try:

        async def run(replica: EngineReplica, request) -> list:
            return [reply async for reply in replica.request(request)]

        async def drive() -> tuple:
            reset = Reset("a", "a cliff", seed=1, width=64, height=64, frames="none")
            assert (await run(replicas[0], reset))[-1].kind == "result"
            data = (await run(replicas[0], Snapshot("a")))[-1].data
            restored = (await run(replicas[1], Restore(data)))[-1]
            wide = (await run(replicas[1], Reset("b", "x", width=128, height=64, frames="none")))[-1]
            return restored, wide

        restored, wide = asyncio.run(drive())
        assert restored.kind == "result" and restored.chunk_index == 1
        assert wide.code == "INVALID_ARGUMENT" and "at most 64 pixels" in wide.message
    finally:
        for replica in replicas:
            replica.transport.close()
            replica.thread.join(5)


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'helios-world-sdk\[ray\]'"):
        import_ray()
