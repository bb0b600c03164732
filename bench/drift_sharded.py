"""`helios eval drift` over several processes: one seed per task, merged into one result (issue 20).

The same benchmark as the command (`run_drift`: the model through the engine, its VAE's round
trip, copy-last and blurred-still beside the simulator; the same seeds, prompts and actions), for
machines with many cores: each worker process loads the model once and runs whole seeds; the
per-seed results merge exactly into what one process would report (`merge_runs`). The model runs
in float32 without the GPU fast path (`FastPathChoice(fast=False)`), as on the CPU. The JSON has
the command's layout plus the device's name, the processes and the threads of each.

    python bench/drift_sharded.py --model toy --first-seed 100000 --seeds 20 --chunks 29 --procs 8 \\
        --out bench/results/drift_toy.json --plot bench/results/drift_toy.png
    python bench/drift_sharded.py --device cpu --seeds 2 --chunks 2 --procs 2 --out /tmp/d.json  # smoke
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
import time
from typing import Any

import numpy as np
import torch
from _common import cpu_name

from helios_runtime.eval.drift import (
    EnginePredictor,
    VaeRoundTrip,
    merge_runs,
    plot,
    run_drift,
    seed_role,
)

_STATE: dict[str, Any] = {}


def _init(model: str, device: str | None, threads: int, seam_blend: int | None) -> None:
    from helios_runtime.engine.engine import WorldEngine
    from helios_runtime.engine.fastpath import FastPathChoice
    from helios_runtime.engine.world_model import WorldModel

    torch.set_num_threads(threads)
    world = WorldModel.load(model, device=device, seed=0, fast=FastPathChoice(fast=False))
    h, w = world.default_size
    blend = world.seam_blend if seam_blend is None else seam_blend
    _STATE["model"] = world
    _STATE["predictors"] = [
        EnginePredictor(WorldEngine(world, max_sessions=2, seam_blend=blend), seed=0),
        VaeRoundTrip(world.vae, height=h, width=w, name=f"vae-roundtrip:{world.name}", seam_blend=blend),
    ]
    _STATE["seam_blend"] = blend


def _one(job: tuple[int, int, bool]) -> dict[str, Any]:
    seed, chunks, frozen = job
    run = run_drift(_STATE["predictors"], [seed], chunks, frozen_daylight=frozen)
    run["settings"]["seam_blend"] = _STATE["seam_blend"]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="toy", help="a preset or a pipeline folder")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=29)
    parser.add_argument("--procs", type=int, default=4, help="worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--frozen-daylight", action="store_true")
    parser.add_argument(
        "--seam-blend", type=int, default=None, help="frames of the seam blend (default: the model's)"
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    role = seed_role(seeds)
    if role != "test":
        print(f"note: {role} seeds {seeds[0]}-{seeds[-1]}: for choosing, not for reporting", file=sys.stderr)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    ctx = mp.get_context("spawn")  # CUDA in the workers
    jobs = [(s, args.chunks, args.frozen_daylight) for s in seeds]
    with ctx.Pool(
        args.procs, initializer=_init, initargs=(args.model, device, args.threads, args.seam_blend)
    ) as pool:
        runs = []
        for run in pool.imap(_one, jobs):
            runs.append(run)
            print(
                f"seed {run['settings']['seeds'][0]} done, {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
            )
    result = merge_runs(runs)
    result["elapsed_s"] = time.perf_counter() - start
    name = torch.cuda.get_device_name() if device.startswith("cuda") else cpu_name()
    result["settings"].update(
        predictor="engine",
        model=args.model,
        device=device,
        device_name=name,
        processes=args.procs,
        threads=args.threads,
        precision="float32 (no fast path)",
        program="bench/drift_sharded.py",
        versions={"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__},
    )
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
    if args.plot:
        plot(result, args.plot)
    print(f"{'predictor':<24} {'target':<30} {'value':>24}  pass")
    for pred, summary in result["summary"].items():
        for target, row in summary.items():
            value = row.get("value", row.get("value_db", row.get("ratio", row.get("boundary_jump"))))
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            print(f"{pred:<24} {target:<30} {shown:>24}  {'yes' if row['pass'] else 'no'}")
    print(f"wrote {args.out} in {result['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
