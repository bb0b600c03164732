"""Warm restart (issue 17): `helios serve` started twice on one machine, the first time on an empty
compile cache ($HELIOS_CACHE_DIR), the second on the cache the first start filled; the seconds from
launch to SERVING (the server's 'listening on' line, printed once its worker has warmed up) of each.

Each precision gets its own fresh cache folder, so each first start is cold. A start's profile is
read off the server's own log, each line timed as it arrives: the front up (its worker launched), the
worker ready (import, model build, fast path, then its warm-up chunk, whose seconds it logs), SERVING.
With `--phases` a separate process then repeats the worker's steps one by one on the warm cache
(import, model build, `fast_path`, the warm-up's reset and step, then a second reset and step for
what a warm chunk costs) and counts Inductor's and AOTAutograd's cache hits and misses.

    python bench/serve_restart.py --out bench/results                        # GPU: random-14b, bf16 + fp8
    python bench/serve_restart.py --model tiny --precision bf16 --out /tmp/sr  # CPU smoke test
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")  # the log formatter's prefix


def folder_stats(folder: Path) -> dict:
    """Files and MiB under `folder`, per top-level subfolder (inductor, triton, ...)."""
    out: dict = {}
    if not folder.is_dir():
        return out
    for sub in sorted(p for p in folder.iterdir()):
        files = [f for f in sub.rglob("*") if f.is_file()] if sub.is_dir() else [sub]
        out[sub.name] = {"files": len(files), "mib": round(sum(f.stat().st_size for f in files) / 2**20, 2)}
    return out


def outside_caches() -> dict:
    """Compile caches outside $HELIOS_CACHE_DIR that a start could also fill or read (Triton's and
    Inductor's defaults): recorded so a warm start is seen to owe nothing to them."""
    user = getpass.getuser()
    folders = [Path.home() / ".triton" / "cache", Path(tempfile.gettempdir()) / f"torchinductor_{user}"]
    return {str(f): sum(1 for p in f.rglob("*") if p.is_file()) if f.is_dir() else 0 for f in folders}


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether process `pid` ended within `timeout` seconds (SIGKILL after that)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    return False


def serve_once(model: str, precision: str, env: dict, timeout: float) -> dict:
    """One `helios serve` start to SERVING; every log line with the seconds since launch; then stop
    it (SIGTERM drains) and wait for its worker to be gone, so the next start has the GPU alone."""
    cmd = [sys.executable, "-m", "helios_sdk.cli", "serve", "--model", model, "--port", "0"]
    cmd += ["--precision", precision]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    watchdog = threading.Timer(timeout, proc.terminate)  # a silent server ends the read below
    watchdog.start()
    lines: list[tuple[float, str]] = []
    seconds = None
    try:
        for line in proc.stdout:
            lines.append((round(time.perf_counter() - start, 3), line.rstrip()))
            if line.startswith("listening on "):
                seconds = time.perf_counter() - start
                break
    finally:
        watchdog.cancel()
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    profile = read_profile(lines)
    if profile.get("worker_pid"):
        profile["worker_exited"] = wait_gone(profile["worker_pid"], 60)
    return {
        "command": " ".join(["helios", *cmd[3:]]),
        "seconds_to_serving": seconds,
        "exit_code": proc.returncode,
        "profile": profile,
        "log": [f"{t:8.3f} {STAMP.sub('', text)}" for t, text in lines[-40:]],
    }


def read_profile(lines: list[tuple[float, str]]) -> dict:
    """The start's steps from its log: front up to worker launched, the worker's build (import, model,
    fast path) and warm-up (which the worker logs), and the front's last step to SERVING."""
    marks: dict = {}
    for t, text in lines:
        if "started worker" in text and "worker_started_s" not in marks:
            marks["worker_started_s"] = t
            pid = re.search(r"pid (\d+)", text)
            marks["worker_pid"] = int(pid.group(1)) if pid else None
        elif "helios.front" in text and "ready: {" in text and "worker_ready_s" not in marks:
            # The front's line, with the worker's Ready message (its warm-up seconds) in it.
            marks["worker_ready_s"] = t
            warm = re.search(r"'warm_up_seconds': ([\d.]+)", text)
            marks["worker_warm_up_s"] = round(float(warm.group(1)), 3) if warm else None
        elif text.startswith("listening on "):
            marks["serving_s"] = t
    if {"worker_started_s", "worker_ready_s"} <= marks.keys() and marks.get("worker_warm_up_s") is not None:
        marks["worker_build_s"] = round(
            marks["worker_ready_s"] - marks["worker_started_s"] - marks["worker_warm_up_s"], 3
        )
    return marks


def phases(model_name: str, precision: str) -> dict:
    """The worker's start, step by step, in this process (run on a warm cache): seconds of each."""
    out: dict = {}
    t0 = time.perf_counter()
    import torch
    import torch._dynamo.utils

    from helios_runtime.engine.engine import WorldEngine
    from helios_runtime.engine.fastpath import FastPathChoice
    from helios_runtime.engine.known_prompts import EXAMPLE
    from helios_runtime.engine.world_model import WorldModel
    from helios_runtime.server.worker.main import warm_up

    out["import_s"] = time.perf_counter() - t0

    def timed(key: str, fn):
        t = time.perf_counter()
        value = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out[key] = time.perf_counter() - t
        return value

    # The server's WorldModel.load is this build followed by fast_path (FastPathChoice.from_env).
    model = timed("build_s", lambda: WorldModel.load(model_name, fast=FastPathChoice(fast=False)))
    timed("fast_path_s", lambda: model.fast_path(precision=precision))
    out["transformer_precision"] = model.transformer.precision
    out["inductor_cache_dir"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    out["triton_cache_dir"] = os.environ.get("TRITON_CACHE_DIR")
    spent = time_parts(model, torch)
    engine = WorldEngine(model)
    out["warm_up_reported_s"] = timed("warm_up_s", lambda: warm_up(engine))
    out["warm_up_parts_s"] = dict(spent)
    spent.clear()
    if model.device.type == "cuda":
        height, width = model.default_size
    else:
        height = width = model.pyramid_multiple()
    first = timed("second_reset_s", lambda: engine.reset(EXAMPLE, seed=1, height=height, width=width))
    timed("second_step_s", lambda: engine.step(first.session_id))
    out["second_parts_s"] = dict(spent)
    engine.close(first.session_id)
    counters = torch._dynamo.utils.counters
    out["cache_counters"] = {
        group: {k: v for k, v in counters[group].items() if "cache" in k}
        for group in ("inductor", "aot_autograd")
    }
    out["dynamo_compile_times"] = torch._dynamo.utils.compile_times(repr="str", aggregate=True)[:3000]
    out["total_s"] = time.perf_counter() - t0
    return out


def time_parts(model, torch) -> dict[str, float]:
    """Wrap the fast path's one-time suspects so their seconds add up (synchronised) in the dict
    returned: the VAE's compiled decoder calls (the first ones trace and load the compiled graph) and
    the CUDA-graph captures of pyramid stage 0. The same calls on a second chunk give the steady part."""
    spent: dict[str, float] = {}

    def timer(key: str, fn):
        def call(*args, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            value = fn(*args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - t
            return value

        return call

    graphed = getattr(model, "_graphed", None)
    if graphed is not None:
        graphed._capture = timer("stage0_graph_capture", graphed._capture)
    compiled = getattr(model.vae, "_compiled_decoder", None)
    if compiled:
        model.vae._compiled_decoder = (timer("vae_decoder_calls", compiled[0]),)
    return spent


def run_phases(model: str, precision: str, env: dict, timeout: float) -> dict:
    """`phases` in a fresh process (the same environment and cache as the server's starts)."""
    cmd = [sys.executable, __file__, "--phases-of", model, "--precision", precision]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": f"exit {done.returncode}", "stderr_tail": done.stderr.splitlines()[-15:]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="random-14b")
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    parser.add_argument("--starts", type=int, default=2, help="starts per precision (the first is cold)")
    parser.add_argument(
        "--phases", action="store_true", help="also time the worker's steps on the warm cache"
    )
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds a start may take")
    parser.add_argument(
        "--cache-root", default=None, help="where the fresh cache folders go (default: a temp dir)"
    )
    parser.add_argument(
        "--inductor-in-cache",
        action="store_true",
        help="set TORCHINDUCTOR_CACHE_DIR to CACHE/inductor for the server explicitly (runtimes before "
        "the compile-cache fix left Inductor's FX-graph cache in /tmp/torchinductor_USER, shared by "
        "every precision's starts)",
    )
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--phases-of", default=None, help=argparse.SUPPRESS)  # internal: one phases run
    args = parser.parse_args()
    if args.phases_of:
        print(json.dumps(phases(args.phases_of, args.precision[0])), flush=True)
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from _common import run_header

    res: dict = {
        **run_header("serve_restart"),
        "settings": {
            "model": args.model,
            "starts_per_precision": args.starts,
            "cache": "a fresh $HELIOS_CACHE_DIR per precision: start 1 cold, later starts warm",
            "serving_means": "the server's 'listening on' line: every worker warmed up, health SERVING",
            "inductor_cache": "CACHE/inductor (TORCHINDUCTOR_CACHE_DIR set for the server)"
            if args.inductor_in_cache
            else "where the runtime leaves it (the server sets no TORCHINDUCTOR_CACHE_DIR here)",
        },
        "runs": {},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "-inductor-in-cache" if args.inductor_in_cache else ""
    path = out / f"serve_restart_{args.model}{tag}_{res['device'].replace(' ', '_')}.json"

    def save() -> None:  # after every start: a run cut short keeps what it measured
        path.write_text(json.dumps(res, indent=2) + "\n")

    root = Path(args.cache_root or tempfile.mkdtemp(prefix="helios-restart-"))
    envs = {}
    for precision in args.precision:
        cache = root / f"cache-{precision}"
        shutil.rmtree(cache, ignore_errors=True)
        own = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "HELIOS_PRECISION")  # the cache decides
        envs[precision] = env = {k: v for k, v in os.environ.items() if k not in own}
        env["HELIOS_CACHE_DIR"] = str(cache)
        if args.inductor_in_cache:
            env["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
        run: dict = {"cache_dir": str(cache), "starts": []}
        res["runs"][precision] = run
        for i in range(args.starts):
            before = outside_caches()
            one = serve_once(args.model, precision, env, args.timeout)
            one["cache_before"] = "empty" if i == 0 else "warm"
            one["cache_after"] = folder_stats(cache)
            one["outside_caches_before_after"] = [before, outside_caches()]
            run["starts"].append(one)
            print(
                f"{precision} start {i + 1} ({one['cache_before']}): {one['seconds_to_serving']} s "
                f"to SERVING; {one['profile']}",
                flush=True,
            )
            save()
    for precision in args.precision if args.phases else ():  # after every start: the starts come first
        run = res["runs"][precision]
        run["phases_warm"] = run_phases(args.model, precision, envs[precision], args.timeout)
        print(f"{precision} phases (warm cache): {run['phases_warm']}", flush=True)
        save()

    print(f"\n{res['device']}, {args.model}: seconds from launch to SERVING")
    head = ("precision", "start", "cache", "SERVING s", "front s", "build s", "warm-up s")
    print("{:10} {:>6} {:>6} {:>10} {:>8} {:>8} {:>10}".format(*head))
    nan = float("nan")
    for precision, run in res["runs"].items():
        for i, one in enumerate(run["starts"]):
            p = one["profile"]
            print(
                f"{precision:10} {i + 1:>6} {one['cache_before']:>6} "
                f"{one['seconds_to_serving'] or nan:10.1f} "
                f"{p.get('worker_started_s', nan):8.1f} {p.get('worker_build_s', nan):8.1f} "
                f"{p.get('worker_warm_up_s') or nan:10.1f}"
            )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
