"""Snapshots over a real server (issue 19): a client cannot forge one, a foreign server's is refused,
servers sharing a key file restore each other's, and a refused Restore leaves nothing behind while a
bystander session steps on.

The crafted snapshots are `tests/runtime/test_snapshot_restore.py`'s: real snapshot bytes, parsed,
edited and signed again with the server's own key (every field is still checked) or sealed with a
plain sha256 as format 1 was (the signature keeps the edit out).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from helios_runtime.engine.snapshot_key import KEY_ENV
from helios_runtime.server.front.settings import ServerSettings
from helios_sdk._proto.helios.v1 import world_pb2 as pb
from tests.runtime.test_snapshot_restore import CRAFTED, craft, sha256_sealed

from .conftest import AUTH, TOKEN, Handle, new_world, start_server

KEY = bytes(range(64, 96))
NO_FRAMES = pb.FrameOptions(selection=pb.FRAME_SELECTION_NONE)
RGB_LAST = pb.FrameOptions(encoding=pb.FRAME_ENCODING_RGB24, selection=pb.FRAME_SELECTION_LAST)
ISSUE_19 = [  # the crafted snapshots the issue found restored
    "a million denoising steps",
    "over the size limit",
    "off the size multiple",
    "a 100,000-character scene",
    "chunk -1",
    "a malformed prompt tensor",
]
MAX_SESSIONS = 3


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "snapshot.key"
    path.write_text(KEY.hex() + "\n")
    path.chmod(0o600)
    return path


def keyed_settings(key_file: Path) -> ServerSettings:
    return ServerSettings(
        model="tiny",
        port=0,
        token=TOKEN,
        max_sessions=MAX_SESSIONS,
        snapshot_key_file=str(key_file),
        warm_up=False,
    )


@pytest.fixture(scope="module")
def keyed(key_file) -> Iterator[Handle]:
    """A server whose snapshot key the tests know (so they can sign what they craft)."""
    yield from start_server(keyed_settings(key_file))


@pytest.fixture(scope="module")
def world(keyed) -> tuple[str, bytes]:
    """A bystander session on `keyed`, and the bytes of a genuine snapshot of another session."""
    stub = keyed.stub()
    bystander = new_world(stub, seed=1, selection=pb.FRAME_SELECTION_NONE)
    source = new_world(stub, "a forest", seed=2, selection=pb.FRAME_SELECTION_NONE)
    data = stub.Snapshot(pb.SnapshotRequest(session_id=source, include_data=True), metadata=AUTH).data
    stub.CloseSession(pb.CloseSessionRequest(session_id=source), metadata=AUTH)
    return bystander, data


def refused(stub, data: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.Restore(pb.RestoreRequest(data=data), metadata=AUTH)
    return info.value


def step(stub, sid: str) -> int:
    return stub.Step(pb.StepRequest(session_id=sid, frames=NO_FRAMES), metadata=AUTH).chunk.chunk_index


@pytest.mark.parametrize("case", ISSUE_19)
def test_a_crafted_snapshot_is_refused_and_a_bystander_steps_on(keyed, world, case):
    stub = keyed.stub()
    bystander, data = world
    edit, match = CRAFTED[case]
    before = step(stub, bystander)
    crafted = craft(data, KEY, edit)
    error = refused(stub, crafted)  # signed with the server's own key: the field check refuses it
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(match, error.details()), error.details()
    error = refused(stub, sha256_sealed(crafted))  # what a client can seal: the signature refuses it
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "signature does not match" in error.details()
    assert step(stub, bystander) == before + 1


def test_refused_restores_leave_no_session_behind(keyed, world):
    stub = keyed.stub()
    bystander, data = world
    for edit, _ in CRAFTED.values():
        assert refused(stub, craft(data, KEY, edit)).code() == grpc.StatusCode.INVALID_ARGUMENT
    # Format 1, version and all: refused as unsigned.
    old = bytearray(sha256_sealed(data))
    old[16:20] = (1).to_bytes(4, "little")
    error = refused(stub, bytes(old))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "version 1 is unsigned" in error.details()
    # The worker's engine holds as many sessions as the server: had a refused restore left a session
    # behind there, the last of these would fail.
    restored = [
        stub.Restore(pb.RestoreRequest(data=data), metadata=AUTH).session_id for _ in range(MAX_SESSIONS - 1)
    ]
    for sid in restored:
        assert step(stub, sid) == 1
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)
    assert step(stub, bystander) >= 1


def test_another_servers_snapshot_is_refused(running, keyed, world):
    _, ours = world
    stub = running.stub()  # a server with a random key of its own
    error = refused(stub, ours)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "another snapshot key" in error.details()
    sid = new_world(stub, seed=3, selection=pb.FRAME_SELECTION_NONE)
    theirs = stub.Snapshot(pb.SnapshotRequest(session_id=sid, include_data=True), metadata=AUTH).data
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)
    error = refused(keyed.stub(), theirs)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "another snapshot key" in error.details()


def test_servers_sharing_a_key_file_restore_each_others_snapshots(keyed, key_file):
    stub = keyed.stub()
    sid = new_world(stub, seed=7, selection=pb.FRAME_SELECTION_NONE)
    data = stub.Snapshot(pb.SnapshotRequest(session_id=sid, include_data=True), metadata=AUTH).data
    expected = stub.Step(pb.StepRequest(session_id=sid, frames=RGB_LAST), metadata=AUTH).chunk
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)
    servers = start_server(keyed_settings(key_file))  # another server, the same key file
    other = next(servers)
    try:
        twin_stub = other.stub()
        twin = twin_stub.Restore(pb.RestoreRequest(data=data), metadata=AUTH)
        assert twin.chunk_index == 1
        got = twin_stub.Step(pb.StepRequest(session_id=twin.session_id, frames=RGB_LAST), metadata=AUTH).chunk
        assert got.chunk_index == expected.chunk_index
        assert np.array_equal(
            np.frombuffer(got.frames[0].data, np.uint8), np.frombuffer(expected.frames[0].data, np.uint8)
        )
    finally:
        next(servers, None)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)")
def test_workers_get_the_key_in_their_environment_not_their_command_line(keyed):
    pid = keyed.server.pool.workers[0].process.pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert KEY.hex().encode() not in cmdline
    assert f"{KEY_ENV}={KEY.hex()}".encode() in environ
    assert b"--max-width\x001280" in cmdline  # the server's limits travel as arguments
