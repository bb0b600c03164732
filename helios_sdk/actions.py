"""Actions a world takes at a chunk boundary, as plain dataclasses (no torch): the client, the env and
the local backend all accept them, plus a prompt `str` and a structured control `dict`.

| action | effect at the next chunk |
| --- | --- |
| `None` | continue with the current conditioning |
| `"text"` / `Prompt("text")` | switch to the prompt at once |
| `Blend(("a", "b"), (1.0, 3.0))` | weighted mean of the prompts' embeddings |
| `Transition("text", chunks=3)` | interpolate to the new prompt over `chunks` chunks |
| `Control(keys=("w",), mouse_dx=12)` or `{"keys", "mouse", "camera"}` dict | keyboard / mouse / camera |
| `Move("ne", pan="stay")` or `{"move", "pan"}` dict | one of the model's own moves and pans (the toy world) |

Which structured actions (Control, Move) a world takes is its model's `ActionSpace`, which the
server reports (`ServerInfo.actions`) and `ActionSpace.check` applies: a key the model does not know,
or a non-zero field it does not read, is refused rather than ignored.

`check` holds the rules every action obeys, applied where an action enters (the server's front, the
engine); `to_proto` builds the helios.v1 `Action`; `to_engine` the value `WorldEngine.step` takes;
`to_json` / `from_json` are the recording's form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from ._proto.helios.v1 import world_pb2 as pb

KEYS = ("w", "a", "s", "d", "space", "shift")  # the prompt-template adapter's keys (models without actions)
AXES = ("mouse_dx", "mouse_dy", "camera_yaw", "camera_pitch", "camera_zoom")  # Control's number fields
MAX_TRANSITION_CHUNKS = 64
MAX_PROMPT_CHARS = 4000  # a prompt's characters at most on a server (its front, and restored snapshots)


@dataclass(frozen=True)
class Prompt:
    text: str


@dataclass(frozen=True)
class Blend:
    # Checked where it is applied (the engine; the server for remote worlds): counts must match,
    # weights finite, >= 0, with a positive sum. The weights are normalised there.
    prompts: tuple[str, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True)
class Transition:
    text: str
    chunks: int = 3  # 1..64; Helios' interactive mode uses 3


@dataclass(frozen=True)
class Control:
    """Keyboard, mouse and camera input: keys pressed (w a s d space shift), pointer motion in pixels
    since the last step (x right, y down), camera motion in degrees (yaw right +, pitch up +), zoom in +."""

    keys: tuple[str, ...] = field(default_factory=tuple)
    mouse_dx: float = 0.0
    mouse_dy: float = 0.0
    camera_yaw: float = 0.0
    camera_pitch: float = 0.0
    camera_zoom: float = 0.0

    @classmethod
    def from_dict(cls, action: Mapping[str, Any], key_order: Sequence[str] = KEYS) -> Control:
        """From the structured dict form: {"keys": [...] or a 0/1 vector over `key_order`,
        "mouse": {"dx", "dy"} or [dx, dy], "camera": {"yaw", "pitch", "zoom"} or [yaw, pitch, zoom]}."""
        unknown = set(action) - {"keys", "mouse", "camera"}
        if unknown:
            raise ValueError(
                f"unknown structured action fields {_names(unknown)}; expected keys, mouse, camera "
                "(or move, pan)"
            )
        keys = action.get("keys", ())
        if isinstance(keys, np.ndarray) and keys.dtype != object:
            if keys.shape != (len(key_order),):
                raise ValueError(
                    f"'keys' as a vector must have shape ({len(key_order)},) over {tuple(key_order)}, "
                    f"got {keys.shape}"
                )
            keys = tuple(k for k, on in zip(key_order, keys.tolist(), strict=True) if on)
        elif isinstance(keys, str) or not isinstance(keys, Sequence):
            raise ValueError(f"'keys' must be a list of key names, got {type(keys).__name__}")
        mouse = _fields(action.get("mouse", {}), ("dx", "dy"), "mouse")
        camera = _fields(action.get("camera", {}), ("yaw", "pitch", "zoom"), "camera")
        return cls(tuple(str(k) for k in keys), *mouse, *camera)

    def to_dict(self) -> dict[str, Any]:
        """The engine's structured action mapping."""
        return {
            "keys": list(self.keys),
            "mouse": {"dx": self.mouse_dx, "dy": self.mouse_dy},
            "camera": {"yaw": self.camera_yaw, "pitch": self.camera_pitch, "zoom": self.camera_zoom},
        }


