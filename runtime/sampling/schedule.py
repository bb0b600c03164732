"""Noise schedules of the Helios samplers: the scheduler config, the pyramid stage tables and the
per-stage (sigmas, timesteps) of one chunk (spec 5.2–5.7).

Everything here is host-side and runs once per (config, steps, latent size, device): the tables are
built in float64 with the same arithmetic as diffusers 0.42.1 `HeliosScheduler` /
`HeliosDMDScheduler` (numpy `linspace`, the same operation order), so they equal the reference
bit for bit, and are then moved to the device. The step loops only index them.

Notation: N = num_train_timesteps (1000), n = sampling steps of one stage, σ a noise level in [0, 1]
(x_σ = (1 − σ)·x0 + σ·ε), t = the model timestep in [0, N]. Latent sizes are (T, H, W).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..configfile import CheckpointError, read_json_object

UNIPC_CLASS = "HeliosScheduler"
DMD_CLASS = "HeliosDMDScheduler"
CONFIG_NAME = "scheduler_config.json"

SCHEDULER_TYPES = ("unipc", "euler", "dmd")
TIME_SHIFT_TYPES = ("exponential", "linear")
# diffusers' UniPC maps these legacy solver names to "bh2" when it is built.
_BH2_ALIASES = ("midpoint", "heun", "logrho")
# Fields of a scheduler_config.json that must keep the one value this runtime implements.
_FIXED_FIELDS = {"prediction_type": "flow_prediction", "thresholding": False, "solver_p": None}
_IGNORED_FIELDS = {"_class_name", "_diffusers_version", "_name_or_path"}

# The pyramid halves h and w between stages; the block noise works on 2×2 blocks (patch 1×2×2).
PATCH_TOKENS = 4


@dataclass(frozen=True)
class SchedulerConfig:
    """A Helios scheduler as its `scheduler_config.json` describes it (spec 5.2).

    Defaults are those of diffusers' `HeliosScheduler` class; `from_dict` applies the defaults of
    the class the file names (`HeliosDMDScheduler` defaults `time_shift_type` to "linear").
    """

    class_name: str = UNIPC_CLASS  # "HeliosScheduler" or "HeliosDMDScheduler" (`_class_name`)
    num_train_timesteps: int = 1000
    shift: float = 1.0  # static shift of the global levels; must be 1 with dynamic shifting
    stages: int = 3  # pyramid stages; 1 = the single-stage (Base) schedule
    stage_range: tuple[float, ...] = (0.0, 1 / 3, 2 / 3, 1.0)  # stage borders on the global levels
    gamma: float = 1 / 3  # block-noise correlation of the between-stage renoise (spec 5.5)
    solver_order: int = 2  # UniPC
    solver_type: str = "bh2"  # UniPC B(h): "bh1" (h) or "bh2" (e^h − 1)
    predict_x0: bool = True  # UniPC in data-prediction form (the only form implemented)
    lower_order_final: bool = True  # UniPC drops to order 1 on the last step
    disable_corrector: tuple[int, ...] = ()  # UniPC steps whose following corrector is skipped
    use_flow_sigmas: bool = True  # α = 1 − σ (flow matching; the only form implemented)
    scheduler_type: str = "unipc"  # "unipc", "euler" or "dmd"
    use_dynamic_shifting: bool = False  # resolution-dependent shift μ (spec 5.3)
    time_shift_type: str = "exponential"  # shift rule with μ: "exponential" or "linear"
    # calculate_shift's line through (base_image_seq_len, base_shift) and (max_image_seq_len,
    # max_shift); the pipelines read these keys from the scheduler config with these defaults.
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15

    def __post_init__(self) -> None:
        def fail(message: str) -> None:
            raise ValueError(f"SchedulerConfig: {message}")

        if self.class_name not in (UNIPC_CLASS, DMD_CLASS):
            fail(f"_class_name must be {UNIPC_CLASS!r} or {DMD_CLASS!r}, got {self.class_name!r}")
        if self.scheduler_type not in SCHEDULER_TYPES:
            fail(f"scheduler_type must be one of {list(SCHEDULER_TYPES)}, got {self.scheduler_type!r}")
        if self.class_name == DMD_CLASS and self.scheduler_type != "dmd":
            fail(f"a {DMD_CLASS} always samples with 'dmd', got scheduler_type={self.scheduler_type!r}")
        if self.time_shift_type not in TIME_SHIFT_TYPES:
            fail(f"time_shift_type must be one of {list(TIME_SHIFT_TYPES)}, got {self.time_shift_type!r}")
        solver_type = "bh2" if self.solver_type in _BH2_ALIASES else self.solver_type
        if solver_type not in ("bh1", "bh2"):
            fail(f"solver_type must be 'bh1' or 'bh2', got {self.solver_type!r}")
        object.__setattr__(self, "solver_type", solver_type)
        if not (isinstance(self.num_train_timesteps, int) and self.num_train_timesteps >= 2):
            fail(f"num_train_timesteps must be an int >= 2, got {self.num_train_timesteps!r}")
        if not (isinstance(self.stages, int) and self.stages >= 1):
            fail(f"stages must be an int >= 1, got {self.stages!r}")
        stage_range = tuple(float(r) for r in self.stage_range)
        if len(stage_range) < self.stages + 1:
            # Longer lists are fine: the reference reads the first stages + 1 borders (a stages = 1
            # config may keep the class's default four).
            fail(f"stage_range needs stages + 1 = {self.stages + 1} borders, got {list(stage_range)}")
        if (
            stage_range[0] < 0
            or stage_range[-1] > 1
            or any(a >= b for a, b in itertools.pairwise(stage_range))
        ):
            fail(f"stage_range must increase within [0, 1], got {list(stage_range)}")
        object.__setattr__(self, "stage_range", stage_range)
        object.__setattr__(self, "disable_corrector", tuple(int(i) for i in self.disable_corrector))
        if self.stages > 1 and not 0 < self.gamma <= 1 / 3:
            # Σ = (1+γ)I − γ11ᵀ is a covariance only for γ ≤ 1/3, and α needs γ > 0 (spec 5.5).
            fail(f"gamma must lie in (0, 1/3] for a pyramid schedule, got {self.gamma!r}")
        if self.solver_order not in (1, 2):
            fail(f"solver_order must be 1 or 2 (the UniPC orders implemented), got {self.solver_order!r}")
        if not self.predict_x0:
            fail("predict_x0=false (noise-prediction UniPC) is not implemented")
        if not self.use_flow_sigmas:
            fail("use_flow_sigmas=false is not implemented: Helios is a flow-matching model")
        if self.use_dynamic_shifting and self.shift != 1.0:
            fail(f"use_dynamic_shifting needs shift = 1.0 (the reference asserts it), got {self.shift!r}")
        if self.shift <= 0:
            fail(f"shift must be positive, got {self.shift!r}")

    # --- (de)serialisation -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SchedulerConfig:
        """Build from a `scheduler_config.json` dict, with the defaults of the class it names."""
        class_name = data.get("_class_name")
        if class_name not in (UNIPC_CLASS, DMD_CLASS):
            raise ValueError(
                f"SchedulerConfig: _class_name must be {UNIPC_CLASS!r} or {DMD_CLASS!r}, got {class_name!r}"
            )
        for key, value in _FIXED_FIELDS.items():
            if key in data and data[key] != value:
                raise ValueError(f"SchedulerConfig: {key}={data[key]!r} is not supported (only {value!r})")
        known = {f.name for f in dataclasses.fields(cls)} - {"class_name"}
        kwargs = {k: v for k, v in data.items() if k in known}
        if class_name == DMD_CLASS:
            # The DMD class has no UniPC fields and no scheduler_type; its time shift defaults to linear.
            kwargs = {"time_shift_type": "linear", **kwargs, "scheduler_type": "dmd"}
        for name in ("stage_range", "disable_corrector"):
            if name in kwargs:
                kwargs[name] = tuple(kwargs[name])
        return cls(class_name=class_name, **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> SchedulerConfig:
        """Read `scheduler_config.json` from a scheduler folder or from a pipeline root's `scheduler/`."""
        folder = Path(folder)
        if not folder.exists():
            raise CheckpointError(f"scheduler folder {str(folder)!r} does not exist")
        candidates = (
            [folder / CONFIG_NAME, folder / "scheduler" / CONFIG_NAME] if folder.is_dir() else [folder]
        )
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise CheckpointError(
                f"no {CONFIG_NAME} in {str(folder)!r}: expected a scheduler folder or a pipeline root "
                f"with scheduler/{CONFIG_NAME}"
            )
        data = read_json_object(path)
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{str(path)!r}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The `scheduler_config.json` dict (the DMD class gets only the fields it has)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "class_name"}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        if self.class_name == DMD_CLASS:
            for name in (
                "solver_order",
                "solver_type",
                "predict_x0",
                "lower_order_final",
                "disable_corrector",
            ):
                del out[name]
            del out["scheduler_type"]
        return {"_class_name": self.class_name, **out}

    def replace(self, **changes: Any) -> SchedulerConfig:
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------------------
# Presets (spec 5.2: only Distilled is confirmed; Base and Mid are the spec's inferred values)
# ---------------------------------------------------------------------------------------------------

