"""The toy world end to end on the CPU: train (a few steps each), export, load, step with actions;
and the shipped toy model (the embedded default)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from helios_runtime.engine.actions import MOVE_NAMES, MovePanActions
from helios_runtime.engine.engine import WorldEngine
from helios_runtime.engine.errors import InvalidInput
from helios_runtime.engine.world_model import DEFAULT_MODEL, TOY_FOLDER, WorldModel
from helios_runtime.model.checkpoint import CheckpointError
from helios_runtime.sim import agent_mask
from helios_runtime.train import toy_world as world
from helios_runtime.train.stage1 import WINDOW_LATENTS


def test_move_pan_ids_from_every_action_form():
    a = MovePanActions()
    assert a.ids(None) == (0, 9) == a.STAY
    assert a.ids({"move": "ne", "pan": "w"}) == (MOVE_NAMES.index("ne"), 9 + MOVE_NAMES.index("w"))
    assert a.ids({"keys": ["w", "d"]}) == (MOVE_NAMES.index("ne"), 9)
    assert a.ids({"keys": ["ArrowLeft", "a"]}) == (MOVE_NAMES.index("w"), 9)  # one direction, once
    assert a.ids({"keys": ["w", "s"]}) == (0, 9)  # opposite keys cancel
    assert a.ids({"camera": {"yaw": 5.0, "pitch": 3.0}}) == (0, 9 + MOVE_NAMES.index("ne"))
    assert a.ids({"mouse": {"dx": 0.0, "dy": 10.0}}) == (0, 9 + MOVE_NAMES.index("s"))
    assert a.ids({"camera": {"yaw": 1.0}, "mouse": {"dx": 1.0}}) == (0, 9)  # below the thresholds
    for bad, match in (
        ({"move": "up"}, "unknown move"),
        ({"keys": ["space"]}, "unknown key"),
        ({"keys": "w"}, "list of key names"),
        ({"move": "n", "keys": ["w"]}, "only 'move' and 'pan'"),
        ({"jump": 1}, "unknown action fields"),
        ({"camera": {"yaw": float("nan")}}, "finite"),
    ):
        with pytest.raises(InvalidInput, match=match):
            a.ids(bad)


def test_the_transformer_sums_several_action_ids():
    from helios_runtime.model.config import preset
    from helios_runtime.model.transformer import HeliosTransformer

    model = HeliosTransformer.from_config(preset("tiny").replace(num_actions=18), device="cpu", seed=0)
    torch.nn.init.normal_(model.action_embedder.weight)  # zero-initialised: give it something to add
    ids = torch.tensor([[2, 12], [0, 9]])
    summed = model._action_embedding(ids, 2)
    assert torch.allclose(summed[0], model.action_embedder.weight[2] + model.action_embedder.weight[12])
    assert torch.allclose(model._action_embedding(ids[:, 0], 2), model.action_embedder.weight[[2, 0]])
    none = model._action_embedding(torch.tensor([[-1, -1], [-1, 12]]), 2)
    assert torch.equal(none[0], torch.zeros(model.action_embedder.weight.shape[1]))
    assert torch.allclose(none[1], model.action_embedder.weight[12])
    with pytest.raises(ValueError, match=r"shape \(2,\) or \(2, K\)"):
        model._action_embedding(ids[None], 2)


def test_render_episodes_is_deterministic_and_labels_actions():
    a = world.render_episodes(3, 2, workers=1)
    b = world.render_episodes(3, 2, workers=2)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.actions, b.actions)
    assert a.frames.shape == (3, 2, 33, 96, 160, 3) and a.first.shape == (3, 96, 160, 3)
    assert ((a.actions[..., 0] >= 0) & (a.actions[..., 0] < 9) & (a.actions[..., 1] >= 9)).all()


def test_day_shift_moves_the_light_and_nothing_else():
    plain = world.render_episodes(2, 1, workers=1)
    shifted = world.render_episodes(2, 1, workers=1, day_shift=2400)
    assert plain.prompts == shifted.prompts and np.array_equal(plain.actions, shifted.actions)
    # The same scene, lit at another time of day: the agent (drawn at full brightness) stays put.
    assert not np.array_equal(plain.first, shifted.first)
    np.testing.assert_array_equal(agent_mask(plain.frames), agent_mask(shifted.frames))


def test_pan_probability_sets_the_share_of_chunks_with_a_pan():
    still = world.render_episodes(4, 3, workers=1, pan_probability=0.0)
    panning = world.render_episodes(4, 3, workers=1, pan_probability=1.0)
    assert (still.actions[..., 1] == 9).all(), "pan id 9 is 'stay'"
    # Every chunk draws a pan; the policy falls back to none only where no move keeps the agent clear
    # of the dead zone with it, which is rare.
    assert (panning.actions[..., 1] != 9).mean() >= 0.75
    with pytest.raises(ValueError, match="pan_probability"):
        world.render_episodes(1, 1, workers=1, pan_probability=1.5)


def test_vae_first_frame_weights(tmp_path):
    """A decoder-only fine-tune that weighs the first frames: the encoder stays frozen, the weights
    change what the decoder learns (against the same run without them), the report has the parts."""
    torch.set_num_threads(2)
    from helios_runtime.model.vae import WanVAE

    base = tmp_path / "base"  # the tiny preset: the same code paths, a fraction of the toy's cost
    WanVAE.from_config("tiny", device="cpu", seed=0).save_pretrained(base)
    common = dict(episodes=2, chunks=1, batch=1, clip_frames=5, max_steps=2, workers=1, init=base)
    tuned = world.train_vae(tmp_path / "w", decoder_only=True, first_weight=8.0, entry_weight=2.0, **common)
    plain = world.train_vae(tmp_path / "p", decoder_only=True, **common)
    report = json.loads((tmp_path / "w" / "vae_report.json").read_text())
    assert (report["first_weight"], report["entry_weight"]) == (8.0, 2.0)
    assert set(report["psnr_parts_db"]) == {"first", "entry", "rest", "exit_jump", "exit_jump_true"}
    before = WanVAE.from_pretrained(base, device="cpu").state_dict()
    weighted, unweighted = tuned.state_dict(), plain.state_dict()
    for name, a in before.items():
        if name.startswith(("encoder.", "quant_conv.")):
            assert torch.equal(a, weighted[name]), name
    assert any(not torch.equal(weighted[n], unweighted[n]) for n in before if n.startswith("decoder."))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few steps of every training stage on the CPU, exported: the CI smoke run."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("toy")
    world.train_vae(root / "vae", episodes=4, chunks=1, batch=1, clip_frames=5, max_steps=2, workers=1)
    report = json.loads((root / "vae" / "vae_report.json").read_text())
    assert report["step"] == 2 and len(report["latents_std"]) == 16
    from helios_runtime.model.text_encoder import BuiltinTextEncoder
    from helios_runtime.model.vae import WanVAE

    vae = WanVAE.from_pretrained(root / "vae", device="cpu")
    data = world.encode_episodes(
        vae, world.render_episodes(3, 3, workers=1), BuiltinTextEncoder.preset("toy", device="cpu")
    )
    data.save(root / "latents.pt")
    data = world.LatentSet.load(root / "latents.pt", "cpu")
    world.train_world(root / "world", data, batch=2, max_steps=2, agent=10.0, action_dropout=0.5)
    out = world.export_world(root / "world", root / "vae", root / "pipeline")
    return root, data, out


def test_latent_set_and_samples(trained):
    _, data, _ = trained
    assert data.latents.shape == (3, 16, 3 * WINDOW_LATENTS, 12, 20) and data.latents.dtype == torch.float16
    assert data.agent is not None and data.agent.shape == (3, 27, 12, 20) and data.agent.any()
    gen = torch.Generator().manual_seed(0)
    sample, _, agent, actions = world.world_sample(data, 16, gen)
    assert sample.target.shape == (16, 16, 9, 12, 20) and sample.history.shape == (16, 16, 19, 12, 20)
    assert agent.shape == (16, 1, 9, 12, 20) and actions.shape == (16, 2)
    image_only = world.world_sample(data, 8, torch.Generator().manual_seed(1), i2v=1.0)[0]
    text_only = world.world_sample(data, 8, torch.Generator().manual_seed(1), i2v=0.0)[0]
    # Same draws: image-to-video rows take the first frame's latent as the anchor.
    rows = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(image_only.anchor, data.image[rows].float())
    assert not torch.equal(image_only.anchor, text_only.anchor)


def test_latent_sets_concatenate_by_episode(trained):
    _, data, _ = trained
    both = world.LatentSet.cat([data, data])
    assert both.latents.shape[0] == 6 and both.chunks == data.chunks
    assert torch.equal(both.actions[3:], data.actions) and torch.equal(both.agent[:3], data.agent)
    short = world.LatentSet(
        **{k: v[:, :, :WINDOW_LATENTS] if k == "latents" else v for k, v in data.__dict__.items()}
    )
    with pytest.raises(ValueError, match="same chunks per episode"):
        world.LatentSet.cat([data, short])


def test_export_writes_the_seam_blend(trained, tmp_path):
    root, _, _ = trained
    out = world.export_world(root / "world", root / "vae", tmp_path / "blended", seam_blend=3)
    assert json.loads((out / "model_index.json").read_text())["seam_blend_frames"] == 3
    assert WorldModel.load(out, device="cpu").seam_blend == 3
    with pytest.raises(ValueError, match="seam_blend must be an int"):
        world.export_world(root / "world", root / "vae", tmp_path / "bad", seam_blend=-1)


def test_resume_and_init(trained, tmp_path):
    root, data, _ = trained
    again = world.train_world(root / "world", data, batch=2, max_steps=3)  # resumes at step 2
    assert json.loads((root / "world" / "world_report.json").read_text())["step"] == 3
    fresh = world.train_world(
        tmp_path / "w", data, batch=2, max_steps=1, init=root / "world", lr=0.0, drop_all=0.1, decay_steps=1
    )
    report = json.loads((tmp_path / "w" / "world_report.json").read_text())
    assert (report["drop_all"], report["decay_steps"]) == (0.1, 1)
    for (k, a), b in zip(again.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k  # lr 0: the init weights, unchanged


def test_exported_pipeline_runs_with_actions(trained):
    _, _, out = trained
    assert world.folder_megabytes(out) < 25
    model = WorldModel.load(out, device="cpu")
    assert model.default_size == (96, 160) and isinstance(model.actions, MovePanActions)
    engine = WorldEngine(model, max_sessions=4)
    first = engine.reset("a forest at noon", seed=3, action={"move": "e"})
    assert first.frames.shape == (33, 96, 160, 3)
    twin = engine.fork(first.session_id)
    east = engine.step(first.session_id, {"keys": ["d"]})
    west = engine.step(twin, {"move": "w", "pan": "n"})
    assert not torch.equal(east.latents, west.latents), "the action conditions the chunk"
    before = engine.session(twin).chunk
    with pytest.raises(InvalidInput, match="unknown key"):
        engine.step(twin, {"keys": ["space"]})
    assert engine.session(twin).chunk == before, "a bad action changes nothing"
    prompt_step = engine.step(twin, "a desert at night")  # a prompt: the agent stays
    assert prompt_step.chunk_index == before


def test_action_guidance_contrasts_the_action_with_no_action(trained, tmp_path):
    root, _, plain = trained
    out = world.export_world(root / "world", root / "vae", tmp_path / "guided", action_guidance=3.0)
    index = json.loads((out / "model_index.json").read_text())
    assert (index["guidance"], index["guidance_scale"]) == ("action", 3.0)
    assert "guidance" not in json.loads((plain / "model_index.json").read_text())
    for bad_scale in (0.5, float("nan")):
        with pytest.raises(ValueError, match="action_guidance"):
            world.export_world(root / "world", root / "vae", tmp_path / "never", action_guidance=bad_scale)
    assert not (tmp_path / "never").exists()
    model = WorldModel.load(out, device="cpu")
    assert model.guide_action and model.sampler.guided
    torch.nn.init.normal_(model.transformer.action_embedder.weight)  # make the action matter
    seen = []
    forward = model.transformer.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["action"].tolist())
        return forward(*args, **kwargs)

    model.transformer.forward = spy
    engine = WorldEngine(model)
    guided = engine.reset("a forest at noon", seed=3, action={"move": "e", "pan": "n"})
    # Every step runs the action and the same prompt without it (two forwards a step).
    assert seen[0::2] == [[[3, 9 + 1]]] * world.TOY_STEPS and seen[1::2] == [[[-1, -1]]] * world.TOY_STEPS
    assert engine.session(guided.session_id).negative is None, "no negative prompt to encode or keep"
    model.sampler = model.sampler.replace(guidance_scale=1.0)
    unguided = engine.reset("a forest at noon", seed=3, action={"move": "e", "pan": "n"})
    assert not torch.equal(guided.latents, unguided.latents)

    (tmp_path / "bad").mkdir()
    for name in ("transformer", "vae", "text_encoder", "scheduler"):
        shutil.copytree(out / name, tmp_path / "bad" / name)
    (tmp_path / "bad" / "model_index.json").write_text(json.dumps({**index, "action_space": None}))
    with pytest.raises(CheckpointError, match="guidance 'action'"):
        WorldModel.load(tmp_path / "bad", device="cpu")
    with pytest.raises(ValueError, match="needs a learned action space"):
        dataclasses.replace(model, actions=None)


def test_reset_action_needs_a_learned_action_space():
    engine = WorldEngine(WorldModel.load("tiny", device="cpu"))
    with pytest.raises(InvalidInput, match="learned action space"):
        engine.reset("x", height=64, width=64, action={"move": "e"})


def test_the_shipped_toy_world_is_the_default():
    assert DEFAULT_MODEL == "toy"
    assert world.folder_megabytes(TOY_FOLDER) < 25
    index = json.loads((TOY_FOLDER / "model_index.json").read_text())
    assert index["action_space"] == "move-pan" and index["anchor"] is True
    model = WorldModel.load("toy", device="cpu")
    assert model.transformer.config.num_actions == 18 and model.sampler.steps == (world.TOY_STEPS,)
    assert model.transformer.dtype == torch.float32, "float16 on disk, float32 to run on a CPU"
