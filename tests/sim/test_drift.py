"""Drift metrics on known inputs, the benchmark loop with the baseline and the tiny engine, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helios_runtime.chunk import FRAMES_PER_CHUNK
from helios_runtime.eval.drift import (
    PSNR_CAP,
    TEST_SEEDS_FROM,
    VALIDATION_SEEDS,
    BlurredStill,
    CopyLastFrame,
    EnginePredictor,
    VaeRoundTrip,
    agent_position,
    box_blur,
    choose_blur_box,
    direction_agrees,
    direction_failure,
    histogram_distance,
    merge_runs,
    psnr,
    run_drift,
    seam,
    seed_role,
    ssim,
)
from helios_runtime.sim import Action, ProceduralWorld
from helios_sdk.cli import main


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    world = ProceduralWorld("a forest at dusk in light rain with rocks and deer", 2)
    return world.step("e")[::8]  # (5, 96, 160, 3)


def test_metrics_of_identical_frames(frames):
    np.testing.assert_array_equal(psnr(frames, frames), PSNR_CAP)
    np.testing.assert_allclose(ssim(frames, frames), 1.0, atol=1e-12)
    np.testing.assert_array_equal(histogram_distance(frames, frames), 0.0)


def test_metrics_on_known_inputs(frames):
    a = np.full((16, 16, 3), 100, np.uint8)
    assert psnr(a, a + 10) == pytest.approx(10 * math.log10(255**2 / 100))
    # All pixels in one bin versus another: disjoint histograms.
    assert histogram_distance(a, np.full_like(a, 200)) == pytest.approx(1.0)
    # Half the pixels change bin in one channel: distance 0.5 in that channel, 1/6 overall.
    b = a.copy()
    b[:8, :, 0] = 200
    assert histogram_distance(a, b) == pytest.approx(0.5 / 3)
    noisy = np.clip(frames + np.random.default_rng(0).normal(0, 20, frames.shape), 0, 255).astype(np.uint8)
    s = ssim(frames, noisy)
    assert s.shape == (5,) and np.all(s < 0.9) and np.all(s > 0)
    assert np.all(ssim(frames, 255 - frames) < ssim(frames, noisy))


def test_agent_detection_and_direction():
    blank = np.zeros((40, 60, 3), np.uint8)
    assert agent_position(blank) is None
    dot = blank.copy()
    dot[10:13, 20:23] = (250, 30, 240)  # a blurred magenta still counts
    assert agent_position(dot) == pytest.approx((21.0, 11.0))
    assert direction_agrees((0, 0), (10, 1), (16.5, 0))
    assert not direction_agrees((0, 0), (10, 10), (16.5, 0))  # 45° off
    assert not direction_agrees((0, 0), (2, 0), (16.5, 0))  # too short
    assert direction_agrees((5, 5), (6, 5), (0, 0)) and not direction_agrees((5, 5), (15, 5), (0, 0))
    assert not direction_agrees(None, (1, 1), (16.5, 0))


def test_direction_failure_says_why():
    assert direction_failure((0, 0), (10, 1), (16.5, 0)) is None
    assert direction_failure((0, 0), (10, 10), (16.5, 0)) == "wrong direction"
    assert direction_failure((0, 0), (2, 0), (16.5, 0)) == "moved too little"
    assert direction_failure((5, 5), (15, 5), (0, 0)) == "moved while told to stay"
    assert direction_failure((0, 0), None, (16.5, 0)) == "agent not found"


class Oracle:
    """Replays the simulator itself (seeds in the order given): perfect scores, commanded motion."""

    name = "oracle"

    def __init__(self, seeds):
        self.seeds = iter(seeds)

    def reset(self, first_frame, prompt):
        self.world = ProceduralWorld(prompt, next(self.seeds))
        assert np.array_equal(self.world.frame(), first_frame)

    def step(self, action):
        return self.world.step(action)


def test_run_drift_with_copy_last_and_oracle():
    seeds = [11, 12]
    result = run_drift([Oracle(seeds)], seeds, 3)
    json.dumps(result, allow_nan=False)
    assert set(result["per_chunk"]) == {"oracle", "copy-last", "blurred-still"}
    o, c = result["per_chunk"]["oracle"], result["per_chunk"]["copy-last"]
    assert o["psnr"] == [PSNR_CAP] * 3 and o["ssim"] == pytest.approx([1.0] * 3)
    assert o["hist"] == [0.0] * 3 and o["position_error"] == [0.0] * 3 and o["direction_agrees"] == [1.0] * 3
    assert all(p < 40 for p in c["psnr"]) and all(h > 0 for h in c["hist"])
    # The oracle's seams are the simulator's own; a frozen picture has none inside a chunk.
    for m in ("boundary_jump", "within_median", "within_p95"):
        assert o[m] == pytest.approx(result["simulator"][m])
    assert c["within_p95"] == [0.0] * 3 and c["boundary_jump"] == [0.0] * 3
    summary = result["summary"]["oracle"]
    assert summary["direction_agreement"]["pass"] and summary["psnr_vs_baselines"]["pass"]
    assert summary["psnr_last_chunk"]["pass"] and summary["seam"]["pass"]
    assert not result["summary"]["copy-last"]["psnr_vs_baselines"]["pass"]
    assert set(summary["psnr_vs_baselines"]["baselines_db"]) == {"copy-last", "blurred-still"}
    assert result["settings"]["seed_role"] == "other" and result["settings"]["blur_box"] > 1
    assert result["chunk_end_s"] == pytest.approx([k * FRAMES_PER_CHUNK / 16 for k in (1, 2, 3)])


def test_engine_predictor_with_the_tiny_model():
    from helios_runtime.engine.engine import WorldEngine
    from helios_runtime.engine.world_model import WorldModel

    engine = WorldEngine(WorldModel.load("tiny", device="cpu", seed=0))
    predictor = EnginePredictor(engine, height=64, width=64, seed=0)
    # Chunk 1 is the image-to-video reset, chunk 2 a step; run_drift checks each is (33, 96, 160, 3).
    result = run_drift([predictor, CopyLastFrame()], [3], 2)
    json.dumps(result, allow_nan=False)
    assert set(result["per_chunk"]) == {"engine:tiny", "copy-last", "blurred-still"}
    assert all(0 < p < PSNR_CAP for p in result["per_chunk"]["engine:tiny"]["psnr"])
    assert len(engine.sessions) == 1


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "drift.json"
    code = main(
        ["eval", "drift", "--predictor", "copy-last", "--seeds", "2", "--chunks", "2", "--out", str(out)]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["settings"]["seeds"] == [100_000, 100_001] and result["settings"]["chunks"] == 2
    assert result["settings"]["seed_role"] == "test" and result["settings"]["device_name"]
    assert len(result["per_chunk"]["copy-last"]["psnr"]) == 2
    assert len(result["per_chunk"]["blurred-still"]["boundary_jump"]) == 2
    captured = capsys.readouterr()
    assert "direction agreement" in captured.out and "chunk 2/2" in captured.err
    assert "boundary jump" in captured.out and "not the held-out test seeds" not in captured.err
    args = ["eval", "drift", "--predictor", "copy-last", "--seeds", "1", "--chunks", "1", "--out", str(out)]
    assert main([*args, "--first-seed", str(VALIDATION_SEEDS.start)]) == 0
    assert "validation seeds" in capsys.readouterr().err
    assert main(["eval", "drift", "--seeds", "0", "--predictor", "copy-last", "--out", str(out)]) == 2


def test_frozen_daylight_is_recorded_and_narrows_copy_last_drift(tmp_path):
    out = tmp_path / "drift.json"
    args = ["eval", "drift", "--predictor", "copy-last", "--seeds", "2", "--chunks", "4", "--out", str(out)]
    assert main(args) == 0
    moving = json.loads(out.read_text())
    assert main([*args, "--frozen-daylight"]) == 0
    frozen = json.loads(out.read_text())
    assert (moving["settings"]["daylight"], frozen["settings"]["daylight"]) == ("moving", "frozen")
    # The day advancing is most of the truth's colour change: the frozen world stays closer to frame 0.
    assert frozen["per_chunk"]["copy-last"]["hist"][-1] < moving["per_chunk"]["copy-last"]["hist"][-1]


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from helios_runtime.eval.drift import plot

    path = tmp_path / "drift.png"
    plot(run_drift([], [1], 2), str(path))
    assert path.stat().st_size > 1000


def test_vae_roundtrip_is_the_toy_vaes_ceiling(tmp_path, capsys):
    """The simulator's chunks through the shipped toy VAE: the agent survives where it is, and the
    picture is close (the bound a perfect transformer would reach through this VAE)."""
    out = tmp_path / "vae.json"
    args = ["eval", "drift", "--predictor", "vae-roundtrip", "--device", "cpu"]
    args += ["--seeds", "1", "--chunks", "2"]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    vae = result["per_chunk"]["vae-roundtrip:toy"]
    assert result["settings"]["model"] == "toy"
    assert all(j is not None and j > 0 for j in vae["boundary_jump"])
    assert vae["agent_visible"] == [1.0, 1.0] and all(e < 3.0 for e in vae["position_error"])
    assert all(p > 20.0 for p in vae["psnr"]) and vae["direction_agrees"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="needs the simulator's chunk"):
        VaeRoundTrip(None).step(Action("e"))


def test_seams_of_known_frames():
    still = np.full((4, 8, 8, 3), 10, np.uint8)
    steps = still + np.arange(4, dtype=np.uint8)[:, None, None, None] * 2  # +2 a frame
    s = seam(np.full((8, 8, 3), 0, np.uint8), steps)
    assert s == pytest.approx({"boundary_jump": 10.0, "within_median": 2.0, "within_p95": 2.0})
    assert seam(still[0], still) == {"boundary_jump": 0.0, "within_median": 0.0, "within_p95": 0.0}


def test_box_blur_and_the_blurred_still():
    frame = np.zeros((9, 9, 3), np.uint8)
    frame[4, 4] = 90
    blurred = box_blur(frame, 3)
    assert blurred[4, 4, 0] == 10 and blurred[3, 3, 0] == 10 and blurred[2, 2, 0] == 0
    np.testing.assert_array_equal(box_blur(frame, 1), frame)
    flat = np.full((6, 7, 3), 77, np.uint8)
    np.testing.assert_array_equal(box_blur(flat, 5), flat)  # edges replicated: a flat field stays
    with pytest.raises(ValueError, match="odd"):
        box_blur(frame, 4)
    still = BlurredStill(3)
    still.reset(frame, "p")
    chunk = still.step(Action("e"))
    assert chunk.shape == (FRAMES_PER_CHUNK, 9, 9, 3)
    np.testing.assert_array_equal(chunk[-1], blurred)


def test_seed_roles_and_the_box_choice():
    assert seed_role([TEST_SEEDS_FROM, TEST_SEEDS_FROM + 1]) == "test"
    assert seed_role(list(VALIDATION_SEEDS)) == "validation"
    assert seed_role([VALIDATION_SEEDS.start, TEST_SEEDS_FROM]) == "mixed"
    assert seed_role([3]) == "other"
    assert VALIDATION_SEEDS.stop <= TEST_SEEDS_FROM
    with pytest.raises(ValueError, match="validation seeds"):
        choose_blur_box([TEST_SEEDS_FROM], chunks=1)
    box, scores = choose_blur_box(VALIDATION_SEEDS[:2], chunks=1, boxes=(1, 5, 9))
    assert set(scores) == {1, 5, 9} and scores[box] == max(scores.values())
    assert scores[5] > scores[1]  # the truth moves: a blurred still beats the sharp one


def test_merging_one_seed_runs_is_one_run():
    seeds = [11, 12]
    whole = run_drift([CopyLastFrame()], seeds, 2)
    merged = merge_runs([run_drift([CopyLastFrame()], [s], 2) for s in seeds])
    assert (
        merged["settings"]["seeds"] == seeds and merged["settings"]["prompts"] == whole["settings"]["prompts"]
    )
    for name, metrics in whole["per_chunk"].items():
        for m, values in metrics.items():
            assert merged["per_chunk"][name][m] == pytest.approx(values, nan_ok=True), (name, m)
    assert merged["simulator"] == pytest.approx(whole["simulator"])
    assert merged["summary"]["copy-last"]["seam"] == pytest.approx(whole["summary"]["copy-last"]["seam"])
    with pytest.raises(ValueError, match="one-seed"):
        merge_runs([whole])
