"""A follower rank of a context-parallel engine worker (started by the worker itself, never by hand).

    python -m helios_runtime.server.worker.context_parallel.follower --address 127.0.0.1:29500 \\
        --rank 1 --world 2 --device cuda:1 --model tiny

It joins the worker's process group, loads the same model on its device, and mirrors every engine
call of the leader (`replicated.follow`) until the leader says stop or is gone.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .... import DEFAULT_MODEL

log = logging.getLogger("helios.parallel")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="helios context-parallel follower rank (started by a worker)"
    )
    parser.add_argument("--address", required=True, help="HOST:PORT of rank 0's process-group store")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--max-sessions", type=int, default=64)
    parser.add_argument("--json-logs", action="store_true")
    parser.add_argument("--max-height", type=int, default=None, help="the leader's frame-size limit")
    parser.add_argument("--max-width", type=int, default=None, help="the leader's frame-size limit")
    args = parser.parse_args(argv)

    from ....engine.engine import WorldEngine
    from ....engine.snapshot_key import key_from_env
    from ....engine.world_model import WorldModel
    from ....logs import configure_logging
    from .launch import init_worker_group, leave_worker_group
    from .replicated import follow

    configure_logging(args.json_logs)
    group = init_worker_group(args.rank, args.world, args.address, args.device)
    try:
        model = WorldModel.load(args.model, device=group.device)  # same environment as the leader
        model.transformer.enable_context_parallel(group.cp)
        engine = WorldEngine(
            model,
            max_sessions=args.max_sessions,
            decodes=False,
            snapshot_key=key_from_env(),  # the leader's, from the environment it gave this process
            max_height=args.max_height,
            max_width=args.max_width,
        )
        log.info("rank %d/%d following on %s", args.rank, args.world, group.device)
        follow(engine, group)
    except Exception as exc:  # the leader is gone (the group broke) or a bug: either way, go
        log.error("rank %d/%d stops: %s", args.rank, args.world, exc)
        return 1
    finally:
        leave_worker_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
