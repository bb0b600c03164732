"""Where the toy world's direction agreement fails: the drift benchmark's chunks sorted by the kind of
action (stay, a straight or diagonal move, with or without a camera pan) and by how a chunk failed
(the agent not found at its start or end, moved too little, moved the wrong way, moved while told to
stay). A diagnostic for docs/eval.md: it runs on validation seeds only (90000-90019), so it can guide
the next training run without touching the test seeds.

    python scripts/agreement_breakdown.py --seeds 10 --chunks 8 --out /tmp/breakdown.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict

import numpy as np

from helios_runtime.engine.engine import WorldEngine
from helios_runtime.engine.world_model import WorldModel
from helios_runtime.eval.drift import VALIDATION_SEEDS, EnginePredictor, agent_position, direction_failure
from helios_runtime.sim.grammar import PromptGrammar
from helios_runtime.sim.procedural import DAY_FRAMES, Action, ProceduralWorld, RandomPolicy


def kind(action: Action) -> str:
    move = "stay" if action.move == "stay" else "straight" if len(action.move) == 1 else "diagonal"
    return move + ("" if action.pan == "stay" else " + pan")


def edge(start, expected: tuple[float, float], world: ProceduralWorld) -> bool:
    """Whether the model's agent, moved as commanded from `start`, would cross into the dead zone
    where its camera scrolls with it (the simulator's agent, which the actions were chosen for,
    stays clear): a miss there is the model following its own state."""
    x, y = np.add(start, expected)
    m = world.margin
    return not (m <= x <= world.width - m and m <= y <= world.height - m)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--seeds", type=int, default=10, help="validation seeds from 90000 (at most 20)")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    first_seed = VALIDATION_SEEDS[0]
    if not 1 <= args.seeds <= len(VALIDATION_SEEDS):
        parser.error(f"--seeds must be 1..{len(VALIDATION_SEEDS)}: validation seeds only")
    engine = WorldEngine(WorldModel.load(args.model, device="cpu"), max_sessions=2)
    grammar = PromptGrammar()
    predictor = EnginePredictor(engine, seed=0)  # its reset closes the last seed's session
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for seed in range(first_seed, first_seed + args.seeds):
        prompt = grammar.sample(np.random.default_rng([seed, 0xC0DE]))
        world = ProceduralWorld(prompt, seed, 96, 160, day_frames=DAY_FRAMES)
        first = world.frame()
        predictor.reset(first, world.prompt)
        policy, start = RandomPolicy(seed), agent_position(first)
        for _ in range(args.chunks):
            action = Action.of(policy(world))
            expected = world.expected_shift(action)
            world.step(action)
            frames = predictor.step(action)
            end = agent_position(frames[-1])
            why = direction_failure(start, end, expected)
            if why in ("moved too little", "wrong direction") and edge(start, expected, world):
                why += " (edge)"
            by_kind[kind(action)][why or "agrees"] += 1
            start = end
        print(f"seed {seed} done", file=sys.stderr, flush=True)
    rows = {}
    for k in sorted(by_kind):
        c = by_kind[k]
        total = sum(c.values())
        rows[k] = {
            "chunks": total,
            "agreement": c["agrees"] / total,
            **{f: n for f, n in c.items() if f != "agrees"},
        }
        why = ", ".join(f"{f} {n}" for f, n in c.most_common() if f != "agrees")
        print(f"{k:20s} {total:4d} chunks  agreement {c['agrees'] / total:.3f}  {why}")
    if args.out:
        settings = {
            "model": args.model,
            "seeds": [first_seed, first_seed + args.seeds - 1],
            "chunks": args.chunks,
        }
        with open(args.out, "w") as f:
            json.dump({"settings": settings, "by_action": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