PRESETS: dict[str, SchedulerConfig] = {
    "base": SchedulerConfig(
        stages=1, stage_range=(0.0, 1.0), use_dynamic_shifting=True, time_shift_type="exponential"
    ),
    "mid": SchedulerConfig(stages=3, use_dynamic_shifting=True, time_shift_type="exponential"),
    "distilled": SchedulerConfig(
        class_name=DMD_CLASS, scheduler_type="dmd", use_dynamic_shifting=True, time_shift_type="linear"
    ),
}


def preset(name: str) -> SchedulerConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler preset {name!r}; known presets: {sorted(PRESETS)}") from None


# ---------------------------------------------------------------------------------------------------
# Dynamic shift (spec 5.3)
# ---------------------------------------------------------------------------------------------------


def image_seq_len(latent_size: tuple[int, int, int]) -> int:
    """Noisy tokens of a (T, H, W) latent with the 1×2×2 patch, floored like the pipelines do."""
    T, H, W = latent_size
    return (W * H * T) // PATCH_TOKENS


def shift_mu(config: SchedulerConfig, latent_size: tuple[int, int, int]) -> float:
    """μ = base_shift + (seq − base_seq)·slope, unclamped (the pipelines' calculate_shift)."""
    slope = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    intercept = config.base_shift - slope * config.base_image_seq_len
    return image_seq_len(latent_size) * slope + intercept


