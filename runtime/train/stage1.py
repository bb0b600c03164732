"""Stage-1 training of the Helios transformer (spec section 10): samples, corruption, loss.

A training sample is cut from a latent video (B, C, T, H, W) — 33-frame windows each VAE-encoded on
their own, 9 latents a window, concatenated: a target window of 9 latents, the 19 latents before it
(zero-padded before the video's start) as the multi-term history, and the video's first latent as
the anchor (zeros when the target is the first window). Before the forward, two augmentations teach
the model to live with its own imperfect history:

- history dropout: with p 0.4 the history and anchor are zeroed (the text-to-video case); else with
  p 0.4 the oldest 1 + 9k history latents are zeroed, k uniform in {0, 1, 2} (the video-to-video
  case with a shorter past);
- Frame-Aware Corrupt ("easy anti-drifting"): with p 0.9, each history latent (anchor included) gets
  its own noise level σ ~ U[0, 1/3]: x <- σ·ε + (1 − σ)·x; optionally (the `blur` share) a latent is
  instead resampled to a factor r ~ U[0.9, 1] of its size and back (bilinear, antialiased). The
  history keeps t = 0 modulation either way.

The loss is flow matching on the target: σ from a logit-normal(0, 1) draw indexed into 1000 uniform
levels (σ = 1 − i/1000, no shift), x_σ = σ·ε + (1 − σ)·x0, the model predicts the velocity ε − x0,
mean squared error with uniform weight. Every random draw comes from the generator passed in, so a
run is reproducible and resumable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..engine.memory import HISTORY_FRAMES, HISTORY_SIZES, frame_indices

WINDOW_LATENTS = 9  # one 33-frame window


@dataclass(frozen=True)
class Stage1Recipe:
    """The knobs of spec 10's stage-1 configs (defaults: the released stage configs)."""

    drop_all: float = 0.4  # zero history and anchor (T2V)
    drop_oldest: float = 0.4  # zero the oldest 1 + 9k history latents (V2V with a shorter past)
    keep_clean: float = 0.1  # leave the history uncorrupted
    noise_max: float = 1.0 / 3.0  # Frame-Aware Corrupt noise level bound
    blur: float = 0.0  # share of corrupted latents resampled instead of noised ("random" mode: 0.1)
    blur_range: tuple[float, float] = (0.9, 1.0)
    levels: int = 1000  # flow levels the logit-normal draw indexes

    def __post_init__(self) -> None:
        for name in ("drop_all", "drop_oldest", "keep_clean", "blur"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Stage1Recipe.{name} must be a probability in [0, 1], got {value}")
        if not 0.0 <= self.noise_max <= 1.0:
            raise ValueError(f"Stage1Recipe.noise_max must be in [0, 1], got {self.noise_max}")


@dataclass
class Sample:
    """One batch of training inputs (the transformer's history arguments are built by `inputs`)."""

    target: torch.Tensor  # (B, C, 9, H, W) clean latents of the target window
    history: torch.Tensor  # (B, C, 19, H, W) oldest first
    anchor: torch.Tensor  # (B, C, 1, H, W)

    def inputs(self) -> dict[str, torch.Tensor]:
        """The history inputs of HeliosTransformer.forward, laid out like the engine's memory."""
        long_, mid, newest = self.history.split(HISTORY_SIZES, dim=2)
        return {
            "latents_history_short": torch.cat([self.anchor, newest], dim=2),
            "latents_history_mid": mid,
            "latents_history_long": long_,
            **frame_indices(self.target.shape[0], self.target.device),
        }


def cut_sample(video: torch.Tensor, window: int) -> Sample:
    """The sample whose target is window `window` (0-based) of a latent video (B, C, T, H, W)."""
    B, C, T, H, W = video.shape
    start = window * WINDOW_LATENTS
    if window < 0 or start + WINDOW_LATENTS > T:
        raise ValueError(
            f"window {window} is outside a latent video of {T} latents ({T // WINDOW_LATENTS} windows)"
        )
    past = video[:, :, max(0, start - HISTORY_FRAMES) : start]
    history = video.new_zeros(B, C, HISTORY_FRAMES, H, W)
    if past.shape[2]:
        history[:, :, HISTORY_FRAMES - past.shape[2] :] = past
    anchor = video[:, :, :1].clone() if window > 0 else video.new_zeros(B, C, 1, H, W)
    return Sample(video[:, :, start : start + WINDOW_LATENTS], history, anchor)


def history_dropout(sample: Sample, recipe: Stage1Recipe, gen: torch.Generator) -> Sample:
    """Spec 10's history dropout, one draw per batch row (vectorised: no host syncs)."""
    history, anchor = sample.history, sample.anchor
    B, T, dev = history.shape[0], history.shape[2], gen.device
    u = torch.rand(B, generator=gen, device=dev).to(history.device)
    k = torch.randint(0, 3, (B,), generator=gen, device=dev).to(history.device)
    drop_all = u < recipe.drop_all
    drop_oldest = ~drop_all & (u < recipe.drop_all + recipe.drop_oldest)
    oldest = torch.arange(T, device=history.device)[None] < (1 + WINDOW_LATENTS * k)[:, None]  # (B, T)
    keep_t = ~((oldest & drop_oldest[:, None]) | drop_all[:, None])
    history = history * keep_t[:, None, :, None, None].to(history.dtype)
    anchor = anchor * (~drop_all)[:, None, None, None, None].to(anchor.dtype)
    return Sample(sample.target, history, anchor)


def frame_aware_corrupt(sample: Sample, recipe: Stage1Recipe, gen: torch.Generator) -> Sample:
    """Noise (or resample) every history latent and the anchor with its own level (spec 10).

    Vectorised over the batch and the 20 latents; all-zero latents (padding, dropped) stay zero.
    """
    frames = torch.cat([sample.anchor, sample.history], dim=2)  # (B, C, 20, H, W)
    B, _, T = frames.shape[:3]
    dev = gen.device
    keep = torch.rand(B, generator=gen, device=dev).to(frames.device) < recipe.keep_clean
    real = frames.detach().abs().amax(dim=(1, 3, 4)) > 0  # (B, T)
    sigma = recipe.noise_max * torch.rand(B, T, generator=gen, device=dev).to(frames.device)
    eps = torch.randn(frames.shape, generator=gen, device=dev, dtype=frames.dtype).to(frames.device)
    apply = real & ~keep[:, None]
    s = (sigma * apply).to(frames.dtype)[:, None, :, None, None]  # 0 where not corrupted
    out = s * eps + (1.0 - s) * frames
    if recipe.blur:
        blurred = torch.rand(B, T, generator=gen, device=dev).to(frames.device) < recipe.blur
        lo, hi = recipe.blur_range
        factors = lo + (hi - lo) * torch.rand(B, T, generator=gen, device=dev)
        for b, t in (apply & blurred).nonzero().tolist():
            out[b, :, t] = _resample(frames[b, :, t], float(factors[b, t]))
    return Sample(sample.target, out[:, :, 1:], out[:, :, :1])


def sample_sigma(batch: int, recipe: Stage1Recipe, gen: torch.Generator) -> torch.Tensor:
    """σ (B,) in (0, 1]: logit-normal(0, 1) indexed into `levels` uniform flow levels, no shift."""
    u = torch.sigmoid(torch.randn(batch, generator=gen, device=gen.device))
    index = (u * recipe.levels).long().clamp(0, recipe.levels - 1)
    return 1.0 - index.float() / recipe.levels


def stage1_loss(
    model,
    sample: Sample,
    text: torch.Tensor,
    recipe: Stage1Recipe,
    gen: torch.Generator,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Flow-matching MSE of one batch after history dropout and Frame-Aware Corrupt.

    `text` (B, K, E): the prompt features of each row. All draws come from `gen`. `weight`
    (B, 1, T, H, W), optional: per-latent weights of the squared error (mean over all elements).
    """
    sample = frame_aware_corrupt(history_dropout(sample, recipe, gen), recipe, gen)
    x0 = sample.target.float()
    B = x0.shape[0]
    sigma = sample_sigma(B, recipe, gen).to(x0.device)
    eps = torch.randn(x0.shape, generator=gen, device=gen.device).to(x0.device)
    s = sigma.view(B, 1, 1, 1, 1)
    noisy = s * eps + (1.0 - s) * x0
    # One sigma per row: the model's timestep per row is σ·1000.
    pred = model(noisy, sigma * 1000.0, text, **sample.inputs())
    if weight is None:
        return F.mse_loss(pred.float(), eps - x0)
    return ((pred.float() - (eps - x0)).square() * weight).mean()


def _resample(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x (C, H, W) resized to `factor` of its size and back, bilinear with antialiasing."""
    _, H, W = x.shape
    small = (max(1, round(H * factor)), max(1, round(W * factor)))
    down = F.interpolate(x[None].float(), size=small, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(down, size=(H, W), mode="bilinear", antialias=True, align_corners=False)[0].to(
        x.dtype
    )
