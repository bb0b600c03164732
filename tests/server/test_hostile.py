"""Hostile clients (issue 19): each attack reproduced against a real server, answered with its
documented status code, while a bystander session goes on stepping.

Decoding bombs, undeserialisable bytes, huge ids and blends, racing admissions, retried and
timed-out steps, event floods. Workers' and snapshots' attacks: test_faults.py, test_snapshots.py.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import psutil
import pytest

from helios_runtime.server.front.encoding import InputLimits, decode_image, decode_video, image_size
from helios_runtime.server.front.settings import ServerSettings
from helios_sdk._proto.helios.v1 import world_pb2 as pb

from .conftest import AUTH, TOKEN, new_world, start_server

S = grpc.StatusCode
ALL = pb.FrameOptions(encoding=pb.FRAME_ENCODING_RGB24, selection=pb.FRAME_SELECTION_ALL)
METHOD = "/helios.v1.WorldService/"


@pytest.fixture(autouse=True)
def tidy(request):
    """Close what a test left open on the shared server, so one failure cannot fill its session
    limit and fail the tests after it."""
    if "running" not in request.fixturenames:
        yield
        return
    handle = request.getfixturevalue("running")
    service = handle.server.service
    before = set(service.sessions)
    yield
    import asyncio

    async def close_new() -> None:
        for s in [s for sid, s in list(service.sessions.items()) if sid not in before]:
            await service._close(s)

    asyncio.run_coroutine_threadsafe(close_new(), handle.loop).result(60)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def png(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG: ~0.2 KB per megapixel compressed, width·height·3 bytes decoded."""
    row = b"\0" * (1 + width * 3)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def mp4(frames: int, size: int = 64) -> bytes:
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        black = np.zeros((size, size, 3), np.uint8)
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(black, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


class Bystander:
    """A session stepping in a thread while an attack runs: it must never fail."""

    def __init__(self, stub):
        self.stub, self.sid = stub, new_world(stub)
        self.chunks, self.errors = [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                reply = self.stub.Step(pb.StepRequest(session_id=self.sid), metadata=AUTH, timeout=120)
                self.chunks.append(reply.chunk.chunk_index)
            except grpc.RpcError as exc:  # pragma: no cover - the failure the tests look for
                self.errors.append(exc)
                return

    def __enter__(self) -> Bystander:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        deadline = time.monotonic() + 120
        while len(self.chunks) < 2 and not self.errors and time.monotonic() < deadline:
            time.sleep(0.05)  # it stepped during and after the attack
        self.stop.set()
        self.thread.join(150)
        assert not self.errors, self.errors
        assert self.chunks == list(range(1, len(self.chunks) + 1))


# ---------------------------------------------------------------------------------------------------
# Decoding: caps before the pixels exist
# ---------------------------------------------------------------------------------------------------


def test_image_sizes_are_read_from_headers_without_decoding():
    from PIL import Image

    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP"):
        buf = io.BytesIO()
        Image.new("RGB", (70, 30)).save(buf, format=fmt)
        assert image_size(buf.getvalue()) == (70, 30), fmt
    assert image_size(b"not an image") is None
    limits = InputLimits(max_side=512, max_frames=40)
    with pytest.raises(ValueError, match="limit is 512"):
        decode_image(png(600, 8), limits=limits)
    assert decode_image(png(64, 32), limits=limits).shape == (32, 64, 3)
    with pytest.raises(ValueError, match="more than 40 frames"):
        decode_video(mp4(80), limits=limits)
    assert decode_video(mp4(40), limits=limits).shape == (40, 64, 64, 3)


def test_decompression_bombs_are_refused_before_decoding(running):
    stub = running.stub()
    fresh = stub.CreateSession(pb.CreateSessionRequest(width=64, height=64), metadata=AUTH).session_id
    bomb = png(8000, 8000)  # ~190 KB that decodes to 192 MB (the attack: 1.6 GB in the front)
    long_video = mp4(640)  # 640 black frames in a few KB (the attack: +1 GB and 63 s in the worker)
    me = psutil.Process()
    rss = me.memory_info().rss
    with Bystander(running.stub()):
        for source in (
            {"image": pb.Image(data=bomb)},
            {"video": pb.Video(data=long_video)},
            {"video": pb.Video(frames=[pb.Image(data=png(64, 64))] * 200)},
            {"image": pb.Image(data=b"\0" * 3 * 5000, width=5000, height=1)},  # raw, too wide
        ):
            started = time.monotonic()
            call = lambda: stub.Reset(pb.ResetRequest(session_id=fresh, prompt="x", **source), metadata=AUTH)  # noqa: B023, E731
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == S.INVALID_ARGUMENT, info.value.details()
            assert time.monotonic() - started < 30
    grown = (me.memory_info().rss - rss) / 2**20
    assert grown < 150, f"the front (this process) grew {grown:.0f} MB on refused inputs"
    stub.CloseSession(pb.CloseSessionRequest(session_id=fresh), metadata=AUTH)


# ---------------------------------------------------------------------------------------------------
# Bytes that are not a request, oversized fields
# ---------------------------------------------------------------------------------------------------


def test_unparseable_requests_are_invalid_argument_not_unknown(running):
    channel = grpc.insecure_channel(running.target)
    raw = {
        name: channel.unary_unary(METHOD + name, request_serializer=None, response_deserializer=None)
        for name in ("Step", "Reset", "CreateSession", "GetServerInfo")
    }
    invalid_utf8 = b"\x0a\x02\xff\xfe"  # field 1 (session_id), a string of two bytes that are not UTF-8
    garbage = b"\xc1\xff\xff\xff\xff\xff\xff"
    for name, call in raw.items():
        # Only Step and Reset have a string as field 1; the others skip it as an unknown field.
        for data in (invalid_utf8, garbage) if name in ("Step", "Reset") else (garbage,):
            with pytest.raises(grpc.RpcError) as info:
                call(data, metadata=AUTH, timeout=30)
            assert info.value.code() == S.INVALID_ARGUMENT, (name, data, info.value.details())
    stream = channel.stream_stream(METHOD + "Stream", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        list(stream(iter([garbage]), metadata=AUTH, timeout=30))
    assert info.value.code() == S.INVALID_ARGUMENT
    # After a good start, bad bytes are rejected actions; the stream goes on.
    stub = running.stub()
    sid = new_world(stub)
    start = pb.StreamRequest(start=pb.StreamStart(session_id=sid)).SerializeToString()
    step = pb.StreamRequest(action=pb.StreamAction(seq=1)).SerializeToString()
    replies = [
        pb.StreamResponse.FromString(r)
        for r in stream(iter([start, garbage, step]), metadata=AUTH, timeout=120)
    ]
    events = [r.event.type for r in replies if r.WhichOneof("kind") == "event"]
    assert pb.SESSION_EVENT_TYPE_ACTION_REJECTED in events and pb.SESSION_EVENT_TYPE_CHUNK_DONE in events
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


def test_huge_ids_and_blends_are_refused_briefly(running):
    stub = running.stub()
    sid = new_world(stub)
    huge = "x" * (1 << 20)
    with pytest.raises(grpc.RpcError) as info:
        stub.Step(pb.StepRequest(session_id=huge), metadata=AUTH)
    assert info.value.code() == S.NOT_FOUND and len(info.value.details()) < 200
    with pytest.raises(grpc.RpcError) as info:
        stub.Restore(pb.RestoreRequest(snapshot_id=huge), metadata=AUTH)
    assert info.value.code() == S.NOT_FOUND and len(info.value.details()) < 200
    blend = pb.BlendAction(prompts=[pb.WeightedPrompt(text="p" * 1000, weight=1.0)] * 2000)
    assert (
        code_of(
            lambda: stub.Step(pb.StepRequest(session_id=sid, action=pb.Action(blend=blend)), metadata=AUTH)
        )
        == S.INVALID_ARGUMENT
    )
    assert stub.Step(pb.StepRequest(session_id=sid), metadata=AUTH).chunk.chunk_index == 1
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


# ---------------------------------------------------------------------------------------------------
# Sessions: admission, pruning, idleness
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def small_server():
    gen = start_server(ServerSettings(model="tiny", port=0, token=TOKEN, max_sessions=4, idle_timeout_s=300))
    yield next(gen)
    next(gen, None)


def test_concurrent_forks_and_restores_never_exceed_the_limit(small_server):
    stub = small_server.stub()
    a, b = new_world(stub), new_world(stub)  # 2 of 4 slots taken: 2 free
    snap = stub.Snapshot(pb.SnapshotRequest(session_id=a), metadata=AUTH).snapshot_id
    calls = [lambda: stub.Fork(pb.ForkRequest(session_id=a), metadata=AUTH, timeout=120)] * 3 + [
        lambda: stub.Restore(pb.RestoreRequest(snapshot_id=snap), metadata=AUTH, timeout=120)
    ] * 3
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(c) for c in calls]
    made, refused = [], []
    for f in futures:
        try:
            reply = f.result()
            made.append(reply.session_id)
        except grpc.RpcError as exc:
            assert exc.code() == S.RESOURCE_EXHAUSTED, exc.details()
            refused.append(exc)
    assert len(made) == 2 and len(refused) == 4
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=AUTH)
    assert info.active_sessions == 4
    for sid in (a, b, *made):
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


def test_closed_sessions_are_pruned_and_still_answer_closed(small_server):
    stub = small_server.stub()
    service = small_server.server.service
    ids = []
    for _ in range(30):
        sid = stub.CreateSession(pb.CreateSessionRequest(width=64, height=64), metadata=AUTH).session_id
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)
        ids.append(sid)
    assert len(service.sessions) == 0  # the table holds open sessions only
    with pytest.raises(grpc.RpcError) as info:
        stub.Step(pb.StepRequest(session_id=ids[0]), metadata=AUTH)
    assert info.value.code() == S.FAILED_PRECONDITION and "closed" in info.value.details()
    stub.CloseSession(pb.CloseSessionRequest(session_id=ids[0]), metadata=AUTH)  # twice is fine


