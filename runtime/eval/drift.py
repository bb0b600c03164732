"""`helios eval drift`: roll predictors beside the procedural simulator and measure drift (issue 8, item 4).

Each predictor (a world model behind `EnginePredictor`, or a baseline) starts from the simulator's
first frame and prompt and is given the same seeded action sequence (`RandomPolicy`); chunk by chunk
its 33 frames are compared with the simulator's (T frames, H rows, W columns, RGB uint8):

- PSNR in dB over the frame, capped at `PSNR_CAP` for identical frames (keeps the JSON finite);
- SSIM on luma with an 11×11 gaussian window (σ 1.5) and the usual constants (Wang et al. 2004);
- colour-histogram distance: per RGB channel a 32-bin normalised histogram, half the L1 distance
  (total variation, 0 same colours .. 1 disjoint), averaged over the channels;
- agent position error in pixels: centroid of the agent's unique colour in both frames, over the
  frames where the prediction shows it (the fraction where it does is `agent_visible`);
- direction agreement: whether the predicted agent's displacement over the chunk goes the commanded
  way (`direction_agrees`);
- seams: the boundary jump (mean absolute change, in grey levels, from the previous chunk's last
  frame to this chunk's first) beside the median and 95th percentile of the 32 changes between
  consecutive frames inside the chunk; for the simulator's own frames too (`simulator`).

Per-chunk values are averaged over the chunk's frames, then over seeds. Two baselines always run:
copy-last (the first frame, frozen) and blurred-still (a box-blurred first frame, frozen; the box
size chosen on the validation seeds, `BLUR_BOX`). Seeds are split by role (`seed_role`): every
choice (a box size, a guidance scale, a checkpoint) is made on `VALIDATION_SEEDS`; results are
reported on the test seeds from `TEST_SEEDS_FROM`. The summary checks the issue's targets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from ..chunk import FPS, FRAMES_PER_CHUNK
from ..sim.grammar import PromptGrammar
from ..sim.procedural import DAY_FRAMES, Action, ProceduralWorld, RandomPolicy, agent_mask

PSNR_CAP = 100.0  # dB, reported for identical frames
HIST_BINS = 32
AGENT_MIN_PIXELS = 3

# Seed roles. Test seeds (the reported benchmark) start at TEST_SEEDS_FROM; every choice made while
# training, exporting or configuring the benchmark is made on VALIDATION_SEEDS, disjoint from them
# (and training worlds stay off both, train/data.py).
TEST_SEEDS_FROM = 100_000
VALIDATION_SEEDS = range(90_000, 90_020)

# The blurred-still baseline's box size (pixels at 96×160): the best PSNR over the first 10 s on the
# 20 validation seeds × 5 chunks among BLUR_BOXES (`choose_blur_box`; docs/eval.md has the table).
BLUR_BOX = 15
BLUR_BOXES = (1, 3, 5, 7, 9, 11, 15, 21)

# The targets for a trained model (issue 20).
TARGET_AGREEMENT = 0.95
TARGET_HIST_RATIO = 1.25  # histogram distance at the last chunk (60 s) over its value at 5 s
TARGET_SEAM_RATIO = 2.0  # boundary jump over the within-chunk p95 of the same run
TARGET_PSNR_MARGIN_DB = 1.0  # PSNR over the first 10 s above the better baseline by this much
EARLY_S, LATE_S, PSNR_WINDOW_S = 5.0, 60.0, 10.0

METRICS = (
    "psnr",
    "ssim",
    "hist",
    "position_error",
    "agent_visible",
    "direction_agrees",
    "boundary_jump",
    "within_median",
    "within_p95",
)
SEAM_METRICS = ("boundary_jump", "within_median", "within_p95")


def seed_role(seeds: Sequence[int]) -> str:
    """'test' (all at or above TEST_SEEDS_FROM), 'validation' (all in VALIDATION_SEEDS), 'mixed'
    (some test seeds among others) or 'other'."""
    test = [s >= TEST_SEEDS_FROM for s in seeds]
    if all(test):
        return "test"
    if any(test):
        return "mixed"
    return "validation" if all(s in VALIDATION_SEEDS for s in seeds) else "other"


# ---------------------------------------------------------------------------------------------------
# Metrics (frames: (..., H, W, 3) uint8)
# ---------------------------------------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of uint8 frames (..., H, W, 3); `PSNR_CAP` where they are identical."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        value = 10 * np.log10(255.0**2 / mse)
    return np.minimum(value, PSNR_CAP)


def _gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _filter(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' filter over the last two axes: (..., H, W) -> (..., H-k+1, W-k+1)."""
    k = len(kernel)
    x = np.lib.stride_tricks.sliding_window_view(x, k, axis=-1) @ kernel  # (..., H, W-k+1)
    return np.lib.stride_tricks.sliding_window_view(x, k, axis=-2) @ kernel  # (..., H-k+1, W-k+1)


