"""The process group of one context-parallel engine worker: rank 0 answers the front, ranks 1..P-1
follow it. NCCL carries the tensors on GPUs (gloo on CPUs); a gloo group beside it carries the small
control messages (which engine call comes next, whether a chunk was cancelled) so they never queue
behind GPU work."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ....engine.snapshot_key import KEY_ENV
from ....model.ulysses import ContextParallel


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class WorkerGroup:
    """This process's place in its worker's group; `control` is the gloo group for control messages."""

    rank: int
    world: int
    device: torch.device
    control: dist.ProcessGroup | None
    cp: ContextParallel

    @property
    def leader(self) -> bool:
        return self.rank == 0


def init_worker_group(
    rank: int, world: int, address: str, device: str | torch.device, timeout_s: float = 1800.0
) -> WorkerGroup:
    """Join the group at `address` ("host:port", rank 0 listens there). On CUDA the device is made
    current and NCCL carries the tensors; a long timeout because a follower waits, idle, on its
    leader's next command for as long as no client asks for anything."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(
        backend, init_method=f"tcp://{address}", rank=rank, world_size=world, timeout=timeout, **kwargs
    )
    control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    return WorkerGroup(rank, world, device, control, ContextParallel.from_group())


def leave_worker_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def env_address() -> str | None:
    """HELIOS_CP_ADDRESS, when a launcher set it."""
    return os.environ.get("HELIOS_CP_ADDRESS")


def spawn_followers(
    devices: list[str],
    model: str,
    max_sessions: int,
    json_logs: bool = False,
    engine_options: dict[str, Any] | None = None,
) -> tuple[str, list]:
    """Start ranks 1..P-1 of a worker whose rank 0 is this process; returns the group address (for
    this process's `init_worker_group(0, ...)`) and the follower processes. `engine_options`: the
    leader's engine's `snapshot_key`, `max_height`, `max_width`, which every rank needs alike (a
    restore refused on one rank must be refused on all)."""
    options = engine_options or {}
    address = f"127.0.0.1:{free_port()}"
    procs = []
    for rank, device in enumerate(devices[1:], start=1):
        cmd = [
            sys.executable,
            "-m",
            "helios_runtime.server.worker.context_parallel.follower",
            "--address",
            address,
            "--rank",
            str(rank),
            "--world",
            str(len(devices)),
            "--device",
            device,
            "--model",
            model,
            "--max-sessions",
            str(max_sessions),
        ]
        if json_logs:
            cmd.append("--json-logs")
        for name in ("max_height", "max_width"):
            if options.get(name) is not None:
                cmd += [f"--{name.replace('_', '-')}", str(options[name])]
        env = dict(os.environ)
        if options.get("snapshot_key") is not None:  # a secret: in the environment, never on the command line
            env[KEY_ENV] = options["snapshot_key"].hex()
        procs.append(subprocess.Popen(cmd, env=env))
    return address, procs


def group_devices(devices: list[str] | None, context_parallel: int) -> tuple[str | None, ...]:
    """Engine workers' devices for `helios serve`: one entry per worker, a comma list when each
    worker spans `context_parallel` devices. Without --device a context-parallel server uses every
    visible GPU in groups of that size (or, on a machine without one, a single CPU group: slow, for
    trying the wiring)."""
    if context_parallel < 1:
        raise ValueError(f"--context-parallel must be at least 1, got {context_parallel}")
    if context_parallel == 1:
        return tuple(devices) if devices else (None,)
    if not devices:
        count = torch.cuda.device_count()
        if count == 0:
            devices = ["cpu"] * context_parallel
        elif count < context_parallel:
            raise ValueError(f"--context-parallel {context_parallel} needs that many GPUs; {count} visible")
        else:
            devices = [f"cuda:{i}" for i in range(count - count % context_parallel)]
    if len(devices) % context_parallel:
        raise ValueError(
            f"{len(devices)} --device entries do not split into workers of --context-parallel "
            f"{context_parallel} devices each"
        )
    return tuple(
        ",".join(devices[i : i + context_parallel]) for i in range(0, len(devices), context_parallel)
    )
