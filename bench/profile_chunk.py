"""Where a chunk's time goes on the GPU: torch.profiler over (a) one stage-3 forward of the `14b`
transformer (48×80 latents with full history, the largest of a [2,2,2] chunk's six forwards), eager
and compiled, and (b) one streamed VAE decode of a 384×640 chunk. Prints the top CUDA kernels by
total time and writes them as JSON, grouped into matmul / attention / convolution / other.

    python bench/profile_chunk.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import gpu_state
from torch.profiler import ProfilerActivity, profile
from transformer_forward import chunk

from helios_runtime.model.transformer import HeliosTransformer
from helios_runtime.model.vae import WanVAE


def kind(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native_sdpa")):
        return "attention"
    if any(k in n for k in ("conv", "implicit_convolve", "xmma_fprop", "fprop")):
        return "convolution"
    if any(k in n for k in ("gemm", "sm90_xmma", "cutlass", "nvjet", "matmul")):
        return "matmul"
    return "other"


def top_kernels(fn, rows: int) -> dict:
    with torch.no_grad():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in events)
    groups: dict[str, float] = {}
    for e in events:
        groups[kind(e.key)] = groups.get(kind(e.key), 0.0) + e.device_time_total
    top = [
        {"kernel": e.key[:120], "ms": e.device_time_total / 1000, "calls": e.count, "kind": kind(e.key)}
        for e in events[:rows]
    ]
    for t in top:
        print(f"  {t['ms']:8.2f} ms {t['calls']:5d}x {t['kind']:12s} {t['kernel']}")
    summary = {k: v / 1000 for k, v in groups.items()}
    print(
        f"  total {total / 1000:.1f} ms: " + ", ".join(f"{k} {v:.1f}" for k, v in summary.items()), flush=True
    )
    return {"total_ms": total / 1000, "by_kind_ms": summary, "top": top}


def overlap(forward, decode) -> dict:
    """Two stage-3 forwards alone, one chunk's decode alone, then both at once (the decode in a
    thread on its own CUDA stream): does the GPU have room to hide the VAE behind denoising?"""
    import threading

    def timed(fn) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    side = torch.cuda.Stream()

    def two_forwards() -> None:
        with torch.no_grad():
            forward()
            forward()

    def decode_on_side() -> None:
        with torch.no_grad(), torch.cuda.stream(side):
            decode()
        side.synchronize()

    def both() -> None:
        thread = threading.Thread(target=decode_on_side)
        thread.start()
        two_forwards()
        thread.join()

    for fn in (two_forwards, decode_on_side, both):
        timed(fn)  # warm
    row = {
        "two_forwards_s": min(timed(two_forwards) for _ in range(3)),
        "decode_s": min(timed(decode_on_side) for _ in range(3)),
        "both_concurrently_s": min(timed(both) for _ in range(3)),
    }
    row["hidden_fraction_of_decode"] = (
        row["two_forwards_s"] + row["decode_s"] - row["both_concurrently_s"]
    ) / row["decode_s"]
    print(f"  overlap: {row}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    res: dict = {"benchmark": "profile_chunk", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    res["device"], res["gpu"] = torch.cuda.get_device_name(), gpu_state()
    res["versions"] = {"torch": torch.__version__, "cuda": torch.version.cuda}

    model = HeliosTransformer.from_config("14b", device="cuda", dtype=torch.bfloat16).eval()
    inputs = chunk(model.config, 48, 80, 385, (48, 80), "cuda", torch.bfloat16, seed=0)
    print("transformer stage 3, eager:")
    res["transformer_eager"] = top_kernels(lambda: model(**inputs), args.rows)
    model.compile_blocks()
    print("transformer stage 3, compiled:")
    res["transformer_compiled"] = top_kernels(lambda: model(**inputs), args.rows)

    vae = WanVAE.from_config("wan2.1", device="cuda", dtype=torch.bfloat16).eval()
    z = torch.randn(1, 16, 9, 48, 80, device="cuda").to(torch.bfloat16)

    def decode() -> None:
        stream = vae.stream_decoder()
        for i in range(9):
            stream.push(z[:, :, i : i + 1])

    print("VAE decode of one chunk (streamed):")
    res["vae_decode"] = top_kernels(decode, args.rows)
    res["overlap"] = overlap(lambda: model(**inputs), decode)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"profile_chunk_{res['device'].replace(' ', '_')}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
