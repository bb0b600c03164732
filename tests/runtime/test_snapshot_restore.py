"""Restore refuses crafted snapshots (issue 19): each is real snapshot bytes, parsed, edited and
signed again — with the engine's own key, to show every field is checked even when the signature
matches, and with format 1's plain sha256, to show the signature is what keeps edits out. Nothing of
a refused snapshot stays behind, and a session beside it steps on."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Any

import pytest
import torch

from helios_runtime.engine import snapshot
from helios_runtime.engine.engine import WorldEngine
from helios_runtime.engine.errors import InvalidInput
from helios_runtime.engine.world_model import WorldModel

KEY = bytes(range(32))
LIMIT = 1280  # the server's default --max-width / --max-height
SIZE = dict(height=64, width=64)

Edit = Callable[[dict[str, torch.Tensor], dict[str, Any]], None]


def craft(data: bytes, key: bytes, edit: Edit) -> bytes:
    """`data` parsed, edited and signed again with `key`."""
    tensors, meta = snapshot.decode(data, key)
    edit(tensors, meta)
    return snapshot.encode(tensors, meta, key)


def sha256_sealed(data: bytes) -> bytes:
    """Signed bytes re-sealed with a plain sha256 of the payload, as format 1 sealed them: what a
    client could compute itself after an edit."""
    payload = data[snapshot.HEADER_BYTES :]
    header = struct.pack("<16sIQ", snapshot.MAGIC, snapshot.FORMAT_VERSION, len(payload))
    return header + hashlib.sha256(payload).digest() + payload


def resized(height: int, width: int) -> Edit:
    """A frame size, with memory tensors of that size, so that only the size itself is wrong."""

    def edit(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        meta["height"], meta["width"] = height, width
        for name in ("history", "anchor"):
            t = tensors[name]
            tensors[name] = torch.zeros(*t.shape[:3], height // 8, width // 8)

    return edit


def setting(name: str, value: Any) -> Edit:
    def edit(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        meta[name] = value

    return edit


def tensor(name: str, make: Callable[[torch.Tensor | None], torch.Tensor]) -> Edit:
    def edit(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        tensors[name] = make(tensors.get(name))

    return edit


def steps(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    meta["settings"]["steps"] = [1_000_000] * len(meta["settings"]["steps"])  # one count per stage


def nan_in(name: str) -> Edit:
    def edit(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[3] = float("nan")

    return edit


def transition(weights: list[Any]) -> Edit:
    def edit(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        meta["prompt_weights"] = weights
        tensors["prompt_source"] = tensors["prompt_current"].clone()

    return edit


def drop_field(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    del meta["chunk"]


def stream_noise_on(device: str) -> Edit:
    def edit(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        meta["noise"], meta["rng_device"] = "stream", device
        tensors["rng_state"] = torch.Generator().get_state()

    return edit


def bad_generator_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    stream_noise_on("cpu")(tensors, meta)
    tensors["rng_state"] = torch.zeros(7, dtype=torch.uint8)


# (edit, what the refusal must name). The first six are issue 19's findings.
CRAFTED: dict[str, tuple[Edit, str]] = {
    "a million denoising steps": (steps, "'settings'"),
    "over the size limit": (
        resized(1536, 64),
        "'height' must be a positive multiple of 64 pixels up to 1280",
    ),
    "off the size multiple": (resized(64, 96), "'width' must be a positive multiple of 64"),
    "a 100,000-character scene": (
        setting("scene", "x" * 100_000),
        "'scene' is 100000 characters; the limit is 4000",
    ),
    "chunk -1": (setting("chunk", -1), "'chunk' must be an int in"),
    "a malformed prompt tensor": (
        tensor("prompt_current", lambda t: t[:, :, :-1].clone()),
        "tensor 'prompt_current' must be",
    ),
    "a prompt tensor of another dtype": (tensor("prompt_current", lambda t: t.double()), "'prompt_current'"),
    "NaN in the memory": (nan_in("history"), "'history' contains NaN"),
    "inf in the prompt": (
        tensor("prompt_current", lambda t: t.clone().fill_(float("inf"))),
        "'prompt_current'",
    ),
    "history of float64": (tensor("history", lambda t: t.double()), "tensor 'history' must be float32"),
    "a negative seed": (setting("seed", -1), "'seed'"),
    "a float seed": (setting("seed", 1.5), "'seed'"),
    "an unknown noise source": (setting("noise", "quantum"), "'noise'"),
    "a generator on a device it does not have": (stream_noise_on("cuda:9"), "'rng_device'"),
    "a generator state that is not one": (bad_generator_state, "'rng_state' is not a generator state"),
    "chunk 0 (before Reset made one)": (setting("chunk", 0), "'chunk'"),
    "a chunk counter past int32": (setting("chunk", 2**40), "'chunk'"),
    "a NUL in the scene": (setting("scene", "a\x00b"), "'scene' contains a NUL"),
    "a lone surrogate in the scene": (setting("scene", "a\ud800"), "'scene' is not valid Unicode"),
    "transition weights out of [0, 1]": (transition([2.0, 1.0]), "'prompt_weights'"),
    "transition weights without a start": (setting("prompt_weights", [0.5]), "missing \\['prompt_source'\\]"),
    "a 10,000-chunk transition": (transition([0.5] * 10_000), "'prompt_weights'"),
    "no anchor": (setting("has_anchor", False), "'has_anchor'"),
    "a size of true": (setting("width", True), "'width'"),
    "an extra tensor": (tensor("extra", lambda t: torch.zeros(1)), "unexpected \\['extra'\\]"),
    "a negative prompt the sampler has no use for": (
        tensor("negative", lambda t: torch.zeros(1)),
        "unexpected \\['negative'\\]",
    ),
    "a missing field": (drop_field, "missing \\['chunk'\\]"),
    "an unknown field": (setting("admin", True), "unknown \\['admin'\\]"),
    "another model": (setting("model", {"name": "other"}), "taken with model"),
    "settings that are not a mapping": (setting("settings", [1, 2]), "'settings'"),
    "a last frame shown of another size": (
        tensor("last_frame", lambda t: torch.zeros(4096, 4096, 3, dtype=torch.uint8)),
        "tensor 'last_frame' must be uint8 \\(64, 64, 3\\)",
    ),
    "a last frame shown of floats": (
        tensor("last_frame", lambda t: torch.zeros(64, 64, 3)),
        "tensor 'last_frame' must be uint8",
    ),
}


@pytest.fixture(scope="module")
def engine(one_thread) -> WorldEngine:
    model = WorldModel.load("tiny", device="cpu", seed=0)
    return WorldEngine(model, max_sessions=3, snapshot_key=KEY, max_height=LIMIT, max_width=LIMIT)


@pytest.fixture(scope="module")
def world(engine) -> tuple[str, bytes]:
    """A bystander session and the snapshot of another, genuine session."""
    bystander = engine.reset("a harbour", seed=1, **SIZE).session_id
    source = engine.reset("a forest", seed=2, **SIZE).session_id
    data = engine.snapshot(source)
    engine.close(source)
    return bystander, data


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_snapshots_are_refused_even_when_signed(engine, world, case):
    _, data = world
    edit, match = CRAFTED[case]
    crafted = craft(data, KEY, edit)
    open_before = set(engine.sessions)
    with pytest.raises(snapshot.SnapshotError, match=match):
        engine.restore(crafted)
    with pytest.raises(snapshot.SnapshotError, match="signature does not match"):
        engine.restore(sha256_sealed(crafted))
    assert set(engine.sessions) == open_before  # nothing half-made holds a slot


def test_a_bystander_steps_on_and_no_refused_restore_took_a_slot(engine, world):
    bystander, data = world
    before = engine.session(bystander).chunk
    for edit, _ in CRAFTED.values():
        with pytest.raises(snapshot.SnapshotError):
            engine.restore(craft(data, KEY, edit))
    # The engine holds 3 sessions: the bystander and two restored ones fit, as if nothing was refused.
    restored = [engine.restore(data), engine.restore(data)]
    results = engine.step_many([(bystander, None), *((sid, None) for sid in restored)], decode=False)
    assert [r.chunk_index for r in results] == [before, 1, 1]
    for sid in restored:
        engine.close(sid)


def test_another_engines_snapshot_is_refused_unless_they_share_the_key(engine, world):
    _, data = world
    model = engine.model
    with pytest.raises(snapshot.SnapshotError, match="another snapshot key"):
        WorldEngine(model).restore(data)  # a random key of its own
    sid = WorldEngine(model, snapshot_key=KEY).restore(data)
    assert isinstance(sid, str)


def test_a_genuine_snapshot_restores_and_continues_exactly(engine, world):
    _, data = world
    a, b = engine.restore(data), engine.restore(data)
    x, y = engine.step(a, "rain", decode=False), engine.step(b, "rain", decode=False)
    assert torch.equal(x.latents, y.latents)
    engine.close(a)
    engine.close(b)


def test_a_stream_noise_session_restores_exactly(engine):
    gen = torch.Generator().manual_seed(5)
    sid = engine.reset("a field", generator=gen, **SIZE).session_id
    data = engine.snapshot(sid)
    restored = engine.restore(data)
    x, y = engine.step(sid, decode=False), engine.step(restored, decode=False)
    assert torch.equal(x.latents, y.latents)
    engine.close(sid)
    engine.close(restored)


def test_reset_and_restore_keep_the_engines_size_limit(engine, world):
    with pytest.raises(InvalidInput, match="at most 1280 pixels"):
        engine.reset("x", height=1344, width=64)
    _, data = world
    big = WorldEngine(engine.model, snapshot_key=KEY)  # the default limit, 4096
    sid = big.restore(craft(data, KEY, resized(1344, 64)))  # fine there...
    with pytest.raises(snapshot.SnapshotError, match="up to 1280"):
        engine.restore(big.snapshot(sid))  # ...not here


def test_restore_into_an_id_in_use_is_refused(engine, world):
    bystander, data = world
    with pytest.raises(InvalidInput, match="must be a new str"):
        engine.restore(data, session_id=bystander)
