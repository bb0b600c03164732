"""Runs kernel-vs-reference cases under Triton's CPU interpreter, in a process of its own.

TRITON_INTERPRET=1 only takes effect if it is set before a kernel is defined, and pytest's process
may have imported Triton or helios_kernels already; so test_kernels.py starts this script with the
variable set. Reads a JSON list of cases on stdin, each {"id", "kernel", "dtype", keyword arguments};
writes {id: {output: metrics} or {"error": traceback}} as JSON on stdout.

A case's kernel is one of `helios_kernels.parity.KERNELS` (run by `run_case`); "block": a tiny
transformer block run by the runtime's torch path and by its kernel path (`Block._forward_kernels`,
every row operation a kernel); or "model": a whole tiny transformer with history, both paths.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback

if os.environ.get("TRITON_INTERPRET") != "1":
    raise SystemExit("set TRITON_INTERPRET=1 before starting this script")

import torch

import helios_kernels as hk
from helios_kernels.parity import compare, run_case
from helios_runtime.model.config import preset
from helios_runtime.model.transformer import Block, HeliosTransformer, keeps_fp32


@torch.no_grad()
def run_block(
    *, batch: int, tokens: int, n_hist: int, dtype: torch.dtype, scale_mode: str, seed: int = 0
) -> dict[str, dict[str, float]]:
    cfg = dataclasses.replace(preset("tiny"), is_amplify_history=True, history_scale_mode=scale_mode)
    g = torch.Generator().manual_seed(seed)
    block = Block(cfg)
    for name, p in block.named_parameters():
        # Non-trivial norm weights and history scales, so every input of the kernels matters.
        p.data = p.data + 0.2 * torch.randn(p.shape, generator=g)
        p.data = p.data.to(torch.float32 if keeps_fp32(name) else dtype)
    D, Dh = cfg.inner_dim, cfg.attention_head_dim
    x = (torch.randn(batch, tokens, D, generator=g) * 3 + 0.5).to(dtype)
    context = torch.randn(batch, 5, D, generator=g).to(dtype)
    mod = (torch.randn(batch, 2, 6, D, generator=g) * 0.5).to(dtype)
    angles = torch.randn(batch, tokens, Dh // 2, generator=g) * 3
    rope = torch.cat([angles.cos(), angles.sin()], dim=-1)
    want = block(x, context, mod, rope, n_hist)
    block.kernels = hk
    return {"x": compare(block(x, context, mod, rope, n_hist), want)}


@torch.no_grad()
def run_model(*, dtype: torch.dtype, seed: int = 0) -> dict[str, dict[str, float]]:
    """`HeliosTransformer.use_kernels` on a tiny model with the full multi-term memory."""
    model = HeliosTransformer.from_config("tiny", device="cpu", dtype=dtype, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    C, K = model.config.in_channels, model.config.text_dim
    kw = {
        "hidden_states": torch.randn(1, C, 2, 4, 4, generator=g),
        "timestep": torch.tensor([700.0]),
        "encoder_hidden_states": torch.randn(1, 5, K, generator=g),
        "indices_hidden_states": torch.tensor([[9, 10]]),
    }
    for name, n, first in (("short", 2, 7), ("mid", 2, 5), ("long", 4, 1)):
        kw[f"latents_history_{name}"] = torch.randn(1, C, n, 4, 4, generator=g)
        kw[f"indices_latents_history_{name}"] = torch.arange(first, first + n)[None]
    want = model(**kw)
    return {"out": compare(model.use_kernels()(**kw), want)}


def main() -> None:
    torch.set_num_threads(1)  # tiny tensors: threads only contend on a small machine
    cases = json.load(sys.stdin)
    results = {"available(cpu)": hk.available("cpu")}
    for case in cases:
        args = dict(case)
        ident, kernel = args.pop("id"), args.pop("kernel")
        for key in ("dtype", "y_dtype"):
            if key in args:
                args[key] = getattr(torch, args[key])
        try:
            runner = {"block": run_block, "model": run_model}.get(kernel)
            results[ident] = runner(**args) if runner else run_case(kernel, **args)
        except Exception:
            results[ident] = {"error": traceback.format_exc()}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