def test_a_busy_session_is_never_idle_expired(small_server):
    stub = small_server.stub()
    service, loop = small_server.server.service, small_server.loop
    sid = new_world(stub)
    s = service.sessions[sid]

    async def expire_while_busy() -> bool:
        s.busy += 1  # a request running on it, as during a long Reset
        s.last_active = 0.0  # and idle for ages by the clock
        try:
            await service.expire_idle()
            return s.closed
        finally:
            s.busy -= 1

    import asyncio

    assert asyncio.run_coroutine_threadsafe(expire_while_busy(), loop).result(30) is False
    assert stub.Step(pb.StepRequest(session_id=sid), metadata=AUTH).chunk.chunk_index == 1
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


# ---------------------------------------------------------------------------------------------------
# Steps: idempotent by action_seq; deadlines never advance a session twice
# ---------------------------------------------------------------------------------------------------


def test_a_retried_step_returns_its_chunk_instead_of_advancing(running):
    stub = running.stub()
    sid = new_world(stub)
    prompt = pb.Action(prompt=pb.PromptAction(text="a storm"))
    first = stub.Step(pb.StepRequest(session_id=sid, action=prompt, action_seq=1, frames=ALL), metadata=AUTH)
    again = stub.Step(pb.StepRequest(session_id=sid, action=prompt, action_seq=1, frames=ALL), metadata=AUTH)
    assert again.chunk.chunk_index == first.chunk.chunk_index == 1
    assert [f.data for f in again.chunk.frames] == [f.data for f in first.chunk.frames]
    assert stub.Step(pb.StepRequest(session_id=sid, action_seq=2), metadata=AUTH).chunk.chunk_index == 2
    assert code_of(lambda: stub.Step(pb.StepRequest(session_id=sid, action_seq=1), metadata=AUTH)) == (
        S.FAILED_PRECONDITION
    )
    assert stub.Step(pb.StepRequest(session_id=sid), metadata=AUTH).chunk.chunk_index == 3  # seq 0: always
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


