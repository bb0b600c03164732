"""Session state pieces of the engine: multi-term memory, noise sources, the snapshot format."""

from __future__ import annotations

import hashlib
import struct

import pytest
import torch

from helios_runtime.engine import snapshot, snapshot_key
from helios_runtime.engine.memory import HISTORY_FRAMES, MultiTermMemory, frame_indices
from helios_runtime.engine.rng import CounterNoise, StreamNoise, mix_seed


def chunk(value: float, frames: int = 9) -> torch.Tensor:
    # Frame f of the chunk holds value + f, so positions in the window are checkable.
    return (
        (value + torch.arange(frames, dtype=torch.float32))
        .view(1, 1, frames, 1, 1)
        .expand(1, 2, frames, 3, 4)
    )


def test_memory_window_matches_the_reference_buffer():
    """The fixed window equals the last 19 frames of the reference's ever-growing history."""
    mem = MultiTermMemory.empty(2, 3, 4, "cpu")
    grown = torch.zeros(1, 2, HISTORY_FRAMES, 3, 4)
    ptr = mem.history.data_ptr()
    for k in range(5):
        new = chunk(100.0 * (k + 1))
        mem.push(new)
        grown = torch.cat([grown, new], dim=2)
        assert torch.equal(mem.history, grown[:, :, -HISTORY_FRAMES:])
    assert mem.history.data_ptr() == ptr  # updated in place, never reallocated
    # T2V: the first chunk's first frame became the anchor.
    assert mem.has_anchor and torch.equal(mem.anchor, chunk(100.0)[:, :, :1])
    inputs = mem.inputs()
    assert inputs["latents_history_long"].shape[2] == 16 and inputs["latents_history_mid"].shape[2] == 2
    assert torch.equal(inputs["latents_history_short"][:, :, 0], mem.anchor[:, :, 0])
    assert torch.equal(inputs["latents_history_short"][:, :, 1], mem.history[:, :, -1])


def test_memory_is_constant_size_and_clone_is_independent():
    mem = MultiTermMemory.empty(16, 6, 10, "cpu")
    size = mem.nbytes()
    for _ in range(50):
        mem.push(torch.randn(1, 16, 9, 6, 10))
    assert mem.nbytes() == size
    twin = mem.clone()
    mem.push(torch.randn(1, 16, 9, 6, 10))
    assert not torch.equal(twin.history, mem.history)


def test_load_history_pads_in_front():
    mem = MultiTermMemory.empty(2, 3, 4, "cpu")
    mem.load_history(chunk(1.0, frames=9))
    assert torch.equal(mem.history[:, :, :10], torch.zeros(1, 2, 10, 3, 4))
    assert torch.equal(mem.history[:, :, 10:], chunk(1.0))
    mem.load_history(chunk(1.0, frames=27))
    assert torch.equal(mem.history, chunk(1.0, frames=27)[:, :, 8:])


def test_frame_indices_are_the_reference_split():
    idx = frame_indices(2, "cpu")
    assert idx["indices_latents_history_short"].tolist() == [[0, 19]] * 2
    assert idx["indices_latents_history_mid"].tolist() == [[17, 18]] * 2
    assert idx["indices_latents_history_long"][0].tolist() == list(range(1, 17))
    assert idx["indices_hidden_states"][0].tolist() == list(range(20, 29))


def test_counter_noise_depends_only_on_seed_and_index():
    a, b = CounterNoise(7), CounterNoise(7)
    x = torch.randn(5, generator=a.generator(3, "cpu"))
    torch.randn(100, generator=b.generator(2, "cpu"))  # other chunks' draws do not matter
    assert torch.equal(x, torch.randn(5, generator=b.generator(3, "cpu")))
    assert not torch.equal(x, torch.randn(5, generator=CounterNoise(8).generator(3, "cpu")))
    assert len({mix_seed(7, k) for k in range(-1, 1000)}) == 1001
    with pytest.raises(ValueError, match="seed must be an int"):
        CounterNoise(-1)


def test_stream_noise_continues_one_generator():
    g = torch.Generator().manual_seed(0)
    source = StreamNoise(g)
    first = torch.randn(3, generator=source.generator(0, "cpu"))
    second = torch.randn(3, generator=source.generator(1, "cpu"))
    ref = torch.Generator().manual_seed(0)
    assert torch.equal(torch.cat([first, second]), torch.randn(6, generator=ref))


