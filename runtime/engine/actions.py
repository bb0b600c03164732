"""What a session is stepped with, and how structured input becomes conditioning.

Conditioning actions (applied at the next chunk boundary; the classes are helios_sdk's, shared by
the client, the env and the engine):
- `Prompt(text)`: switch to a new prompt at once (a plain `str` means the same);
- `Blend(prompts, weights)`: a weighted mean of several prompts' embeddings;
- `Transition(text, chunks)`: move to a new prompt over `chunks` chunks by interpolating the
  embeddings with weights linspace(0, 1, chunks) — the reference's interactive mode (spec 5.11)
  uses 3 chunks: (0, 0.5, 1.0), so the first chunk after the change still shows the old prompt;
- `None`: keep going with the current conditioning.

Structured actions (keyboard, mouse, camera: a mapping, or helios_sdk's `Control`; a model's own
moves: `{"move", "pan"}` or `Move`) go through the engine's `ActionAdapter`, which makes of them
conditioning and/or learned action ids (`Applied`):
- `PromptTemplateAdapter` (models without an action space): each pressed key, mouse motion and
  camera move adds a phrase to the session's scene prompt;
- `MovePanActions` (the toy world's learned action space): one of nine moves and one of nine pans
  (`moves.py`), as ids the transformer embeds.
Each adapter describes what it understands (`space`, a helios_sdk `ActionSpace`): the one source the
server reports in GetServerInfo and checks a client's actions against at its edge, and that
`parse_action` checks in-process callers' actions against. Anything outside it (a key the adapter
does not know, a camera zoom it would not read) is refused, never ignored.
The engine uses the model's learned adapter when it has one (`WorldModel.actions`), else the prompt
template one; `parse_action` is the one entry for every form of action.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from helios_sdk.actions import (
    AXES,
    ActionSpace,
    Blend,
    Control,
    Move,
    Prompt,
    Transition,
    check,
    key_name,
    normalize,
)

from ..moves import DIRECTIONS, MOVE_NAMES
from .errors import InvalidInput

Conditioning = Prompt | Blend | Transition


def validate(cond: Conditioning) -> Conditioning:
    """Check a conditioning action's fields (`helios_sdk.actions.check`); InvalidInput naming what
    is wrong."""
    if not isinstance(cond, (Prompt, Blend, Transition)):
        raise InvalidInput(f"unknown conditioning action {type(cond).__name__}")
    try:
        check(cond)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return cond


@dataclass(frozen=True)
class Applied:
    """What one chunk's action does: a conditioning change (None: keep the current one) and the
    learned action ids (None: the model's "stay", or nothing for a model without actions)."""

    conditioning: Conditioning | None = None
    ids: tuple[int, ...] | None = None


class ActionAdapter(ABC):
    """Turns a structured action (a mapping) into conditioning and/or action ids, given the
    session's scene prompt. `space` is what it understands; `parse_action` refuses anything else
    before `apply` sees it."""

    @property
    @abstractmethod
    def space(self) -> ActionSpace: ...

    @abstractmethod
    def apply(self, action: Mapping[str, Any], scene: str) -> Applied: ...


def _number(value: Any, what: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PromptTemplateAdapter(ActionAdapter):
    """Keyboard / mouse / camera → a phrase list appended to the scene prompt.

    Action mapping (all fields optional):
      {"keys": ["w", "shift"],            # pressed keys, names from `keys`
       "mouse": {"dx": 12.0, "dy": -3.0},  # pointer motion in pixels since the last step
       "camera": {"yaw": 15.0, "pitch": 0.0, "zoom": 0.0}}  # degrees (yaw right +, pitch up +), zoom in +
    Motion below the thresholds adds nothing. No phrase at all gives the scene prompt unchanged.
    The result is a `Transition` over `transition_chunks` chunks (1: immediate).
    """

    keys: Mapping[str, str] = field(
        default_factory=lambda: {
            "w": "moving forward",
            "a": "moving to the left",
            "s": "moving backward",
            "d": "moving to the right",
            "space": "jumping",
            "shift": "running",
        }
    )
    mouse_threshold: float = 4.0  # pixels
    camera_threshold: float = 2.0  # degrees (zoom: any non-zero beyond 0.05)
    template: str = "{scene}, {motion}"
    transition_chunks: int = 1

    @property
    def space(self) -> ActionSpace:
        """Its keys, and every Control field (each adds a phrase); no moves."""
        return ActionSpace(keys=tuple(self.keys), axes=AXES)

    def to_conditioning(self, action: Mapping[str, Any], scene: str) -> Conditioning | None:
        unknown = set(action) - {"keys", "mouse", "camera"}
        if unknown:
            raise InvalidInput(
                f"unknown structured action fields {sorted(unknown)}; expected keys, mouse, camera"
            )
        phrases: list[str] = []
        keys = action.get("keys", [])
        if isinstance(keys, str) or not isinstance(keys, (list, tuple)):
            raise InvalidInput(f"'keys' must be a list of key names, got {type(keys).__name__}")
        for key in keys:
            name = key_name(str(key))
            if name not in self.keys:
                raise InvalidInput(f"unknown key {key!r}; known keys: {sorted(self.keys)}")
            phrases.append(self.keys[name])
        mouse = action.get("mouse", {})
        if not isinstance(mouse, Mapping):
            raise InvalidInput(f"'mouse' must be a mapping with dx, dy, got {type(mouse).__name__}")
        dx, dy = (_number(mouse.get(k, 0.0), f"mouse.{k}") for k in ("dx", "dy"))
        if abs(dx) >= self.mouse_threshold:
            phrases.append("turning right" if dx > 0 else "turning left")
        if abs(dy) >= self.mouse_threshold:
            phrases.append("looking down" if dy > 0 else "looking up")  # screen y grows downwards
        camera = action.get("camera", {})
        if not isinstance(camera, Mapping):
            raise InvalidInput(
                f"'camera' must be a mapping with yaw, pitch, zoom, got {type(camera).__name__}"
            )
        yaw, pitch, zoom = (_number(camera.get(k, 0.0), f"camera.{k}") for k in ("yaw", "pitch", "zoom"))
        if abs(yaw) >= self.camera_threshold:
            phrases.append("the camera pans right" if yaw > 0 else "the camera pans left")
        if abs(pitch) >= self.camera_threshold:
            phrases.append("the camera tilts up" if pitch > 0 else "the camera tilts down")
        if abs(zoom) > 0.05:
            phrases.append("the camera zooms in" if zoom > 0 else "the camera zooms out")
        text = self.template.format(scene=scene, motion=", ".join(phrases)) if phrases else scene
        return Transition(text, self.transition_chunks)

    def apply(self, action: Mapping[str, Any], scene: str) -> Applied:
        cond = self.to_conditioning(action, scene)
        return Applied(conditioning=None if cond is None else validate(cond))


def parse_action(action: Any, adapter: ActionAdapter | None, scene: str) -> Applied:
    """Whatever a caller passed to `step` -> what it does (`Applied()`: no change, "stay").
    A structured action (a mapping, Control or Move) must lie in the adapter's `space`."""
    if action is None:
        return Applied()
    if isinstance(action, str):
        return Applied(conditioning=validate(Prompt(action)))
    if isinstance(action, (Prompt, Blend, Transition)):
        return Applied(conditioning=validate(action))
    if isinstance(action, (Mapping, Control, Move)):
        if adapter is None:
            raise InvalidInput("structured actions need an action adapter; this engine has none")
        try:
            structured = cast("Control | Move", normalize(action))
            check(structured)
            adapter.space.check(structured)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        return adapter.apply(structured.to_dict(), scene)
    raise InvalidInput(
        "an action is None, a prompt str, Prompt, Blend, Transition, Control, Move or a mapping for the "
        f"action adapter; got {type(action).__name__}"
    )


# ---------------------------------------------------------------------------------------------------
# Learned actions: discrete ids the transformer embeds (a model built with num_actions > 0)
# ---------------------------------------------------------------------------------------------------

_KEY_AXES = {  # key -> (dx, dy), y down: "w" / up moves north, i.e. up the screen
    "w": (0, -1),
    "up": (0, -1),
    "s": (0, 1),
    "down": (0, 1),
    "a": (-1, 0),
    "left": (-1, 0),
    "d": (1, 0),
    "right": (1, 0),
}


@dataclass(frozen=True)
class MovePanActions(ActionAdapter):
    """The action space of a model trained on the procedural world (`helios train`): each chunk
    the agent makes one of nine moves and the camera one of nine pans (`moves.py`). Ids: move i in
    `MOVE_NAMES` order is i, pan j is 9 + j; the transformer sums the two embeddings (num_actions = 18).

    A step's action (a mapping) is either the world's own form, {"move": "ne", "pan": "stay"} ("" or
    left out: "stay"), or a game controller's: {"keys": [...], "mouse": {"dx", "dy"}, "camera":
    {"yaw", "pitch"}} — w/a/s/d or the arrow keys move the agent (two keys: a diagonal; opposite keys
    cancel), camera yaw/pitch (degrees) or mouse motion (pixels) beyond a threshold pan the camera;
    camera zoom has no meaning here (refused unless 0). A step without an action (or with only a
    prompt) is "stay"/"stay": the world goes on, the agent waits.
    """

    mouse_threshold: float = 4.0
    camera_threshold: float = 2.0

    num_ids = 2 * len(MOVE_NAMES)
    STAY = (0, len(MOVE_NAMES))

    @property
    def space(self) -> ActionSpace:
        """Nine moves and nine pans by name; the keys and the Control fields that make them."""
        return ActionSpace(
            keys=tuple(_KEY_AXES),
            axes=tuple(a for a in AXES if a != "camera_zoom"),
            moves=MOVE_NAMES,
            pans=MOVE_NAMES,
        )

    def apply(self, action: Mapping[str, Any], scene: str) -> Applied:
        return Applied(ids=self.ids(action))

    def ids(self, action: Mapping[str, Any] | None) -> tuple[int, int]:
        if action is None:
            return self.STAY
        fields = set(action)
        if fields & {"move", "pan"}:
            unknown = fields - {"move", "pan"}
            if unknown:
                raise InvalidInput(f"a move/pan action takes only 'move' and 'pan', got {sorted(unknown)}")
            move, pan = action.get("move") or "stay", action.get("pan") or "stay"
        else:
            unknown = fields - {"keys", "mouse", "camera"}
            if unknown:
                raise InvalidInput(
                    f"unknown action fields {sorted(unknown)}; expected move, pan or keys, mouse, camera"
                )
            move, pan = self._move_from_keys(action.get("keys", [])), self._pan(action)
        for what, name in (("move", move), ("pan", pan)):
            if name not in MOVE_NAMES:
                raise InvalidInput(f"unknown {what} {name!r}; allowed: {', '.join(MOVE_NAMES)}")
        return MOVE_NAMES.index(move), len(MOVE_NAMES) + MOVE_NAMES.index(pan)

    @staticmethod
    def _move_from_keys(keys: Any) -> str:
        if isinstance(keys, str) or not isinstance(keys, (list, tuple)):
            raise InvalidInput(f"'keys' must be a list of key names, got {type(keys).__name__}")
        dx = dy = 0
        for key in {key_name(str(k)) for k in keys}:
            if key not in _KEY_AXES:
                raise InvalidInput(
                    f"unknown key {key!r} for this world; known keys: {sorted(_KEY_AXES)} "
                    "(w/a/s/d or the arrows move the agent)"
                )
            kx, ky = _KEY_AXES[key]
            dx, dy = dx + kx, dy + ky
        return DIRECTIONS[(int(math.copysign(1, dx)) if dx else 0, int(math.copysign(1, dy)) if dy else 0)]

    def _pan(self, action: Mapping[str, Any]) -> str:
        camera, mouse = action.get("camera", {}), action.get("mouse", {})
        if not isinstance(camera, Mapping) or not isinstance(mouse, Mapping):
            raise InvalidInput("'camera' and 'mouse' must be mappings")
        yaw, pitch = (_number(camera.get(k, 0.0), f"camera.{k}") for k in ("yaw", "pitch"))
        mdx, mdy = (_number(mouse.get(k, 0.0), f"mouse.{k}") for k in ("dx", "dy"))
        sx = 1 if yaw >= self.camera_threshold or mdx >= self.mouse_threshold else 0
        sx -= 1 if yaw <= -self.camera_threshold or mdx <= -self.mouse_threshold else 0
        # pitch up (+) pans north (up the screen); mouse dy grows downwards
        sy = -1 if pitch >= self.camera_threshold or mdy <= -self.mouse_threshold else 0
        sy += 1 if pitch <= -self.camera_threshold or mdy >= self.mouse_threshold else 0
        return DIRECTIONS[(sx, sy)]
