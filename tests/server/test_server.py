"""The gRPC server end to end: handshake, auth, sessions, frames, streams, status codes, metrics."""

from __future__ import annotations

import io
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from helios_runtime.server.front.settings import API_VERSION
from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk.actions import PROMPT_TEMPLATE_SPACE, ActionSpace

from .conftest import AUTH, new_world

ALL = pb.FRAME_SELECTION_ALL
RGB = pb.FrameOptions(encoding=pb.FRAME_ENCODING_RGB24, selection=ALL)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


# ---------------------------------------------------------------------------------------------------
# Handshake, health, reflection, auth
# ---------------------------------------------------------------------------------------------------


def test_server_info(running):
    info = running.stub().GetServerInfo(pb.GetServerInfoRequest(), metadata=AUTH)
    assert info.api_version == API_VERSION == "1.2"
    assert info.model.name == "tiny" and info.model.sampler == "distilled"
    assert info.model.seam_blend_frames == 0, "a Helios model's frames are decoded as the reference's"
    # tiny reads structured actions as prompt phrases: the template's keys and every Control field
    assert ActionSpace.from_proto(info.model.actions) == PROMPT_TEMPLATE_SPACE
    assert list(info.model.steps_per_stage) == [2, 2, 2]
    assert info.frames_per_chunk == 33 and info.fps == 16 and info.size_multiple == 64
    assert (info.default_width, info.default_height) == (320, 192)
    assert set(info.encodings) == {pb.FRAME_ENCODING_RGB24, pb.FRAME_ENCODING_JPEG, pb.FRAME_ENCODING_H264}
    assert info.max_message_bytes == 4 * 1024 * 1024 and info.auth_required
    (worker,) = info.workers  # one local worker process, with its capacity and state
    assert (worker.name, worker.device, worker.host, worker.ready) == ("w0", "cpu", "", True)
    assert worker.capacity == 6 and worker.restarts == 0


def test_health_and_reflection_need_no_token(running):
    channel = grpc.insecure_channel(running.target)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "helios.v1.WorldService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert code_of(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)) == (
        grpc.StatusCode.NOT_FOUND
    )
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"helios.v1.WorldService", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    "metadata", [(), (("authorization", "Bearer wrong"),), (("authorization", "s3cret-token"),)]
)
def test_unauthenticated(running, metadata):
    stub = running.stub()
    assert code_of(lambda: stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=metadata)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    stream = stub.Stream(iter([pb.StreamRequest(start=pb.StreamStart(session_id="x"))]), metadata=metadata)
    assert code_of(lambda: list(stream)) == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------------------------------------------
# Chunks
# ---------------------------------------------------------------------------------------------------


def test_reset_step_and_frame_encodings(running):
    stub = running.stub()
    sid = stub.CreateSession(pb.CreateSessionRequest(width=64, height=64), metadata=AUTH).session_id
    first = stub.Reset(
        pb.ResetRequest(session_id=sid, prompt="a harbour", seed=3, frames=RGB), metadata=AUTH
    ).chunk
    assert first.chunk_index == 0 and len(first.frames) == 33
    assert [f.index_in_chunk for f in first.frames] == list(range(33))
    assert all(len(f.data) == 64 * 64 * 3 and f.keyframe for f in first.frames)

    step = stub.Step(
        pb.StepRequest(
            session_id=sid, action=pb.Action(prompt=pb.PromptAction(text="a storm")), frames=RGB, action_seq=7
        ),
        metadata=AUTH,
    ).chunk
    assert step.chunk_index == 1 and [f.frame_index for f in step.frames] == list(range(33, 66))
    assert all(f.action_seq == 7 for f in step.frames)
    assert step.timings.denoise_seconds > 0

    jpeg = stub.Step(
        pb.StepRequest(
            session_id=sid,
            frames=pb.FrameOptions(encoding=pb.FRAME_ENCODING_JPEG, jpeg_quality=80, selection=ALL),
        ),
        metadata=AUTH,
    ).chunk
    assert len(jpeg.frames) == 33 and all(f.data[:2] == b"\xff\xd8" for f in jpeg.frames)

    import av

    h264 = stub.Step(
        pb.StepRequest(
            session_id=sid,
            frames=pb.FrameOptions(encoding=pb.FRAME_ENCODING_H264, selection=pb.FRAME_SELECTION_ALL),
        ),
        metadata=AUTH,
    ).chunk
    assert h264.frames[0].keyframe
    decoded = list(av.open(io.BytesIO(b"".join(f.data for f in h264.frames)), format="h264").decode(video=0))
    assert len(decoded) == 33 and decoded[0].width == 64

    last = stub.Step(
        pb.StepRequest(session_id=sid, frames=pb.FrameOptions(selection=pb.FRAME_SELECTION_LAST)),
        metadata=AUTH,
    ).chunk
    assert [f.index_in_chunk for f in last.frames] == [32] and last.chunk_index == 4
    none = stub.Step(
        pb.StepRequest(session_id=sid, frames=pb.FrameOptions(selection=pb.FRAME_SELECTION_NONE)),
        metadata=AUTH,
    ).chunk
    assert len(none.frames) == 0 and none.chunk_index == 5
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


