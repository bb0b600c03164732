"""Shared helpers of the GPU benchmarks: the GPU's state as nvidia-smi reads it, and error norms."""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from helios_runtime.engine.world_model import WorldModel

_QUERY = "name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.draw,power.limit,temperature.gpu"


def gpu_state() -> dict:
    """Clocks, power and temperature as read now (recorded with every result: the GPU is shared)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={_QUERY}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        return dict(zip(_QUERY.split(","), (v.strip() for v in out.split(",")), strict=False))
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": str(exc)}


def cuda_ms(fn, repeat: int) -> list[float]:
    """`repeat` timings of fn() in milliseconds by CUDA events (each synchronised)."""
    out = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return out


def median_ms(fn, repeat: int = 20, warmup: int = 3) -> float:
    """Median CUDA-event milliseconds of fn() over `repeat` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(cuda_ms(fn, repeat))


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def random_world_model(
    preset: str, device: torch.device, vae_dtype: torch.dtype = torch.bfloat16
) -> WorldModel:
    """The benchmark world, `WorldModel.random` (random bf16 weights at the `preset` size, the Wan 2.1
    VAE, a stand-in text encoder of umT5's width, Distilled sampling), the VAE in `vae_dtype`.
    Seeded, so every process (every rank) builds the same one."""
    model = WorldModel.random(f"random-{preset}", device=device)
    model.vae.to(vae_dtype)
    return model


def rollout(
    engine,
    chunks: int,
    prompt: str,
    settings=None,
    keep_latents: bool = False,
    close: bool = True,
    actions: list | None = None,
) -> list[dict]:
    """Reset, then step, for `chunks` chunks in all; per chunk: wall time (request to last frame,
    VAE included), the denoise / decode split, and the time from the request to its first frame.
    `actions[k]` (optional, repeating) is step k's action. The session is closed at the end unless
    `close` is False."""
    rows, session = [], None
    for k in range(chunks):
        marks: dict[str, float] = {}

        def on_frame(i: int, _frame, marks: dict[str, float] = marks) -> None:
            if i == 0:
                marks["first"] = time.perf_counter()

        start = time.perf_counter()
        if session is None:
            result = engine.reset(prompt, seed=1, on_frame=on_frame, settings=settings)
            session = result.session_id
        else:
            action = actions[(k - 1) % len(actions)] if actions else None
            result = engine.step(session, action, on_frame=on_frame)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        row = {
            "chunk": k,
            "wall_s": wall,
            "denoise_s": result.timings["denoise"],
            "decode_s": result.timings["decode"],
            "first_frame_s": marks["first"] - start,
            "frames": int(result.frames.shape[0]),
        }
        if keep_latents:
            row["latents"] = result.latents
        rows.append(row)
        print(
            f"  chunk {k}: {wall:.3f} s (denoise {result.timings['denoise']:.3f}, decode "
            f"{result.timings['decode']:.3f})",
            flush=True,
        )
    if close:
        engine.close(session)
    return rows


def summarize(rows: list[dict]) -> dict:
    """End-to-end FPS over every chunk, and steady-state figures over the chunks after the first
    (which runs the amplified first-chunk schedule)."""
    later = rows[1:] or rows
    walls = sorted(r["wall_s"] for r in later)
    return {
        "chunks": [{k: v for k, v in r.items() if k != "latents"} for r in rows],
        "fps": sum(r["frames"] for r in rows) / sum(r["wall_s"] for r in rows),
        "steady_fps": sum(r["frames"] for r in later) / sum(walls),
        "chunk_s_p50": statistics.median(walls),
        "chunk_s_p99": walls[min(len(walls) - 1, round(0.99 * (len(walls) - 1)))],
        "denoise_s_p50": statistics.median(r["denoise_s"] for r in later),
        "decode_s_p50": statistics.median(r["decode_s"] for r in later),
        "first_frame_s_p50": statistics.median(r["first_frame_s"] for r in later),
    }


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile of `values` by the nearest rank (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency_summary(values: list[float]) -> dict[str, float]:
    """mean, p50, p95 and max of latencies."""
    return {
        "mean": statistics.fmean(values),
        "p50": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
        "max": max(values),
    }


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), which every CPU figure names."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_header(benchmark: str, **versions: object) -> dict:
    """What every results JSON starts with: the benchmark, when, on which GPU in which state, and
    the versions (python, torch, CUDA, plus the `versions` given)."""
    return {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "gpu": gpu_state(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            **versions,
        },
    }
