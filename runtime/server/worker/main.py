"""The engine worker process: load the model, warm up, connect to the front, run the loop.

    python -m helios_runtime.server.worker.main --endpoint tcp://127.0.0.1:5555 --model tiny --device cpu

Started by the front's `WorkerPool` (`front/zmq_pool.py`), one process per device; with a comma list
of devices this process is rank 0 of a context-parallel group (`context_parallel/`). Its channel keys
come in its environment (`HELIOS_WORKER_CHANNEL`, `protocol/channel.py`), never on the command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

from ... import DEFAULT_MODEL
from ... import threads as _threads
from ...engine.engine import WorldEngine
from ...engine.known_prompts import EXAMPLE
from ...engine.snapshot_key import key_from_env, new_key
from ...engine.world_model import WorldModel
from ...logs import configure_logging
from ..protocol.channel import WorkerKeys
from ..protocol.messages import Ready
from .loop import Worker, ZmqTransport
from .seams import Seams

log = logging.getLogger("helios.worker")


def warm_up(engine: WorldEngine) -> float:
    """Run the whole chunk path (reset, step, decode) once before reporting ready, so the first
    client pays no one-time cost (allocator growth, kernel selection, graph compilation).
    On a GPU (the fast path) it warms up at the model's default frame size, whose compiled graphs
    and kernels it builds here (other sizes build on first use); on the CPU at the smallest allowed
    size to keep start-up short."""
    start = time.perf_counter()
    if engine.model.device.type == "cuda":
        height, width = engine.model.default_size
    else:
        height = width = engine.model.pyramid_multiple()
    first = engine.reset(EXAMPLE, seed=0, height=height, width=width)  # a prompt every model knows
    engine.step(first.session_id)
    engine.close(first.session_id)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="helios engine worker (started by `helios serve`)")
    parser.add_argument("--endpoint", required=True, help="the front's ZeroMQ ROUTER endpoint")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--device",
        default=None,
        help="torch device; a comma list (cuda:0,cuda:1) runs one session context-parallel over them",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: $HELIOS_THREADS, else threads.py's)"
    )
    parser.add_argument("--max-sessions", type=int, default=64)
    parser.add_argument("--identity", default=None)
    parser.add_argument("--no-warm-up", action="store_true")
    parser.add_argument("--json-logs", action="store_true")
    parser.add_argument("--min-free-gib", type=float, default=2.0, help="GPU memory a new session needs free")
    parser.add_argument("--max-height", type=int, default=None, help="frame-size limit (pixels)")
    parser.add_argument("--max-width", type=int, default=None, help="frame-size limit (pixels)")
    parser.add_argument(
        "--seam-blend", type=int, default=None, help="frames eased at a chunk boundary (default: the model's)"
    )
    args = parser.parse_args(argv)
    configure_logging(args.json_logs)
    threads = _threads.resolve(args.threads)
    _threads.apply(threads)
    keys = WorkerKeys.take_from_env()  # first: nothing this process starts inherits them
    # The front's snapshot key comes in the environment; alone, a worker makes its own.
    options = dict(
        snapshot_key=key_from_env() or new_key(),
        max_height=args.max_height,
        max_width=args.max_width,
        seam_blend=args.seam_blend,
    )

    devices = args.device.split(",") if args.device else [None]
    followers: list = []
    if len(devices) > 1:
        # Context parallel: this process is rank 0 of a group over the listed devices.
        from .context_parallel.launch import init_worker_group, spawn_followers
        from .context_parallel.replicated import LeaderEngine

        address, followers = spawn_followers(devices, args.model, args.max_sessions, args.json_logs, options)
        group = init_worker_group(0, len(devices), address, devices[0])
        model = WorldModel.load(args.model, device=group.device)
        model.transformer.enable_context_parallel(group.cp)
        engine: Any = LeaderEngine(WorldEngine(model, max_sessions=args.max_sessions, **options), group)
    else:
        model = WorldModel.load(args.model, device=devices[0])
        engine = WorldEngine(model, max_sessions=args.max_sessions, **options)
    warm = 0.0 if args.no_warm_up else warm_up(engine)
    transport = ZmqTransport(args.endpoint, (args.identity or f"worker-{os.getpid()}").encode(), keys)
    info = {
        **describe_model(engine, warm),
        "pid": os.getpid(),
        "device": str(model.device) if len(devices) == 1 else ",".join(devices),
        "context_parallel": len(devices),
    }
    worker = Worker(engine, transport, int(args.min_free_gib * 2**30), seams=Seams.from_env())
    worker.send(Ready(info))
    log.info("ready: %s on %s, %s (warm-up %.1f s)", model.name, model.device, threads.label, warm)
    try:
        worker.run()
    except KeyboardInterrupt:
        pass
    finally:
        transport.close()
        if followers:
            engine.shutdown()
            for proc in followers:
                proc.wait(timeout=30)
    return 0


def describe_model(engine: Any, warm_up_seconds: float) -> dict[str, Any]:
    """The model part of a worker's ready message, which GetServerInfo reports: the engine's model
    and the structured actions its action adapter understands (`ActionSpace`, as a plain dict)."""
    model: WorldModel = engine.model
    return {
        "name": model.name,
        "parameters": model.transformer.num_parameters(),
        "sampler": _sampler_name(model),
        "steps": list(model.sampler.steps),
        "default_height": model.default_size[0],
        "default_width": model.default_size[1],
        "size_multiple": model.pyramid_multiple(),
        "actions": {**engine.action_adapter.space.to_dict(), "prompts": model.prompt_examples()},
        "seam_blend": engine.seam_blend,
        "warm_up_seconds": warm_up_seconds,
        "transformer_path": (
            "kernels"
            if model.transformer.blocks[0].kernels is not None
            else "compiled"
            if model.transformer.compiled
            else "eager"
        ),
    }


def _sampler_name(model: WorldModel) -> str:
    sched = model.sampler.scheduler
    if sched.scheduler_type == "dmd":
        return "distilled"
    return "base" if sched.stages == 1 else "mid"


if __name__ == "__main__":
    sys.exit(main())
