"""The seam blend (engine/seam.py): a chunk's first frames eased from the last frame shown, an engine
option that is off for Helios (parity) and on for the toy world; the last frame shown is session
state, carried by fork and snapshot."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helios_runtime.engine.engine import WorldEngine
from helios_runtime.engine.seam import SeamBlend, blend_chunk, check_frames, weight
from helios_runtime.engine.world_model import TOY_FOLDER, WorldModel
from helios_runtime.model.checkpoint import CheckpointError

SIZE = dict(height=64, width=64)
ACTIONS = ["a quiet forest", None, "a quiet forest at night"]


@pytest.fixture(scope="module")
def model(one_thread) -> WorldModel:
    return WorldModel.load("tiny", device="cpu", seed=0)


def run(engine: WorldEngine, actions=ACTIONS, decode=(True, True, True), seed=5):
    first = engine.reset("a quiet forest", seed=seed, **SIZE)
    chunks = [first]
    for a, d in zip(actions, decode, strict=True):
        chunks.append(engine.step(first.session_id, a, decode=d))
    return first.session_id, chunks


def test_weights_fade_linearly_and_end_inside_the_chunk():
    assert [weight(j, 2) for j in range(4)] == pytest.approx([2 / 3, 1 / 3, 0, 0])
    assert [weight(j, 1) for j in range(2)] == [0.5, 0.0]
    assert all(weight(j, 0) == 0 for j in range(33))
    for bad in (-1, 33, 1.5, True, "2", None):
        with pytest.raises(ValueError, match="seam blend frames must be an int in \\[0, 32\\]"):
            check_frames(bad)


def test_the_first_frame_moves_a_third_of_the_way_from_the_last_frame_shown():
    previous = torch.full((2, 3, 3), 90, dtype=torch.uint8)
    chunk = torch.stack([torch.full((2, 3, 3), v, dtype=torch.uint8) for v in (30, 33, 36, 39)])
    seam = SeamBlend(2, previous)
    out = [seam(j, chunk[j]) for j in range(4)]
    # d = 90 - 30 = 60: frame 0 gets 2/3 of it, frame 1 a third, frames 2 on nothing.
    assert [int(f[0, 0, 0]) for f in out] == [70, 53, 36, 39]
    assert all(f.dtype == torch.uint8 for f in out)
    # Clamped at the ends of the range, and the whole-chunk form agrees with the streaming one.
    bright = np.full((2, 3, 3), 255, np.uint8)
    dark = np.zeros((3, 2, 3, 3), np.uint8)
    assert blend_chunk(dark, bright, 2)[:, 0, 0, 0].tolist() == [170, 85, 0]
    assert np.array_equal(blend_chunk(chunk.numpy(), previous.numpy(), 2), torch.stack(out).numpy())
    assert blend_chunk(chunk.numpy(), None, 2) is not None
    assert np.array_equal(blend_chunk(chunk.numpy(), None, 2), chunk.numpy())
    with pytest.raises(ValueError, match="the last frame shown is"):
        SeamBlend(2, torch.zeros(4, 4, 3, dtype=torch.uint8))(0, chunk[0])


def test_off_by_default_no_frame_kept_and_the_frames_are_the_models(model):
    engine = WorldEngine(model)
    assert model.seam_blend == 0 and engine.seam_blend == 0
    sid, _ = run(engine)
    assert engine.session(sid).last_frame is None
    with pytest.raises(ValueError, match="seam blend frames"):
        WorldEngine(model, seam_blend=40)


def test_on_each_chunk_after_the_first_is_eased_from_the_last_frame_shown(model):
    _, plain = run(WorldEngine(model, seam_blend=0))
    engine = WorldEngine(model, seam_blend=2)
    streamed: list[torch.Tensor] = []
    first = engine.reset("a quiet forest", seed=5, **SIZE)
    assert torch.equal(first.frames, plain[0].frames)  # nothing was shown before the first chunk
    blended = [first]
    for a in ACTIONS:
        blended.append(engine.step(first.session_id, a, on_frame=lambda i, f: streamed.append(f)))
    for k in range(1, len(plain)):
        expected = blend_chunk(plain[k].frames.numpy(), blended[k - 1].frames[-1].numpy(), 2)
        assert np.array_equal(blended[k].frames.numpy(), expected)
        assert not torch.equal(blended[k].frames[:2], plain[k].frames[:2])
        assert torch.equal(blended[k].frames[2:], plain[k].frames[2:])
        assert torch.equal(blended[k].latents, plain[k].latents)  # pixels only: the world is the model's
    # What on_frame streams is what is returned.
    assert torch.equal(torch.stack(streamed), torch.cat([c.frames for c in blended[1:]]))
    assert torch.equal(engine.session(first.session_id).last_frame, blended[-1].frames[-1])


def test_a_chunk_not_decoded_leaves_nothing_to_blend_from(model):
    _, plain = run(WorldEngine(model, seam_blend=0))
    engine = WorldEngine(model, seam_blend=2)
    sid, chunks = run(engine, decode=(True, False, True))
    assert chunks[2].frames is None
    assert torch.equal(chunks[3].frames, plain[3].frames)  # nothing shown before it: not blended
    assert engine.session(sid).last_frame is not None


@pytest.mark.parametrize("copy", ["fork", "snapshot"])
def test_fork_and_snapshot_carry_the_last_frame_shown(model, copy):
    engine = WorldEngine(model, seam_blend=2, max_sessions=4)
    sid, _ = run(engine, actions=ACTIONS[:1], decode=(True,))
    twin = engine.fork(sid) if copy == "fork" else engine.restore(engine.snapshot(sid))
    assert torch.equal(engine.session(twin).last_frame, engine.session(sid).last_frame)
    a = engine.step(sid, "a quiet forest at night")
    b = engine.step(twin, "a quiet forest at night")
    assert torch.equal(a.frames, b.frames)
    # A snapshot of an engine without the blend restores on one with it, and the other way round.
    off = WorldEngine(model, seam_blend=0, snapshot_key=engine._snapshot_key)
    moved = off.restore(engine.snapshot(sid))
    assert off.step(moved).frames is not None and off.session(moved).last_frame is None
    back = engine.restore(off.snapshot(moved))
    assert engine.session(back).last_frame is None and engine.step(back).frames is not None


def test_model_index_sets_it_and_is_checked(tmp_path):
    toy = WorldModel.load("toy", device="cpu")
    index = json.loads((TOY_FOLDER / "model_index.json").read_text())
    assert toy.seam_blend == index["seam_blend_frames"] > 0
    folder = tmp_path / "toy"
    shutil.copytree(TOY_FOLDER, folder)
    for bad in (-2, 64, "two"):
        index["seam_blend_frames"] = bad
        (folder / "model_index.json").write_text(json.dumps(index))
        with pytest.raises(CheckpointError, match="seam_blend_frames must be an int"):
            WorldModel.load(folder, device="cpu")
    del index["seam_blend_frames"]
    (folder / "model_index.json").write_text(json.dumps(index))
    assert WorldModel.load(folder, device="cpu").seam_blend == 0
