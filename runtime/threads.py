"""How many CPU threads the engine's torch ops use: one setting for every command that runs it.

`--threads N` on `helios serve` (per engine worker process), `helios play`, `helios record --serve`,
`helios rollout` and `helios eval drift`, and `$HELIOS_THREADS` for all of them and for the SDK's
local env (`backend="local"`, which runs the engine in the caller's process). Without either, the
default is the physical cores this process may use — its CPU affinity (`os.sched_getaffinity`) and
its container's CPU quota — at most `MAX_DEFAULT`, shared out among a server's local workers. An
explicit value above the cores available is lowered to them: threads beyond the free cores only
wait on each other (issue 20: on a busy 2-core machine 2 threads ran 3.5× slower than 1).

On a GPU the engine's work is on the device, so the default leaves torch's own setting alone there;
an explicit `--threads` / `$HELIOS_THREADS` applies on any device. Torch-free (the `helios` command
line resolves the number before it starts anything); `apply` imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV = "HELIOS_THREADS"
# The toy world's matrices are small: a second thread gives 1.3-1.6x one (issue 20's idle EPYC, 19-23
# vs 14.5 fps), so more buy little, and cost much when other work shares the cores.
MAX_DEFAULT = 4


def available_cores() -> int:
    """CPUs this process may run on: its affinity mask, lowered to a cgroup CPU quota if one is set
    (a container limited to 2 CPUs still sees every host CPU in its affinity), and to the physical
    cores among them (hyper-threads share one core's arithmetic units)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = list(range(os.cpu_count() or 1))
    count = min(len(cpus), _physical_cores(cpus) or len(cpus))
    quota = _cgroup_quota()
    return max(1, min(count, quota) if quota else count)


def _physical_cores(cpus: list[int]) -> int | None:
    """Distinct (package, core) pairs among `cpus` (Linux sysfs); None where the topology is unknown."""
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            return None
    return len(cores) or None


def _cgroup_quota() -> int | None:
    """The CPU quota of this process's cgroup in whole CPUs (rounded up), v2 or v1; None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text().strip()
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or not period.isdigit():
        return None
    return max(1, -(-int(quota) // max(1, int(period))))


@dataclass(frozen=True)
class Threads:
    """The resolved setting: `count` threads per process (None: leave torch's own), where it came
    from, and the cores it was resolved against."""

    count: int | None
    source: str  # "--threads", "$HELIOS_THREADS" or "default"
    cores: int
    note: str = ""  # why a requested value was lowered, when it was
    load: float | None = None  # the machine's 1-minute load average at start, where it means something

    @property
    def label(self) -> str:
        """'2 CPU threads' (or torch's own, on a GPU by default)."""
        return _plural(self.count, "CPU thread") if self.count is not None else "torch's CPU threads (GPU)"

    def describe(self) -> str:
        """For the start-up line: '2 CPU threads (default; 2 cores available)', plus a hint when the
        machine was already busy (other work on every core: fewer threads may well be faster)."""
        if self.count is None:
            return self.label
        text = f"{self.label} ({self.source}; {_plural(self.cores, 'core')} available"
        if self.count > 1 and self.load is not None and self.load >= self.cores:
            text += f"; the CPU is busy, load {self.load:.1f}: --threads 1 may be faster"
        return text + ")" + (f" — {self.note}" if self.note else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def machine_load() -> float | None:
    """The 1-minute load average, when this process may use the whole machine (in a container
    limited to a few CPUs the load average counts the host's work, not theirs)."""
    try:
        whole = len(os.sched_getaffinity(0)) == os.cpu_count() and _cgroup_quota() is None
        return os.getloadavg()[0] if whole else None
    except (AttributeError, OSError):
        return None


def parse(value: str | int, what: str) -> int:
    """A thread count from a flag or the environment: a positive int, else a ValueError naming it."""
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive number of threads, got {value!r}") from None
    if count < 1:
        raise ValueError(f"{what} must be a positive number of threads, got {value!r}")
    return count


def resolve(
    flag: int | None = None,
    *,
    workers: int = 1,
    gpu: bool = False,
    environ: Mapping[str, str] = os.environ,
    cores: int | None = None,
    load: float | None = None,
) -> Threads:
    """Threads per process for `workers` engine processes sharing this machine: `flag` (--threads),
    else $HELIOS_THREADS, else the default (None on a GPU: torch's own). Never more, in all, than the
    cores available (at least one each). `cores` and `load` (default: this machine's) are for tests."""
    cores = available_cores() if cores is None else cores
    load = machine_load() if load is None else load
    share = max(1, cores // max(1, workers))
    if flag is not None:
        count, source = parse(flag, "--threads"), "--threads"
    elif environ.get(ENV, "").strip():
        count, source = parse(environ[ENV].strip(), f"${ENV}"), f"${ENV}"
    elif gpu:
        return Threads(None, "default", cores)
    else:
        return Threads(min(share, MAX_DEFAULT), "default", cores, load=load)
    if count > share:
        per = f" per worker for {workers} workers" if workers > 1 else ""
        return Threads(share, source, cores, f"{source} {count} lowered to {share}{per}", load)
    return Threads(count, source, cores, load=load)


def apply(threads: Threads) -> None:
    """Set torch's intra-op threads of this process (nothing for a count of None)."""
    if threads.count is not None:
        import torch

        torch.set_num_threads(threads.count)
