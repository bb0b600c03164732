"""Shared helpers of the GPU benchmarks: the GPU's state as nvidia-smi reads it, and error norms."""

from __future__ import annotations

import subprocess

import torch

from helios_runtime.engine.world_model import WorldModel
from helios_runtime.model.text_encoder import BuiltinTextEncoder, BuiltinTextEncoderConfig
from helios_runtime.model.transformer import HeliosTransformer
from helios_runtime.model.vae import WanVAE
from helios_runtime.sampling import sampler_preset

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


def random_world_model(
    preset: str, device: torch.device, vae_dtype: torch.dtype = torch.bfloat16
) -> WorldModel:
    """The benchmark world: the `preset` transformer with random bf16 weights, the Wan 2.1 VAE, and a
    random built-in text encoder of width 4096 standing in for umT5 (prompt encoding is cached, not
    part of a step), Distilled sampling. Seeded, so every process (every rank) builds the same one."""
    return WorldModel(
        name=f"{preset}-random",
        transformer=HeliosTransformer.from_config(preset, device=device, dtype=torch.bfloat16).eval(),
        vae=WanVAE.from_config("wan2.1", device=device, dtype=vae_dtype).eval(),
        text_encoder=BuiltinTextEncoder(BuiltinTextEncoderConfig(dim=4096, max_tokens=512), device=device),
        sampler=sampler_preset("distilled"),
    )