# ---------------------------------------------------------------------------------------------------
# Snapshot bytes
# ---------------------------------------------------------------------------------------------------


KEY = bytes(range(32))


def sample_snapshot() -> tuple[bytes, dict, dict]:
    tensors = {"history": torch.randn(1, 16, 19, 6, 10), "anchor": torch.randn(1, 16, 1, 6, 10).bfloat16()}
    meta = {"chunk": 7, "seed": 3, "prompt": "a cat"}
    return snapshot.encode(tensors, meta, KEY), tensors, meta


def sha256_signed(data: bytes, version: int = snapshot.FORMAT_VERSION) -> bytes:
    """`data` re-sealed the way format 1 sealed it: a plain sha256 of the payload, which anyone can
    recompute after an edit (issue 19's forged snapshots)."""
    payload = data[snapshot.HEADER_BYTES :]
    header = struct.pack("<16sIQ", snapshot.MAGIC, version, len(payload))
    return header + hashlib.sha256(payload).digest() + payload


def test_snapshot_round_trip_is_exact():
    data, tensors, meta = sample_snapshot()
    got, got_meta = snapshot.decode(data, KEY)
    assert got_meta == meta
    assert got.keys() == tensors.keys()
    for k in tensors:
        assert got[k].dtype == tensors[k].dtype and torch.equal(got[k], tensors[k])


@pytest.mark.parametrize(
    "mangle,match",
    [
        (lambda d: d[:10], "bad magic"),
        (lambda d: b"PNG" + d[3:], "bad magic"),
        (lambda d: d[:-5], "truncated"),
        (lambda d: d + b"x", "trailing data"),
        (lambda d: d[:16] + bytes([d[16] ^ 1]) + d[17:], "version"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 0xFF]), "signature does not match"),
        (lambda d: d[:100] + bytes([d[100] ^ 0x10]) + d[101:], "signature does not match"),
        (lambda d: d[:40] + bytes([d[40] ^ 1]) + d[41:], "signature does not match"),  # the signature
        (sha256_signed, "signature does not match"),  # an edit re-sealed as format 1 sealed it
        (lambda d: sha256_signed(d, version=1), "version 1 is unsigned"),
    ],
)
def test_bad_snapshots_are_rejected_clearly(mangle, match):
    data, _, _ = sample_snapshot()
    with pytest.raises(snapshot.SnapshotError, match=match):
        snapshot.decode(mangle(data), KEY)


def test_snapshot_under_another_key_is_refused():
    data, _, _ = sample_snapshot()
    with pytest.raises(snapshot.SnapshotError, match="another snapshot key"):
        snapshot.decode(data, bytes(32))


def test_snapshot_that_is_not_bytes():
    with pytest.raises(snapshot.SnapshotError, match="is bytes"):
        snapshot.decode("hello", KEY)  # type: ignore[arg-type]


def test_short_keys_are_refused():
    with pytest.raises(ValueError, match="at least 32 bytes"):
        snapshot.encode({}, {}, b"short")
    with pytest.raises(ValueError, match="is bytes"):
        snapshot.decode(b"", "a str key")  # type: ignore[arg-type]


def test_where_a_server_gets_its_snapshot_key(tmp_path):
    key = bytes(range(1, 33))
    path = tmp_path / "snapshot.key"
    path.write_text(key.hex() + "\n")
    env = {snapshot_key.KEY_ENV: bytes(32).hex()}
    assert snapshot_key.load_key(path, env) == (key, f"from {path}")  # the file wins
    assert snapshot_key.load_key(None, env)[0] == bytes(32)
    random_a, origin = snapshot_key.load_key(None, {})
    assert "random" in origin and len(random_a) == 32 and random_a != snapshot_key.load_key(None, {})[0]
    assert snapshot_key.key_from_env({snapshot_key.KEY_ENV: " "}) is None
    with pytest.raises(ValueError, match="at least 32 bytes"):
        snapshot_key.parse_key("abcd", "x")
    with pytest.raises(ValueError, match=r"\$HELIOS_SNAPSHOT_KEY: a snapshot key is written as hex"):
        snapshot_key.key_from_env({snapshot_key.KEY_ENV: "not hex at all"})
    path.write_text("zz" * 32)
    with pytest.raises(ValueError, match=r"snapshot\.key: a snapshot key is written as hex"):
        snapshot_key.load_key(path, {})