@dataclass(frozen=True)
class Move:
    """One of the model's own discrete actions, by name (`ActionSpace.moves` / `pans`; the toy
    world's are stay n ne e se s sw w nw, n up the screen): the agent's move and the camera's pan
    for the next chunk. "" (the default) is the list's first name, the model's "no move"."""

    move: str = ""
    pan: str = ""

    @classmethod
    def from_dict(cls, action: Mapping[str, Any]) -> Move:
        """From {"move": "ne", "pan": "stay"} (either may be left out)."""
        unknown = set(action) - {"move", "pan"}
        if unknown:
            raise ValueError(f"a move/pan action takes only 'move' and 'pan', got {_names(unknown)}")
        move, pan = action.get("move", ""), action.get("pan", "")
        for what, name in (("move", move), ("pan", pan)):
            if not isinstance(name, str):
                raise ValueError(f"'{what}' must be a name (str), got {type(name).__name__}")
        return cls(move, pan)

    def to_dict(self) -> dict[str, str]:
        """The engine's move/pan mapping."""
        return {"move": self.move, "pan": self.pan}


Action = Union[None, str, Prompt, Blend, Transition, Control, Move, Mapping[str, Any]]  # noqa: UP007 (runtime alias)


def key_name(key: str) -> str:
    """A key as action spaces name it: lower case, the browser's "ArrowUp" read as "up"."""
    return key.lower().removeprefix("arrow")


