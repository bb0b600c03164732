"""Cancellation over a real server: one request's cancel or deadline fails that request only, and a
session advances only when its step commits.

The worker here decodes slowly (a test seam: each frame waits `FRAME_DELAY_S`), so a chunk takes
seconds and a client's cancel or deadline lands while steps run, on any machine."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from helios_runtime.server.front.settings import ServerSettings
from helios_runtime.server.worker import seams
from helios_sdk._proto.helios.v1 import world_pb2 as pb

from .conftest import AUTH, TOKEN, new_world, start_server

ALL = pb.FrameOptions(selection=pb.FRAME_SELECTION_ALL)  # unary defaults send the last frame only

FRAME_DELAY_S = 0.08  # 33 frames: a chunk decodes in 2.6 s at least
RGB = pb.FrameOptions(encoding=pb.FRAME_ENCODING_RGB24, selection=pb.FRAME_SELECTION_ALL)


@pytest.fixture(scope="module")
def slow_decode():
    with pytest.MonkeyPatch.context() as env:  # the worker process inherits it at its start
        env.setenv(seams.ENV, json.dumps({"frame_delay_s": FRAME_DELAY_S}))
        gen = start_server(ServerSettings(model="tiny", port=0, token=TOKEN, max_sessions=8, warm_up=False))
        handle = next(gen)
    yield handle
    next(gen, None)


def test_a_cancel_or_deadline_fails_only_its_own_step(slow_decode):
    """Four sessions step at once, three times; each time one caller gives up (a client-side cancel,
    a short deadline): its call ends, and the three others each get their whole chunk."""
    stub = slow_decode.stub()
    ids = [new_world(stub, seed=s) for s in range(4)]
    expected = dict.fromkeys(ids, 1)  # each session's next chunk index
    for attempt, how in enumerate(["cancel", "deadline", "cancel"]):
        victim = ids[attempt % len(ids)]
        calls = {
            sid: stub.Step.future(
                pb.StepRequest(session_id=sid, frames=RGB),
                metadata=AUTH,
                timeout=1.5 if how == "deadline" and sid == victim else 120,
            )
            for sid in ids
        }
        if how == "cancel":
            time.sleep(1.0)
            calls[victim].cancel()
            with pytest.raises(grpc.FutureCancelledError):
                calls[victim].result()
        else:
            with pytest.raises(grpc.RpcError) as info:
                calls[victim].result()
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for sid in ids:
            if sid != victim:
                chunk = calls[sid].result().chunk
                assert chunk.chunk_index == expected[sid] and len(chunk.frames) == 33, (attempt, sid)
                expected[sid] += 1
        # The victim's chunk may have committed just before its cancel arrived: learn where it is.
        step = stub.Step(pb.StepRequest(session_id=victim, frames=ALL), metadata=AUTH, timeout=120)
        assert step.chunk.chunk_index in (expected[victim], expected[victim] + 1)
        expected[victim] = step.chunk.chunk_index + 1
    for sid in ids:
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


def test_a_deadline_during_the_decode_does_not_advance_the_session(slow_decode):
    """A twin session (same seed and prompt) shows the uncancelled chunk 1. The victim's step gets
    a deadline that lands in the middle of its decode; then its next step is chunk 1, with the
    twin's frames byte for byte, and chunk 2 matches as well."""
    stub = slow_decode.stub()
    victim, twin = new_world(stub, seed=7), new_world(stub, seed=7)
    one = stub.Step(pb.StepRequest(session_id=twin, frames=RGB), metadata=AUTH, timeout=120).chunk
    # Half-way through the decode; a denoise measured slow (a busy machine) counts as 1 s, so the
    # deadline always falls before the decode ends (earlier, it cancels the denoising: fine too).
    decode_s = len(one.frames) * FRAME_DELAY_S
    deadline = min(one.timings.denoise_seconds, 1.0) + decode_s / 2
    with pytest.raises(grpc.RpcError) as info:
        stub.Step(pb.StepRequest(session_id=victim, frames=RGB), metadata=AUTH, timeout=deadline)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    again = stub.Step(pb.StepRequest(session_id=victim, frames=RGB), metadata=AUTH, timeout=120).chunk
    assert again.chunk_index == 1, "the timed-out step advanced the session"
    assert [f.data for f in again.frames] == [f.data for f in one.frames]
    two = [
        stub.Step(pb.StepRequest(session_id=sid, frames=RGB), metadata=AUTH, timeout=120).chunk
        for sid in (victim, twin)
    ]
    assert two[0].chunk_index == two[1].chunk_index == 2
    assert [f.data for f in two[0].frames] == [f.data for f in two[1].frames]
    for sid in (victim, twin):
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)