def time_shift(sigmas: torch.Tensor, mu: float, kind: str) -> torch.Tensor:
    """Shift levels: exponential σ' = e^μ / (e^μ + 1/σ − 1), linear σ' = μ / (μ + 1/σ − 1); 0 ↦ 0."""
    scale = math.exp(mu) if kind == "exponential" else mu
    return scale / (scale + (1 / sigmas - 1))


def stage_latent_sizes(
    config: SchedulerConfig, latent_size: tuple[int, int, int]
) -> tuple[tuple[int, int, int], ...]:
    """(T, H, W) of each pyramid stage, coarsest first; H and W must halve exactly (pitfall 15)."""
    T, H, W = latent_size
    factor = 2 ** (config.stages - 1)
    if H % factor or W % factor:
        raise ValueError(
            f"a {config.stages}-stage pyramid needs latent height and width divisible by {factor} "
            f"(pixel multiples of {8 * factor}), got latent {H}×{W}"
        )
    return tuple(
        (T, H // 2 ** (config.stages - 1 - s), W // 2 ** (config.stages - 1 - s))
        for s in range(config.stages)
    )


def stage_mus(
    config: SchedulerConfig, latent_size: tuple[int, int, int], *, mu_from_stage_input: bool = True
) -> tuple[float, ...]:
    """μ of each stage of a chunk whose full-resolution latent is `latent_size`.

    The diffusers pyramid pipeline computes μ at the top of each stage, before the ×2 upsample, so
    stage s > 0 uses the latent size of stage s − 1 (`mu_from_stage_input=True`, the reference).
    Spec 5.3's tables assume each stage's own size (`False`).
    """
    sizes = stage_latent_sizes(config, latent_size)
    if mu_from_stage_input:
        sizes = sizes[:1] + sizes[:-1]
    return tuple(shift_mu(config, size) for size in sizes)


# ---------------------------------------------------------------------------------------------------
# Stage tables (scheduler init, spec 5.5 construction steps 1–5)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageTable:
    """The per-stage constants a scheduler builds once from its config (spec 5.5). S = stages."""

    sigmas: torch.Tensor  # (N,) float64 global levels 0.999 … 0.000999 (shift applied)
    timesteps: torch.Tensor  # (N,) float64 global timesteps N·σ
    ori_start_sigmas: tuple[float, ...]  # (S,) stage start levels before the correction
    start_sigmas: tuple[float, ...]  # (S,) corrected start levels (stage 0 uncorrected)
    end_sigmas: tuple[float, ...]  # (S,) stage end levels (0 for the last stage)
    timestep_ratios: tuple[tuple[float, float], ...]  # (S,) cumulative length fractions of each stage
    stage_timesteps: torch.Tensor  # (S, N) float64 timestep table of each stage, t_max first
    stage_sigmas: torch.Tensor  # (N,) float64 stage-local levels 0.999 … 0.000999, every stage

    def renoise_coefficients(self, stage: int, gamma: float) -> tuple[float, float]:
        """(α, β) of the renoise `α·up + β·block_noise` entering stage > 0 (spec 5.5 step 3)."""
        signal = 1 - self.ori_start_sigmas[stage]
        alpha = 1 / (math.sqrt(1 + 1 / gamma) * (1 - signal) + signal)
        return alpha, alpha * (1 - signal) / math.sqrt(gamma)


@lru_cache(maxsize=16)
def stage_table(config: SchedulerConfig) -> StageTable:
    """Build the stage tables of `config` exactly as the reference scheduler's constructor does."""
    N = config.num_train_timesteps
    shift = config.shift
    # Global levels: 1 − linspace(1, 1/N, N+1), statically shifted, reversed, last (0) dropped.
    levels = 1.0 - np.linspace(1, 1 / N, N + 1)
    levels = np.flip(shift * levels / (1 + (shift - 1) * levels))[:-1].copy()
    sigmas = torch.from_numpy(levels)
    timesteps = sigmas * N

    ori_starts, starts, ends, lengths = [], [], [], []
    for s in range(config.stages):
        start_index = max(int(config.stage_range[s] * N), 0)
        end_index = min(int(config.stage_range[s + 1] * N), N)
        start = float(sigmas[start_index])
        end = float(sigmas[end_index]) if end_index < N else 0.0
        ori_starts.append(start)
        if s > 0:
            # Entering stage s the upsampled latent has signal a; the renoise rescales it (spec 5.5 step 3).
            signal = 1 - start
            signal = (1 / (math.sqrt(1 + 1 / config.gamma) * (1 - signal) + signal)) * signal
            start = 1 - signal
        starts.append(start)
        ends.append(end)
        lengths.append(start - end)

    total = sum(lengths)
    ratios = []
    for s in range(config.stages):
        lo = 0.0 if s == 0 else sum(lengths[:s]) / total
        hi = 0.9999999999999999 if s == config.stages - 1 else sum(lengths[: s + 1]) / total
        ratios.append((lo, hi))

    tables = []
    for lo, hi in ratios:
        t_max = min(float(timesteps[int(lo * N)]), 999.0)
        t_min = float(timesteps[min(int(hi * N), N - 1)])
        tables.append(np.linspace(t_max, t_min, N + 1)[:-1])
    return StageTable(
        sigmas=sigmas,
        timesteps=timesteps,
        ori_start_sigmas=tuple(ori_starts),
        start_sigmas=tuple(starts),
        end_sigmas=tuple(ends),
        timestep_ratios=tuple(ratios),
        stage_timesteps=torch.from_numpy(np.stack(tables)),
        stage_sigmas=torch.from_numpy(np.linspace(0.999, 0, N + 1)[:-1]),
    )


# ---------------------------------------------------------------------------------------------------
# Per-stage schedules of one chunk (set_timesteps, spec 5.4 / 5.6 / 5.7)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """The levels and timesteps of one stage's n steps (all float64 except `model_timesteps`)."""

    sigmas: torch.Tensor  # (n+1,) levels σ'_0 … σ'_{n−1}, 0
    timesteps: torch.Tensor  # (n,) the scheduler's timesteps
    model_timesteps: torch.Tensor  # (n,) what the model sees: int64 (pyramid) or float64 (Base)

    @property
    def steps(self) -> int:
        return self.timesteps.shape[0]

    def to(self, device: torch.device | str) -> Schedule:
        return Schedule(*(t.to(device) for t in (self.sigmas, self.timesteps, self.model_timesteps)))


def dmd_levels(steps: int, amplify: bool) -> int:
    """Raw levels a DMD stage is built from: n + 1, or 2n + 1 on an amplified first chunk."""
    return 2 * steps + 1 if amplify else steps + 1


def single_stage_schedule(config: SchedulerConfig, steps: int, mu: float) -> Schedule:
    """The Base schedule: σ = linspace(0.999, 0, n+1)[:-1] (the Base pipeline's), then 0, shifted.

    Timesteps are N·σ' and reach the model as floats (pitfall 6).
    """
    if config.stages != 1:
        raise ValueError(
            f"the single-stage (Base) schedule needs a scheduler with stages = 1, got stages={config.stages}"
        )
    if config.scheduler_type == "dmd":
        raise ValueError("a DMD scheduler has no single-stage schedule; use a pyramid (stages > 1) config")
    N = config.num_train_timesteps
    raw = np.linspace(0.999, 0.0, steps + 1)[:-1]
    sigmas = torch.cat([torch.from_numpy(raw), torch.zeros(1, dtype=torch.float64)])
    timesteps = torch.from_numpy(raw * N)
    if config.use_dynamic_shifting:
        sigmas = time_shift(sigmas, mu, config.time_shift_type)
        timesteps = sigmas[:-1] * N
    return Schedule(sigmas=sigmas, timesteps=timesteps, model_timesteps=timesteps)


def stage_schedule(
    config: SchedulerConfig, steps: int, stage: int, mu: float, *, amplify: bool = False
) -> Schedule:
    """The schedule of pyramid stage `stage` for `steps` steps (UniPC / Euler n, DMD n, spec 5.6 / 5.7).

    Raw levels are equally spaced over the stage-local levels and timesteps over the stage's table;
    a DMD stage starts from n+1 (2n+1 amplified) of each and drops the last timestep and the last
    non-zero level. With dynamic shifting the levels are shifted with μ and the timesteps rebuilt as
    t_min + σ'·(t_max − t_min). The model sees the timesteps truncated to int64 (pitfall 6).
    """
    if config.stages == 1:
        raise ValueError("pyramid sampling needs a scheduler with stages > 1, got stages=1 (a Base config)")
    if not 0 <= stage < config.stages:
        raise ValueError(f"stage index {stage} is out of range for a {config.stages}-stage scheduler")
    dmd = config.scheduler_type == "dmd"
    m = dmd_levels(steps, amplify) if dmd else steps
    table = stage_table(config)
    stage_t = table.stage_timesteps[stage]
    timesteps = torch.from_numpy(np.linspace(float(stage_t[0]), float(stage_t[-1]), m))
    local = table.stage_sigmas
    sigmas = torch.cat([torch.from_numpy(np.linspace(float(local[0]), float(local[-1]), m)), torch.zeros(1)])
    if dmd:
        timesteps = timesteps[:-1]
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    if config.use_dynamic_shifting:
        sigmas = time_shift(sigmas, mu, config.time_shift_type)
        t_min, t_max = stage_t.min(), stage_t.max()
        timesteps = t_min + sigmas[:-1] * (t_max - t_min)
    return Schedule(sigmas=sigmas, timesteps=timesteps, model_timesteps=timesteps.to(torch.int64))


def chunk_schedules(
    config: SchedulerConfig,
    steps: tuple[int, ...],
    latent_size: tuple[int, int, int],
    *,
    amplify: bool = False,
    mu_from_stage_input: bool = True,
) -> tuple[Schedule, ...]:
    """One Schedule per stage for a chunk of full-resolution latent size (T, H, W), on the CPU.

    `steps` has one entry per stage (a single entry for a Base config). `amplify` is the DMD first
    chunk flag (ignored by UniPC / Euler, as in the reference).
    """
    steps = tuple(int(n) for n in steps)
    if any(n < 1 for n in steps):
        raise ValueError(f"every stage needs at least one step, got {list(steps)}")
    if config.stages == 1:
        if len(steps) != 1:
            raise ValueError(f"a single-stage scheduler takes one step count, got {list(steps)}")
        return (single_stage_schedule(config, steps[0], shift_mu(config, latent_size)),)
    if len(steps) != config.stages:
        raise ValueError(
            f"the scheduler has {config.stages} pyramid stages but {len(steps)} step counts were given "
            f"({list(steps)})"
        )
    mus = stage_mus(config, latent_size, mu_from_stage_input=mu_from_stage_input)
    return tuple(stage_schedule(config, n, s, mus[s], amplify=amplify) for s, n in enumerate(steps))
