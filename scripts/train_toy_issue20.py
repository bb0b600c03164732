"""Issue 20's training call (runs 18 and 19 of docs/training.md), as it ran on one H200 in ~9 minutes.

Two fine-tunes side by side from the shipped toy: the VAE decoder alone with the chunk's first
frames weighted (the seam fix), and the transformer on 60-s episodes whose day starts at shifted
times (the daylight remedy); then both candidates exported (RUNS/toy-seam, RUNS/toy-day) and the
VAE's seams measured on the validation worlds (90000-90019, 5 chunks each). Results go to $OUT.

    OUT=/tmp/out python scripts/train_toy_issue20.py          # on the GPU machine
    OUT=/tmp/out RUNS=/tmp/runs DRY=1 python scripts/train_toy_issue20.py   # CPU dry run, toy sizes
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from helios_runtime.engine.world_model import TOY_FOLDER
from helios_runtime.eval.drift import VALIDATION_SEEDS, VaeRoundTrip, run_drift
from helios_runtime.model.vae import WanVAE
from helios_runtime.train import toy_world as w

OUT = Path(os.environ["OUT"])
RUNS = Path(os.environ.get("RUNS", "/tmp/runs"))
RUNS.mkdir(exist_ok=True)
DRY = os.environ.get("DRY") == "1"  # a CPU dry run of the same steps at toy sizes
T0 = time.time()

VAE = r"""
import logging, torch; logging.basicConfig(level=logging.INFO, format="%(message)s")
from helios_runtime.train import toy_world as w
from helios_runtime.engine.world_model import TOY_FOLDER
import os; D = os.environ.get("DRY") == "1"; R = os.environ.get("RUNS", "/tmp/runs")
w.train_vae(R + "/vae", episodes=2 if D else 600, chunks=1 if D else 4, batch=1 if D else 16,
            clip_frames=5 if D else 33, max_steps=2 if D else 100000, minutes=6.3, lr=3e-4,
            device="cpu" if D else "cuda", seed=21, init=TOY_FOLDER / "vae", decoder_only=True,
            agent=20.0, first_weight=8.0, entry_weight=2.0, workers=1 if D else 6)
"""
WORLD = r"""
import logging, time, torch; logging.basicConfig(level=logging.INFO, format="%(message)s")
from helios_runtime.train import toy_world as w
from helios_runtime.engine.world_model import TOY_FOLDER
from helios_runtime.model.vae import WanVAE
from helios_runtime.model.text_encoder import BuiltinTextEncoder
import os; D = os.environ.get("DRY") == "1"; R = os.environ.get("RUNS", "/tmp/runs")
dev = "cpu" if D else "cuda"
t0 = time.time()
eps = w.render_episodes(2 if D else 300, 3 if D else 30, seed=22, day_shift=1200,
                        workers=1 if D else 10)
vae = WanVAE.from_pretrained(TOY_FOLDER / "vae", device=dev)
data = w.encode_episodes(vae, eps, BuiltinTextEncoder.preset("toy", device="cpu"))
del eps
print("latents", tuple(data.latents.shape), f"{time.time() - t0:.0f} s", flush=True)
left = 6.6 - (time.time() - t0) / 60
w.train_world(R + "/world", data, batch=2 if D else 512, max_steps=2 if D else 2600, minutes=left, lr=1e-4,
              agent=20.0, device=dev, seed=22, init=TOY_FOLDER, drop_all=0.1, decay_steps=1 if D else 2000,
              compile=not D, action_dropout=0.1)
"""
procs = []
for name, code in (("vae", VAE), ("world", WORLD)):
    log = open(OUT / f"{name}.log", "w")
    procs.append((name, subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)))
for name, p in procs:
    try:
        p.wait(timeout=max(1, 8.0 * 60 - (time.time() - T0)))
    except subprocess.TimeoutExpired:
        p.kill()
        print(name, "killed at the deadline", flush=True)
    print(name, "rc", p.returncode, f"{time.time() - T0:.0f} s", flush=True)

cands = {}
if (RUNS / "vae" / "config.json").exists():
    cands["seam"] = w.export_world(TOY_FOLDER, RUNS / "vae", RUNS / "toy-seam", name="toy")
    if (RUNS / "world" / "transformer" / "config.json").exists():
        cands["day"] = w.export_world(RUNS / "world", RUNS / "vae", RUNS / "toy-day", name="toy")
for k, v in cands.items():
    print(k, v, f"{w.folder_megabytes(v):.1f} MB", flush=True)
# the weights back: VAE folder, then transformer + text encoder of the daylight run
if "seam" in cands:
    subprocess.run(["tar", "-cf", str(OUT / "vae.tar"), "-C", str(RUNS / "toy-seam"), "vae"], check=True)
    shutil.copy(RUNS / "vae" / "vae_report.json", OUT / "vae_report.json")
if "day" in cands:
    subprocess.run(
        ["tar", "-cf", str(OUT / "world.tar"), "-C", str(RUNS / "toy-day"), "transformer", "text_encoder"],
        check=True,
    )
    shutil.copy(RUNS / "world" / "world_report.json", OUT / "world_report.json")

# Seams of the VAE alone on the validation worlds, shipped against fine-tuned (first 5 chunks).

rows = {}
for label, folder in (("shipped", TOY_FOLDER / "vae"), ("seam", RUNS / "toy-seam" / "vae")):
    if not folder.exists() or time.time() - T0 > 9.2 * 60:
        continue
    vae = WanVAE.from_pretrained(folder, device="cpu" if DRY else "cuda")
    r = run_drift(
        [VaeRoundTrip(vae, name=label)], list(VALIDATION_SEEDS)[: 1 if DRY else 20], 1 if DRY else 5
    )
    rows[label] = {
        "per_chunk": r["per_chunk"][label],
        "summary": r["summary"][label],
        "simulator": r["simulator"],
    }
    s = r["summary"][label]
    print(label, "psnr0-10", round(s["psnr_vs_baselines"]["value_db"], 2), "seam", s["seam"], flush=True)
(OUT / "vae_validation.json").write_text(json.dumps(rows, indent=1))
print("done", f"{time.time() - T0:.0f} s")
