"""End-to-end rollout of the WorldEngine on one GPU: the `14b` transformer with random bf16 weights,
the Wan 2.1 VAE, Distilled sampling ([2,2,2], first chunk [4,4,4]) at 384×640.

Reports per chunk: wall time, denoise and decode split, time from the step request to its first
decoded frame, frames per second (decoded frames / wall time, VAE included), peak GPU memory.
A random built-in text encoder of width 4096 stands in for umT5 (prompt encoding is cached and not
part of a step). This is the engine as it stands — eager PyTorch, SDPA — the baseline the
performance work starts from; the comparison with diffusers' pipeline belongs to that work.

    python bench/engine_rollout.py --chunks 6 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import random_world_model, rollout, run_header

from helios_runtime.engine.engine import WorldEngine


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="14b")
    parser.add_argument("--chunks", type=int, default=6)
    parser.add_argument("--vae-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    device = torch.device("cuda")
    vae_dtype = getattr(torch, args.vae_dtype)
    t0 = time.perf_counter()
    model = random_world_model(args.preset, device, vae_dtype)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    engine = WorldEngine(model)

    torch.cuda.reset_peak_memory_stats()
    rows = rollout(engine, args.chunks, "a lighthouse on a cliff above a stormy sea", close=False)
    session = next(iter(engine.sessions))

    later = rows[1:] or rows
    results = {
        **run_header("engine_rollout"),
        "settings": {
            "preset": args.preset,
            "resolution": "384x640",
            "sampler": "distilled [2,2,2], first chunk [4,4,4]",
            "vae_dtype": args.vae_dtype,
            "transformer_dtype": "bfloat16",
            "mode": "eager, SDPA",
            "chunks": args.chunks,
        },
        "build_seconds": build_s,
        "chunks": rows,
        "steady_fps": sum(r["frames"] for r in later) / sum(r["wall_s"] for r in later),
        "steady_chunk_s_median": statistics.median(r["wall_s"] for r in later),
        "steady_first_frame_s_median": statistics.median(r["first_frame_s"] for r in later),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "session_state_bytes": len(engine.snapshot(session)),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"engine_rollout_{args.preset}_{results['device'].replace(' ', '_')}.json"
    (out / name).write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\n{results['device']}, torch {torch.__version__}, {args.preset} bf16 + VAE {args.vae_dtype}, "
        "384x640"
    )
    print(f"{'chunk':>5} {'wall s':>7} {'denoise':>8} {'decode':>7} {'1st frame':>9}")
    for r in rows:
        print(
            f"{r['chunk']:>5} {r['wall_s']:>7.3f} {r['denoise_s']:>8.3f} {r['decode_s']:>7.3f} "
            f"{r['first_frame_s']:>9.3f}"
        )
    print(
        f"steady state: {results['steady_fps']:.2f} FPS, chunk {results['steady_chunk_s_median']:.3f} s, "
        f"first frame after {results['steady_first_frame_s_median']:.3f} s, "
        f"peak {results['peak_gib']:.1f} GiB, "
        f"snapshot {results['session_state_bytes'] / 1e6:.1f} MB"
    )
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
