"""The engine protocol's codec: every message survives the ZeroMQ form; anything else is refused."""

from __future__ import annotations

import asyncio

import pytest

from helios_runtime.engine.errors import (
    Cancelled,
    CapacityExceeded,
    InvalidInput,
    SessionClosed,
    SessionNotFound,
)
from helios_runtime.engine.snapshot import SnapshotError
from helios_runtime.server.protocol.client import EngineClient, WorkerError, WorkerHandle
from helios_runtime.server.protocol.messages import (
    Cancel,
    Close,
    Error,
    Fork,
    Frame,
    Heartbeat,
    Ready,
    Reset,
    Restore,
    Result,
    Snapshot,
    Step,
    decode,
    encode,
)
from helios_sdk import errors as sdk_errors
from helios_sdk.actions import Blend, Control, Move, Prompt, Transition

MESSAGES = [
    Reset("s", "a harbour", 3, 64, 64, "blur", "last", "image", (1, 2, 2, 3), bytes(range(12)), id=5),
    Step("a", Blend(("a", "b"), (1.0, 2.0)), "none", 4),
    Step("a", {"move": "ne", "pan": "stay"}),
    Step("b", Transition("fog", 3)),
    Step("c", Prompt("rain")),
    Step("d", None),
    Step("e", Control(("w", "shift"), 1.0, -2.0, 3.0, 4.0, 0.5)),
    Step("f", Move("ne", "")),
    Fork("a", 1),
    Snapshot("a", 2),
    Restore(b"snapshot bytes", 3),
    Close("z", 4),
    Cancel(9),
    Ready({"name": "tiny", "steps": [2, 2, 2], "actions": {"keys": ["w"], "axes": [], "moves": ["stay"]}}),
    Heartbeat(0.25),
    Frame(1, 2, 3, 160, 96, b"\x00\x01\x02"),
    Result(1, 2, {"denoise": 0.1, "decode": 0.2}, "s", 64, 64, b"snap"),
    Error(1, "NOT_FOUND", "no session 'x'"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_the_wire(message):
    parts = encode(message)
    assert all(isinstance(p, bytes) for p in parts)
    assert decode(parts) == message


def test_blobs_travel_as_their_own_parts():
    header, payload = encode(Frame(1, 0, 32, 160, 96, b"rgb" * 100))
    assert payload == b"rgb" * 100 and len(header) < 16  # a positional header, no field names


@pytest.mark.parametrize(
    "parts",
    [
        [b"not msgpack \xc1"],
        [b"\x92\x63\x01"],  # tag 99
        [b"\x92\xff\x01"],  # tag -1 (no counting from the end)
        [b"\x92\xc3\x01"],  # tag True
        [encode(Cancel(1))[0], b"extra"],
        [encode(Step("a", Prompt("x")))[0].replace(b"prompt", b"prompz")],  # an unknown action kind
        [b"\x93\x01\xa1a\x93\xa6prompt\x01\x02"],  # a Step whose prompt has too many fields
    ],
)
def test_foreign_parts_are_refused(parts):
    with pytest.raises(ValueError, match="not an engine-protocol message"):
        decode(parts)


def test_engine_errors_carry_the_status_the_sdk_raises():
    expected = {
        InvalidInput: sdk_errors.InvalidArgument,
        SnapshotError: sdk_errors.InvalidArgument,
        SessionNotFound: sdk_errors.NotFound,
        SessionClosed: sdk_errors.FailedPrecondition,
        CapacityExceeded: sdk_errors.ResourceExhausted,
        Cancelled: sdk_errors.Cancelled,
    }
    for engine_cls, sdk_cls in expected.items():
        assert sdk_errors.error_class(engine_cls.code) is sdk_cls


# ---------------------------------------------------------------------------------------------------
# EngineClient: a session made for a caller that had gone is closed
# ---------------------------------------------------------------------------------------------------


class _Recorder(EngineClient):
    """A transport that records what leaves; the test delivers the worker's replies by hand."""

    def __init__(self):
        super().__init__([WorkerHandle(0, "cpu", b"w0")])
        self.workers[0].ready.set()
        self.sent: list = []
        self.cancelled: list[int] = []

    async def _send(self, worker, request):
        self.sent.append(request)

    async def _cancel(self, worker, rid):
        self.cancelled.append(rid)


@pytest.mark.parametrize("how", ["deadline", "caller cancelled"])
def test_a_fork_committed_after_its_caller_left_is_closed(how):
    async def body():
        client = _Recorder()
        worker = client.workers[0]
        if how == "deadline":
            with pytest.raises(WorkerError) as failed:
                await client.call(worker, Fork("s1"), timeout=0.05)
            assert failed.value.code == "DEADLINE_EXCEEDED"
        else:
            call = asyncio.ensure_future(client.call(worker, Fork("s1")))
            await asyncio.sleep(0.05)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        fork = client.sent[0]
        assert client.cancelled == [fork.id]
        # The worker had made the twin before the cancel reached it: its result comes late.
        client._deliver(Result(fork.id, session_id="s2"), worker)
        await asyncio.sleep(0.05)
        close = client.sent[-1]
        assert isinstance(close, Close) and close.session_id == "s2"
        client._deliver(Result(close.id), worker)
        await asyncio.sleep(0.05)
        assert not client.abandoned and not client.pending and not client.background

    asyncio.run(body())


def test_an_abandoned_restore_that_failed_or_whose_worker_died_leaves_nothing_behind():
    async def body():
        client = _Recorder()
        worker = client.workers[0]
        for _ in range(2):
            with pytest.raises(WorkerError):
                await client.call(worker, Restore(b"x"), timeout=0.01)
        first, second = client.sent
        client._deliver(Error(first.id, "CANCELLED", "cancelled"), worker)  # the cancel won: no session
        assert list(client.abandoned) == [second.id]
        client._lose(worker, "the worker died")  # its sessions died with it
        client._deliver(Result(second.id, session_id="s9"), worker)
        await asyncio.sleep(0.01)
        assert client.sent == [first, second] and not client.abandoned

    asyncio.run(body())
