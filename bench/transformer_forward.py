"""Our Helios transformer against diffusers 0.42.1 on one GPU: parity and time per forward.

Both models run on the same weights (diffusers' parameters are our tensors, assigned, so memory is
shared and the weights are identical by construction). For each pyramid stage of a 384×640 chunk —
9 noisy latent frames at 12×20, 24×40 and 48×80 with the full multi-term memory at 48×80 and 512 text
tokens — it checks bf16 parity, then times both forwards interleaved (CUDA events, median), and
reports ms, achieved TFLOP/s and peak memory. A float32 parity check on a 2-layer model of the same
width runs first (TF32 off).

Run on the GPU machine (diffusers carried as a wheel):
    python bench/transformer_forward.py --out bench/results
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import statistics
import time
from pathlib import Path

import torch
from _common import gpu_state, rel_l2, run_header

from helios_runtime.model.attention import get_attention_backend
from helios_runtime.model.config import HeliosConfig, preset
from helios_runtime.model.transformer import HeliosTransformer, forward_flops

STAGES = ((12, 20, 999), (24, 40, 742), (48, 80, 385))  # (latent h, w, model timestep) at 384×640


def reference_from(ours: HeliosTransformer):
    """diffusers' model holding our very tensors (no copy)."""
    from diffusers import HeliosTransformer3DModel

    accepted = inspect.signature(HeliosTransformer3DModel.__init__).parameters
    kwargs = {k: v for k, v in ours.config.to_dict().items() if k in accepted}
    with torch.device("meta"):
        ref = HeliosTransformer3DModel(**kwargs)
    ref.load_state_dict(ours.state_dict(), strict=True, assign=True)
    # RoPE frequency buffers are not in the state dict: rebuild them on the device.
    ref.rope = type(ref.rope)(rope_dim=ours.config.rope_dim, theta=ours.config.rope_theta).to(ours.device)
    return ref.eval()


def chunk(
    cfg: HeliosConfig, h: int, w: int, t: int, hist_hw: tuple[int, int], device, dtype, seed: int
) -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    Hh, Wh = hist_hw

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dtype)

    idx = torch.arange(29, device=device)[None]
    anchor, long_, mid, newest, noisy = idx.split([1, 16, 2, 1, 9], dim=1)
    return dict(
        hidden_states=randn(1, cfg.in_channels, 9, h, w),
        timestep=torch.tensor([t], device=device),
        encoder_hidden_states=randn(1, 512, cfg.text_dim),
        indices_hidden_states=noisy,
        indices_latents_history_short=torch.cat([anchor, newest], dim=1),
        indices_latents_history_mid=mid,
        indices_latents_history_long=long_,
        latents_history_short=randn(1, cfg.in_channels, 2, Hh, Wh),
        latents_history_mid=randn(1, cfg.in_channels, 2, Hh, Wh),
        latents_history_long=randn(1, cfg.in_channels, 16, Hh, Wh),
    )


