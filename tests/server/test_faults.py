"""Faults: a worker killed mid-stream, idle sessions expiring, a server draining under a stream."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest

from helios_runtime.server.front.settings import API_VERSION, ServerSettings
from helios_sdk._proto.helios.v1 import world_pb2 as pb

from .conftest import AUTH, TOKEN, new_world, start_server


@pytest.fixture
def fresh_server(request):
    """A server of its own; `idle_timeout_s` from the test's parametrisation (default 300)."""
    idle = getattr(request, "param", 300.0)
    gen = start_server(
        ServerSettings(
            model="tiny", port=0, token=TOKEN, max_sessions=4, idle_timeout_s=idle, drain_seconds=5
        )
    )
    handle = next(gen)
    yield handle
    next(gen, None)


def test_killed_worker_fails_only_its_sessions_and_comes_back(fresh_server):
    stub = fresh_server.stub()
    victim, other = new_world(stub), new_world(stub)
    worker = fresh_server.server.pool.workers[0]
    events, frames = [], []

    def actions():
        yield pb.StreamRequest(start=pb.StreamStart(session_id=victim))
        for i in range(1, 50):
            yield pb.StreamRequest(action=pb.StreamAction(seq=i))
            time.sleep(0.2)

    ended = []

    def consume():
        try:
            for msg in stub.Stream(actions(), metadata=AUTH, timeout=120):
                (frames if msg.WhichOneof("kind") == "frame" else events).append(msg)
        except grpc.RpcError as exc:  # after the CLOSED event, the stream ends ABORTED
            ended.append(exc.code())

    reader = threading.Thread(target=consume)
    reader.start()
    deadline = time.monotonic() + 60
    while len(frames) < 40 and time.monotonic() < deadline:  # mid-stream
        time.sleep(0.05)
    os.kill(worker.process.pid, signal.SIGKILL)
    reader.join(120)
    assert not reader.is_alive()
    closed = [m.event for m in events if m.event.type == pb.SESSION_EVENT_TYPE_CLOSED]
    assert closed and "lost" in closed[-1].message
    assert ended == [grpc.StatusCode.ABORTED]

    # The front kept serving; the lost sessions say ABORTED (not retryable: UNAVAILABLE would make
    # clients retry what cannot succeed); a new world works once the worker is back.
    assert stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=AUTH).api_version == API_VERSION
    for sid in (victim, other):
        with pytest.raises(grpc.RpcError) as info:
            stub.Step(pb.StepRequest(session_id=sid), metadata=AUTH)
        assert info.value.code() == grpc.StatusCode.ABORTED, info.value.details()
        assert "lost with its engine worker" in info.value.details()
    deadline = time.monotonic() + 180

    def retry(call):
        while True:
            try:
                return call()
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE  # still starting: retryable
                assert time.monotonic() < deadline
                time.sleep(0.5)

    sid = retry(
        lambda: stub.CreateSession(pb.CreateSessionRequest(width=64, height=64), metadata=AUTH)
    ).session_id
    retry(lambda: stub.Reset(pb.ResetRequest(session_id=sid, prompt="again", seed=1), metadata=AUTH))
    assert stub.Step(pb.StepRequest(session_id=sid), metadata=AUTH).chunk.chunk_index == 1
    assert worker.generation == 1
    (state,) = stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=AUTH).workers
    assert state.ready and state.restarts == 1 and state.sessions == 1


@pytest.mark.parametrize("fresh_server", [1.0], indirect=True)
def test_idle_sessions_expire(fresh_server):
    stub = fresh_server.stub()
    sid = new_world(stub)
    time.sleep(3.5)
    with pytest.raises(grpc.RpcError) as info:
        stub.Step(pb.StepRequest(session_id=sid), metadata=AUTH)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "closed" in info.value.details()
    assert stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=AUTH).active_sessions == 0


def test_drain_ends_streams_with_a_closed_event():
    # The grace outlasts a chunk on a loaded machine (stop returns as soon as the stream has ended).
    gen = start_server(ServerSettings(model="tiny", port=0, token=TOKEN, drain_seconds=60))
    handle = next(gen)
    stub = handle.stub()
    sid = new_world(stub)
    hold = threading.Event()

    def actions():
        yield pb.StreamRequest(start=pb.StreamStart(session_id=sid, mode=pb.STREAM_MODE_FREE_RUN))
        hold.wait(60)

    messages = []

    def consume():
        for msg in stub.Stream(actions(), metadata=AUTH, timeout=60):
            messages.append(msg)

    reader = threading.Thread(target=consume)
    reader.start()
    while not any(m.WhichOneof("kind") == "frame" for m in messages):
        time.sleep(0.05)
    next(gen, None)  # shut the server down while the stream runs
    hold.set()
    reader.join(60)
    events = [m.event for m in messages if m.WhichOneof("kind") == "event"]
    assert events[-1].type == pb.SESSION_EVENT_TYPE_CLOSED and "shutting down" in events[-1].message