def _luma(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (..., H, W) in [0, 255]


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame SSIM on luma, 11×11 gaussian window σ 1.5, K1 0.01, K2 0.03, valid region only."""
    x, y = _luma(a), _luma(b)
    w = _gaussian()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _filter(x, w), _filter(y, w)
    vx = _filter(x * x, w) - mx * mx
    vy = _filter(y * y, w) - my * my
    cov = _filter(x * y, w) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(axis=(-2, -1))


def histogram_distance(a: np.ndarray, b: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """Per-frame colour-histogram distance in [0, 1]: per channel, half the L1 distance between the
    normalised `bins`-bin histograms, averaged over R, G, B."""

    def hist(x: np.ndarray) -> np.ndarray:  # (..., H, W, 3) -> (..., 3, bins), rows sum to 1
        q = (x.astype(np.int64) * bins) // 256
        flat = q.reshape(-1, q.shape[-3] * q.shape[-2], 3)  # (F, H*W, 3)
        offsets = np.arange(flat.shape[0])[:, None, None] * 3 * bins + np.arange(3) * bins
        counts = np.bincount((flat + offsets).ravel(), minlength=flat.shape[0] * 3 * bins)
        counts = counts.reshape(flat.shape[0], 3, bins) / flat.shape[1]
        return counts.reshape(*x.shape[:-3], 3, bins)

    return 0.5 * np.abs(hist(a) - hist(b)).sum(axis=-1).mean(axis=-1)


def seam(previous: np.ndarray, frames: np.ndarray) -> dict[str, float]:
    """A chunk's seam: `boundary_jump`, the mean absolute change (grey levels, 0..255) from
    `previous` (H, W, 3), the frame shown before the chunk, to its first frame, and the median and
    95th percentile of the changes between consecutive frames inside `frames` (T, H, W, 3)."""
    x = frames.astype(np.float32)
    inside = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))  # (T-1,)
    jump = float(np.abs(x[0] - previous.astype(np.float32)).mean())
    return {
        "boundary_jump": jump,
        "within_median": float(np.median(inside)),
        "within_p95": float(np.percentile(inside, 95)),
    }


def box_blur(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 box-blurred with a `size`×`size` mean (odd size; edges replicated)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the box size must be a positive odd number of pixels, got {size}")
    if size == 1:
        return frame.copy()
    r = size // 2
    x = np.pad(frame.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="edge")
    c = np.cumsum(np.cumsum(x, axis=0), axis=1)  # (H+2r, W+2r, 3) summed-area table
    c = np.pad(c, ((1, 0), (1, 0), (0, 0)))
    h, w = frame.shape[:2]
    total = c[size:, size:] - c[:h, size:] - c[size:, :w] + c[:h, :w]  # (H, W, 3)
    return np.round(total / size**2).clip(0, 255).astype(np.uint8)


def agent_position(frame: np.ndarray) -> tuple[float, float] | None:
    """(x, y) centroid of the agent's colour in one frame (H, W, 3), or None when fewer than
    `AGENT_MIN_PIXELS` pixels have min(R, B) - G > `AGENT_THRESHOLD`."""
    ys, xs = np.nonzero(agent_mask(frame))
    if len(ys) < AGENT_MIN_PIXELS:
        return None
    return float(xs.mean()), float(ys.mean())


def direction_agrees(
    start: tuple[float, float] | None,
    end: tuple[float, float] | None,
    expected: tuple[float, float],
    still_px: float = 4.0,
) -> bool:
    """Whether an agent going from `start` to `end` moved the `expected` way (dx, dy) over a chunk.

    For an expected shift shorter than `still_px`: agreement is moving less than `still_px`. Otherwise
    the displacement must lie within 22.5° of the expected direction (the right one of 8 compass
    sectors) and cover at least a quarter of the expected length. An agent not found fails.
    """
    return direction_failure(start, end, expected, still_px) is None


def direction_failure(
    start: tuple[float, float] | None,
    end: tuple[float, float] | None,
    expected: tuple[float, float],
    still_px: float = 4.0,
) -> str | None:
    """Why `direction_agrees` says no: "agent not found", "moved while told to stay", "moved too
    little" or "wrong direction"; None when it agrees."""
    if start is None or end is None:
        return "agent not found"
    d = np.subtract(end, start)
    e = np.asarray(expected, dtype=np.float64)
    n_e, n_d = float(np.hypot(*e)), float(np.hypot(*d))
    if n_e < still_px:
        return None if n_d < still_px else "moved while told to stay"
    if n_d < 0.25 * n_e:
        return "moved too little"
    return None if float(d @ e) / (n_d * n_e) >= math.cos(math.radians(22.5)) else "wrong direction"


# ---------------------------------------------------------------------------------------------------
# Predictors
# ---------------------------------------------------------------------------------------------------


class Predictor(Protocol):
    """Something that continues a world from a first frame: `reset(first_frame (H, W, 3) uint8,
    prompt)`, then one `step(action)` per chunk returning that chunk's (33, H, W, 3) uint8 frames."""

    name: str

    def reset(self, first_frame: np.ndarray, prompt: str) -> None: ...

    def step(self, action: Action) -> np.ndarray: ...


class CopyLastFrame:
    """The baseline: the world freezes; every frame repeats the last frame it saw (the first one)."""

    name = "copy-last"

    def reset(self, first_frame: np.ndarray, prompt: str) -> None:
        self._frame = first_frame.copy()

    def step(self, action: Action) -> np.ndarray:
        return np.broadcast_to(self._frame, (FRAMES_PER_CHUNK, *self._frame.shape)).copy()


class BlurredStill:
    """The second baseline: the first frame box-blurred (`box` pixels), repeated, the actions ignored.
    A blurred picture scores better than a sharp one wherever the truth moves, so a model must beat
    this, not only copy-last, to show it predicts something."""

    def __init__(self, box: int = BLUR_BOX, name: str = "blurred-still"):
        box_blur(np.zeros((1, 1, 3), np.uint8), box)  # checks the size
        self.box, self.name = box, name

    def reset(self, first_frame: np.ndarray, prompt: str) -> None:
        self._frame = box_blur(first_frame, self.box)

    def step(self, action: Action) -> np.ndarray:
        return np.broadcast_to(self._frame, (FRAMES_PER_CHUNK, *self._frame.shape)).copy()


class VaeRoundTrip:
    """The VAE's ceiling: the simulator's own chunk, encoded and decoded by a model's VAE (at the
    model's size, resized back). It sees the ground truth (`sees_truth`), so it is a bound, not a
    predictor: what a transformer that predicted every latent perfectly would score through this VAE.
    """

    sees_truth = True

    def __init__(
        self,
        vae: Any,
        *,
        height: int | None = None,
        width: int | None = None,
        name: str = "vae-roundtrip",
        seam_blend: int = 0,
    ):
        """`seam_blend`: blend each chunk's first frames from the last one shown, as an engine with
        that setting shows them (engine/seam.py), so the ceiling is the model's as served."""
        from ..engine.seam import check_frames

        self.vae, self.height, self.width, self.name = vae, height, width, name
        self.seam_blend = check_frames(seam_blend)

    def reset(self, first_frame: np.ndarray, prompt: str) -> None:
        self._size = first_frame.shape[:2]
        self._last: np.ndarray | None = None

    def step(self, action: Action, truth: np.ndarray | None = None) -> np.ndarray:
        import torch

        # The engine's own conversions: its video input (scaling, resize) and its frame output.
        from ..engine.engine import _to_uint8, _video_tensor
        from ..engine.seam import blend_chunk

        if truth is None:
            raise ValueError("VaeRoundTrip needs the simulator's chunk (run_drift passes it)")
        vae = self.vae
        h, w = self.height or truth.shape[1], self.width or truth.shape[2]
        x = _video_tensor(truth, h, w, vae.device)  # (1, 3, T, h, w)
        with torch.inference_mode():
            frames = _to_uint8(vae.decode(vae.encode(x.to(vae.dtype)))).numpy()  # (T, h, w, 3)
        frames = blend_chunk(frames, self._last, self.seam_blend)
        self._last = frames[-1].copy()
        return _resize_frames(frames, *self._size)


_DIRECTION_WORDS = {
    "n": "north",
    "ne": "north-east",
    "e": "east",
    "se": "south-east",
    "s": "south",
    "sw": "south-west",
    "w": "west",
    "nw": "north-west",
}


def action_prompt(prompt: str, action: Action) -> str:
    """The prompt a text-conditioned model gets for a chunk: the scene plus the commanded motion."""
    parts = [prompt]
    if action.move != "stay":
        parts.append(f"the magenta agent moves {_DIRECTION_WORDS[action.move]}")
    if action.pan != "stay":
        parts.append(f"the camera pans {_DIRECTION_WORDS[action.pan]}")
    return ", ".join(parts)


class EnginePredictor:
    """A `WorldEngine` as a predictor: the first chunk is an image-to-video reset from the simulator's
    first frame, each later chunk a `step`; the action goes in as the model's learned action ids
    when it has an action space, else as a prompt (`action_prompt`). The
    model runs at (height, width) and its frames are resized to the simulator's size."""

    def __init__(self, engine: Any, *, height: int | None = None, width: int | None = None, seed: int = 0):
        self.engine = engine
        self.height, self.width, self.seed = height, width, seed
        self.name = f"engine:{engine.model.name}"
        self._session: str | None = None

    def reset(self, first_frame: np.ndarray, prompt: str) -> None:
        if self._session is not None:
            self.engine.close(self._session)
            self._session = None
        self._first, self._prompt = first_frame.copy(), prompt

    def step(self, action: Action) -> np.ndarray:
        if self.engine.model.actions is not None:  # a learned action space: the scene prompt + ids
            text, act = self._prompt, {"move": action.move, "pan": action.pan}
        else:
            text, act = action_prompt(self._prompt, action), None
        if self._session is None:
            result = self.engine.reset(
                text, image=self._first, seed=self.seed, height=self.height, width=self.width, action=act
            )
            self._session = result.session_id
        else:
            result = self.engine.step(self._session, act if act is not None else text)
        return _resize_frames(result.frames, *self._first.shape[:2])


def _resize_frames(frames: Any, height: int, width: int) -> np.ndarray:
    """(T, h, w, 3) uint8 tensor -> (T, height, width, 3) uint8 numpy, antialiased bilinear."""
    import torch
    import torch.nn.functional as F

    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
    if tuple(x.shape[1:3]) == (height, width):
        return x.numpy()
    y = x.permute(0, 3, 1, 2).float()  # (T, 3, h, w)
    y = F.interpolate(y, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# ---------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------


def chunk_metrics(
    truth: np.ndarray,
    pred: np.ndarray,
    pred_start: tuple[float, float] | None,
    expected: tuple[float, float],
    previous: np.ndarray | None = None,
) -> dict[str, float]:
    """One chunk's metrics: truth and pred (33, H, W, 3) uint8; pred_start the predicted agent's
    position just before the chunk; expected the commanded (dx, dy) across the view; previous the
    frame (H, W, 3) the predictor showed before the chunk (its seam metrics are NaN without it)."""
    if pred.shape != truth.shape or pred.dtype != np.uint8:
        raise ValueError(f"a predictor must return {truth.shape} uint8 frames, got {pred.shape} {pred.dtype}")
    true_pos = [agent_position(f) for f in truth]
    pred_pos = [agent_position(f) for f in pred]
    errors = [math.dist(t, p) for t, p in zip(true_pos, pred_pos, strict=True) if t and p]
    return {
        "psnr": float(psnr(truth, pred).mean()),
        "ssim": float(ssim(truth, pred).mean()),
        "hist": float(histogram_distance(truth, pred).mean()),
        "position_error": float(np.mean(errors)) if errors else math.nan,
        "agent_visible": sum(p is not None for p in pred_pos) / len(pred_pos),
        "direction_agrees": float(direction_agrees(pred_start, pred_pos[-1], expected)),
        **(seam(previous, pred) if previous is not None else dict.fromkeys(SEAM_METRICS, math.nan)),
    }


def run_drift(
    predictors: Sequence[Predictor],
    seeds: Sequence[int],
    chunks: int,
    *,
    height: int = 96,
    width: int = 160,
    prompts: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    frozen_daylight: bool = False,
) -> dict[str, Any]:
    """Roll every predictor beside the simulator for `chunks` chunks from each seed's world.

    Seed s draws its prompt from `PromptGrammar.sample` (unless `prompts` gives one per seed) and its
    actions from `RandomPolicy(s)`. The `CopyLastFrame` and `BlurredStill` baselines are added when
    absent. Returns a JSON-ready dict: settings (with the seeds' role, `seed_role`), per-chunk means
    over seeds of every metric for every predictor (NaN position errors become None), the
    simulator's own seam metrics (`simulator`), and `summary` with the issue's targets.
    `frozen_daylight` holds the simulator's light at the prompt's time of day: a diagnostic that
    separates a model's own colour drift from the day advancing (the issue's benchmark runs with the
    daylight moving). The seam of chunk 0 is measured from the first frame the predictors are given.
    """
    if chunks < 1 or not seeds:
        raise ValueError(f"need at least one chunk and one seed, got {chunks} chunks and {len(seeds)} seeds")
    if prompts is not None and len(prompts) != len(seeds):
        raise ValueError(f"give one prompt per seed: {len(prompts)} prompts for {len(seeds)} seeds")
    predictors = list(predictors)
    if not any(isinstance(p, CopyLastFrame) for p in predictors):
        predictors.append(CopyLastFrame())
    if not any(isinstance(p, BlurredStill) for p in predictors):
        predictors.append(BlurredStill())
    names = [p.name for p in predictors]
    if len(set(names)) != len(names):
        raise ValueError(f"predictor names must differ, got {names}")
    grammar = PromptGrammar()
    # values[name][metric] -> (seeds, chunks)
    values = {n: {m: np.full((len(seeds), chunks), np.nan) for m in METRICS} for n in names}
    truth_seams = {m: np.full((len(seeds), chunks), np.nan) for m in SEAM_METRICS}
    used_prompts = []
    start = time.perf_counter()
    for i, seed in enumerate(seeds):
        prompt = prompts[i] if prompts is not None else grammar.sample(np.random.default_rng([seed, 0xC0DE]))
        world = ProceduralWorld(
            prompt, seed, height, width, day_frames=None if frozen_daylight else DAY_FRAMES
        )
        prompt = world.prompt
        used_prompts.append(prompt)
        policy = RandomPolicy(seed)
        first = world.frame()
        for p in predictors:
            p.reset(first, prompt)
        starts = {n: agent_position(first) for n in names}
        shown = dict.fromkeys([*names, None], first)  # the last frame each one showed (None: truth)
        for k in range(chunks):
            action = policy(world)
            expected = world.expected_shift(action)
            truth = world.step(action)
            for m, v in seam(shown[None], truth).items():
                truth_seams[m][i, k] = v
            shown[None] = truth[-1]
            for p in predictors:
                pred = p.step(action, truth) if getattr(p, "sees_truth", False) else p.step(action)
                row = chunk_metrics(truth, pred, starts[p.name], expected, shown[p.name])
                starts[p.name] = agent_position(pred[-1])
                shown[p.name] = pred[-1]
                for m, v in row.items():
                    values[p.name][m][i, k] = v
            if progress:
                progress(
                    f"seed {seed} ({i + 1}/{len(seeds)}) chunk {k + 1}/{chunks} "
                    f"{time.perf_counter() - start:.1f} s"
                )
    per_chunk = {n: {m: [_finite(v) for v in _nanmean(values[n][m])] for m in METRICS} for n in names}
    simulator = {m: [_finite(v) for v in _nanmean(truth_seams[m])] for m in SEAM_METRICS}
    return {
        "settings": {
            "seeds": list(seeds),
            "seed_role": seed_role(seeds),
            "validation_seeds": [VALIDATION_SEEDS.start, VALIDATION_SEEDS.stop - 1],
            "test_seeds_from": TEST_SEEDS_FROM,
            "blur_box": next(p.box for p in predictors if isinstance(p, BlurredStill)),
            "chunks": chunks,
            "height": height,
            "width": width,
            "fps": FPS,
            "chunk_frames": FRAMES_PER_CHUNK,
            "prompts": used_prompts,
            "psnr_cap_db": PSNR_CAP,
            "hist_bins": HIST_BINS,
            "daylight": "frozen" if frozen_daylight else "moving",
        },
        "chunk_end_s": [(k + 1) * FRAMES_PER_CHUNK / FPS for k in range(chunks)],
        "per_chunk": per_chunk,
        "simulator": simulator,
        "summary": {n: summarise(per_chunk, n, chunks) for n in names},
        "elapsed_s": time.perf_counter() - start,
    }


def merge_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from several `run_drift` results over disjoint seeds with the same predictors,
    chunks and settings (e.g. one seed per process): per-chunk means over all their seeds, as one
    run over the seeds in the given order would give (each run must hold one seed, so that a metric
    a seed has no value for, a position error without an agent, is left out of the mean exactly as
    `run_drift` leaves it out)."""
    if not runs:
        raise ValueError("merge_runs needs at least one result")
    if any(len(r["settings"]["seeds"]) != 1 for r in runs):
        raise ValueError("merge_runs takes one-seed results (run_drift with one seed each)")
    first = runs[0]
    chunks, names = first["settings"]["chunks"], list(first["per_chunk"])
    for r in runs:
        if r["settings"]["chunks"] != chunks or list(r["per_chunk"]) != names:
            raise ValueError("merge_runs needs results with the same chunks and predictors")

    def stacked(get: Callable[[dict[str, Any]], list]) -> list:
        rows = np.array([[math.nan if v is None else v for v in get(r)] for r in runs], dtype=np.float64)
        return [_finite(v) for v in _nanmean(rows)]

    per_chunk = {n: {m: stacked(lambda r, n=n, m=m: r["per_chunk"][n][m]) for m in METRICS} for n in names}
    seeds = [r["settings"]["seeds"][0] for r in runs]
    settings = dict(first["settings"], seeds=seeds, seed_role=seed_role(seeds))
    settings["prompts"] = [r["settings"]["prompts"][0] for r in runs]
    return {
        "settings": settings,
        "chunk_end_s": first["chunk_end_s"],
        "per_chunk": per_chunk,
        "simulator": {m: stacked(lambda r, m=m: r["simulator"][m]) for m in SEAM_METRICS},
        "summary": {n: summarise(per_chunk, n, chunks) for n in names},
        "elapsed_s": sum(r["elapsed_s"] for r in runs),
    }


def _nanmean(x: np.ndarray) -> np.ndarray:
    """Mean over seeds (axis 0) ignoring NaN, NaN where a column has none."""
    count = np.sum(~np.isnan(x), axis=0)
    total = np.nansum(x, axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _finite(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _chunk_at(seconds: float, chunks: int) -> int:
    """The chunk holding the frame at `seconds` (the last chunk if the rollout is shorter)."""
    frame = round(seconds * FPS)
    return min(max(frame - 1, 0) // FRAMES_PER_CHUNK, chunks - 1)


def summarise(per_chunk: dict[str, dict[str, list]], name: str, chunks: int) -> dict[str, Any]:
    """The issue's targets for predictor `name`, each with its numbers and pass / fail: direction
    agreement, histogram drift, seams (boundary jump against the within-chunk p95) and PSNR against
    the better baseline (copy-last, blurred-still) over the first 10 s and in the last chunk."""
    mine = per_chunk[name]
    baselines = {b: per_chunk[b] for b in (CopyLastFrame.name, BlurredStill().name) if b in per_chunk}
    agreement = float(np.mean(mine["direction_agrees"]))
    early, late = _chunk_at(EARLY_S, chunks), _chunk_at(LATE_S, chunks)
    h_early, h_late = mine["hist"][early], mine["hist"][late]
    window = _chunk_at(PSNR_WINDOW_S, chunks) + 1
    p_mine = float(np.mean(mine["psnr"][:window]))
    p_base = {b: float(np.mean(v["psnr"][:window])) for b, v in baselines.items()}
    best = max(p_base.values())
    last_base = {b: v["psnr"][-1] for b, v in baselines.items()}
    # Seams: the stream's boundaries (chunks 1..K-1; chunk 0 starts from the given first frame).
    jumps = [v for v in mine["boundary_jump"][1:] if v is not None]
    p95s = [v for v in mine["within_p95"] if v is not None]
    jump, p95 = (float(np.mean(jumps)) if jumps else None), (float(np.mean(p95s)) if p95s else None)

    def end_s(k: int) -> float:
        return (k + 1) * FRAMES_PER_CHUNK / FPS

    return {
        "direction_agreement": {
            "value": agreement,
            "target": f">= {TARGET_AGREEMENT}",
            "pass": agreement >= TARGET_AGREEMENT,
        },
        "hist_drift": {
            "early_chunk_end_s": end_s(early),
            "late_chunk_end_s": end_s(late),
            "early": h_early,
            "late": h_late,
            "ratio": h_late / h_early if h_early > 0 else (1.0 if h_late == 0 else None),
            "target": f"late <= {TARGET_HIST_RATIO} × early",
            "pass": h_late <= TARGET_HIST_RATIO * h_early,
            "full_length": end_s(chunks - 1) >= LATE_S - FRAMES_PER_CHUNK / FPS,
        },
        "seam": {
            "boundary_jump": jump,
            "within_p95": p95,
            "within_median": _mean_or_none(mine["within_median"]),
            "ratio": jump / p95 if jump is not None and p95 else None,
            "target": f"boundary jump <= {TARGET_SEAM_RATIO} × within-chunk p95",
            "pass": jump is not None and p95 is not None and jump <= TARGET_SEAM_RATIO * p95,
        },
        "psnr_vs_baselines": {
            "window_end_s": end_s(window - 1),
            "value_db": p_mine,
            "baselines_db": p_base,
            "margin_db": p_mine - best,
            "target": f"value >= the better baseline + {TARGET_PSNR_MARGIN_DB} dB",
            "pass": p_mine >= best + TARGET_PSNR_MARGIN_DB,
        },
        "psnr_last_chunk": {
            "chunk_end_s": end_s(chunks - 1),
            "value_db": mine["psnr"][-1],
            "baselines_db": last_base,
            "target": "value > both baselines",
            "pass": all(mine["psnr"][-1] > v for v in last_base.values()),
        },
        "agent_visible": {
            "value": _mean_or_none(mine["agent_visible"]),
            "target": ">= 0.99",
            "pass": (_mean_or_none(mine["agent_visible"]) or 0.0) >= 0.99,
        },
    }


def _mean_or_none(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def choose_blur_box(
    seeds: Sequence[int] = VALIDATION_SEEDS,
    chunks: int = 5,
    boxes: Sequence[int] = BLUR_BOXES,
    *,
    height: int = 96,
    width: int = 160,
) -> tuple[int, dict[int, float]]:
    """The blurred-still box size with the best PSNR over the first `chunks` chunks (10 s) on
    `seeds`, and every size's PSNR. Refuses test seeds: a choice made on them would flatter it."""
    if seed_role(seeds) in ("test", "mixed"):
        raise ValueError(
            f"choose the box on validation seeds ({VALIDATION_SEEDS.start}-{VALIDATION_SEEDS.stop - 1}), "
            f"not on test seeds (>= {TEST_SEEDS_FROM}); got {list(seeds)[:3]}..."
        )
    grammar, totals = PromptGrammar(), dict.fromkeys(boxes, 0.0)
    for seed in seeds:
        world = ProceduralWorld(grammar.sample(np.random.default_rng([seed, 0xC0DE])), seed, height, width)
        policy, first = RandomPolicy(seed), world.frame()
        stills = {b: box_blur(first, b) for b in boxes}
        for _ in range(chunks):
            truth = world.step(policy(world))
            for b in boxes:
                totals[b] += float(psnr(truth, stills[b][None]).mean())
    scores = {b: t / (len(seeds) * chunks) for b, t in totals.items()}
    return max(scores, key=lambda b: scores[b]), scores


def plot(result: dict[str, Any], path: str) -> None:
    """Per-chunk PSNR, SSIM, histogram distance, position error, agent visibility and seams of every
    predictor (matplotlib). The seam panel has each one's boundary jump (solid) and within-chunk
    p95 (dotted), the simulator's in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = result["chunk_end_s"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    labels = {
        "psnr": "PSNR (dB)",
        "ssim": "SSIM",
        "hist": "histogram distance",
        "position_error": "agent error (px)",
        "agent_visible": "agent visible (share of frames)",
    }

    def series(values: list) -> list[float]:
        return [math.nan if v is None else v for v in values]

    for ax, (metric, label) in zip(axes.ravel(), labels.items(), strict=False):
        for name, values in result["per_chunk"].items():
            ax.plot(t, series(values[metric]), marker=".", label=name)
        ax.set_ylabel(label)
    ax = axes[1, 2]
    for i, (name, values) in enumerate(result["per_chunk"].items()):
        colour = f"C{i}"
        ax.plot(t, series(values["boundary_jump"]), marker=".", color=colour, label=f"{name} jump")
        ax.plot(t, series(values["within_p95"]), linestyle=":", color=colour)
    if "simulator" in result:
        ax.plot(
            t, series(result["simulator"]["boundary_jump"]), marker=".", color="k", label="simulator jump"
        )
        ax.plot(t, series(result["simulator"]["within_p95"]), linestyle=":", color="k")
    ax.set_ylabel("boundary jump / within p95 (grey levels)")
    ax.legend(fontsize=7)
    for ax in axes.ravel():
        ax.set_xlabel("time (s)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    settings = result["settings"]
    role = settings.get("seed_role", "")
    seeds = settings["seeds"]
    fig.suptitle(
        f"drift over {len(seeds)} {role} seeds ({seeds[0]}-{seeds[-1]}), {settings.get('device', '')}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
