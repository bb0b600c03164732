"""Samplers of the Helios runtime as pure tensor functions (spec section 5; docs/sampling.md).

- `schedule`: `SchedulerConfig` (scheduler_config.json), μ, the pyramid stage tables and the per-stage
  (sigmas, timesteps) of a chunk.
- `unipc`: the flow UniPC multistep solver (Base, Mid) with an explicit `UniPCState`.
- `flow`: the DMD step (Distilled) and a plain Euler step.
- `pyramid`: noise downsampling, ×2 upsample, block noise with the exact factor, renoise, chunk noise.
- `guidance`: CFG and CFG-Zero*.
- `denoise`: `denoise_chunk`, `SamplerSettings` and its presets, the cached `chunk_plan`.
"""

from .denoise import (
    SETTINGS,
    ChunkPlan,
    Guidance,
    SamplerSettings,
    StagePlan,
    chunk_plan,
    denoise_chunk,
    sampler_preset,
)
from .flow import DMDPlan, dmd_plan, dmd_step, euler_step
from .guidance import cfg, cfg_zero_star, cfg_zero_star_scale
from .pyramid import block_noise, block_noise_factor, chunk_noise, downsample_noise, renoise, upsample_nearest
from .schedule import (
    Schedule,
    SchedulerConfig,
    StageTable,
    chunk_schedules,
    shift_mu,
    single_stage_schedule,
    stage_mus,
    stage_schedule,
    stage_table,
    time_shift,
)
from .unipc import UniPCPlan, UniPCState, unipc_plan, unipc_step

__all__ = [
    "SETTINGS",
    "ChunkPlan",
    "DMDPlan",
    "Guidance",
    "SamplerSettings",
    "Schedule",
    "SchedulerConfig",
    "StagePlan",
    "StageTable",
    "UniPCPlan",
    "UniPCState",
    "block_noise",
    "block_noise_factor",
    "cfg",
    "cfg_zero_star",
    "cfg_zero_star_scale",
    "chunk_noise",
    "chunk_plan",
    "chunk_schedules",
    "denoise_chunk",
    "dmd_plan",
    "dmd_step",
    "downsample_noise",
    "euler_step",
    "renoise",
    "sampler_preset",
    "shift_mu",
    "single_stage_schedule",
    "stage_mus",
    "stage_schedule",
    "stage_table",
    "time_shift",
    "unipc_plan",
    "unipc_step",
    "upsample_nearest",
]
