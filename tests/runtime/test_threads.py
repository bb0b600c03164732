"""One CPU-thread setting for every command that runs the engine: --threads, else $HELIOS_THREADS,
else the cores available (at most 4), shared among a server's workers, never more than the cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helios_runtime import threads
from helios_runtime.server.front.settings import ServerSettings


def test_the_default_is_the_cores_available_at_most_four():
    assert threads.resolve(environ={}, cores=2, load=0.0).count == 2
    assert threads.resolve(environ={}, cores=1, load=0.0).count == 1
    assert threads.resolve(environ={}, cores=64, load=0.0).count == threads.MAX_DEFAULT == 4
    on_gpu = threads.resolve(environ={}, cores=64, gpu=True)
    assert on_gpu.count is None, "on a GPU the default leaves torch's own setting"
    assert threads.resolve(3, cores=64, gpu=True).count == 3, "asked for, it applies anywhere"


def test_flag_then_environment_then_default():
    env = {"HELIOS_THREADS": "1"}
    assert threads.resolve(environ=env, cores=8, load=0.0).count == 1
    assert threads.resolve(2, environ=env, cores=8, load=0.0).count == 2
    chosen = threads.resolve(environ=env, cores=8, load=0.0)
    assert chosen.describe() == "1 CPU thread ($HELIOS_THREADS; 8 cores available)"
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match=r"\$HELIOS_THREADS must be a positive number"):
            threads.resolve(environ={"HELIOS_THREADS": bad}, cores=2)
    with pytest.raises(ValueError, match="--threads must be a positive number"):
        threads.resolve(0, cores=2)


def test_never_more_threads_than_cores():
    lowered = threads.resolve(8, cores=2, load=0.0)
    assert lowered.count == 2 and "--threads 8 lowered to 2" in lowered.describe()
    # A server's workers share the cores: 2 workers on 4 cores get 2 each, on 1 core 1 each.
    assert threads.resolve(environ={}, workers=2, cores=4, load=0.0).count == 2
    assert threads.resolve(4, workers=2, cores=4, load=0.0).count == 2
    assert threads.resolve(environ={}, workers=3, cores=1, load=0.0).count == 1
    settings = ServerSettings(devices=("cpu", "cpu"), threads=3)
    assert settings.worker_threads().count <= max(1, threads.available_cores() // 2)


def test_a_busy_machine_is_said():
    busy = threads.resolve(environ={}, cores=2, load=3.5)
    assert "the CPU is busy, load 3.5: --threads 1 may be faster" in busy.describe()
    assert "busy" not in threads.resolve(environ={}, cores=2, load=0.3).describe()
    assert "busy" not in threads.resolve(1, cores=2, load=3.5).describe(), "one thread: nothing to lower"


def test_the_cores_available_follow_the_affinity_mask():
    assert 1 <= threads.available_cores() <= len(os.sched_getaffinity(0))
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
    code += "from helios_runtime import threads; print(threads.resolve(environ={}).count)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "1", out.stderr


def test_the_local_engine_sets_torch_threads():
    """The SDK's local env runs the engine in the caller's process: $HELIOS_THREADS (or `threads=`)
    sets torch's threads there (a fresh process, so this one's setting is left alone)."""
    code = (
        "import torch\n"
        "from helios_runtime.server.worker.inprocess import LocalClient\n"
        "LocalClient.load('tiny', 'cpu'); print(torch.get_num_threads())\n"
        "LocalClient.load('tiny', 'cpu', threads=2); print(torch.get_num_threads())\n"
    )
    env = {**os.environ, "HELIOS_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.split() == ["1", str(min(2, threads.available_cores()))], out.stderr