def timed(fn, inputs) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(**inputs)
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def peak_gib(fn, inputs) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn(**inputs)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="14b")
    parser.add_argument(
        "--layers", type=int, default=None, help="override num_layers (default: the preset's)"
    )
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    import diffusers

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = preset(args.preset)
    if args.layers is not None:
        cfg = cfg.replace(num_layers=args.layers)
    results: dict = {
        **run_header("transformer_forward", diffusers=diffusers.__version__),
        "settings": {
            "preset": args.preset,
            "num_layers": cfg.num_layers,
            "resolution": "384x640",
            "batch": 1,
            "text_tokens": 512,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "attention_backend": get_attention_backend(),
            "tf32": False,
            "mode": "eager",
        },
    }

    # 1. float32 parity at full width, 2 layers, full-resolution stage.
    print("float32 parity (2 layers) ...", flush=True)
    small = HeliosTransformer.from_config(
        cfg.replace(num_layers=2), device=device, dtype=torch.float32, seed=1
    )
    small_ref = reference_from(small)
    inputs = chunk(small.config, 48, 80, 385, (48, 80), device, torch.float32, seed=2)
    with torch.inference_mode():
        fp32_err = rel_l2(small(**inputs), small_ref(**inputs, return_dict=False)[0])
    results["fp32_parity_2_layers_rel_l2"] = fp32_err
    # bf16 accuracy of both implementations against the float32 answer on the same weights: equal
    # errors mean bf16 differences between them are rounding, not a different function.
    half = copy.deepcopy(small).to_dtype(torch.bfloat16)
    half_ref = reference_from(half)
    half_inputs = {k: v.bfloat16() if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.inference_mode():
        exact = small(**inputs)
        ours16, ref16 = half(**half_inputs), half_ref(**half_inputs, return_dict=False)[0]
    results["bf16_2_layers_rel_l2"] = {
        "ours_vs_fp32": rel_l2(ours16, exact),
        "diffusers_vs_fp32": rel_l2(ref16, exact),
        "ours_vs_diffusers": rel_l2(ours16, ref16),
        "bit_identical": bool(torch.equal(ours16, ref16)),
    }
    del small, small_ref, half, half_ref, inputs, half_inputs
    torch.cuda.empty_cache()

    # 2. bf16 at the full preset.
    print(f"building {args.preset} ({cfg.num_layers} layers) in bf16 on the GPU ...", flush=True)
    t0 = time.perf_counter()
    ours = HeliosTransformer.from_config(cfg, device=device, dtype=torch.bfloat16, seed=0).eval()
    torch.cuda.synchronize()
    results["build_seconds"] = round(time.perf_counter() - t0, 2)
    results["parameters"] = ours.num_parameters()
    ref = reference_from(ours)
    rows = []
    with torch.inference_mode():
        for stage, (h, w, t) in enumerate(STAGES):
            inputs = chunk(cfg, h, w, t, (48, 80), device, torch.bfloat16, seed=10 + stage)
            n = 9 * (h // 2) * (w // 2)
            err = rel_l2(ours(**inputs), ref(**inputs, return_dict=False)[0])
            for _ in range(args.warmup):
                ours(**inputs)
                ref(**inputs)
            t_ours, t_ref = [], []
            for _ in range(args.repeat):  # interleaved, so drift in clocks hits both alike
                t_ours.append(timed(ours, inputs))
                t_ref.append(timed(lambda **kw: ref(**kw, return_dict=False), inputs))
            flops = forward_flops(cfg, n, 2400, 512)
            row = {
                "stage": stage,
                "noisy_tokens": n,
                "tokens": n + 2400,
                "bf16_rel_l2_vs_diffusers": err,
                "ours_ms_median": statistics.median(t_ours),
                "diffusers_ms_median": statistics.median(t_ref),
                "ours_ms_all": t_ours,
                "diffusers_ms_all": t_ref,
                "gflop": flops / 1e9,
                "ours_peak_gib": peak_gib(ours, inputs),
                "diffusers_peak_gib": peak_gib(lambda **kw: ref(**kw, return_dict=False), inputs),
            }
            row["ours_tflops"] = flops / row["ours_ms_median"] / 1e9
            row["diffusers_tflops"] = flops / row["diffusers_ms_median"] / 1e9
            rows.append(row)
            print(
                f"  stage {stage}: ours {row['ours_ms_median']:.1f} ms, "
                f"diffusers {row['diffusers_ms_median']:.1f} ms"
            )
    results["stages"] = rows
    results["gpu_after"] = gpu_state()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"transformer_forward_{args.preset}_{results['device'].replace(' ', '_')}.json"
    (out / name).write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{results['device']}, torch {torch.__version__}, diffusers {diffusers.__version__}, eager, SDPA")
    print(f"float32 parity, 2 layers of {args.preset}: rel L2 {fp32_err:.2e}")
    b = results["bf16_2_layers_rel_l2"]
    print(
        f"bf16, 2 layers: ours vs fp32 {b['ours_vs_fp32']:.2e}, "
        f"diffusers vs fp32 {b['diffusers_vs_fp32']:.2e}, "
        f"ours vs diffusers {b['ours_vs_diffusers']:.2e} (bit-identical: {b['bit_identical']})"
    )
    print(
        f"{args.preset}: {results['parameters']:,} parameters, "
        f"built on the GPU in {results['build_seconds']} s"
    )
    print(
        f"{'stage':>5} {'tokens':>7} {'bf16 rel':>9} {'ours ms':>8} {'diff ms':>8} {'ours TF/s':>9} "
        f"{'diff TF/s':>9} {'ours/diff':>9} {'peak GiB o/d':>13}"
    )
    for r in rows:
        print(
            f"{r['stage']:>5} {r['tokens']:>7} {r['bf16_rel_l2_vs_diffusers']:>9.2e} "
            f"{r['ours_ms_median']:>8.1f} "
            f"{r['diffusers_ms_median']:>8.1f} {r['ours_tflops']:>9.0f} {r['diffusers_tflops']:>9.0f} "
            f"{r['diffusers_ms_median'] / r['ours_ms_median']:>8.2f}x "
            f"{r['ours_peak_gib']:>6.1f}/{r['diffusers_peak_gib']:<6.1f}"
        )
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
