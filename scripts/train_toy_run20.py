"""Run 20 of docs/training.md (issue 20, "following the day"), as it runs on one GPU in one call.

Run 19 fine-tuned the shipped transformer on 60-s episodes whose day all started shifted, was
stopped by time with its learning rate still high, and lost direction agreement and PSNR on the
validation worlds. Run 20 changes two things: half the episodes keep the prompt's own time (the
original distribution) and half start up to ±1200 frames (±45 minutes of the simulated day) away, all
60 s long (30 chunks) so that the anchor and the present light drift apart as in the benchmark; and
the step budget is set so that the learning-rate decay completes within the call.

The rule, fixed before any number of this run was seen: the candidate ships only if on the
validation worlds (90000-90019 × 29 chunks, same device and program as the shipped model's
validation file) its histogram ratio (60 s / 6 s) is lower than the shipped model's, its direction
agreement is within 0.02 of it and its PSNR over the first 10 s within 0.2 dB. The test seeds are
not touched here.

Run 21 is the same call with a smaller shift and more steps (after run 20 missed the rule: its
colours were off from the first chunk, see docs/training.md):

    OUT=/tmp/out python scripts/train_toy_run20.py                        # run 20, on the GPU machine
    OUT=/tmp/out RUN=21 SHIFT=480 STEPS=3000 DECAY=2600 SEEDS=27,28 python scripts/train_toy_run20.py
    OUT=/tmp/out RUNS=/tmp/runs DRY=1 python scripts/train_toy_run20.py   # CPU dry run, toy sizes

Run 22 is not about the day: it continues the shipped transformer on fresh episodes of the original
distribution (18 s, the prompt's own time: SHIFT=0, 2 × 500 episodes × 9 chunks), since the loss was
still falling when run 17 stopped and run 21 gained direction agreement. Its rule (RULE=plain), also
fixed before any of its numbers were seen: it ships only if on the validation worlds its direction
agreement is at least 0.01 above the shipped model's, its PSNR over the first 10 s no more than
0.1 dB below, its histogram ratio no more than 0.1 above and the agent visible in at least 99% of
frames:

    OUT=/tmp/out RUN=22 SHIFT=0 EPISODES=500 CHUNKS=9 STEPS=3600 DECAY=3000 SEEDS=29,30 RULE=plain \\
        python scripts/train_toy_run20.py

Run 23 is run 22 with a camera pan in half the chunks instead of one in four (PANS=0.5): on the
validation worlds the chunks with a pan agree 0.84-0.87 against 0.92-0.97 without
(scripts/agreement_breakdown.py). Same rule as run 22:

    OUT=/tmp/out RUN=23 SHIFT=0 EPISODES=500 CHUNKS=9 STEPS=3600 DECAY=3000 SEEDS=31,32 RULE=plain \\
        PANS=0.5 python scripts/train_toy_run20.py
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(os.environ["OUT"])
RUNS = Path(os.environ.get("RUNS", "/tmp/runs"))
RUNS.mkdir(exist_ok=True)
DRY = os.environ.get("DRY") == "1"
RUN = os.environ.get("RUN", "20")
RULE = os.environ.get("RULE", "day")
if RULE not in ("day", "plain"):
    sys.exit(f"RULE must be day or plain, got {RULE!r}")
ROOT = Path(__file__).resolve().parent.parent
SHIPPED_VALIDATION = ROOT / "bench/results/drift_toy-i20-validation_NVIDIA_H200.json"
T0 = time.time()

WORLD = r"""
import logging, os, time, torch
from helios_runtime.train import toy_world as w
from helios_runtime.engine.world_model import TOY_FOLDER
from helios_runtime.model.vae import WanVAE
from helios_runtime.model.text_encoder import BuiltinTextEncoder
logging.basicConfig(level=logging.INFO, format="%(message)s")
E = os.environ
SHIFT, STEPS, DECAY = int(E.get("SHIFT", 1200)), int(E.get("STEPS", 1500)), int(E.get("DECAY", 1300))
SEEDS = [int(s) for s in E.get("SEEDS", "25,26").split(",")]
EPISODES, CHUNKS = int(E.get("EPISODES", 200)), int(E.get("CHUNKS", 30))
PANS = float(E.get("PANS", 0.25))
print("day shift", SHIFT, "steps", STEPS, "decay", DECAY, flush=True)
print("sets", SEEDS, EPISODES, "x", CHUNKS, "pans", PANS, flush=True)
D = os.environ.get("DRY") == "1"; R = os.environ.get("RUNS", "/tmp/runs")
dev = "cpu" if D else "cuda"
t0 = time.time()
vae = WanVAE.from_pretrained(TOY_FOLDER / "vae", device=dev)
text = BuiltinTextEncoder.preset("toy", device="cpu")
sets = []
for seed, shift in ((SEEDS[0], 0), (SEEDS[1], SHIFT)):
    eps = w.render_episodes(
        2 if D else EPISODES,
        3 if D else CHUNKS,
        seed=seed,
        day_shift=shift,
        workers=1 if D else 14,
        pan_probability=PANS,
    )
    sets.append(w.encode_episodes(vae, eps, text))
    del eps
    print("latents", seed, shift, f"{time.time() - t0:.0f} s", flush=True)
