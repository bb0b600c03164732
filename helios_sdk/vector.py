"""HeliosVectorEnv: N helios worlds stepped together (a native Gymnasium VectorEnv).

    envs = helios_sdk.make_vec("helios/World-v0", num_envs=4, address="127.0.0.1:50051", width=64, height=64)
    obs, infos = envs.reset(seed=0)                       # obs: (N, 33, H, W, 3) uint8
    obs, rewards, terminated, truncated, infos = envs.step(("rain", "snow", "fog", "dusk"))

One session per sub-env. Each `step` runs every sub-env's chunk at once: the remote backend sends
the N Step calls concurrently and the server's worker takes them in one `WorldEngine.step_many`
call; the local backend calls `step_many` once. Each sub-env's frames are those it would get alone.
Sub-env i with `reset(seed=s)` gets world seed s + i, so sub-envs differ but a seeded reset is
reproducible. Autoreset mode: NEXT_STEP (the step after a sub-env's episode ends resets it: its obs
is the reset's, reward 0, not done).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, iterate

from .backend import Backend
from .env import (
    DEFAULT_PROMPT,
    OBS_MODES,
    RewardFn,
    action_space,
    check_action_mode,
    check_options,
    make_backend,
    observation_space,
    to_sdk_action,
)
from .messages import Chunk


class HeliosVectorEnv(VectorEnv):
    """`num_envs` sessions of one backend, stepped in one batched call per step."""

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["rgb_array"],
        "render_fps": 16,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 2,
        address: str | None = None,
        *,
        backend: str | Backend = "remote",
        token: str | None = None,
        model: str | None = None,
        device: str | None = None,
        width: int | None = None,
        height: int | None = None,
        prompt: str | None = None,
        action_mode: str = "prompt",
        obs_mode: str = "chunk",
        max_chunks: int = 32,
        reward_fn: RewardFn | None = None,
        encoding: str = "rgb24",
        render_mode: str | None = None,
    ):
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        check_action_mode(action_mode)
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.backend = make_backend(
            backend,
            address=address,
            token=token,
            model=model,
            device=device,
            width=width,
            height=height,
            encoding=encoding,
            selection="last" if obs_mode == "last" else "all",
        )
        b = self.backend
        self.num_envs = num_envs
        self.actions = b.actions
        self.single_action_space = action_space(action_mode, b.actions)
        self.single_observation_space = observation_space(obs_mode, b.frames_per_chunk, b.height, b.width)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.metadata = {**self.metadata, "render_fps": b.fps}
        self.render_mode = render_mode
        self.action_mode, self.obs_mode = action_mode, obs_mode
        # None: DEFAULT_PROMPT, or on a model that knows only prompts of one form its first example.
        self.prompt = prompt or (b.actions.prompts[0] if b.actions.prompts else DEFAULT_PROMPT)
        self.max_chunks, self.reward_fn = max_chunks, reward_fn
        self.handles = [b.open() for _ in range(num_envs)]
        self.world_seeds: list[int] = [0] * num_envs
        self.frames: list[np.ndarray | None] = [None] * num_envs  # each sub-env's latest chunk
        self.stats: list[dict[str, Any]] = [{} for _ in range(num_envs)]
        self._chunks = np.zeros(num_envs, np.int64)
        self._needs_reset = np.zeros(num_envs, bool)
        self._options: list[dict[str, Any]] = [{} for _ in range(num_envs)]
        self._closed = False

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every sub-env (options as HeliosEnv's, for all of them). `seed`: an int (sub-env i
        gets seed + i), one seed per sub-env, or None (drawn from `np_random`)."""
        super().reset(seed=seed if isinstance(seed, int) or seed is None else None)
        opts = check_options(options)
        seeds = (
            seed
            if isinstance(seed, Sequence)
            else [None if seed is None else seed + i for i in range(self.num_envs)]
        )
        if len(seeds) != self.num_envs:
            raise ValueError(f"reset takes one seed per sub-env ({self.num_envs}), got {len(seeds)}")
        chunks = [self._reset_one(i, s, opts) for i, s in enumerate(seeds)]
        return self._batch(chunks), self._infos(chunks)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step all sub-envs together; sub-envs whose episode ended at the previous step are reset
        instead (NEXT_STEP autoreset)."""
        per_env = list(iterate(self.action_space, actions))
        stepping = [i for i in range(self.num_envs) if not self._needs_reset[i]]
        chunks: list[Chunk | None] = [None] * self.num_envs
        results = self.backend.step_many(
            [(self.handles[i], to_sdk_action(per_env[i], self.action_mode, self.actions)) for i in stepping]
        )
        for i, chunk in zip(stepping, results, strict=True):
            chunks[i] = chunk
            self._chunks[i] += 1
        for i in np.flatnonzero(self._needs_reset):
            chunks[i] = self._reset_one(int(i), None, self._options[i])
        done = [c for c in chunks if c is not None]
        obs = self._batch(done)
        rewards = np.zeros(self.num_envs, np.float64)
        truncated = np.zeros(self.num_envs, bool)
        infos = self._infos(done)
        for i in stepping:
            truncated[i] = self._chunks[i] >= self.max_chunks
            if self.reward_fn is not None:
                info_i = {k: v[i] for k, v in infos.items() if not k.startswith("_")}
                rewards[i] = float(self.reward_fn(obs[i], per_env[i], info_i))
        was_reset = self._needs_reset.copy()
        self._needs_reset = truncated.copy()
        self._needs_reset[was_reset] = False
        return obs, rewards, np.zeros(self.num_envs, bool), truncated, infos

    def render(self) -> tuple[np.ndarray, ...] | None:  # type: ignore[override]
        """Each sub-env's latest frame (H, W, 3) uint8."""
        if self.render_mode != "rgb_array" or any(f is None for f in self.frames):
            return None
        return tuple(f[-1].copy() for f in self.frames if f is not None)

    def close_extras(self, **kwargs: Any) -> None:
        if not self._closed:
            self._closed = True
            for handle in self.handles:
                self.backend.close_session(handle)
            self.backend.close()

    # --- helpers ------------------------------------------------------------------------------------

    def _reset_one(self, i: int, seed: int | None, opts: dict[str, Any]) -> Chunk:
        self.world_seeds[i] = seed if seed is not None else int(self.np_random.integers(0, 2**62))
        self._options[i] = opts
        chunk = self.backend.reset(
            self.handles[i],
            opts.get("prompt") or self.prompt,
            image=opts.get("image"),
            video=opts.get("video"),
            seed=self.world_seeds[i],
        )
        self._chunks[i] = 0
        return chunk

    def _batch(self, chunks: list[Chunk]) -> np.ndarray:
        for i, c in enumerate(chunks):
            self.frames[i] = c.frames
            self.stats[i] = {"session_id": c.session_id, "chunk_index": c.chunk_index, "timings": c.timings}
        if self.obs_mode == "last":
            return np.stack([c.frames[-1] for c in chunks])
        return np.stack([c.frames for c in chunks])

    def _infos(self, chunks: list[Chunk]) -> dict[str, Any]:
        per = self.backend.frames_per_chunk
        chunk_index = np.array([c.chunk_index for c in chunks], np.int64)
        frame_index = np.array(
            [c.frame_indices[0] if c.frame_indices else c.chunk_index * per for c in chunks]
        )
        present = np.ones(self.num_envs, bool)
        return {
            "chunk_index": chunk_index,
            "_chunk_index": present,
            "frame_index": frame_index,
            "_frame_index": present,
        }
