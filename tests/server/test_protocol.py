"""The engine protocol's codec: every message survives the ZeroMQ form; anything else is refused."""

from __future__ import annotations

import pytest

from helios_runtime.engine.errors import (
    Cancelled,
    CapacityExceeded,
    InvalidInput,
    SessionClosed,
    SessionNotFound,
)
from helios_runtime.engine.snapshot import SnapshotError
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
from helios_sdk.actions import Blend, Control, Prompt, Transition

MESSAGES = [
    Reset("s", "a harbour", 3, 64, 64, "blur", "last", "image", (1, 2, 2, 3), bytes(range(12)), id=5),
    Step("a", Blend(("a", "b"), (1.0, 2.0)), "none", 4),
    Step("a", {"move": "ne", "pan": "stay"}),
    Step("b", Transition("fog", 3)),
    Step("c", Prompt("rain")),
    Step("d", None),
    Step("e", Control(("w", "shift"), 1.0, -2.0, 3.0, 4.0, 0.5)),
    Fork("a", 1),
    Snapshot("a", 2),
    Restore(b"snapshot bytes", 3),
    Close("z", 4),
    Cancel(9),
    Ready({"name": "tiny", "steps": [2, 2, 2]}),
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
