"""Training data from the procedural world, and the VAE's training path (CPU, tiny sizes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helios_runtime.model.vae import WanVAE
from helios_runtime.train.data import EVAL_SEEDS_FROM, VALIDATION_SEEDS, sim_batch, sim_clip, to_video
from helios_runtime.train.trainer import Trainer
from helios_runtime.train.vae import vae_loss


def test_sim_clips_are_deterministic_chunks_and_avoid_held_out_seeds():
    prompt, frames, actions = sim_clip(3, chunks=2, height=32, width=48)
    again = sim_clip(3, chunks=2, height=32, width=48)
    assert prompt == again[0] and np.array_equal(frames, again[1]) and actions == again[2]
    assert frames.shape == (2, 33, 32, 48, 3) and frames.dtype == np.uint8 and len(actions) == 2
    assert sim_clip(4, height=32, width=48)[0] != prompt or not np.array_equal(
        sim_clip(4, height=32, width=48)[1], frames[:1]
    )
    with pytest.raises(ValueError, match="held-out"):
        sim_clip(EVAL_SEEDS_FROM)
    with pytest.raises(ValueError, match="validation"):
        sim_clip(VALIDATION_SEEDS.start)
    video = to_video(frames[0])
    assert video.shape == (1, 3, 33, 32, 48) and video.min() >= -1 and video.max() <= 1


def test_autoencode_is_the_inference_path_with_gradients():
    vae = WanVAE.from_config("tiny", device="cpu", seed=0).requires_grad_(True)  # built frozen
    video = sim_batch([0], height=32, width=32)[:, :, :9]
    recon, mean, _logvar = vae.autoencode(video)
    with torch.no_grad():
        assert torch.allclose(mean, vae.encode(video), atol=1e-6)
        assert torch.allclose(recon, vae.decode(vae.encode(video)), atol=1e-6)
    recon.mean().backward()
    assert vae.encoder.conv_in.weight.grad is not None
    with pytest.raises(ValueError, match="1 \\+ 4"):
        vae.autoencode(video[:, :, :8])


def test_vae_training_lowers_the_reconstruction_loss(tmp_path, one_thread):
    vae = WanVAE.from_config("tiny", device="cpu", seed=0).requires_grad_(True)  # built frozen
    video = sim_batch([0, 1], height=32, width=32)[:, :, :5]

    def loss_fn(model, step, gen):
        return vae_loss(model, video, gen)[0]

    probe = lambda: vae_loss(vae, video, torch.Generator().manual_seed(0))[1]["l1"]  # noqa: E731
    before = probe()
    Trainer(vae, loss_fn, tmp_path, lr=3e-3).run(max_steps=25)
    assert probe() < 0.8 * before
