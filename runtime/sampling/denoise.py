"""Denoise one chunk: Base (single-stage UniPC + CFG), Mid (pyramid UniPC + CFG-Zero*) and Distilled
(pyramid DMD, no guidance) — spec 5.4–5.9.

`denoise_chunk(model, noise, settings, generator)` turns the chunk's full-resolution noise into its
clean latents. The model is a callable `model(x, t) -> v` with x (B, C, T, h, w) at the stage's
resolution and t (B,); the engine binds the text, history and indices into it. For guidance pass a
`Guidance(positive, negative)`; the scale and the CFG kind are data in `SamplerSettings`. The
callables receive the sampler's latents as they are (float32 for UniPC) and may return any float
dtype: like the reference, the model side casts its input to the transformer dtype, and the sampler
applies the reference's dtype rules to the output (spec 3.12).

Timesteps reach the model exactly as the reference passes them: float64 in Base, int64 (truncated)
in the pyramid (pitfall 6). All schedules, coefficients and σ lookups are built once per
(settings, latent size, device, first-chunk flag) by `chunk_plan` and cached; the step loop only
indexes device tensors and branches on step indices, never on tensor values.

Random draws (one `torch.Generator`; same order, shapes, dtypes and devices as diffusers 0.42.1
`HeliosPipeline` / `HeliosPyramidPipeline` with a single generator, so a parity run with the same
seed matches):
  before the first chunk (the engine's business, not this module's): image-to-video draws the VAE
  posterior samples of the image and of the repeated-image clip, then rand(1) and randn(image
  latents) for the anchor, rand(1) and randn(fake latents) for the fake history frame; video-to-video
  draws the posterior samples of the first frame and of each 33-frame window, rand(1) and randn for
  the anchor, then per window rand(9) and randn(window);
  per chunk, in chunk order:
    1. `chunk_noise`: randn(B, 16, T, H, W) float32 at full resolution, on the generator's device
       (diffusers' `randn_tensor`) — the caller draws it and passes it in as `noise`;
    2. for each pyramid stage s = 1, 2, …: after the ×2 upsample, `block_noise` draws
       randn(B·16·T·(H_s/2)·(W_s/2), 4) float32 on the generator's device.
  Nothing else draws: UniPC and DMD are deterministic given these tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from .flow import DMDPlan, dmd_plan, dmd_step, euler_step
from .guidance import cfg, cfg_zero_star, zero_init_steps
from .pyramid import block_noise, block_noise_factor, downsample_noise, renoise, upsample_nearest
from .schedule import Schedule, SchedulerConfig, chunk_schedules, stage_latent_sizes, stage_table
from .schedule import preset as scheduler_preset
from .unipc import UniPCPlan, UniPCState, unipc_plan, unipc_step

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Guidance:
    """The two forwards of classifier-free guidance: with the prompt and with the negative prompt."""

    positive: ModelFn
    negative: ModelFn


@dataclass(frozen=True)
class SamplerSettings:
    """How a chunk is sampled (spec 5.2); presets `base`, `mid`, `distilled`."""

    scheduler: SchedulerConfig
    steps: tuple[int, ...]  # one count per pyramid stage; one entry for a single-stage scheduler
    guidance_scale: float = 1.0  # CFG is active only above 1 (then a negative forward is required)
    cfg_zero_star: bool = False  # CFG-Zero* instead of plain CFG (the pipeline's is_cfg_zero_star)
    use_zero_init: bool = True  # CFG-Zero* only: zero velocity in the first stage's first steps
    zero_steps: int = 1  # … for step indices 0..zero_steps inclusive (pitfall 9)
    amplify_first_chunk: bool = False  # DMD only: 2n+1 raw levels per stage on the first chunk
    # The reference casts the block noise to the transformer dtype before the renoise; bfloat16
    # reproduces a bf16 reference run bit for bit, float32 keeps the noise exact.
    block_noise_dtype: torch.dtype = torch.float32
    # Stage s > 0 shifts with the μ of stage s − 1's size, as the diffusers pipeline does (it computes μ
    # before the upsample); False uses each stage's own size (spec 5.3 tables).
    mu_from_stage_input: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(int(n) for n in self.steps))
        expected = self.scheduler.stages
        if len(self.steps) != expected:
            raise ValueError(
                f"SamplerSettings: the scheduler has {expected} stage(s) but steps={list(self.steps)} "
                f"gives {len(self.steps)} count(s)"
            )
        if any(n < 1 for n in self.steps):
            raise ValueError(f"SamplerSettings: every stage needs at least one step, got {list(self.steps)}")
        if self.zero_steps < 0:
            raise ValueError(f"SamplerSettings: zero_steps must be >= 0, got {self.zero_steps}")

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def forwards_per_chunk(self) -> int:
        """Model forwards of a later chunk (spec 5.2 last row), zero-init steps counted as run."""
        return sum(self.steps) * (2 if self.guided else 1)

    def replace(self, **changes: Any) -> SamplerSettings:
        return dataclasses.replace(self, **changes)


SETTINGS: dict[str, SamplerSettings] = {
    "base": SamplerSettings(scheduler_preset("base"), steps=(50,), guidance_scale=5.0),
    "mid": SamplerSettings(
        scheduler_preset("mid"), steps=(20, 20, 20), guidance_scale=5.0, cfg_zero_star=True
    ),
    "distilled": SamplerSettings(scheduler_preset("distilled"), steps=(2, 2, 2), amplify_first_chunk=True),
}


def sampler_preset(name: str) -> SamplerSettings:
    try:
        return SETTINGS[name]
    except KeyError:
        raise ValueError(f"unknown sampler preset {name!r}; known presets: {sorted(SETTINGS)}") from None


# ---------------------------------------------------------------------------------------------------
# The plan: everything host-side, once per (settings, latent size, device, amplified)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagePlan:
    """One stage of a chunk: its size, schedule on the device and the stepper's tables."""

    size: tuple[int, int, int]  # (T, H, W) latent size of the stage
    schedule: Schedule  # on the sampling device
    unipc: UniPCPlan | None  # scheduler_type "unipc"
    dmd: DMDPlan | None  # scheduler_type "dmd"
    renoise: tuple[float, float] | None  # (α, β) entering this stage; None for the first
    zero_init: int  # leading steps whose velocity is zero (CFG-Zero* zero-init)

    @property
    def steps(self) -> int:
        return self.schedule.steps