def frames_of(chunk: pb.Chunk) -> np.ndarray:
    return np.stack([np.frombuffer(f.data, np.uint8) for f in chunk.frames])


def test_fork_and_snapshot_restore_continue_identically(running):
    stub = running.stub()
    sid = new_world(stub, seed=9)
    fork = stub.Fork(pb.ForkRequest(session_id=sid), metadata=AUTH).session_id
    snap = stub.Snapshot(pb.SnapshotRequest(session_id=sid, include_data=True), metadata=AUTH)
    assert snap.size_bytes == len(snap.data) and len(snap.sha256) == 64
    by_id = stub.Restore(pb.RestoreRequest(snapshot_id=snap.snapshot_id), metadata=AUTH)
    by_data = stub.Restore(pb.RestoreRequest(data=snap.data), metadata=AUTH)
    assert by_id.chunk_index == by_data.chunk_index == 1
    action = pb.Action(transition=pb.TransitionAction(text="a lighthouse", chunks=2))
    outs = [
        frames_of(stub.Step(pb.StepRequest(session_id=s, action=action, frames=RGB), metadata=AUTH).chunk)
        for s in (sid, fork, by_id.session_id, by_data.session_id)
    ]
    for other in outs[1:]:
        assert np.array_equal(outs[0], other)
    for s in (sid, fork, by_id.session_id, by_data.session_id):
        stub.CloseSession(pb.CloseSessionRequest(session_id=s), metadata=AUTH)


def test_same_seed_same_world_across_sessions(running):
    stub = running.stub()
    a, b = new_world(stub, seed=4), new_world(stub, seed=4)
    fa = frames_of(stub.Step(pb.StepRequest(session_id=a, frames=RGB), metadata=AUTH).chunk)
    fb = frames_of(stub.Step(pb.StepRequest(session_id=b, frames=RGB), metadata=AUTH).chunk)
    assert np.array_equal(fa, fb)
    for s in (a, b):
        stub.CloseSession(pb.CloseSessionRequest(session_id=s), metadata=AUTH)


# ---------------------------------------------------------------------------------------------------
# Every bad input gets its code, and other sessions carry on
# ---------------------------------------------------------------------------------------------------


