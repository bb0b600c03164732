"""What replay independent of batching costs: N sessions stepped together, batched into one
forward (`step_many(batch=True)`) against one after another (`batch=False`, the server's way since
issue 19: a session's frames never depend on who else was stepped with it).

Aggregate FPS = decoded frames of all sessions / wall time of the step_many call, VAE included,
over `--chunks` steps after a warm-up step; 1, 2 and 4 sessions. On the CPU the embedded `toy`
world at its default size; on a GPU the 14B architecture with random weights at 384×640 (Distilled
[2,2,2]), where batching was measured to give no throughput (15.8 / 15.9 / 15.7 FPS, issue 17).

    python bench/batching.py --out bench/results                     # CPU, toy
    python bench/batching.py --model random-14b --out bench/results  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from _common import cpu_name, run_header

from helios_runtime.engine.engine import WorldEngine
from helios_runtime.engine.world_model import WorldModel

ACTIONS = [{"keys": ["d"]}, {"keys": ["s"]}, {"keys": ["a"]}, {"keys": ["w"]}]


def measure(engine: WorldEngine, sessions: int, chunks: int, batch: bool, learned: bool) -> dict:
    ids = [
        engine.reset("a meadow at noon with trees and sheep", seed=10 + i).session_id for i in range(sessions)
    ]

    def step(k: int) -> float:
        action = ACTIONS[k % len(ACTIONS)] if learned else None
        start = time.perf_counter()
        results = engine.step_many([(sid, action) for sid in ids], batch=batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        return sum(int(r.frames.shape[0]) for r in results) / wall

    step(0)  # warm-up: allocator, kernel choice for this batch size
    fps = [step(k + 1) for k in range(chunks)]
    for sid in ids:
        engine.close(sid)
    return {
        "sessions": sessions,
        "batch": batch,
        "aggregate_fps": statistics.median(fps),
        "fps_per_step": fps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="toy", help="toy (CPU) or random-14b / random-1.3b (GPU)")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--chunks", type=int, default=4, help="measured steps per setting (default 4)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.model.startswith("random-"):
        model = WorldModel.random(args.model, device=device)
        model.vae.to(torch.bfloat16)
        if device == "cuda":  # the served path (kernels, CUDA graphs); the VAE eager: a relative measure
            model.fast_path(compile_vae=False)
    else:
        model = WorldModel.load(args.model, device=device)
    engine = WorldEngine(model, max_sessions=max(args.sessions))
    learned = model.actions is not None  # a learned action space (the toy world): move it
    rows = []
    for n in args.sessions:
        for batch in (True, False):
            row = measure(engine, n, args.chunks, batch, learned)
            rows.append(row)
            print(f"{n} session(s), batch={batch}: {row['aggregate_fps']:.1f} FPS aggregate", flush=True)
    cost = {
        str(n): 1
        - next(r for r in rows if r["sessions"] == n and not r["batch"])["aggregate_fps"]
        / next(r for r in rows if r["sessions"] == n and r["batch"])["aggregate_fps"]
        for n in args.sessions
    }
    result = {
        **run_header("batching"),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "load_average_before": os.getloadavg(),
        "model": args.model,
        "size": list(model.default_size),
        "rows": rows,
        "unbatched_cost": cost,  # 1 - unbatched / batched aggregate FPS
    }
    print(json.dumps({"unbatched_cost": cost}, indent=1))
    if args.out:
        name = result["device"].replace(" ", "_") if device == "cuda" else "cpu"
        path = Path(args.out) / f"batching_{args.model}_{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
