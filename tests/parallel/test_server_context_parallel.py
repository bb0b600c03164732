"""`helios serve --context-parallel 2` on CPU: one engine worker over two gloo ranks serves a world
equal to the single-device one (frames within one uint8 level), with fork and close mirrored."""

from __future__ import annotations

import numpy as np
import pytest

from helios_runtime.engine.engine import WorldEngine
from helios_runtime.engine.world_model import WorldModel
from helios_runtime.server.front.settings import ServerSettings
from helios_runtime.server.worker.context_parallel.launch import group_devices
from helios_sdk._proto.helios.v1 import world_pb2 as pb
from tests.server.conftest import AUTH, TOKEN, start_server

RGB = pb.FrameOptions(encoding=pb.FRAME_ENCODING_RGB24, selection=pb.FRAME_SELECTION_ALL)


@pytest.fixture(scope="module")
def cp_server():
    yield from start_server(ServerSettings(model="tiny", port=0, token=TOKEN, devices=group_devices(None, 2)))


def _frames(chunk: pb.Chunk) -> np.ndarray:
    return np.stack([np.frombuffer(f.data, np.uint8) for f in chunk.frames]).astype(np.int16)


def test_context_parallel_server_serves_the_single_device_world(cp_server, one_thread):
    stub = cp_server.stub()
    sid = stub.CreateSession(pb.CreateSessionRequest(width=64, height=64), metadata=AUTH).session_id
    first = stub.Reset(pb.ResetRequest(session_id=sid, prompt="a harbour", seed=3, frames=RGB), metadata=AUTH)
    fork = stub.Fork(pb.ForkRequest(session_id=sid), metadata=AUTH).session_id
    steps = [stub.Step(pb.StepRequest(session_id=s, frames=RGB), metadata=AUTH).chunk for s in (sid, fork)]
    for s in (sid, fork):
        stub.CloseSession(pb.CloseSessionRequest(session_id=s), metadata=AUTH)

    engine = WorldEngine(WorldModel.load("tiny", device="cpu"))
    want0 = engine.reset("a harbour", seed=3, height=64, width=64).frames.numpy().astype(np.int16)
    want1 = engine.step(engine.reset("a harbour", seed=3, height=64, width=64).session_id).frames
    want1 = want1.numpy().astype(np.int16)
    for got, want in ((first.chunk, want0), (steps[0], want1), (steps[1], want1)):
        diff = np.abs(_frames(got) - want.reshape(33, -1))
        assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


def test_a_restored_session_is_mirrored_on_every_rank(cp_server, one_thread):
    """Every rank restores the snapshot under the leader's key and limits: a follower that refused it
    would be missing the session, and the next step's collectives would never meet (the deadline)."""
    stub = cp_server.stub()
    sid = stub.CreateSession(pb.CreateSessionRequest(width=64, height=64), metadata=AUTH).session_id
    stub.Reset(pb.ResetRequest(session_id=sid, prompt="a harbour", seed=3), metadata=AUTH)
    data = stub.Snapshot(pb.SnapshotRequest(session_id=sid, include_data=True), metadata=AUTH).data
    twin = stub.Restore(pb.RestoreRequest(data=data), metadata=AUTH).session_id
    steps = [
        stub.Step(pb.StepRequest(session_id=s, frames=RGB), metadata=AUTH, timeout=300).chunk
        for s in (sid, twin)
    ]
    assert np.array_equal(_frames(steps[0]), _frames(steps[1]))
    for s in (sid, twin):
        stub.CloseSession(pb.CloseSessionRequest(session_id=s), metadata=AUTH)


def test_group_devices():
    assert group_devices(None, 1) == (None,)
    assert group_devices(["cuda:0", "cuda:1", "cuda:2", "cuda:3"], 2) == ("cuda:0,cuda:1", "cuda:2,cuda:3")
    with pytest.raises(ValueError, match="do not split"):
        group_devices(["cuda:0", "cuda:1", "cuda:2"], 2)
    with pytest.raises(ValueError, match="at least 1"):
        group_devices(None, 0)
