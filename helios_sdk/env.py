"""HeliosEnv: a helios world as a Gymnasium environment (ecosystem guide 2(b)).

    env = gymnasium.make("helios_sdk:helios/World-v0", address="127.0.0.1:50051")
    env = helios_sdk.make("helios/World-v0", backend="local", width=64, height=64)  # the toy world
    obs, info = env.reset(seed=7, options={"prompt": "a meadow at noon"})
    obs, reward, terminated, truncated, info = env.step("a forest at dusk")

- action_mode "prompt": the action is a prompt (`spaces.Text` over letters, digits, space and
  punctuation); "control": the model's own structured actions, as its server describes them
  (`ActionSpace`, `control_space`): `Dict(move=Discrete(9), pan=Discrete(9))` for the toy world;
  for a model read through prompt phrases a `Dict` of keys (MultiBinary over its keys: w a s d space
  shift), mouse (dx, dy pixels) and camera (yaw, pitch degrees, zoom) — only the fields it reads.
  Either mode also accepts the SDK's typed actions (Prompt, Blend, Transition, Control, Move), their
  dict forms and None; a key or field the model does not understand raises InvalidArgument.
- obs_mode "chunk": the chunk's frames (33, H, W, 3) uint8; "last": its last frame (H, W, 3).
- reward: `reward_fn(obs, action, info)` when given, else 0.0; `terminated` is always False;
  `truncated` once `max_chunks` steps have run since the reset.
- `info` holds only what the seed and actions determine (chunk_index, frame_index), so
  `check_env`'s determinism checks hold; timings and the session id live in `env.stats`.
- The world seed is `reset(seed=...)`, or drawn from the env's `np_random` when seed is None.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from . import actions as _actions
from .backend import Backend, LocalBackend, RemoteBackend
from .messages import Chunk

DEFAULT_PROMPT = "a quiet valley with a river at dawn"
ACTION_MODES = ("prompt", "control")
OBS_MODES = ("chunk", "last")
MOUSE_RANGE = 64.0  # pixels per step, the control space's bound
CAMERA_RANGE = 30.0  # degrees per step
ZOOM_RANGE = 1.0
# Gymnasium's Text defaults to letters and digits, which no prompt with a space is made of.
PROMPT_CHARSET = string.ascii_letters + string.digits + " .,;:!?'\"-()&/"
MOUSE_AXES = ("mouse_dx", "mouse_dy")
CAMERA_AXES = ("camera_yaw", "camera_pitch", "camera_zoom")
RESET_OPTIONS = {"prompt", "image", "video"}

RewardFn = Callable[[np.ndarray, Any, dict[str, Any]], float]


def make_backend(
    backend: str | Backend,
    *,
    address: str | None,
    token: str | None,
    model: str | None,
    device: str | None,
    width: int | None,
    height: int | None,
    encoding: str,
    selection: str,
) -> Backend:
    if isinstance(backend, Backend):
        return backend
    if backend == "remote":
        return RemoteBackend(
            address, token, width=width, height=height, encoding=encoding, selection=selection
        )
    if backend == "local":
        return LocalBackend(model, device=device, width=width, height=height)
    raise ValueError(f"backend must be 'remote', 'local' or a Backend, got {backend!r}")


def check_action_mode(action_mode: str) -> str:
    if action_mode not in ACTION_MODES:
        raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")
    return action_mode


def action_space(
    action_mode: str,
    actions: _actions.ActionSpace = _actions.PROMPT_TEMPLATE_SPACE,
    max_prompt_length: int = 64,
) -> spaces.Space:
    """The env's action space: a prompt (`Text`), or the model's structured actions (`control_space`)."""
    if check_action_mode(action_mode) == "prompt":
        if actions.prompts:  # the model knows only prompts of one form: sample its examples
            return PromptSpace(actions.prompts, max_length=max(max_prompt_length, *map(len, actions.prompts)))
        return spaces.Text(max_length=max_prompt_length, min_length=1, charset=PROMPT_CHARSET)
    return control_space(actions)


class PromptSpace(spaces.Text):
    """The prompt space of a model that knows only prompts of one form (the toy world's grammar):
    `sample` draws one of the server's examples of that form; `contains` admits any text of the
    charset, as `Text` does (the server judges the form and refuses others with InvalidArgument)."""

    def __init__(self, examples: tuple[str, ...], max_length: int, seed: int | None = None):
        super().__init__(max_length=max_length, min_length=1, charset=PROMPT_CHARSET, seed=seed)
        self.examples = tuple(examples)

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        if mask is not None or probability is not None:
            return super().sample(mask, probability)
        return self.examples[int(self.np_random.integers(len(self.examples)))]


def control_space(actions: _actions.ActionSpace) -> spaces.Dict:
    """A model's structured actions as a Gymnasium space. A model with discrete actions (the toy
    world): `Dict(move=Discrete(len(moves)), pan=Discrete(len(pans)))`, indices into the names.
    Otherwise only what the model reads: `keys` (MultiBinary over its keys), `mouse` (a Box over the
    mouse fields it reads, pixels) and `camera` (yaw, pitch in degrees, zoom in [-1, 1])."""
    if actions.moves:
        named = {"move": actions.moves, "pan": actions.pans}
        return spaces.Dict({k: spaces.Discrete(len(names)) for k, names in named.items() if names})
    parts: dict[str, spaces.Space] = {}
    if actions.keys:
        parts["keys"] = spaces.MultiBinary(len(actions.keys))
    mouse = [a for a in MOUSE_AXES if a in actions.axes]
    if mouse:
        parts["mouse"] = spaces.Box(-MOUSE_RANGE, MOUSE_RANGE, (len(mouse),), np.float32)
    camera = [a for a in CAMERA_AXES if a in actions.axes]
    if camera:
        bound = np.array([ZOOM_RANGE if a == "camera_zoom" else CAMERA_RANGE for a in camera], np.float32)
        parts["camera"] = spaces.Box(-bound, bound, dtype=np.float32)
    if not parts:
        raise ValueError("this model understands no structured action: use action_mode='prompt'")
    return spaces.Dict(parts)


def observation_space(obs_mode: str, frames: int, height: int, width: int) -> spaces.Box:
    if obs_mode == "chunk":
        return spaces.Box(0, 255, (frames, height, width, 3), np.uint8)
    if obs_mode == "last":
        return spaces.Box(0, 255, (height, width, 3), np.uint8)
    raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")


def to_sdk_action(
    action: Any, action_mode: str, actions: _actions.ActionSpace = _actions.PROMPT_TEMPLATE_SPACE
) -> _actions.Action:
    """A space's action (a prompt str, or a sample of `control_space(actions)`) -> an SDK action.
    The control Dict's indices and vectors are read over `actions`' names; names pass as they are."""
    if isinstance(action, Mapping) and action_mode == "control":
        return from_sample(action, actions)
    return _actions.normalize(action)


def from_sample(action: Mapping[str, Any], actions: _actions.ActionSpace) -> _actions.Control | _actions.Move:
    """A `control_space(actions)` sample (or the dict form of a Control / Move) -> Control / Move."""
    out = dict(action)
    if "move" in out or "pan" in out:
        for field, names in (("move", actions.moves), ("pan", actions.pans)):
            value = out.get(field)
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                if not 0 <= value < len(names):
                    raise ValueError(f"{field} {value} is not one of the model's {len(names)}: {names}")
                out[field] = names[int(value)]
        return _actions.Move.from_dict(out)
    for group, axes in (("mouse", MOUSE_AXES), ("camera", CAMERA_AXES)):
        read = [a for a in axes if a in actions.axes]
        value = out.get(group)
        if value is None or isinstance(value, Mapping) or len(read) == len(axes):
            continue
        numbers = np.asarray(value, np.float64).reshape(-1)
        if numbers.shape != (len(read),):
            raise ValueError(f"'{group}' as a vector must hold {', '.join(read)}, got {value!r}")
        out[group] = {a.split("_", 1)[1]: float(v) for a, v in zip(read, numbers, strict=True)}
    return _actions.Control.from_dict(out, key_order=actions.keys)


def check_options(options: dict[str, Any] | None) -> dict[str, Any]:
    options = dict(options or {})
    unknown = set(options) - RESET_OPTIONS
    if unknown:
        raise ValueError(f"unknown reset options {sorted(unknown)}; expected {sorted(RESET_OPTIONS)}")
    if options.get("image") is not None and options.get("video") is not None:
        raise ValueError("reset options take an image or a video, not both")
    return options


class HeliosEnv(gym.Env[np.ndarray, Any]):
    """One helios world session as a Gymnasium env; see the module docstring for the contract."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 16}

    def __init__(
        self,
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
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}"
            )
        if not isinstance(max_chunks, int) or max_chunks < 1:
            raise ValueError(f"max_chunks must be a positive int, got {max_chunks!r}")
        check_action_mode(action_mode)
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
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
        self.actions = b.actions  # what the model understands: the control space is made from it
        self.action_space = action_space(action_mode, b.actions)
        self.observation_space = observation_space(obs_mode, b.frames_per_chunk, b.height, b.width)
        self.metadata = {**self.metadata, "render_fps": b.fps}
        self.render_mode = render_mode
        self.action_mode, self.obs_mode = action_mode, obs_mode
        # None: DEFAULT_PROMPT, or on a model that knows only prompts of one form its first example.
        self.prompt = prompt or (b.actions.prompts[0] if b.actions.prompts else DEFAULT_PROMPT)
        self.max_chunks, self.reward_fn = max_chunks, reward_fn
        self.world_seed: int | None = None
        self.frames: np.ndarray | None = None  # the latest chunk's frames as received (T, H, W, 3)
        self.stats: dict[str, Any] = {}  # volatile: session id, timings of the latest chunk
        self._handle = b.open()
        self._chunks = 0
        self._closed = False

    # --- Gymnasium API ------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode: options may set "prompt" (else the constructor's), "image" ((H, W, 3)
        uint8) or "video" ((T, H, W, 3) uint8, T >= 33).
        Returns (obs, {"chunk_index": 0, "frame_index": 0})."""
        super().reset(seed=seed)
        opts = check_options(options)
        self.world_seed = seed if seed is not None else int(self.np_random.integers(0, 2**62))
        chunk = self.backend.reset(
            self._handle,
            opts.get("prompt") or self.prompt,
            image=opts.get("image"),
            video=opts.get("video"),
            seed=self.world_seed,
        )
        self._chunks = 0
        return self._observe(chunk), self._info(chunk)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply the action at the next chunk boundary. Returns (obs, reward, terminated=False,
        truncated, info) with truncated once max_chunks steps have run since the reset."""
        chunk = self.backend.step(self._handle, self.to_action(action))
        self._chunks += 1
        obs, info = self._observe(chunk), self._info(chunk)
        reward = float(self.reward_fn(obs, action, info)) if self.reward_fn is not None else 0.0
        return obs, reward, False, self._chunks >= self.max_chunks, info

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        """The latest frame, (H, W, 3) uint8 (render_mode "rgb_array"); None before the first reset."""
        if self.render_mode != "rgb_array" or self.frames is None or len(self.frames) == 0:
            return None
        return self.frames[-1].copy()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.backend.close_session(self._handle)
            self.backend.close()

    # --- helpers ------------------------------------------------------------------------------------

    def to_action(self, action: Any) -> _actions.Action:
        """The space's action form (a prompt str, or the control Dict's sample) -> an SDK action."""
        return to_sdk_action(action, self.action_mode, self.actions)

    @property
    def session_id(self) -> str:
        return self.backend.session_id(self._handle)  # type: ignore[attr-defined]

    @property
    def chunk_index(self) -> int:
        return self._chunks

    def _observe(self, chunk: Chunk) -> np.ndarray:
        self.frames = chunk.frames
        self.stats = {
            "session_id": chunk.session_id,
            "chunk_index": chunk.chunk_index,
            "timings": chunk.timings,
        }
        if self.obs_mode == "last":
            return chunk.frames[-1].copy()
        return chunk.frames.copy()

    def _info(self, chunk: Chunk) -> dict[str, Any]:
        first = (
            chunk.frame_indices[0]
            if chunk.frame_indices
            else chunk.chunk_index * self.backend.frames_per_chunk
        )
        return {"chunk_index": int(chunk.chunk_index), "frame_index": int(first)}