@dataclass(frozen=True)
class ActionSpace:
    """The structured actions a model understands, as its engine's action adapter describes itself
    (helios.v1 `ModelInfo.actions`; `ServerInfo.actions`; a local engine's `info["actions"]`).

    - `keys`: the key names a `Control` may press (see `key_name`);
    - `axes`: the `Control` number fields the model reads (of `AXES`); the others must be 0;
    - `moves`, `pans`: `Move` names in the order of the model's action ids, the first one "no
      move"; empty for a model without discrete actions (a `Move` is then refused);
    - `prompts`: when not empty, the model knows only prompts of one form (the toy world: its
      grammar) and refuses others; these are examples of it, to sample from. Empty: any text.

    Prompts, blends and transitions are understood by every model. `check` refuses a `Control` or
    `Move` outside the space, naming what arrived and what the model takes.
    """

    keys: tuple[str, ...] = ()
    axes: tuple[str, ...] = ()
    moves: tuple[str, ...] = ()
    pans: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()

    def check(self, action: Control | Move) -> None:
        """ValueError when the model would not understand all of `action`."""
        if isinstance(action, Move):
            if not self.moves:
                raise ValueError(
                    f"this model has no move/pan actions; it takes {self._controls()} (a Control), "
                    "prompts, blends and transitions"
                )
            for what, name, names in (("move", action.move, self.moves), ("pan", action.pan, self.pans)):
                if name and name not in names:
                    raise ValueError(
                        f"unknown {what} {_shown(name)}; this model's {what}s: {', '.join(names) or 'none'}"
                    )
            return
        for key in action.keys:
            if key_name(key) not in self.keys:
                raise ValueError(
                    f"unknown key {_shown(key)} for this model; its keys: {', '.join(self.keys) or 'none'}"
                )
        ignored = [name for name in AXES if name not in self.axes and getattr(action, name) != 0]
        if ignored:
            raise ValueError(
                f"this model does not read {', '.join(ignored)} (got "
                f"{', '.join(f'{n}={getattr(action, n)}' for n in ignored)}); it takes {self._controls()}"
            )

    def _controls(self) -> str:
        keys = f"keys {' '.join(self.keys)}" if self.keys else "no keys"
        return f"{keys} and {', '.join(self.axes) if self.axes else 'no mouse or camera field'}"

    def to_dict(self) -> dict[str, list[str]]:
        """A plain form (msgpack / JSON): the engine worker's ready message carries it."""
        return {name: list(getattr(self, name)) for name in _SPACE_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActionSpace:
        return cls(*(tuple(str(v) for v in data.get(name, ())) for name in _SPACE_FIELDS))

    def to_proto(self) -> pb.ActionSpace:
        return pb.ActionSpace(
            keys=self.keys, axes=self.axes, moves=self.moves, pans=self.pans, prompts=self.prompts
        )

    @classmethod
    def from_proto(cls, m: pb.ActionSpace) -> ActionSpace:
        return cls(tuple(m.keys), tuple(m.axes), tuple(m.moves), tuple(m.pans), tuple(m.prompts))


_SPACE_FIELDS = ("keys", "axes", "moves", "pans", "prompts")
# What a server before helios API 1.1 (which describes no action space) is assumed to take: the
# prompt-template adapter's keys and every Control field.
PROMPT_TEMPLATE_SPACE = ActionSpace(KEYS, AXES)


def _shown(value: str) -> str:
    """A name from a caller, as an error message echoes it (at most 40 characters)."""
    return repr(value if len(value) <= 40 else value[:40] + "...")


def _names(fields: Any) -> list[str]:
    """Field names from a caller, as an error message lists them."""
    return sorted(str(f)[:40] for f in fields)


def _fields(value: Any, names: tuple[str, ...], what: str) -> tuple[float, ...]:
    if isinstance(value, Mapping):
        unknown = set(value) - set(names)
        if unknown:
            raise ValueError(f"unknown {what} fields {sorted(unknown)}; expected {', '.join(names)}")
        out = tuple(float(value.get(n, 0.0)) for n in names)
    else:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        if arr.shape != (len(names),):
            raise ValueError(
                f"'{what}' must be a mapping or {len(names)} numbers ({', '.join(names)}), got {value!r}"
            )
        out = tuple(float(v) for v in arr)
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"'{what}' must be finite, got {out}")
    return out


def normalize(action: Action) -> Prompt | Blend | Transition | Control | Move | None:
    """Any accepted action form -> None or one of the dataclasses (ValueError naming what arrived)."""
    if action is None or isinstance(action, (Prompt, Blend, Transition, Control, Move)):
        return action
    if isinstance(action, str):
        return Prompt(action)
    if isinstance(action, Mapping):
        if "move" in action or "pan" in action:
            return Move.from_dict(action)
        return Control.from_dict(action)
    raise ValueError(
        "an action is None, a prompt str, Prompt, Blend, Transition, Control, Move or a structured dict "
        f"(keys, mouse, camera; or move, pan); got {type(action).__name__}"
    )


def _check_text(text: Any, what: str) -> None:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a str, got {type(text).__name__}")
    if "\x00" in text:
        raise ValueError(f"{what} contains a NUL character")


