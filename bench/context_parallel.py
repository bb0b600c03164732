"""Context parallelism on several GPUs of one host: the `14b` transformer and the whole engine split
over P ranks (Ulysses all-to-all over heads, NCCL), against one GPU, in the same run.

1. Per pyramid stage of a 384×640 chunk (the inputs of bench/transformer_forward.py: 9 noisy latent
   frames at 12×20, 24×40, 48×80 with the full multi-term memory and 512 text tokens): forward ms on
   one GPU and split over P, speed-up, and the bf16 distance of the split result from the one-GPU one.
2. End to end: the WorldEngine with Distilled [2,2,2] for --chunks chunks, VAE (bf16) on the leader,
   on one GPU and then as one context-parallel worker (LeaderEngine + followers, the path of
   `helios serve --context-parallel P`): FPS (decoded frames / wall time), chunk time, first frame.

Every rank builds the same random weights (seeded). Run on a host with ≥ 2 GPUs:
    python bench/context_parallel.py --gpus 2 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _common import random_world_model, rel_l2, rollout, run_header, summarize
from transformer_forward import STAGES, chunk

from helios_runtime.engine.engine import WorldEngine
from helios_runtime.model.transformer import forward_flops
from helios_runtime.server.worker.context_parallel.launch import (
    free_port,
    init_worker_group,
    leave_worker_group,
)
from helios_runtime.server.worker.context_parallel.replicated import LeaderEngine, follow

PROMPT = "a lighthouse on a cliff above a stormy sea"


def _time_forward(model, inputs: dict, repeat: int, warmup: int, group) -> list[float]:
    """Milliseconds per forward (CUDA events, every rank in step through a barrier)."""
    times = []
    for i in range(warmup + repeat):
        dist.barrier(group=group.control)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.no_grad():
            model(**inputs)
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return times


def _rank_main(rank: int, world: int, address: str, args: argparse.Namespace) -> None:
    device = torch.device(f"cuda:{rank}")
    group = init_worker_group(rank, world, address, device)
    try:
        model = random_world_model(args.preset, device).fast_path()  # the serving configuration
        transformer, cfg = model.transformer, model.transformer.config
        results: dict = {"stages": []}
        for h, w, t in STAGES:
            inputs = chunk(cfg, h, w, t, (48, 80), device, torch.bfloat16, seed=0)
            transformer.enable_context_parallel(None)
            with torch.no_grad():
                ref = transformer(**inputs)
            single = _time_forward(transformer, inputs, args.repeat, args.warmup, group)
            transformer.enable_context_parallel(group.cp)
            with torch.no_grad():
                split = transformer(**inputs)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            parallel = _time_forward(transformer, inputs, args.repeat, args.warmup, group)
            peak = torch.cuda.max_memory_allocated() / 2**30
            n_hist = 2 * 48 * 80 // 4 + 2 * 48 * 80 // 32 + 16 * 48 * 80 // 256
            flops = forward_flops(cfg, 9 * h * w // 4, n_hist, 512)
            ms1, msp = statistics.median(single), statistics.median(parallel)
            row = {
                "latent_hw": [h, w],
                "single_ms": ms1,
                "parallel_ms": msp,
                "speedup": ms1 / msp,
                "single_tflops": flops / ms1 / 1e9,
                "parallel_tflops_per_gpu": flops / msp / 1e9 / world,
                "rel_l2_parallel_vs_single": rel_l2(split.float(), ref.float()),
                "peak_gib_rank0": peak,
            }
            results["stages"].append(row)
            if rank == 0:
                print(
                    f"stage {h}x{w}: one GPU {ms1:.1f} ms, {world} GPUs {msp:.1f} ms "
                    f"({ms1 / msp:.2f}x), rel L2 {row['rel_l2_parallel_vs_single']:.1e}",
                    flush=True,
                )
            del ref, split

        # End to end on one GPU (rank 0 alone; the others wait), then context-parallel.
        transformer.enable_context_parallel(None)
        if rank == 0:
            print("engine, one GPU:", flush=True)
            results["engine_single"] = summarize(rollout(WorldEngine(model), args.chunks, PROMPT))
        dist.barrier(group=group.control)
        transformer.enable_context_parallel(group.cp)
        torch.cuda.reset_peak_memory_stats()
        if rank == 0:
            print(f"engine, {world} GPUs context-parallel:", flush=True)
            leader = LeaderEngine(WorldEngine(model), group)
            results["engine_parallel"] = summarize(rollout(leader, args.chunks, PROMPT))
            leader.shutdown()
            results["engine_parallel"]["peak_gib_rank0"] = torch.cuda.max_memory_allocated() / 2**30
            results["engine_speedup"] = (
                results["engine_parallel"]["steady_fps"] / results["engine_single"]["steady_fps"]
            )
            _write(results, world, args)
        else:
            follow(WorldEngine(model, decodes=False), group)
    finally:
        leave_worker_group()


def _write(results: dict, world: int, args: argparse.Namespace) -> None:
    out = {
        **run_header("context_parallel", nccl=".".join(map(str, torch.cuda.nccl.version()))),
        "gpus": world,
        "settings": {
            "preset": args.preset,
            "resolution": "384x640",
            "sampler": "distilled [2,2,2], first chunk [4,4,4]",
            "transformer_dtype": "bfloat16",
            "vae_dtype": "bfloat16",
            "mode": "fast path (Triton kernels, cuDNN attention), Ulysses all-to-all over heads (NCCL)",
            "chunks": args.chunks,
            "repeat": args.repeat,
        },
        **results,
    }
    path = Path(args.out)
    path.mkdir(parents=True, exist_ok=True)
    name = f"context_parallel_{args.preset}_{world}x_{out['device'].replace(' ', '_')}.json"
    (path / name).write_text(json.dumps(out, indent=2) + "\n")
    e1, ep = out["engine_single"], out["engine_parallel"]
    print(
        f"\nengine: one GPU {e1['steady_fps']:.2f} FPS (chunk {e1['chunk_s_p50']:.2f} s), "
        f"{world} GPUs {ep['steady_fps']:.2f} FPS (chunk {ep['chunk_s_p50']:.2f} s, first frame "
        f"{ep['first_frame_s_p50']:.2f} s): {out['engine_speedup']:.2f}x"
    )
    print(f"wrote {path / name}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="14b")
    parser.add_argument("--gpus", type=int, default=None, help="ranks (default: every visible GPU)")
    parser.add_argument("--chunks", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    world = args.gpus or torch.cuda.device_count()
    if world < 2:
        raise SystemExit(f"this benchmark needs at least 2 GPUs; {torch.cuda.device_count()} visible")
    mp.spawn(_rank_main, args=(world, f"127.0.0.1:{free_port()}", args), nprocs=world, join=True)


if __name__ == "__main__":
    main()