@pytest.mark.parametrize("timeout", [0.05, 0.15, 0.3])
def test_a_step_that_timed_out_is_retried_without_advancing_twice(running, timeout):
    """Whether the timed-out attempt stopped before it committed or had committed, a retry with
    the same action_seq gives the next chunk exactly once, with the frames an untroubled session
    gets (a twin forked before the attempt steps with no deadline)."""
    stub = running.stub()
    sid = new_world(stub)
    twin = stub.Fork(pb.ForkRequest(session_id=sid), metadata=AUTH).session_id
    try:  # the deadline usually lands mid-step; on a fast moment the step may beat it
        stub.Step(pb.StepRequest(session_id=sid, action_seq=9, frames=ALL), metadata=AUTH, timeout=timeout)
    except grpc.RpcError as exc:
        assert exc.code() == S.DEADLINE_EXCEEDED, exc.details()
    retried = stub.Step(pb.StepRequest(session_id=sid, action_seq=9, frames=ALL), metadata=AUTH, timeout=120)
    calm = stub.Step(pb.StepRequest(session_id=twin, frames=ALL), metadata=AUTH, timeout=120)
    assert retried.chunk.chunk_index == calm.chunk.chunk_index == 1
    assert [f.data for f in retried.chunk.frames] == [f.data for f in calm.chunk.frames]
    nxt = stub.Step(pb.StepRequest(session_id=sid, action_seq=10), metadata=AUTH, timeout=120)
    assert nxt.chunk.chunk_index == 2
    for s in (sid, twin):
        stub.CloseSession(pb.CloseSessionRequest(session_id=s), metadata=AUTH)


# ---------------------------------------------------------------------------------------------------
# Defaults a stock client can read; streams that stay bounded
# ---------------------------------------------------------------------------------------------------