def test_bad_requests_get_their_status_codes(running):
    stub = running.stub()
    good = new_world(stub)
    fresh = stub.CreateSession(pb.CreateSessionRequest(width=64, height=64), metadata=AUTH).session_id
    closed = new_world(stub)
    stub.CloseSession(pb.CloseSessionRequest(session_id=closed), metadata=AUTH)
    stub.CloseSession(pb.CloseSessionRequest(session_id=closed), metadata=AUTH)  # twice is fine
    S = grpc.StatusCode
    cases = {
        "unknown session": (lambda: stub.Step(pb.StepRequest(session_id="nope"), metadata=AUTH), S.NOT_FOUND),
        "close unknown": (
            lambda: stub.CloseSession(pb.CloseSessionRequest(session_id="x"), metadata=AUTH),
            S.NOT_FOUND,
        ),
        "step before reset": (
            lambda: stub.Step(pb.StepRequest(session_id=fresh), metadata=AUTH),
            S.FAILED_PRECONDITION,
        ),
        "step after close": (
            lambda: stub.Step(pb.StepRequest(session_id=closed), metadata=AUTH),
            S.FAILED_PRECONDITION,
        ),
        "no session id": (lambda: stub.Step(pb.StepRequest(), metadata=AUTH), S.INVALID_ARGUMENT),
        "bad size": (
            lambda: stub.CreateSession(pb.CreateSessionRequest(width=100, height=64), metadata=AUTH),
            S.INVALID_ARGUMENT,
        ),
        "negative weight": (
            lambda: stub.Step(
                pb.StepRequest(
                    session_id=good,
                    action=pb.Action(blend=pb.BlendAction(prompts=[pb.WeightedPrompt(text="a", weight=-1)])),
                ),
                metadata=AUTH,
            ),
            S.INVALID_ARGUMENT,
        ),
        "NaN mouse": (
            lambda: stub.Step(
                pb.StepRequest(
                    session_id=good, action=pb.Action(control=pb.ControlAction(mouse_dx=float("nan")))
                ),
                metadata=AUTH,
            ),
            S.INVALID_ARGUMENT,
        ),
        "unknown key": (
            lambda: stub.Step(
                pb.StepRequest(session_id=good, action=pb.Action(control=pb.ControlAction(keys=["F13"]))),
                metadata=AUTH,
            ),
            S.INVALID_ARGUMENT,
        ),
        "a move for a model without moves": (
            lambda: stub.Step(
                pb.StepRequest(session_id=good, action=pb.Action(move=pb.MoveAction(move="n"))),
                metadata=AUTH,
            ),
            S.INVALID_ARGUMENT,
        ),
        "undecodable image": (
            lambda: stub.Reset(
                pb.ResetRequest(session_id=fresh, prompt="x", image=pb.Image(data=b"not an image")),
                metadata=AUTH,
            ),
            S.INVALID_ARGUMENT,
        ),
        "short raw image": (
            lambda: stub.Reset(
                pb.ResetRequest(
                    session_id=fresh, prompt="x", image=pb.Image(data=b"\0" * 10, width=64, height=64)
                ),
                metadata=AUTH,
            ),
            S.INVALID_ARGUMENT,
        ),
        "bad encoding": (
            lambda: stub.Step(
                pb.StepRequest(session_id=good, frames=pb.FrameOptions(encoding=9)), metadata=AUTH
            ),
            S.INVALID_ARGUMENT,
        ),
        "garbage snapshot": (
            lambda: stub.Restore(pb.RestoreRequest(data=b"garbage" * 10), metadata=AUTH),
            S.INVALID_ARGUMENT,
        ),
        "unknown snapshot": (
            lambda: stub.Restore(pb.RestoreRequest(snapshot_id="nope"), metadata=AUTH),
            S.NOT_FOUND,
        ),
        "oversized message": (
            lambda: stub.Reset(
                pb.ResetRequest(session_id=fresh, prompt="x", image=pb.Image(data=b"\0" * (5 << 20))),
                metadata=AUTH,
            ),
            S.RESOURCE_EXHAUSTED,
        ),
        "long prompt": (
            lambda: stub.Step(
                pb.StepRequest(session_id=good, action=pb.Action(prompt=pb.PromptAction(text="x" * 5000))),
                metadata=AUTH,
            ),
            S.INVALID_ARGUMENT,
        ),
    }
    for name, (call, expected) in cases.items():
        assert code_of(call) == expected, name
    # ...and the good session carries on, undisturbed.
    chunk = stub.Step(pb.StepRequest(session_id=good, frames=RGB), metadata=AUTH).chunk
    assert chunk.chunk_index == 1 and len(chunk.frames) == 33
    for s in (good, fresh):
        stub.CloseSession(pb.CloseSessionRequest(session_id=s), metadata=AUTH)


def test_frames_too_large_for_one_message(running):
    stub = running.stub()
    sid = stub.CreateSession(pb.CreateSessionRequest(width=256, height=256), metadata=AUTH).session_id
    # 33 raw 256×256 frames = 6.5 MB > 4 MiB: refused with advice before the world moves.
    call = lambda: stub.Reset(pb.ResetRequest(session_id=sid, prompt="x", frames=RGB), metadata=AUTH)  # noqa: E731
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "JPEG" in info.value.details()
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