@dataclass(frozen=True)
class ChunkPlan:
    stages: tuple[StagePlan, ...]
    block_factor: torch.Tensor | None  # (4, 4) float32 on the device; None without a pyramid


@lru_cache(maxsize=32)
def chunk_plan(
    settings: SamplerSettings, latent_size: tuple[int, int, int], device: torch.device, amplify: bool
) -> ChunkPlan:
    """Build (and cache) the plan of a chunk of full-resolution latent size (T, H, W)."""
    config = settings.scheduler
    amplify = amplify and config.scheduler_type == "dmd"
    schedules = chunk_schedules(
        config, settings.steps, latent_size, amplify=amplify, mu_from_stage_input=settings.mu_from_stage_input
    )
    pyramid = config.stages > 1
    sizes = stage_latent_sizes(config, latent_size) if pyramid else (latent_size,)
    table = stage_table(config)
    zero_init = zero_init_steps(settings.zero_steps) if settings.guided and settings.cfg_zero_star else 0
    stages = []
    for s, schedule in enumerate(schedules):
        stages.append(
            StagePlan(
                size=sizes[s],
                schedule=schedule.to(device),
                unipc=unipc_plan(config, schedule.sigmas, device)
                if config.scheduler_type == "unipc"
                else None,
                dmd=dmd_plan(schedule, device) if config.scheduler_type == "dmd" else None,
                renoise=table.renoise_coefficients(s, config.gamma) if s > 0 else None,
                zero_init=zero_init if (s == 0 and settings.use_zero_init) else 0,
            )
        )
    factor = block_noise_factor(config.gamma, device) if pyramid else None
    return ChunkPlan(stages=tuple(stages), block_factor=factor)


# ---------------------------------------------------------------------------------------------------
# The chunk loop
# ---------------------------------------------------------------------------------------------------


def _velocity(
    positive: ModelFn, negative: ModelFn | None, settings: SamplerSettings, x: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    v = positive(x, t)
    if negative is None:
        return v
    v_uncond = negative(x, t)
    if settings.cfg_zero_star:
        return cfg_zero_star(v, v_uncond, settings.guidance_scale)
    return cfg(v, v_uncond, settings.guidance_scale)


def denoise_chunk(
    model: ModelFn | Guidance,
    noise: torch.Tensor,
    settings: SamplerSettings,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    *,
    first_chunk: bool = False,
) -> torch.Tensor:
    """Denoise one chunk from its full-resolution noise (B, C, T, H, W) float32 (see `chunk_noise`).

    `model` is the conditional forward, or a `Guidance` when settings.guidance_scale > 1.
    `generator` provides the block noise of the pyramid stages (torch's default generator if None);
    a sequence of B generators gives each batch row its own (see `block_noise`).
    `first_chunk` enables the amplified DMD schedule when settings.amplify_first_chunk is set.
    Returns the clean latents (B, C, T, H, W): float32 for UniPC; for DMD in the model output's dtype.
    """
    if isinstance(model, Guidance):
        positive, negative = model.positive, model.negative
    else:
        positive, negative = model, None
    if settings.guided and negative is None:
        raise ValueError(
            f"settings ask for guidance (scale {settings.guidance_scale}) but no negative forward was given: "
            "pass Guidance(positive, negative)"
        )
    if not settings.guided:
        negative = None  # like the reference, a scale <= 1 runs the conditional forward only
    if noise.dim() != 5:
        raise ValueError(f"noise must be (B, C, T, H, W), got shape {tuple(noise.shape)}")

    B = noise.shape[0]
    plan = chunk_plan(
        settings, tuple(noise.shape[2:]), noise.device, settings.amplify_first_chunk and first_chunk
    )
    kind = settings.scheduler.scheduler_type
    x = downsample_noise(noise, len(plan.stages) - 1)
    for stage in plan.stages:
        if stage.renoise is not None:
            up = upsample_nearest(x)
            n = block_noise(tuple(up.shape), plan.block_factor, generator, noise.device)
            x = renoise(up, n.to(settings.block_noise_dtype), *stage.renoise)
        start = x  # the DMD renoise target: the stage's entry tensor (pitfall 5)
        zeros = torch.zeros_like(x) if stage.zero_init else None
        state = UniPCState()
        timesteps = stage.schedule.model_timesteps
        for i in range(stage.steps):
            if i < stage.zero_init:
                v = zeros  # CFG-Zero* zero-init: the reference zeroes both forwards' result, so skip them
            else:
                v = _velocity(positive, negative, settings, x, timesteps[i].expand(B))
            if kind == "unipc":
                x, state = unipc_step(stage.unipc, i, v, x, state)
            elif kind == "dmd":
                x = dmd_step(stage.dmd, i, v, x, start)
            else:
                x = euler_step(stage.schedule.sigmas, i, v, x)
    return x
