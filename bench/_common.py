"""Shared helpers of the GPU benchmarks: the GPU's state as nvidia-smi reads it, and error norms."""

from __future__ import annotations

import subprocess

import torch

_QUERY = "name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.draw,power.limit,temperature.gpu"


def gpu_state() -> dict:
    """Clocks, power and temperature as read now (recorded with every result: the GPU is shared)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={_QUERY}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        return dict(zip(_QUERY.split(","), (v.strip() for v in out.split(",")), strict=False))
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": str(exc)}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()
