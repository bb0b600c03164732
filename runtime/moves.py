"""The move/pan vocabulary of the procedural world, defined once: nine moves, each a unit step.

The simulator moves its agent and pans its camera by these (`sim/procedural.py`), training turns the
simulator's actions into the ids a model learns (`train/toy_world.py`), and the engine's learned action
adapter turns a game controller's input back into them (`engine/actions.py`, `MovePanActions`).
Torch- and numpy-free.
"""

from __future__ import annotations

# (dx, dy) of each move, in view pixels per `speed` (y down: "n" is up the screen). The order is the
# order of the learned action ids: move i is id i, pan j is id 9 + j.
MOVES: dict[str, tuple[int, int]] = {
    "stay": (0, 0),
    "n": (0, -1),
    "ne": (1, -1),
    "e": (1, 0),
    "se": (1, 1),
    "s": (0, 1),
    "sw": (-1, 1),
    "w": (-1, 0),
    "nw": (-1, -1),
}
MOVE_NAMES = tuple(MOVES)
DIRECTIONS = {step: name for name, step in MOVES.items()}  # (sign dx, sign dy) -> move name