def test_session_limit(running):
    stub = running.stub()
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=AUTH)
    ids = []
    for _ in range(info.max_sessions - info.active_sessions):
        ids.append(stub.CreateSession(pb.CreateSessionRequest(width=64, height=64), metadata=AUTH).session_id)
    assert (
        code_of(lambda: stub.CreateSession(pb.CreateSessionRequest(width=64, height=64), metadata=AUTH))
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    for s in ids:
        stub.CloseSession(pb.CloseSessionRequest(session_id=s), metadata=AUTH)
    again = stub.CreateSession(pb.CreateSessionRequest(width=64, height=64), metadata=AUTH).session_id
    stub.CloseSession(pb.CloseSessionRequest(session_id=again), metadata=AUTH)


def test_deadline_is_honoured_and_the_session_survives(running):
    stub = running.stub()
    sid = new_world(stub)
    assert code_of(lambda: stub.Step(pb.StepRequest(session_id=sid), metadata=AUTH, timeout=0.01)) == (
        grpc.StatusCode.DEADLINE_EXCEEDED
    )
    time.sleep(0.5)
    chunk = stub.Step(pb.StepRequest(session_id=sid, frames=RGB), metadata=AUTH, timeout=60).chunk
    assert len(chunk.frames) == 33  # the cancelled chunk did not advance the world half-way
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


# ---------------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------------


def test_lockstep_stream(running):
    stub = running.stub()
    sid = new_world(stub)
    requests = [
        pb.StreamRequest(start=pb.StreamStart(session_id=sid, mode=pb.STREAM_MODE_LOCKSTEP, frames=RGB)),
        pb.StreamRequest(action=pb.StreamAction(seq=1)),
        pb.StreamRequest(
            action=pb.StreamAction(seq=2, action=pb.Action(prompt=pb.PromptAction(text="a storm")))
        ),
    ]
    frames, events = [], []
    for msg in stub.Stream(iter(requests), metadata=AUTH, timeout=120):
        if msg.WhichOneof("kind") == "frame":
            frames.append(msg.frame)
        else:
            events.append(msg.event)
    kinds = [e.type for e in events]
    assert kinds[0] == pb.SESSION_EVENT_TYPE_STARTED
    assert kinds.count(pb.SESSION_EVENT_TYPE_CHUNK_DONE) == 2
    assert [f.frame_index for f in frames] == list(range(33, 99))  # no loss, no duplicate, in order
    assert [f.action_seq for f in frames] == [1] * 33 + [2] * 33
    assert stub.Step(pb.StepRequest(session_id=sid), metadata=AUTH).chunk.chunk_index == 3
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


def test_free_run_stream_drops_frames_for_a_slow_reader(running):
    stub = running.stub(small_window=True)
    sid = new_world(stub)
    stop = threading.Event()

    def requests():
        yield pb.StreamRequest(start=pb.StreamStart(session_id=sid, mode=pb.STREAM_MODE_FREE_RUN, frames=RGB))
        yield pb.StreamRequest(
            action=pb.StreamAction(seq=5, action=pb.Action(prompt=pb.PromptAction(text="dawn")))
        )
        stop.wait(120)

    call = stub.Stream(requests(), metadata=AUTH, timeout=120)
    frames, dropped, seqs = [], 0, set()
    give_up = time.monotonic() + 90
    time.sleep(6)  # fall behind: the server keeps generating into a bounded buffer
    for msg in call:
        if msg.WhichOneof("kind") == "frame":
            frames.append(msg.frame.frame_index)
            seqs.add(msg.frame.action_seq)
        elif msg.event.type == pb.SESSION_EVENT_TYPE_FRAMES_DROPPED:
            dropped += msg.event.dropped_frames
        if (len(frames) >= 80 and dropped) or time.monotonic() > give_up:
            break
        if not dropped:
            time.sleep(0.2)  # stay slower than the server however busy this machine is
    stop.set()
    call.cancel()
    assert dropped > 0
    assert frames == sorted(frames) and len(set(frames)) == len(frames)  # dropped, never reordered
    assert 5 in seqs  # the newest action was applied at a chunk boundary
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


def test_stream_errors(running):
    stub = running.stub()
    bad_first = stub.Stream(iter([pb.StreamRequest(action=pb.StreamAction(seq=1))]), metadata=AUTH)
    assert code_of(lambda: list(bad_first)) == grpc.StatusCode.INVALID_ARGUMENT
    unknown = stub.Stream(iter([pb.StreamRequest(start=pb.StreamStart(session_id="nope"))]), metadata=AUTH)
    assert code_of(lambda: list(unknown)) == grpc.StatusCode.NOT_FOUND
    sid = new_world(stub)
    msgs = list(
        stub.Stream(
            iter(
                [
                    pb.StreamRequest(start=pb.StreamStart(session_id=sid)),
                    pb.StreamRequest(
                        action=pb.StreamAction(
                            seq=3, action=pb.Action(control=pb.ControlAction(keys=["nope"]))
                        )
                    ),
                ]
            ),
            metadata=AUTH,
            timeout=60,
        )
    )
    rejected = [m.event for m in msgs if m.WhichOneof("kind") == "event" and m.event.type == 4]
    assert rejected and rejected[0].action_seq == 3 and "unknown key" in rejected[0].message
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


def test_concurrent_streams_lose_nothing(running):
    """A bounded load test: several sessions streaming at once over loopback."""
    stub = running.stub()
    sids = [new_world(stub, seed=i) for i in range(3)]
    results: dict[str, list[int]] = {}

    def run(sid: str) -> None:
        reqs = [pb.StreamRequest(start=pb.StreamStart(session_id=sid, frames=RGB))]
        reqs += [pb.StreamRequest(action=pb.StreamAction(seq=i)) for i in (1, 2)]
        results[sid] = [
            m.frame.frame_index for m in stub.Stream(iter(reqs), metadata=AUTH, timeout=300) if m.frame.data
        ]

    threads = [threading.Thread(target=run, args=(s,)) for s in sids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for sid in sids:
        assert results[sid] == list(range(33, 99)), sid
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


def test_metrics_endpoint(running):
    port = running.server.settings.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "helios_frames_sent_total" in text and "helios_chunk_seconds_bucket" in text
    assert 'helios_errors_total{code="NOT_FOUND"}' in text
