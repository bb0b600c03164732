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
import functools
import json
import os
import sys
import traceback

if os.environ.get("TRITON_INTERPRET") != "1":
    raise SystemExit("set TRITON_INTERPRET=1 before starting this script")

import torch

import helios_kernels as hk
from helios_kernels.parity import compare, run_case, tiny_forward_inputs
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
def run_model(*, dtype: torch.dtype, seed: int = 0, fp8: bool = False) -> dict[str, dict[str, float]]:
    """`HeliosTransformer.use_kernels` on a tiny model with the full multi-term memory. With `fp8`
    (`quantize_fp8`) the fused path (norms quantising their rows, GELU fused with the FFN's
    quantisation) against the torch path through the same `Fp8Linear`s."""
    model = HeliosTransformer.from_config("tiny", device="cpu", dtype=dtype, seed=seed).eval()
    if fp8:
        model.quantize_fp8()
    kw = tiny_forward_inputs(model.config.in_channels, model.config.text_dim, seed)
    want = model(**kw)
    return {"out": compare(model.use_kernels()(**kw), want)}


def run_e4m3_table(*, dtype: torch.dtype, seed: int = 0) -> dict[str, dict[str, float]]:
    """`quantize_rows` on a row holding every finite e4m3 value, every midpoint between neighbours
    (ties), and random values from 2^-12 to 448: its maximum is 448, so the scale is exactly 1 and
    the bytes are the rounding itself, ties and subnormals included."""
    values = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    values = values[values.isfinite()].unique()
    g = torch.Generator().manual_seed(seed)
    spread = torch.exp2(torch.randint(-12, 9, (2000,), generator=g).float())
    rand = ((torch.rand(2000, generator=g) * 2 - 1) * spread).clamp(-448, 448)
    row = torch.cat([values, (values[1:] + values[:-1]) / 2, rand, torch.tensor([448.0, -0.0])])[None]
    got_q, got_s = hk.quantize_rows(row.to(dtype))
    want_q, want_s = hk.reference.quantize_rows(row.to(dtype))
    return {"q": compare(got_q, want_q), "scale": compare(got_s, want_s)}


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
            runners = {
                "block": run_block,
                "model": run_model,
                "model_fp8": functools.partial(run_model, fp8=True),
                "e4m3_table": run_e4m3_table,
            }
            runner = runners.get(kernel)
            results[ident] = runner(**args) if runner else run_case(kernel, **args)
        except Exception:
            results[ident] = {"error": traceback.format_exc()}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
