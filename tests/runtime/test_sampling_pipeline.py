"""Whole chunks of `denoise_chunk` against the real diffusers 0.42.1 pipelines (spec 5.4–5.9).

`HeliosPipeline` (Base) and `HeliosPyramidPipeline` (Mid, Distilled) run unchanged with a stub
transformer computing a fixed nonlinear fake velocity and a stub VAE; our loop draws its noise from
a generator with the same seed, chunk by chunk, and must give the same latents:

- with the reference's runtime Cholesky replaced by our exact block-noise factor: identical up to
  1e-6 relative (they are bit-identical here), for float32 and bfloat16 models;
- with the factor the reference means — of its Σ + 1e-8·I, whose last pivot ε = 2e-4 comes from the
  jitter — float32 models: the ε difference only, under 2e-3 max-relative and 5e-4 RMS-relative
  (bfloat16 models turn ε into bf16 rounding flips, ~1e-2, so they are compared only exactly). That
  factor is taken in float64 (`jittered_factor`): the pipeline builds Σ + 1e-8·I in float32, where
  the jitter is lost and the matrix has an eigenvalue of −3e-8, so its runtime Cholesky gives an ε
  that depends on the host's LAPACK (4.2e-4 with one, LinAlgError under MKL on AMD EPYC).

The pipelines' model calls (shapes, timestep values and dtypes) must equal ours, less the CFG-Zero*
zero-init forwards, which we skip.
"""

from __future__ import annotations

import contextlib
import types

import pytest
import torch
from torch import nn

from helios_runtime.sampling import Guidance, block_noise_factor, chunk_noise, denoise_chunk, sampler_preset
from helios_runtime.sampling.schedule import preset

pytest.importorskip("diffusers")
import diffusers
from diffusers import HeliosDMDScheduler, HeliosPipeline, HeliosPyramidPipeline, HeliosScheduler

diffusers.utils.logging.set_verbosity_error()
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),
]


C = 16


class FakeModel:
    """v = tanh(A·x) + x/2 + b·t/1000 + c·mean(text), computed in float32, returned in `dtype`."""

    def __init__(self, dtype: torch.dtype = torch.float32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(C, C, generator=g) * 0.3
        self.b = torch.randn(C, generator=g)
        self.c = torch.randn(C, generator=g)
        self.dtype = dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).float()  # the model's input cast, as the pipelines do it
        v = torch.tanh(torch.einsum("oc,bcthw->bothw", self.A, x)) + 0.5 * x
        v = v + self.b.view(1, C, 1, 1, 1) * (t.to(torch.float64) / 1000).float().view(-1, 1, 1, 1, 1)
        v = v + self.c.view(1, C, 1, 1, 1) * text.to(self.dtype).float().mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
        return v.to(self.dtype)


class _Stub(nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self._dtype = dtype

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype


class StubTransformer(_Stub):
    def __init__(self, fake: FakeModel):
        super().__init__(fake.dtype)
        self.fake = fake
        self.config = types.SimpleNamespace(in_channels=C, patch_size=(1, 2, 2))
        self.calls: list[tuple] = []

    @contextlib.contextmanager
    def cache_context(self, name):
        yield

    def forward(self, hidden_states, timestep, encoder_hidden_states, **history):
        self.calls.append((tuple(hidden_states.shape), timestep.dtype, timestep.tolist()))
        return (self.fake(hidden_states, timestep, encoder_hidden_states),)


class StubVAE(_Stub):
    def __init__(self):
        super().__init__(torch.float32)
        self.config = types.SimpleNamespace(
            scale_factor_temporal=4,
            scale_factor_spatial=8,
            z_dim=C,
            latents_mean=[0.0] * C,
            latents_std=[1.0] * C,
        )

    def decode(self, z, return_dict=False):
        B, _, T, H, W = z.shape
        return (torch.zeros(B, 3, 4 * (T - 1) + 1, 8 * H, 8 * W),)


TEXT = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(11))
NEGATIVE = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(12))


def jittered_factor(gamma: float) -> torch.Tensor:
    """The Cholesky factor of the pipeline's (1 + γ)·I − γ·J + 1e-8·I (4×4), built and factorised in
    float64, then float32: the factor its runtime Cholesky means, on any LAPACK."""
    eye = torch.eye(4, dtype=torch.float64)
    return torch.linalg.cholesky(eye * (1 + gamma) - gamma + 1e-8 * eye).float()


