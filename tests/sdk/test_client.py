"""HeliosClient and AsyncHeliosClient against a real server: handshake, frames in every encoding,
streams, fork / snapshot / restore, typed errors."""

from __future__ import annotations

import asyncio
import warnings

import numpy as np
import pytest

from helios_sdk import errors
from helios_sdk.aio import AsyncHeliosClient
from helios_sdk.client import HeliosClient, Retry, check_version
from helios_sdk.messages import ServerInfo, StreamEvent, StreamFrame

from .conftest import SIZE, TOKEN


def _info(version: str) -> ServerInfo:
    fields = dict.fromkeys(ServerInfo.__dataclass_fields__, 0)
    return ServerInfo(**{**fields, "api_version": version, "encodings": ()})


def test_handshake(client):
    info = client.server_info()
    assert info.api_version.startswith("1.") and info.model == "tiny"
    assert info.frames_per_chunk == 33 and "jpeg" in info.encodings and info.auth_required


def test_version_check_refuses_another_major_and_warns_on_newer_minor():
    with pytest.raises(errors.VersionMismatch, match=r"speaks helios API '2\.0'"):
        check_version(_info("2.0"), "host:1")
    with pytest.warns(UserWarning, match="newer than this client"):
        check_version(_info("1.7"), "host:1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_version(_info("1.0"), "host:1")


def test_frames_decode_equal_across_encodings(client):
    session = client.create_session(**SIZE)
    first = client.reset(session, "a harbour at dusk", seed=3)
    assert first.frames.shape == (33, 64, 64, 3) and first.frames.dtype == np.uint8
    assert first.frame_indices == tuple(range(33)) and first.chunk_index == 0
    twins = [client.fork(session) for _ in range(2)]
    raw = client.step(session, "rain")
    jpeg = client.step(twins[0], "rain", encoding="jpeg")
    h264 = client.step(twins[1], "rain", encoding="h264")
    assert raw.chunk_index == jpeg.chunk_index == h264.chunk_index == 1
    assert raw.frame_indices == tuple(range(33, 66))
    # The tiny model's random weights make high-frequency noise, JPEG's and H.264's worst case: the
    # lossy frames must sit far closer to the raw ones than another world's frames do.
    elsewhere = client.step(twins[0], "a desert").frames
    far = np.abs(elsewhere.astype(np.int16) - raw.frames).mean()
    for other, tolerance in ((jpeg, 16.0), (h264, 24.0)):
        assert other.frames.shape == raw.frames.shape
        diff = np.abs(other.frames.astype(np.int16) - raw.frames).mean()
        assert diff < tolerance and diff < far / 2, (diff, far)
    last = client.step(session, None, selection="last")
    assert last.frames.shape == (1, 64, 64, 3) and last.frame_indices == (98,)
    for sid in (session, *twins):
        client.close_session(sid)


def test_stream_and_snapshot_restore_continue_identically(client):
    session = client.create_session(**SIZE)
    client.reset(session, "a lighthouse", seed=5)
    snap = client.snapshot(session, include_data=True)
    assert snap.size_bytes == len(snap.data) > 0 and len(snap.sha256) == 64
    by_id, by_bytes = client.restore(snap), client.restore(snap.data)
    items = list(client.stream(session, ["fog", None]))
    frames = [i for i in items if isinstance(i, StreamFrame)]
    events = [i.type for i in items if isinstance(i, StreamEvent)]
    assert len(frames) == 66 and events.count("chunk_done") == 2
    assert [f.frame_index for f in frames] == list(range(33, 99))
    streamed = np.stack([f.image for f in frames[:33]])
    assert np.array_equal(client.step(by_id, "fog").frames, streamed)
    assert np.array_equal(client.step(by_bytes, "fog").frames, streamed)
    for sid in (session, by_id, by_bytes):
        client.close_session(sid)
    client.close_session(session)  # twice is fine


def test_errors_are_typed_and_name_the_cause(address, client):
    with pytest.raises(errors.NotFound, match=r"Step at .* NOT_FOUND: .*no-such"):
        client.step("no-such-session", "x")
    with pytest.raises(errors.InvalidArgument):
        client.create_session(width=100, height=64)
    fresh = client.create_session(**SIZE)
    with pytest.raises(errors.FailedPrecondition):
        client.step(fresh, "x")
    with pytest.raises(errors.InvalidArgument, match="keys"):
        client.reset(fresh, "x", seed=1)
        client.step(fresh, {"keys": ["not-a-key"]})
    client.close_session(fresh)
    with pytest.raises(errors.Unauthenticated):
        HeliosClient(address, token="wrong")
    with pytest.raises(errors.Unavailable, match=r"127\.0\.0\.1:1"):
        HeliosClient("127.0.0.1:1", TOKEN, retry=Retry(attempts=2, initial_s=0.01))
    assert isinstance(errors.error_class("DEADLINE_EXCEEDED")("x"), errors.DeadlineExceeded)
    with pytest.raises(ValueError, match="encoding must be one of"):
        client.step("any", "x", encoding="png")


def test_async_client_steps_concurrently(address):
    async def main() -> list[np.ndarray]:
        async with AsyncHeliosClient(address, TOKEN) as client:
            sessions = [await client.create_session(**SIZE) for _ in range(2)]
            await asyncio.gather(*(client.reset(s, "a forest", seed=11) for s in sessions))
            chunks = await asyncio.gather(*(client.step(s, "snow") for s in sessions))
            frames = 0
            async for item in client.stream(sessions[0], [None]):
                frames += isinstance(item, StreamFrame)
            assert frames == 33
            for s in sessions:
                await client.close_session(s)
            return [c.frames for c in chunks]

    a, b = asyncio.run(main())
    assert a.shape == (33, 64, 64, 3) and np.array_equal(a, b)  # same seed and action, same world
