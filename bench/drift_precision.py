"""The trained toy world in several precisions through the drift benchmark (`helios eval drift`'s
`run_drift`, the same held-out seeds and actions for each), side by side (issue 17).

The toy ships in float32 and `helios eval drift --model toy` runs it so, on a GPU too (with the fast
path: Triton row kernels, the VAE in bf16 and compiled); `--precision fp8` puts blocks 1-4 of its 6
in FP8 with float32 around them. This program adds the setting the 14B runs in: the transformer cast
to bf16 (`to_dtype`: the float32 parameters of spec 3.12 stay float32), then bf16 against bf16 + FP8.

Variants: `float32` (the toy as shipped), `fp8` (as `--precision fp8`), `bf16`, `bf16+fp8`. On a GPU
FP8 is the fast path's (`torch._scaled_mm`); on the CPU it is emulated (`WorldModel.quantize_fp8`).

    python bench/drift_precision.py --variants bf16 bf16+fp8 --seeds 20 --chunks 8 --out bench/results
    python bench/drift_precision.py --device cpu --seeds 1 --chunks 2 --out /tmp/dp   # smoke test
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch
from _common import run_header

from helios_runtime.engine.engine import WorldEngine
from helios_runtime.engine.fastpath import FastPathChoice
from helios_runtime.engine.world_model import WorldModel
from helios_runtime.eval.drift import CopyLastFrame, EnginePredictor, run_drift

VARIANTS = ("float32", "fp8", "bf16", "bf16+fp8")


def build(model_name: str, variant: str, device: str | None) -> WorldModel:
    """The toy in `variant`, with the fast path on a GPU as `WorldModel.load` applies it."""
    model = WorldModel.load(model_name, device=device, fast=FastPathChoice(fast=False))
    if variant.startswith("bf16"):
        model.transformer.to_dtype(torch.bfloat16)
    precision = "fp8" if variant.endswith("fp8") else "bf16"
    if model.device.type == "cuda":
        model.fast_path(precision=precision)
    elif precision == "fp8":
        model.quantize_fp8()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="toy")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument("--seeds", type=int, default=20, help="held-out worlds from --first-seed")
    parser.add_argument("--first-seed", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    res: dict = {
        **run_header("drift_precision"),
        "settings": {
            "model": args.model,
            "seeds": seeds,
            "chunks": args.chunks,
            "simulator": "96x160, daylight moving (helios eval drift's defaults)",
        },
        "variants": {},
    }
    device_name = res["device"] if args.device != "cpu" else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"drift_{args.model}-precision_{device_name.replace(' ', '_')}.json"
    for variant in args.variants:
        t0 = time.perf_counter()
        try:
            model = build(args.model, variant, args.device)
            engine = WorldEngine(model, max_sessions=2)
            predictor = EnginePredictor(engine, seed=0)  # as `helios eval drift` builds it
            result = run_drift([predictor, CopyLastFrame()], seeds, args.chunks)
        except Exception as exc:  # one variant failing must not lose the others
            traceback.print_exc()
            res["variants"][variant] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            path.write_text(json.dumps(res, indent=1, allow_nan=False) + "\n")
            print(f"{variant}: FAILED {res['variants'][variant]['error']}", flush=True)
            continue
        summary = result["summary"][predictor.name]
        res["variants"][variant] = {
            "transformer_precision": model.transformer.precision,
            "transformer_dtype": str(model.transformer.dtype),
            "fp8_blocks": [i for i, b in enumerate(model.transformer.blocks) if b.fp8],
            "vae_dtype": str(next(model.vae.parameters()).dtype),
            "direction_agreement": summary["direction_agreement"]["value"],
            "psnr_10s_db": summary["psnr_vs_copy_last"]["value_db"],
            "copy_last_psnr_10s_db": summary["psnr_vs_copy_last"]["copy_last_db"],
            "hist_drift": summary["hist_drift"],
            "per_chunk": result["per_chunk"][predictor.name],
            "seconds": time.perf_counter() - t0,
        }
        res["settings"]["prompts"] = result["settings"]["prompts"]
        path.write_text(json.dumps(res, indent=1, allow_nan=False) + "\n")  # after every variant
        row = res["variants"][variant]
        print(
            f"{variant}: agreement {row['direction_agreement']:.4f}, "
            f"PSNR to 10 s {row['psnr_10s_db']:.3f} dB, {row['seconds']:.0f} s",
            flush=True,
        )
        del model, engine, predictor
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    for fp8, base in (("fp8", "float32"), ("bf16+fp8", "bf16")):
        a, b = res["variants"].get(fp8, {}), res["variants"].get(base, {})
        if "psnr_10s_db" in a and "psnr_10s_db" in b:
            res[f"{fp8}_minus_{base}"] = {
                "direction_agreement": a["direction_agreement"] - b["direction_agreement"],
                "psnr_10s_db": a["psnr_10s_db"] - b["psnr_10s_db"],
                "target": "|agreement| <= 0.02, |PSNR| <= 0.3 dB",
            }
    path.write_text(json.dumps(res, indent=1, allow_nan=False) + "\n")

    print(f"\n{device_name}, {args.model}, seeds {seeds[0]}-{seeds[-1]} x {args.chunks} chunks:")
    print(f"{'variant':10} {'transformer':>12} {'agreement':>10} {'PSNR 10 s dB':>13} {'hist ratio':>11}")
    for variant, row in res["variants"].items():
        if "error" in row:
            print(f"{variant:10} failed: {row['error'][:90]}")
            continue
        ratio = row["hist_drift"]["ratio"]
        print(
            f"{variant:10} {row['transformer_precision']:>12} {row['direction_agreement']:10.4f} "
            f"{row['psnr_10s_db']:13.3f} {ratio if ratio is None else round(ratio, 3)!s:>11}"
        )
    for key, diff in res.items():
        if key.endswith(("_minus_float32", "_minus_bf16")):
            print(f"{key}: agreement {diff['direction_agreement']:+.4f}, PSNR {diff['psnr_10s_db']:+.3f} dB")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