def run_reference(variant, fake, steps, height, width, chunks, seed, factor):
    """The real pipeline; its runtime Cholesky (the only change made to it) returns `factor`."""
    transformer = StubTransformer(fake)
    common = dict(
        prompt_embeds=TEXT,
        height=height,
        width=width,
        num_frames=33 * chunks,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    )
    with contextlib.ExitStack() as stack:
        patch = pytest.MonkeyPatch()
        stack.callback(patch.undo)
        patch.setattr(torch.linalg, "cholesky", lambda cov: factor)
        if variant == "base":
            scheduler = HeliosScheduler.from_config(preset("base").to_dict())
            pipe = HeliosPipeline(None, None, StubVAE(), scheduler, transformer)
            pipe.set_progress_bar_config(disable=True)
            out = pipe(
                negative_prompt_embeds=NEGATIVE, guidance_scale=5.0, num_inference_steps=steps[0], **common
            )
        elif variant == "mid":
            scheduler = HeliosScheduler.from_config(preset("mid").to_dict())
            pipe = HeliosPyramidPipeline(None, None, StubVAE(), scheduler, transformer, is_cfg_zero_star=True)
            pipe.set_progress_bar_config(disable=True)
            out = pipe(
                negative_prompt_embeds=NEGATIVE,
                guidance_scale=5.0,
                pyramid_num_inference_steps_list=list(steps),
                **common,
            )
        else:
            scheduler = HeliosDMDScheduler.from_config(preset("distilled").to_dict())
            pipe = HeliosPyramidPipeline(None, None, StubVAE(), scheduler, transformer, is_distilled=True)
            pipe.set_progress_bar_config(disable=True)
            out = pipe(
                guidance_scale=1.0,
                pyramid_num_inference_steps_list=list(steps),
                is_amplify_first_chunk=True,
                **common,
            )
    return out.frames, transformer.calls


def run_ours(variant, fake, steps, height, width, chunks, seed):
    settings = sampler_preset(variant).replace(steps=steps, block_noise_dtype=fake.dtype)
    calls = []

    def bind(text):
        def model(x, t):
            calls.append((tuple(x.shape), t.dtype, t.tolist()))
            return fake(x, t, text)

        return model

    model = Guidance(bind(TEXT), bind(NEGATIVE)) if settings.guided else bind(TEXT)
    generator = torch.Generator().manual_seed(seed)
    latents = []
    for k in range(chunks):
        noise = chunk_noise((1, C, 9, height // 8, width // 8), generator, "cpu")
        latents.append(denoise_chunk(model, noise, settings, generator, first_chunk=k == 0))
    # the pipeline appends each chunk to its float32 history buffer
    return torch.cat([torch.zeros(1, C, 0, height // 8, width // 8), *latents], dim=2), calls


def errors(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    diff = ours.double() - ref.double()
    ref = ref.double()
    return (diff.abs().max() / ref.abs().max()).item(), (diff.norm() / ref.norm()).item()


CASES = [
    # variant, steps, height, width, chunks, dtype
    ("distilled", (2, 2, 2), 384, 640, 2, torch.float32),  # amplified [4,4,4] first chunk, then [2,2,2]
    ("distilled", (3, 1, 2), 128, 256, 2, torch.bfloat16),
    ("mid", (20, 20, 20), 128, 256, 2, torch.float32),
    ("mid", (3, 3, 3), 384, 640, 1, torch.float32),
    ("mid", (4, 2, 3), 64, 128, 2, torch.bfloat16),
    ("base", (50,), 128, 256, 2, torch.float32),
    ("base", (6,), 64, 128, 2, torch.bfloat16),
]


@pytest.mark.parametrize(("variant", "steps", "height", "width", "chunks", "dtype"), CASES)
def test_chunks_match_the_pipeline(variant, steps, height, width, chunks, dtype):
    fake = FakeModel(dtype)
    ours, our_calls = run_ours(variant, fake, steps, height, width, chunks, seed=3)
    exact, ref_calls = run_reference(
        variant, fake, steps, height, width, chunks, 3, block_noise_factor(1 / 3)
    )
    assert ours.shape == exact.shape
    assert errors(ours, exact)[0] <= 1e-6

    if variant == "mid":  # we skip the zero-init forwards (steps 0 and 1 of stage 0, pitfall 9)
        per_chunk = 2 * sum(steps)
        ref_calls = [c for i, c in enumerate(ref_calls) if i % per_chunk >= 4]
    assert our_calls == ref_calls  # shapes, timestep values and dtypes (int64 pyramid, float64 Base)

    if variant != "base" and dtype == torch.float32:  # the reference's own factor: its ε only
        shipped, _ = run_reference(variant, fake, steps, height, width, chunks, 3, jittered_factor(1 / 3))
        max_rel, rms_rel = errors(ours, shipped)
        assert 0 < max_rel < 2e-3 and rms_rel < 5e-4