def test_unary_defaults_fit_a_stock_clients_4_mib(running):
    """A default-options channel (4 MiB receive limit, like grpcurl or a default Unity / Unreal
    channel) and default request fields: the reply is the last frame and fits."""
    from helios_sdk._proto.helios.v1 import world_pb2_grpc as pb_grpc

    stub = pb_grpc.WorldServiceStub(grpc.insecure_channel(running.target))  # no options at all
    sid = stub.CreateSession(pb.CreateSessionRequest(width=256, height=256), metadata=AUTH).session_id
    reset = stub.Reset(pb.ResetRequest(session_id=sid, prompt="x"), metadata=AUTH, timeout=300).chunk
    step = stub.Step(pb.StepRequest(session_id=sid), metadata=AUTH, timeout=300).chunk
    for chunk in (reset, step):  # all 33 raw frames would be 6.5 MB
        assert [f.index_in_chunk for f in chunk.frames] == [32]
        assert chunk.frames[0].encoding == pb.FRAME_ENCODING_RGB24
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


@pytest.mark.parametrize(
    ("width", "height", "encoding"),
    [
        (64, 64, pb.FRAME_ENCODING_RGB24),
        (1280, 1088, pb.FRAME_ENCODING_RGB24),
        (1280, 1152, pb.FRAME_ENCODING_JPEG),
    ],
)
def test_unary_defaults_switch_to_jpeg_when_a_raw_frame_would_not_fit(width, height, encoding):
    from helios_runtime.server.front.service import STOCK_CLIENT_BYTES, FrontSession, WorldService

    s = FrontSession("s", None, 0, width, height)
    chosen = WorldService._unary_options(s, pb.FrameOptions())
    assert chosen.selection == pb.FRAME_SELECTION_LAST and chosen.encoding == encoding
    if encoding == pb.FRAME_ENCODING_RGB24:
        assert width * height * 3 < STOCK_CLIENT_BYTES
    explicit = WorldService._unary_options(s, pb.FrameOptions(selection=pb.FRAME_SELECTION_ALL))
    assert explicit.selection == pb.FRAME_SELECTION_ALL  # an explicit choice is kept


def test_a_flood_of_bad_actions_is_answered_in_full_with_bounded_buffers(running):
    stub = running.stub()
    sid = new_world(stub)
    bad = pb.Action(blend=pb.BlendAction(prompts=[pb.WeightedPrompt(text="x", weight=-1.0)]))
    count = 600

    def requests():
        yield pb.StreamRequest(start=pb.StreamStart(session_id=sid))
        for i in range(count):
            yield pb.StreamRequest(action=pb.StreamAction(seq=i + 1, action=bad))

    service = running.server.service
    peak = [0]

    def watch(stop: threading.Event) -> None:  # the outbox of every stream, sampled
        while not stop.is_set():
            try:  # (the attribute must exist: a missing one fails the test through `peak`)
                for s in list(service.streams):
                    peak[0] = max(peak[0], s.events_waiting)
            except RuntimeError:  # the set changed while being copied: sample again
                pass
            time.sleep(0.001)

    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stop,), daemon=True)
    watcher.start()
    call = stub.Stream(requests(), metadata=AUTH, timeout=120)
    rejected = 0
    for i, msg in enumerate(call):
        if i < 50:
            time.sleep(0.02)  # read slowly at first: the server must push back, not pile up
        if msg.WhichOneof("kind") == "event" and msg.event.type == pb.SESSION_EVENT_TYPE_ACTION_REJECTED:
            rejected += 1
    stop.set()
    watcher.join(5)
    assert rejected == count  # none lost
    from helios_runtime.server.front.stream import MAX_PENDING_EVENTS

    assert 0 < peak[0] <= MAX_PENDING_EVENTS + 1
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


def test_dropped_frames_are_counted_exactly(running):
    """Every frame the server made for a lockstep stream either arrives or is counted dropped."""
    stub = running.stub(small_window=True)
    sid = new_world(stub)
    chunks = 4
    requests = [pb.StreamRequest(start=pb.StreamStart(session_id=sid, frames=ALL))] + [
        pb.StreamRequest(action=pb.StreamAction(seq=i + 1)) for i in range(chunks)
    ]
    call = stub.Stream(iter(requests), metadata=AUTH, timeout=180)
    frames = dropped = done = 0
    for i, msg in enumerate(call):
        if i == 1:
            time.sleep(4)  # fall behind once, so the bounded buffer drops
        if msg.WhichOneof("kind") == "frame":
            frames += 1
        elif msg.event.type == pb.SESSION_EVENT_TYPE_FRAMES_DROPPED:
            dropped += msg.event.dropped_frames
        elif msg.event.type == pb.SESSION_EVENT_TYPE_CHUNK_DONE:
            done += 1
    assert done == chunks
    assert frames + dropped == 33 * chunks, (frames, dropped)
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)
