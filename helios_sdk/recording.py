"""Recording a whole episode and replaying it deterministically.

    env = RecordEpisode(helios_sdk.make("helios/World-v0", backend="local", width=64, height=64), "run/ep")
    env.reset(seed=3, options={"prompt": "a harbour"}); env.step("rain"); env.close()
    # -> run/ep.mp4 (every frame received) and run/ep.json (sidecar)
    result = replay("run/ep.json")            # re-runs the actions with the same seed
    assert result.matches

The sidecar holds the format version, the env's settings (size, modes, prompt), the backend's
identity (server and model info), the seed and options of the reset, each step's action, and a
sha256 of each chunk's raw frames. The mp4 is for people (H.264 is lossy); replay compares the
hashes, so "identical" means bit for bit. An image or video reset option is stored by its sha256
only: pass the same array to `replay(..., options=...)`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from . import actions as _actions
from .video import Mp4Writer

FORMAT = "helios-episode/1"


def frames_digest(frames: np.ndarray) -> str:
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    return hashlib.sha256(repr(frames.shape).encode() + frames.tobytes()).hexdigest()


def _base(env: gym.Env) -> Any:
    return env.unwrapped


class RecordEpisode(gym.Wrapper):
    """Writes `<path>.mp4` and `<path>.json` for the current episode (one pair per env; a new reset
    starts a new episode in the same files). Wrap a HeliosEnv (or its gymnasium.make wrappers)."""

    def __init__(self, env: gym.Env, path: str | Path, *, write_video: bool = True):
        super().__init__(env)
        self.path = Path(path)
        self.write_video = write_video
        self.record: dict[str, Any] | None = None
        self._writer: Mp4Writer | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        self._finish()
        obs, info = self.env.reset(seed=seed, options=options)
        base = _base(self.env)
        opts = dict(options or {})
        stored = {k: v for k, v in opts.items() if k == "prompt"}
        for key in ("image", "video"):
            if opts.get(key) is not None:
                stored[key + "_sha256"] = frames_digest(np.asarray(opts[key]))
        self.record = {
            "format": FORMAT,
            "env": {
                "width": base.backend.width,
                "height": base.backend.height,
                "prompt": base.prompt,
                "action_mode": base.action_mode,
                "obs_mode": base.obs_mode,
                "max_chunks": base.max_chunks,
            },
            "world": base.backend.describe(),
            "seed": base.world_seed,
            "options": stored,
            "steps": [],
            "chunks": [frames_digest(base.frames)],
            "frames": len(base.frames),
        }
        if self.write_video:
            self._writer = Mp4Writer(self.path.with_suffix(".mp4"), fps=int(base.metadata["render_fps"]))
            self._writer.write(base.frames)
        self._save()
        return obs, info

    def step(self, action: Any) -> Any:
        out = self.env.step(action)
        base = _base(self.env)
        if self.record is not None:
            self.record["steps"].append(_actions.to_json(base.to_action(action)))
            self.record["chunks"].append(frames_digest(base.frames))
            self.record["frames"] += len(base.frames)
            if self._writer is not None:
                self._writer.write(base.frames)
            self._save()
        return out

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.with_suffix(".json").write_text(json.dumps(self.record, indent=1))

    def _finish(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> None:
        self._finish()
        super().close()


@dataclass
class ReplayResult:
    chunks: int
    mismatched: list[int] = field(default_factory=list)  # chunk indices whose frames differ

    @property
    def matches(self) -> bool:
        return not self.mismatched


def load_record(path: str | Path) -> dict[str, Any]:
    path = Path(path).with_suffix(".json")
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a {FORMAT} record (format {record.get('format')!r})")
    return record


def replay(
    path: str | Path, env: gym.Env | None = None, *, options: dict[str, Any] | None = None, **make_kwargs: Any
) -> ReplayResult:
    """Re-run a recorded episode with the same seed and actions and compare every chunk's frames.

    `env`: the env to replay on (else one is made: `make_kwargs` such as address= or backend="local"
    plus the recorded size and modes). `options`: the reset's image or video, if it had one."""
    record = load_record(path)
    own = env is None
    if env is None:
        from . import make

        settings = {**record["env"], **make_kwargs}
        if "address" not in settings and "backend" not in settings:
            world = record["world"]
            if world["backend"] == "remote":
                settings["address"] = world["address"]
            else:
                settings.update(backend="local", model=world["model"])
        env = make(**settings)
    try:
        opts = {k: v for k, v in record["options"].items() if not k.endswith("_sha256")}
        opts.update(options or {})
        base = _base(env)
        env.reset(seed=record["seed"], options=opts)
        result = ReplayResult(chunks=len(record["chunks"]))
        if frames_digest(base.frames) != record["chunks"][0]:
            result.mismatched.append(0)
        for k, action in enumerate(record["steps"], start=1):
            env.step(_actions.from_json(action))
            if frames_digest(base.frames) != record["chunks"][k]:
                result.mismatched.append(k)
        return result
    finally:
        if own:
            env.close()
