"""One-step flow samplers: the DMD step of the Distilled model (spec 5.7) and a plain Euler step.

DMD step k of a stage whose entry tensor is S (fixed for the whole stage, pitfall 5):

    x0 = x_k − σ_k·v                            (float64, cast to v's dtype)
    x_{k+1} = (1 − σ_{k+1})·x0 + σ_{k+1}·S      (float64, cast to S's dtype), or x0 on the last step

The reference looks each σ up by the nearest entry of the float timestep list to the int-truncated
timestep (diffusers `HeliosDMDScheduler.convert_flow_pred_to_x0` / `add_noise`). That lookup depends
only on the schedule, so `dmd_plan` does it once; the step indexes the two resulting tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedule import Schedule


@dataclass(frozen=True)
class DMDPlan:
    """Per-step levels of a DMD stage; n = steps."""

    sigma: torch.Tensor  # (n,) float64 level of x_k, for x0 = x_k − σ·v
    sigma_next: torch.Tensor  # (n,) float64 level x0 is renoised to (entry n−1 unused)

    @property
    def steps(self) -> int:
        return self.sigma.shape[0]


def _nearest_level(schedule: Schedule, timestep: torch.Tensor) -> torch.Tensor:
    """σ at the float timestep nearest to int(timestep): the reference's lookup (first index on ties)."""
    truncated = timestep.to(torch.int64)
    index = torch.argmin((schedule.timesteps[None, :] - truncated[:, None]).abs(), dim=1)
    return schedule.sigmas[index]


def dmd_plan(schedule: Schedule, device: torch.device | str = "cpu") -> DMDPlan:
    """Resolve the reference's timestep → σ lookups of every step of one DMD stage schedule."""
    schedule = schedule.to("cpu")
    timesteps = schedule.timesteps
    following = torch.cat([timesteps[1:], timesteps[-1:]])  # the last entry is never used
    return DMDPlan(
        sigma=_nearest_level(schedule, timesteps).to(device),
        sigma_next=_nearest_level(schedule, following).to(device),
    )


def dmd_step(
    plan: DMDPlan, k: int, velocity: torch.Tensor, sample: torch.Tensor, start: torch.Tensor
) -> torch.Tensor:
    """DMD step k: the x0 estimate, renoised towards the stage start `start` unless k is the last step.

    Returns x0 in velocity's dtype on the last step, else the renoised sample in start's dtype.
    """
    x0 = (sample.double() - plan.sigma[k] * velocity.double()).to(velocity.dtype)
    if k == plan.steps - 1:
        return x0
    sigma = plan.sigma_next[k]
    return ((1 - sigma) * x0.double() + sigma * start.double()).to(start.dtype)


def euler_step(sigmas: torch.Tensor, i: int, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Euler step i over float64 levels (n+1,): x + (σ_{i+1} − σ_i)·v in float32, cast to v's dtype."""
    return (sample.float() + (sigmas[i + 1] - sigmas[i]) * velocity).to(velocity.dtype)
