"""A procedural top-down world with known ground truth, for measuring drift (issue 8, deliverable 1).

`ProceduralWorld(prompt, seed)` renders a scrolling top-down scene at 16 fps whose look comes from a
prompt of the small grammar in `grammar.py` (biome, time of day, weather, objects). An agent drawn in
a colour nothing else can take (pure magenta, see `AGENT_RGB`) moves by one of nine moves per chunk,
and the camera can pan; animals wander, rain or snow falls, and the daylight changes slowly, so a
model that imitates it has something to drift from.

Units and conventions (shapes: T frames, H rows, W columns):
- Positions are pixels of the view, x the column and y the row (y grows downwards, so "n" is up).
- One chunk is 33 frames, the model's chunk; `reset()` gives frame 0, each `step` the next 33.
- The agent moves `speed` pixels per frame along each axis of its move (0.5 at 96 rows, scaled with
  the height): 16.5 pixels per chunk for "e", and 16.5 on both axes for "ne". Camera pans move the
  view at the same speed, so the agent slides across the view the opposite way.
- The world is a torus of 4 × 4 views. The camera follows the agent with a dead zone: whenever the
  agent's centre would come within `margin` pixels of the view's edge, the view scrolls with it.
- The daylight goes round once in `DAY_FRAMES` frames (10 minutes), starting at the prompt's time
  (`day_offset` frames later for training episodes that start at other times of the day);
  `day_frames=None` holds it at the prompt's time (the drift benchmark's `--frozen-daylight`).

Everything is drawn from one numpy generator seeded by (seed, the prompt's CRC-32), and every update
is a fixed sequence of float operations, so the same (prompt, seed, actions) give identical bytes
(on one machine and numpy build: transcendental functions may differ in the last bit elsewhere).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..chunk import FRAMES_PER_CHUNK
from ..moves import MOVES
from .grammar import MOVING_OBJECTS, PromptGrammar, Scene

DAY_FRAMES = 9600  # a full day-night cycle: 10 minutes at 16 fps
AGENT_RGB = (255, 0, 255)
# No other pixel gets min(R, B) - G above this (`_guard`), so magenta is the agent's alone.
OTHER_MAGENTA_MAX = 64
# How the agent is found in any frame, the simulator's or a model's: min(R, B) - G above this.
AGENT_THRESHOLD = 96


def agent_mask(frames: Any) -> Any:
    """(..., H, W, 3) uint8 -> (..., H, W) bool: the pixels of the agent's colour, min(R, B) - G above
    the threshold. A numpy array or a torch tensor (on any device; training masks its batches)."""
    f = frames.astype(np.int16) if isinstance(frames, np.ndarray) else frames.short()
    green = f[..., 1]
    return (f[..., 0] - green > AGENT_THRESHOLD) & (f[..., 2] - green > AGENT_THRESHOLD)


# Ground colours (RGB in [0, 1]): a base and a second colour mixed in by a smooth noise field.
_BIOME = {
    "forest": ((0.18, 0.42, 0.16), (0.10, 0.30, 0.12), 0.6),
    "meadow": ((0.45, 0.68, 0.30), (0.62, 0.74, 0.36), 0.6),
    "desert": ((0.86, 0.74, 0.48), (0.74, 0.58, 0.36), 0.6),
    "tundra": ((0.82, 0.86, 0.88), (0.60, 0.66, 0.70), 0.6),
    "island": ((0.14, 0.38, 0.68), (0.88, 0.80, 0.55), 3.0),  # sharp mix: water and sand
}
_DAY_PHASE = {"night": 0.0, "dawn": 0.25, "noon": 0.5, "dusk": 0.75}
_STATIC = {  # colour, radius range in pixels at 96 rows, per view
    "rocks": ((0.50, 0.50, 0.52), (2, 4)),
    "trees": ((0.05, 0.24, 0.08), (4, 6)),
    "houses": ((0.66, 0.22, 0.16), (4, 6)),
}
_MOVING = {  # colour, speed in pixels per frame at 96 rows
    "deer": ((0.45, 0.28, 0.12), 0.6),
    "sheep": ((0.93, 0.93, 0.88), 0.25),
    "birds": ((0.12, 0.12, 0.18), 1.5),
}
_PER_VIEW = 3  # of each object kind, per view's area of the world
_WEATHER = {  # particles per 1000 view pixels, colour, velocity (dx, dy) per frame at 96 rows, length
    "light rain": (4.0, (0.66, 0.70, 0.80), (0.5, 4.0), 3),
    "heavy rain": (12.0, (0.66, 0.70, 0.80), (1.0, 5.0), 4),
    "snow": (8.0, (0.96, 0.96, 0.98), (0.3, 0.7), 1),
}


@dataclass(frozen=True)
class Action:
    """One chunk's command: the agent's move and an optional camera pan, both names from `MOVES`."""

    move: str = "stay"
    pan: str = "stay"

    def __post_init__(self) -> None:
        for what, name in (("move", self.move), ("pan", self.pan)):
            if name not in MOVES:
                raise ValueError(f"unknown {what} {name!r}; allowed: {', '.join(MOVES)}")

    @classmethod
    def of(cls, action: Any) -> Action:
        """An Action from an Action, a move name, or a mapping with 'move' and/or 'pan'."""
        if isinstance(action, Action):
            return action
        if isinstance(action, str):
            return cls(action)
        if isinstance(action, Mapping):
            unknown = set(action) - {"move", "pan"}
            if unknown:
                raise ValueError(f"unknown action fields {sorted(unknown)}; expected move, pan")
            return cls(action.get("move", "stay"), action.get("pan", "stay"))
        raise ValueError(f"an action is a move name, an Action or a mapping, got {type(action).__name__}")


class ProceduralWorld:
    """A deterministic top-down world: `reset()` -> frame (H, W, 3) uint8, `step(action)` -> (33, H, W, 3)."""

    def __init__(
        self,
        prompt: str,
        seed: int = 0,
        height: int = 96,
        width: int = 160,
        day_frames: int | None = DAY_FRAMES,
        day_offset: int = 0,
    ):
        if height < 32 or width < 32:
            raise ValueError(f"the view must be at least 32×32 pixels, got {height}×{width}")
        if day_frames is not None and (
            not isinstance(day_frames, int) or isinstance(day_frames, bool) or day_frames < 1
        ):
            raise ValueError(f"day_frames must be a positive int or None (light frozen), got {day_frames!r}")
        if not isinstance(day_offset, int) or isinstance(day_offset, bool):
            raise ValueError(f"day_offset must be an int number of frames, got {day_offset!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.grammar = PromptGrammar()
        self.scene: Scene = self.grammar.parse(prompt)
        self.prompt = self.grammar.format(self.scene)
        self.seed, self.height, self.width, self.day_frames = seed, height, width, day_frames
        self.day_offset = day_offset  # frames of the day already gone at frame 0 (may be negative)
        self.scale = height / 96
        self.speed = 0.5 * self.scale  # pixels per frame per axis
        self.margin = round(height / 6)  # dead zone: the agent's centre stays this far from the edges
        self.radius = max(2, round(3 * self.scale))
        self.world_h, self.world_w = 4 * height, 4 * width
        self.reset()

    # --- public API ---------------------------------------------------------------------------------

    def reset(self) -> np.ndarray:
        """Rebuild the world from (prompt, seed) and return frame 0, (H, W, 3) uint8."""
        rng = np.random.default_rng([self.seed, zlib.crc32(self.prompt.encode())])
        self._ground = self._paint_ground(rng)  # (4H, 4W, 3) float32 in [0, 1]
        self._animals = self._spawn_animals(rng)
        self._particles = self._spawn_particles(rng)
        self.t = 0
        # Agent and camera in world pixels (unwrapped); the agent starts in the middle of the view.
        self._cam = np.array([0.0, 0.0])
        self._agent = np.array([self.width / 2, self.height / 2])
        self._last = self._render()
        return self._last.copy()

    def step(self, action: Any = "stay") -> np.ndarray:
        """Advance one chunk under `action` and return its 33 frames, (33, H, W, 3) uint8."""
        act = Action.of(action)
        move = np.array(MOVES[act.move], dtype=np.float64) * self.speed
        pan = np.array(MOVES[act.pan], dtype=np.float64) * self.speed
        frames = np.empty((FRAMES_PER_CHUNK, self.height, self.width, 3), dtype=np.uint8)
        for i in range(FRAMES_PER_CHUNK):
            self.t += 1
            self._agent += move
            self._cam += pan
            self._follow()
            self._move_animals()
            self._move_particles()
            frames[i] = self._render()
        self._last = frames[-1]
        return frames

    def frame(self) -> np.ndarray:
        """The current (last rendered) frame, (H, W, 3) uint8."""
        return self._last.copy()

    def agent_position(self) -> tuple[float, float]:
        """(x, y) of the agent's centre in view pixels, exactly where it is drawn."""
        x, y = self._agent_pixel()
        return float(x), float(y)

    def expected_shift(self, action: Any) -> tuple[float, float]:
        """The agent's (dx, dy) across the view over one chunk under `action`, before any dead-zone
        scrolling: (move - pan) × speed × 33 pixels."""
        act = Action.of(action)
        k = self.speed * FRAMES_PER_CHUNK
        (mx, my), (px, py) = MOVES[act.move], MOVES[act.pan]
        return (mx - px) * k, (my - py) * k

    def in_dead_zone_after(self, action: Any) -> bool:
        """Whether the agent stays clear of the dead zone's edges through one chunk of `action`, so
        the view does not scroll with it and its view motion is exactly `expected_shift`."""
        dx, dy = self.expected_shift(action)
        x, y = self._agent - self._cam + (dx, dy)
        m = self.margin
        return m <= x <= self.width - m and m <= y <= self.height - m

    # --- world building -----------------------------------------------------------------------------

    def _paint_ground(self, rng: np.random.Generator) -> np.ndarray:
        base, alt, gain = _BIOME[self.scene.biome]
        y = np.arange(self.world_h)[:, None] / self.world_h
        x = np.arange(self.world_w)[None, :] / self.world_w
        # Integer wave numbers: the field wraps seamlessly around the torus.
        noise = np.zeros((self.world_h, self.world_w))
        for _ in range(6):
            ky, kx = rng.integers(1, 7, size=2)
            phase = rng.uniform(0, 2 * np.pi)
            noise += np.sin(2 * np.pi * (ky * y + kx * x) + phase) / np.sqrt(ky * kx)
        mix = np.clip(0.5 + gain * noise / 3, 0, 1)[..., None]  # (WH, WW, 1)
        ground = (1 - mix) * np.array(base) + mix * np.array(alt)
        ground += rng.normal(0, 0.025, (self.world_h, self.world_w, 1))  # grain
        views = (self.world_h * self.world_w) / (self.height * self.width)
        for name in self.scene.objects:
            if name not in _STATIC:
                continue
            colour, (r_lo, r_hi) = _STATIC[name]
            for _ in range(round(_PER_VIEW * views)):
                cy, cx = rng.integers(self.world_h), rng.integers(self.world_w)
                r = max(1, round(rng.uniform(r_lo, r_hi) * self.scale))
                dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
                keep = (dy**2 + dx**2 <= r * r) if name != "houses" else np.ones_like(dy, dtype=bool)
                rows, cols = (cy + dy[keep]) % self.world_h, (cx + dx[keep]) % self.world_w
                ground[rows, cols] = colour
                if name == "houses":  # walls below a roof
                    wall = keep & (dy > 0)
                    ground[(cy + dy[wall]) % self.world_h, (cx + dx[wall]) % self.world_w] = (0.76, 0.66, 0.5)
        return np.clip(ground, 0, 1).astype(np.float32)

    def _spawn_animals(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        kinds = [name for name in self.scene.objects if name in MOVING_OBJECTS]
        views = (self.world_h * self.world_w) / (self.height * self.width)
        n_each = round(_PER_VIEW * views)
        n = n_each * len(kinds)
        return {
            "pos": rng.uniform(0, 1, (n, 2)) * (self.world_w, self.world_h),  # (N, 2) x, y
            "heading": rng.uniform(0, 2 * np.pi, n),
            "omega": rng.uniform(0.01, 0.04, n),  # how fast each one weaves, radians per frame
            "phase": rng.uniform(0, 2 * np.pi, n),
            "speed": np.repeat([_MOVING[k][1] * self.scale for k in kinds], n_each),
            "colour": np.repeat(np.array([_MOVING[k][0] for k in kinds]).reshape(-1, 3), n_each, axis=0),
        }

    def _spawn_particles(self, rng: np.random.Generator) -> np.ndarray:
        if self.scene.weather not in _WEATHER:
            return np.zeros((0, 2))
        density = _WEATHER[self.scene.weather][0]
        n = round(density * self.height * self.width / 1000)
        return rng.uniform(0, 1, (n, 2)) * (self.width, self.height)  # (P, 2) x, y in the view

    # --- dynamics -----------------------------------------------------------------------------------

    def _follow(self) -> None:
        """Scroll the view so the agent's centre stays `margin` pixels inside it."""
        lo = np.array([self.margin, self.margin], dtype=np.float64)
        hi = np.array([self.width - self.margin, self.height - self.margin], dtype=np.float64)
        screen = self._agent - self._cam
        self._cam += np.minimum(screen - lo, 0) + np.maximum(screen - hi, 0)

    def _move_animals(self) -> None:
        a = self._animals
        theta = a["heading"] + 0.8 * np.sin(a["omega"] * self.t + a["phase"])
        a["pos"] += a["speed"][:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
        a["pos"] %= (self.world_w, self.world_h)

    def _move_particles(self) -> None:
        if len(self._particles):
            vx, vy = _WEATHER[self.scene.weather][2]
            self._particles += (vx * self.scale, vy * self.scale)
            self._particles %= (self.width, self.height)

    # --- rendering ----------------------------------------------------------------------------------

    def _agent_pixel(self) -> tuple[int, int]:
        x, y = np.round(self._agent - self._cam)
        return int(x), int(y)

    def _light(self) -> np.ndarray:
        """Per-channel multiplier of the daylight at frame t: bright at noon, warm at dawn and dusk,
        dim and blue at night."""
        elapsed = (self.t + self.day_offset) / self.day_frames if self.day_frames else 0.0
        phase = _DAY_PHASE[self.scene.time] + elapsed
        sun = np.sin(2 * np.pi * (phase - 0.25))  # 1 at noon, 0 at dawn and dusk, -1 at midnight
        level = 0.3 + 0.7 * (0.5 + 0.5 * sun)
        warm = 0.3 * np.exp(-((sun / 0.35) ** 2))
        night = max(0.0, -sun)
        tint = np.array(
            [1 + warm * 0.3 - 0.2 * night, 1 - warm * 0.1 - 0.1 * night, 1 - warm * 0.4 + 0.1 * night]
        )
        return (level * tint).astype(np.float32)

    def _render(self) -> np.ndarray:
        H, W = self.height, self.width
        cx, cy = (int(v) for v in np.round(self._cam))
        rows = (cy + np.arange(H)) % self.world_h
        cols = (cx + np.arange(W)) % self.world_w
        img = self._ground[rows[:, None], cols[None, :]]  # (H, W, 3) float32, a fresh copy

        # Animals: a small rectangle each, where it lands in the view.
        a = self._animals
        if len(a["pos"]):
            h, w = max(2, round(3 * self.scale)), max(2, round(4 * self.scale))
            dy, dx = (g.ravel() for g in np.mgrid[0:h, 0:w])
            sx = np.floor((a["pos"][:, 0] - cx) % self.world_w).astype(np.int64)  # (N,)
            sy = np.floor((a["pos"][:, 1] - cy) % self.world_h).astype(np.int64)
            px, py = sx[:, None] + dx[None, :], sy[:, None] + dy[None, :]  # (N, h*w)
            seen = (px < W) & (py < H)
            colour = np.broadcast_to(a["colour"][:, None, :], (*px.shape, 3))
            img[py[seen], px[seen]] = colour[seen]

        light = self._light()
        img *= light
        if self.scene.weather == "fog":
            img = 0.6 * img + 0.4 * np.array([0.70, 0.72, 0.75], dtype=np.float32) * light.mean()
        if self.scene.weather == "heavy rain":
            img *= 0.85
        if len(self._particles):
            _, colour, _, length = _WEATHER[self.scene.weather]
            px = np.floor(self._particles[:, 0]).astype(np.int64)
            py = np.floor(self._particles[:, 1]).astype(np.int64)
            for j in range(max(1, round(length * self.scale))):  # streaks fall along y
                img[(py + j) % H, px] = colour

        img = _guard(np.clip(img * 255, 0, 255))
        # The agent last, at full colour whatever the light: always visible, never occluded.
        ax, ay = self._agent_pixel()
        r = self.radius
        dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
        disc = dy**2 + dx**2 <= r * r
        ys, xs = ay + dy[disc], ax + dx[disc]
        inside = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
        img[ys[inside], xs[inside]] = AGENT_RGB
        return img.round().astype(np.uint8)


def _guard(img: np.ndarray) -> np.ndarray:
    """Raise green where a pixel leans magenta, so min(R, B) - G <= OTHER_MAGENTA_MAX off the agent."""
    floor = np.minimum(img[..., 0], img[..., 2]) - OTHER_MAGENTA_MAX
    img[..., 1] = np.maximum(img[..., 1], floor)
    return img


PAN_PROBABILITY = 0.25  # the benchmark's share of chunks with a camera pan (`RandomPolicy`)


class RandomPolicy:
    """The benchmark's seeded action source: each chunk a uniformly random move (and, one chunk in
    four, a random camera pan) among those that keep the agent clear of the dead zone's edges, so the
    commanded motion is exactly the agent's motion across the view (`ProceduralWorld.expected_shift`).

    With `free` > 0 (training data), that share of chunks takes any move, dead zone or not, so the
    data also shows the view scrolling with the agent, as it does when a player drives it.
    """

    def __init__(self, seed: int, pan_probability: float = PAN_PROBABILITY, free: float = 0.0):
        self.rng = np.random.default_rng([seed, 0x5EED])
        self.pan_probability = pan_probability
        self.free = free

    def __call__(self, world: ProceduralWorld) -> Action:
        names = list(MOVES)
        pan = (
            names[int(self.rng.integers(1, len(names)))]
            if self.rng.random() < self.pan_probability
            else "stay"
        )
        if self.free and self.rng.random() < self.free:
            return Action(names[int(self.rng.integers(len(names)))], pan)
        for candidate_pan in (pan, "stay"):
            ok = [m for m in names if world.in_dead_zone_after(Action(m, candidate_pan))]
            if ok:
                return Action(ok[int(self.rng.integers(len(ok)))], candidate_pan)
        return Action()
