"""The contact sheet of docs/eval.md: the simulator against the toy world across two chunk boundaries.

One benchmark world (a test seed: the picture is an illustration, nothing is chosen on it) rolled as
`helios eval drift` rolls it: the simulator's first frame given to the engine (image-to-video), the
benchmark's actions as the toy's move + pan. Rows: the simulator, the toy with the seam blend off
(what the released pipeline's decode gives), the toy as shipped (blend over 2 frames); columns:
frames 31-34 and 64-67, where 33 and 66 start chunks 2 and 3. Each frame is labelled with its mean
absolute change from the frame before it (grey levels).

    python scripts/seam_sheet.py --seed 100014 --out docs/images/seams_toy.png
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image, ImageDraw

from helios_runtime.chunk import FRAMES_PER_CHUNK
from helios_runtime.engine.engine import WorldEngine
from helios_runtime.engine.world_model import WorldModel
from helios_runtime.eval.drift import EnginePredictor
from helios_runtime.sim.grammar import PromptGrammar
from helios_runtime.sim.procedural import DAY_FRAMES, ProceduralWorld, RandomPolicy

COLUMNS = (31, 32, 33, 34, 64, 65, 66, 67)
SCALE = 2
LABEL_H = 14


def roll(seed: int, chunks: int, blends: list[int]) -> tuple[str, list[np.ndarray]]:
    """(prompt, [frames (chunks·33, H, W, 3) of the simulator, then of the toy at each blend])."""
    prompt = PromptGrammar().sample(np.random.default_rng([seed, 0xC0DE]))
    world = ProceduralWorld(prompt, seed, 96, 160, day_frames=DAY_FRAMES)
    model = WorldModel.load("toy", device="cpu")
    predictors = [EnginePredictor(WorldEngine(model, max_sessions=2, seam_blend=n), seed=0) for n in blends]
    first = world.frame()
    for p in predictors:
        p.reset(first, world.prompt)
    policy = RandomPolicy(seed)
    rows: list[list[np.ndarray]] = [[] for _ in range(len(blends) + 1)]
    for _ in range(chunks):
        action = policy(world)
        rows[0].append(world.step(action))
        for r, p in zip(rows[1:], predictors, strict=True):
            r.append(p.step(action))
    return world.prompt, [np.concatenate(r) for r in rows]


def sheet(rows: list[np.ndarray], names: list[str]) -> Image.Image:
    h, w = rows[0].shape[1] * SCALE, rows[0].shape[2] * SCALE
    name_w = 120
    img = Image.new("RGB", (name_w + len(COLUMNS) * (w + 4), 18 + len(rows) * (h + LABEL_H + 4)), "white")
    draw = ImageDraw.Draw(img)
    for c, f in enumerate(COLUMNS):
        start = " (chunk start)" if f % FRAMES_PER_CHUNK == 0 else ""
        draw.text((name_w + c * (w + 4), 2), f"frame {f}{start}", fill="black")
    for r, (frames, name) in enumerate(zip(rows, names, strict=True)):
        y = 18 + r * (h + LABEL_H + 4)
        draw.text((4, y + h // 2), name, fill="black")
        for c, f in enumerate(COLUMNS):
            x = name_w + c * (w + 4)
            tile = Image.fromarray(frames[f]).resize((w, h), Image.NEAREST)
            img.paste(tile, (x, y))
            change = np.abs(frames[f].astype(np.float32) - frames[f - 1].astype(np.float32)).mean()
            draw.text(
                (x, y + h + 1), f"change {change:.1f}", fill="red" if f % FRAMES_PER_CHUNK == 0 else "black"
            )
    return img


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=100014, help="the benchmark world (default 100014)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args()
    torch.set_num_threads(2)
    prompt, rows = roll(args.seed, 3, [0, 2])
    img = sheet(rows, ["simulator", "toy, blend off", "toy, blend 2 (shipped)"])
    img.save(args.out)
    for name, frames in zip(["simulator", "blend off", "shipped"], rows, strict=True):
        jumps = [
            float(np.abs(frames[f].astype(np.float32) - frames[f - 1].astype(np.float32)).mean())
            for f in (33, 66)
        ]
        print(f"{name:<10} jumps at frames 33 and 66: {jumps[0]:.2f} {jumps[1]:.2f}")
    print(f"{prompt!r}: wrote {args.out}")


if __name__ == "__main__":
    main()
