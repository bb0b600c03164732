"""The stage-1 recipe (spec 10) and the resumable trainer, on the tiny transformer (CPU)."""

from __future__ import annotations

import itertools

import pytest
import torch

from helios_runtime.model.transformer import HeliosTransformer
from helios_runtime.train.stage1 import (
    Stage1Recipe,
    cut_sample,
    frame_aware_corrupt,
    history_dropout,
    sample_sigma,
    stage1_loss,
)
from helios_runtime.train.trainer import Trainer


def video(batch: int = 2, windows: int = 3, side: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, 9 * windows, side, side, generator=g) + 1.0  # no all-zero latent


def test_cut_sample_pads_the_past_and_takes_the_anchor():
    v = video()
    first = cut_sample(v, 0)
    assert torch.equal(first.target, v[:, :, :9])
    assert not first.history.any() and not first.anchor.any()
    third = cut_sample(v, 2)  # 18 latents of past: one zero in front of them
    assert torch.equal(third.history[:, :, 1:], v[:, :, :18]) and not third.history[:, :, :1].any()
    assert torch.equal(third.anchor, v[:, :, :1])
    inputs = third.inputs()
    assert inputs["latents_history_short"].shape[2] == 2 and inputs["latents_history_long"].shape[2] == 16
    with pytest.raises(ValueError, match="outside"):
        cut_sample(v, 3)


def test_history_dropout_cases():
    s = cut_sample(video(batch=8), 2)
    g = torch.Generator().manual_seed(0)
    dropped = history_dropout(s, Stage1Recipe(drop_all=1.0, drop_oldest=0.0), g)
    assert not dropped.history.any() and not dropped.anchor.any()
    shorter = history_dropout(s, Stage1Recipe(drop_all=0.0, drop_oldest=1.0), g)
    for b in range(8):
        zeros = int((shorter.history[b].flatten(2).abs().sum(-1).sum(0) == 0).sum())
        assert zeros in (1, 10, 19), zeros  # 1 + 9k oldest latents, k in {0, 1, 2} (1 was padding)
        assert torch.equal(shorter.anchor[b], s.anchor[b])
    kept = history_dropout(s, Stage1Recipe(drop_all=0.0, drop_oldest=0.0), g)
    assert torch.equal(kept.history, s.history)


def test_frame_aware_corrupt_noises_each_latent_and_skips_padding():
    s = cut_sample(video(), 1)  # 9 latents of past: 10 zero latents in front
    g = torch.Generator().manual_seed(1)
    clean = frame_aware_corrupt(s, Stage1Recipe(keep_clean=1.0), g)
    assert torch.equal(clean.history, s.history)
    noisy = frame_aware_corrupt(s, Stage1Recipe(keep_clean=0.0), g)
    assert not noisy.history[:, :, :10].any(), "zero padding stays zero"
    changed = (noisy.history[:, :, 10:] != s.history[:, :, 10:]).flatten(3).any(-1).any(1)
    assert changed.all(), "every real history latent is corrupted"
    assert not torch.equal(noisy.anchor, s.anchor)
    blurred = frame_aware_corrupt(s, Stage1Recipe(keep_clean=0.0, blur=1.0), g)
    assert blurred.history.shape == s.history.shape and torch.isfinite(blurred.history).all()
    with pytest.raises(ValueError, match="probability"):
        Stage1Recipe(drop_all=1.5)


def test_sigma_is_logit_normal_on_the_level_grid():
    sigma = sample_sigma(20000, Stage1Recipe(), torch.Generator().manual_seed(0))
    assert sigma.min() > 0 and sigma.max() <= 1
    assert torch.allclose(sigma * 1000, (sigma * 1000).round(), atol=1e-3)
    assert abs(float(sigma.mean()) - 0.5) < 0.01 and float(((sigma - 0.5).abs() < 0.25).float().mean()) > 0.7


def _model() -> HeliosTransformer:
    return HeliosTransformer.from_config("tiny", device="cpu", dtype=torch.float32, seed=0)


def _loss_fn(clip: torch.Tensor, text: torch.Tensor):
    def loss(model, step: int, gen: torch.Generator) -> torch.Tensor:
        return stage1_loss(model, cut_sample(clip, 1 + step % 2), text, Stage1Recipe(), gen)

    return loss


def test_training_lowers_the_loss_and_resumes_exactly(tmp_path, one_thread):
    clip = video(batch=1, windows=3)
    text = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(3))
    # The loss of a fixed batch and noise before and after training (fixed draws: comparable).
    probe = cut_sample(clip, 2)

    def probe_loss(model) -> float:
        with torch.no_grad():
            return float(stage1_loss(model, probe, text, Stage1Recipe(), torch.Generator().manual_seed(9)))

    model = _model()
    before = probe_loss(model)
    Trainer(model, _loss_fn(clip, text), tmp_path / "a", lr=3e-3, save_every=1000).run(max_steps=60)
    assert probe_loss(model) < 0.7 * before

    whole = _model()
    Trainer(whole, _loss_fn(clip, text), tmp_path / "b", lr=3e-3).run(max_steps=6)
    split = _model()
    Trainer(split, _loss_fn(clip, text), tmp_path / "c", lr=3e-3).run(max_steps=3)
    resumed = _model()  # a fresh process would start from a fresh model too
    trainer = Trainer(resumed, _loss_fn(clip, text), tmp_path / "c", lr=3e-3)
    assert trainer.step == 3
    trainer.run(max_steps=6)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert (tmp_path / "c" / "config.json").is_file(), "the safetensors checkpoint is written too"


def test_learning_rate_schedule_warms_up_and_decays(tmp_path):
    model = torch.nn.Linear(2, 2)
    trainer = Trainer(
        model, lambda m, s, g: m.weight.sum(), tmp_path, lr=1.0, warmup=4, decay_steps=10, final_lr_scale=0.1
    )
    scales = []
    for step in range(20):
        trainer.step = step
        scales.append(trainer.lr_scale(max_steps=20))
    assert scales[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert scales[4:10] == [1.0] * 6
    # The last 10 steps fall linearly from 1 towards 0.1 (the last step takes 0.19).
    assert scales[10] == pytest.approx(1.0) and scales[19] == pytest.approx(0.1 + 0.9 * 0.1)
    assert all(a > b for a, b in itertools.pairwise(scales[10:]))
    assert Trainer(torch.nn.Linear(2, 2), lambda m, s, g: m.weight.sum(), tmp_path / "x").lr_scale(5) is None


def test_a_non_finite_loss_stops_the_run_before_it_is_saved(tmp_path):
    model = torch.nn.Linear(2, 2)

    def loss(m, step, gen):
        return m.weight.sum() * (float("nan") if step == 2 else 1.0)

    with pytest.raises(FloatingPointError, match="nan"):
        Trainer(model, loss, tmp_path, lr=1e-3, save_every=1000).run(max_steps=10, log_every=4)
    assert not (tmp_path / "trainer_state.pt").exists()