def _check_number(value: Any, what: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")


def check(action: Prompt | Blend | Transition | Control | Move) -> None:
    """The rules every action obeys, written once; ValueError naming the field and what arrived.
    Applied where an action enters: the server's front (gRPC) and the engine (in-process callers)."""
    if isinstance(action, Prompt):
        _check_text(action.text, "Prompt.text")
    elif isinstance(action, Transition):
        _check_text(action.text, "Transition.text")
        if not isinstance(action.chunks, int) or isinstance(action.chunks, bool):
            raise ValueError(f"Transition.chunks must be an int, got {type(action.chunks).__name__}")
        if not 1 <= action.chunks <= MAX_TRANSITION_CHUNKS:
            raise ValueError(
                f"Transition.chunks must be in [1, {MAX_TRANSITION_CHUNKS}], got {action.chunks}"
            )
    elif isinstance(action, Blend):
        if not action.prompts:
            raise ValueError("Blend needs at least one prompt")
        if len(action.prompts) != len(action.weights):
            raise ValueError(f"Blend has {len(action.prompts)} prompts but {len(action.weights)} weights")
        for i, text in enumerate(action.prompts):
            _check_text(text, f"Blend.prompts[{i}]")
        for i, w in enumerate(action.weights):
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
                raise ValueError(f"Blend.weights[{i}] must be a finite number >= 0, got {w!r}")
        if sum(action.weights) <= 0:
            raise ValueError(f"Blend.weights must have a positive sum, got {list(action.weights)}")
    elif isinstance(action, Control):
        for i, key in enumerate(action.keys):
            _check_text(key, f"Control.keys[{i}]")
        for name in AXES:
            _check_number(getattr(action, name), name)
    elif isinstance(action, Move):
        _check_text(action.move, "Move.move")
        _check_text(action.pan, "Move.pan")
    else:
        raise ValueError(f"unknown action {type(action).__name__}")


def to_proto(action: Action) -> pb.Action:
    a = normalize(action)
    if a is None:
        return pb.Action()
    if isinstance(a, Prompt):
        return pb.Action(prompt=pb.PromptAction(text=a.text))
    if isinstance(a, Blend):
        prompts = [pb.WeightedPrompt(text=t, weight=w) for t, w in zip(a.prompts, a.weights, strict=True)]
        return pb.Action(blend=pb.BlendAction(prompts=prompts))
    if isinstance(a, Transition):
        return pb.Action(transition=pb.TransitionAction(text=a.text, chunks=a.chunks))
    if isinstance(a, Move):
        return pb.Action(move=pb.MoveAction(move=a.move, pan=a.pan))
    return pb.Action(
        control=pb.ControlAction(
            keys=list(a.keys),
            mouse_dx=a.mouse_dx,
            mouse_dy=a.mouse_dy,
            camera_yaw=a.camera_yaw,
            camera_pitch=a.camera_pitch,
            camera_zoom=a.camera_zoom,
        )
    )


def to_engine(action: Action) -> Any:
    """The value `helios_runtime`'s WorldEngine.step takes: these same Prompt / Blend / Transition
    classes (the engine uses them), or a Control's or Move's structured dict."""
    a = normalize(action)
    return a.to_dict() if isinstance(a, (Control, Move)) else a


def to_json(action: Action) -> Any:
    """A JSON-able form of an action (the recording's sidecar)."""
    a = normalize(action)
    if a is None:
        return None
    if isinstance(a, Prompt):
        return {"prompt": a.text}
    if isinstance(a, Blend):
        return {"blend": {"prompts": list(a.prompts), "weights": list(a.weights)}}
    if isinstance(a, Transition):
        return {"transition": {"text": a.text, "chunks": a.chunks}}
    if isinstance(a, Move):
        return {"move": a.to_dict()}
    return {"control": a.to_dict()}


def from_json(data: Any) -> Prompt | Blend | Transition | Control | Move | None:
    if data is None:
        return None
    if not isinstance(data, Mapping) or len(data) != 1:
        raise ValueError(f"a recorded action is null or a one-key object, got {data!r}")
    ((kind, value),) = data.items()
    if kind == "prompt":
        return Prompt(value)
    if kind == "blend":
        return Blend(tuple(value["prompts"]), tuple(value["weights"]))
    if kind == "transition":
        return Transition(value["text"], value["chunks"])
    if kind == "control":
        return Control.from_dict(value)
    if kind == "move":
        return Move.from_dict(value)
    raise ValueError(f"unknown recorded action kind {kind!r}")