data = w.LatentSet.cat(sets)
del sets, vae
left = (0.3 if D else 7.9) - (time.time() - t0) / 60
print("training for", f"{left:.1f} min", tuple(data.latents.shape), flush=True)
w.train_world(
    R + "/world", data, batch=2 if D else 512, max_steps=2 if D else STEPS, minutes=left, lr=1e-4,
    agent=20.0, device=dev, seed=SEEDS[0], init=TOY_FOLDER, drop_all=0.1,
    decay_steps=1 if D else DECAY, compile=not D, action_dropout=0.1,
)
"""

log = open(OUT / "world.log", "w")
proc = subprocess.Popen([sys.executable, "-c", WORLD], stdout=log, stderr=subprocess.STDOUT)
try:
    proc.wait(timeout=max(1, 8.3 * 60 - (time.time() - T0)))
except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    print("world killed at the deadline", flush=True)
print("world rc", proc.returncode, f"{time.time() - T0:.0f} s", flush=True)
if not (RUNS / "world" / "transformer" / "config.json").exists():
    sys.exit("no checkpoint")

from helios_runtime.engine.world_model import TOY_FOLDER  # noqa: E402
from helios_runtime.train import toy_world as w  # noqa: E402

index = json.loads((TOY_FOLDER / "model_index.json").read_text())
cand = w.export_world(
    RUNS / "world",
    TOY_FOLDER / "vae",
    RUNS / f"toy-run{RUN}",
    name="toy",
    seam_blend=index.get("seam_blend_frames", 0),
)
# The shipped VAE was already float16; exporting it again keeps it bit for bit.
print("exported", cand, f"{w.folder_megabytes(cand):.1f} MB", f"{time.time() - T0:.0f} s", flush=True)
subprocess.run(
    ["tar", "-cf", str(OUT / "world.tar"), "-C", str(cand), "transformer", "text_encoder"], check=True
)
(OUT / "world_report.json").write_text((RUNS / "world" / "world_report.json").read_text())

# Validation (seam blend off, as the shipped model's validation file was taken).
val = OUT / f"drift_toy-run{RUN}-validation.json"
cmd = [
    sys.executable,
    str(ROOT / "bench/drift_sharded.py"),
    "--model",
    str(cand),
    "--first-seed",
    "90000",
    "--seeds",
    "1" if DRY else "20",
    "--chunks",
    "2" if DRY else "29",
    "--procs",
    "1" if DRY else "14",
    "--seam-blend",
    "0",
    "--out",
    str(val),
    "--plot",
    str(OUT / f"drift_toy-run{RUN}-validation.png"),
]
if DRY:
    cmd += ["--device", "cpu"]
subprocess.run(cmd, check=True, timeout=max(1, 9.6 * 60 - (time.time() - T0)) if not DRY else None)


def key_numbers(path: Path) -> dict:
    summary = json.loads(path.read_text())["summary"]
    s = summary[next(n for n in summary if n.startswith("engine"))]
    return {
        "agreement": s["direction_agreement"]["value"],
        "hist_ratio": s["hist_drift"]["late"] / s["hist_drift"]["early"],
        "psnr_10s": s["psnr_vs_baselines"]["value_db"],
        "agent_visible": s["agent_visible"]["value"],
    }


new, old = key_numbers(val), key_numbers(SHIPPED_VALIDATION)
if RULE == "day":
    ships = (
        new["hist_ratio"] < old["hist_ratio"]
        and new["agreement"] >= old["agreement"] - 0.02
        and new["psnr_10s"] >= old["psnr_10s"] - 0.2
    )
else:
    ships = (
        new["agreement"] >= old["agreement"] + 0.01
        and new["psnr_10s"] >= old["psnr_10s"] - 0.1
        and new["hist_ratio"] <= old["hist_ratio"] + 0.1
        and new["agent_visible"] >= 0.99
    )
decision = {"rule": RULE, "candidate": new, "shipped": old, "ships": ships}
(OUT / "decision.json").write_text(json.dumps(decision, indent=1))
print(json.dumps(decision), f"{time.time() - T0:.0f} s", flush=True)
