"""One session's state: memory, conditioning, randomness, position — and its snapshot form.

Everything a session needs to continue lives here, in tensors of fixed size: the multi-term memory
(`memory.py`), the prompt conditioning (current embedding, and during a transition its start and
the remaining weights), the negative-prompt embedding when the sampler guides, the noise source
(seed, or a generator's state) and the chunk counter. About 10 MB at 384×640 with umT5 embeddings.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from helios_sdk.actions import MAX_TRANSITION_CHUNKS

from ..model.text_encoder import interpolate
from ..sampling.denoise import SamplerSettings
from ..sampling.schedule import SchedulerConfig
from . import snapshot
from .memory import HISTORY_FRAMES, MultiTermMemory
from .rng import CounterNoise, StreamNoise


@dataclass
class PromptState:
    """The text conditioning of the coming chunks.

    current (1, K, E) is where the conditioning is heading; during a transition the next chunks use
    lerp(source, current, w) for the remaining weights w, one per chunk.
    """

    current: torch.Tensor
    source: torch.Tensor | None = None
    weights: tuple[float, ...] = ()

    def for_next_chunk(self) -> torch.Tensor:
        if self.weights:
            return interpolate(self.source, self.current, self.weights[0])
        return self.current

    def advanced(self) -> PromptState:
        """The state after one chunk was generated."""
        rest = self.weights[1:]
        return PromptState(self.current, self.source if rest else None, rest)

    def switched(self, target: torch.Tensor, weights: tuple[float, ...] = ()) -> PromptState:
        """Head for `target`, at once (no weights) or through the given weights."""
        if not weights:
            return PromptState(target)
        return PromptState(target, self.for_next_chunk(), tuple(weights))


@dataclass
class Session:
    id: str
    height: int  # pixels
    width: int
    settings: SamplerSettings
    seed: int
    noise: CounterNoise | StreamNoise
    memory: MultiTermMemory
    prompt: PromptState
    negative: torch.Tensor | None  # (1, K, E) when the sampler guides
    scene: str  # the scene prompt structured actions build on
    chunk: int = 0  # chunks generated so far
    closed: bool = False
    stats: dict[str, float] = field(default_factory=dict)  # timings of the last chunk (volatile)
    # The last frame shown (H, W, 3) uint8 on the CPU, kept while the engine blends seams (seam.py).
    last_frame: torch.Tensor | None = None

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8

    def clone(self, new_id: str) -> Session:
        """An independent copy (tensors copied): the fork of this session."""
        return Session(
            id=new_id,
            height=self.height,
            width=self.width,
            settings=self.settings,
            seed=self.seed,
            noise=_clone_noise(self.noise),
            memory=self.memory.clone(),
            prompt=PromptState(
                self.prompt.current.clone(),
                None if self.prompt.source is None else self.prompt.source.clone(),
                self.prompt.weights,
            ),
            negative=None if self.negative is None else self.negative.clone(),
            scene=self.scene,
            chunk=self.chunk,
            last_frame=None if self.last_frame is None else self.last_frame.clone(),
        )

    # --- snapshot -----------------------------------------------------------------------------------

    def to_bytes(self, model_fingerprint: dict[str, Any], key: bytes) -> bytes:
        """The session as snapshot bytes, signed with `key` (`snapshot.py`)."""
        tensors = {
            "history": self.memory.history,
            "anchor": self.memory.anchor,
            "prompt_current": self.prompt.current,
        }
        if self.prompt.source is not None:
            tensors["prompt_source"] = self.prompt.source
        if self.negative is not None:
            tensors["negative"] = self.negative
        if isinstance(self.noise, StreamNoise):
            tensors["rng_state"] = self.noise.generator(0, "cpu").get_state()
        if self.last_frame is not None:
            tensors["last_frame"] = self.last_frame
        meta = {
            "model": model_fingerprint,
            "height": self.height,
            "width": self.width,
            "seed": self.seed,
            "noise": "stream" if isinstance(self.noise, StreamNoise) else "counter",
            "rng_device": str(self.noise.generator(0, "cpu").device)
            if isinstance(self.noise, StreamNoise)
            else "",
            "chunk": self.chunk,
            "scene": self.scene,
            "has_anchor": self.memory.has_anchor,
            "prompt_weights": list(self.prompt.weights),
            "settings": settings_to_dict(self.settings),
        }
        return snapshot.encode(tensors, meta, key)

    @classmethod
    def from_bytes(cls, data: bytes, key: bytes, new_id: str, rules: RestoreRules) -> Session:
        """A session from snapshot bytes signed with `key`, every field checked against `rules` as
        Reset checks its input (signed bytes are checked too: keys get shared). SnapshotError names
        the first field that is wrong; nothing is built until all are right."""
        tensors, meta = snapshot.decode(data, key)
        check_restorable(tensors, meta, rules)
        noise: CounterNoise | StreamNoise = CounterNoise(meta["seed"])
        if meta["noise"] == "stream":
            gen = torch.Generator(device=meta["rng_device"])
            try:
                gen.set_state(tensors["rng_state"])
            except RuntimeError as exc:  # torch checks the state's size
                raise snapshot.SnapshotError(
                    f"snapshot tensor 'rng_state' is not a generator state: {exc}"
                ) from exc
            noise = StreamNoise(gen)
        on = {k: v.to(rules.device) for k, v in tensors.items() if k not in ("rng_state", "last_frame")}
        return cls(
            id=new_id,
            height=meta["height"],
            width=meta["width"],
            settings=rules.settings,
            seed=meta["seed"],
            noise=noise,
            memory=MultiTermMemory(on["history"], on["anchor"], True),
            prompt=PromptState(
                on["prompt_current"], on.get("prompt_source"), tuple(map(float, meta["prompt_weights"]))
            ),
            negative=on.get("negative"),
            scene=meta["scene"],
            chunk=meta["chunk"],
            last_frame=tensors.get("last_frame"),
        )


# ---------------------------------------------------------------------------------------------------
# What a restored session must be
# ---------------------------------------------------------------------------------------------------

META_FIELDS = frozenset(
    {
        "model",
        "height",
        "width",
        "seed",
        "noise",
        "rng_device",
        "chunk",
        "scene",
        "has_anchor",
        "prompt_weights",
        "settings",
    }
)
# A restored session has made at least its first chunk (Reset makes it). The bound keeps frame
# indices and timestamps (chunk · 33 frames at 16 fps, in ns) well inside int64: 2 s chunks for 136 years.
MAX_CHUNK = 2**31 - 1


@dataclass(frozen=True)
class RestoreRules:
    """What a session restored on an engine must be: the engine's model (fingerprint), sampler and
    frame-size limits, the model's tensor shapes. Shapes: C latent channels, K text tokens, E text
    width."""

    fingerprint: dict[str, Any]
    settings: SamplerSettings  # the only sampler settings a restored session may use: the engine's
    size_multiple: int  # pixels: VAE ×8 · patch ×2 · 2 per extra pyramid stage
    max_height: int
    max_width: int
    max_scene_chars: int
    channels: int  # C
    text_shape: tuple[int, int]  # (K, E) of one prompt embedding
    text_dtype: torch.dtype
    negative: bool  # sessions carry a negative-prompt embedding (the sampler guides with a prompt)
    device: torch.device


def _show(value: Any) -> str:
    """A value for an error message, cut short: crafted fields may be huge."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse(field_name: str, expected: str, value: Any) -> snapshot.SnapshotError:
    return snapshot.SnapshotError(f"snapshot field {field_name!r} must be {expected}, got {_show(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_restorable(tensors: dict[str, torch.Tensor], meta: dict[str, Any], rules: RestoreRules) -> None:
    """SnapshotError naming the first field of a decoded snapshot that this engine would not accept
    from Reset, or that does not fit its model: metadata first, then every tensor's name, dtype,
    shape and values."""
    missing, unknown = META_FIELDS - meta.keys(), meta.keys() - META_FIELDS
    if missing or unknown:
        raise snapshot.SnapshotError(
            f"snapshot metadata fields are wrong: missing {sorted(missing)}, unknown {_show(sorted(unknown))}"
        )
    if meta["model"] != rules.fingerprint:
        raise snapshot.SnapshotError(
            f"snapshot was taken with model {_show(meta['model'])}, this engine runs {rules.fingerprint}"
        )
    ours = settings_to_dict(rules.settings)
    given = meta["settings"]
    if not isinstance(given, dict) or _canonical(given) != _canonical(ours):
        differ = (
            sorted(
                k for k in ours.keys() | given.keys() if _canonical(given.get(k)) != _canonical(ours.get(k))
            )
            if isinstance(given, dict)
            else "all of them"
        )
        raise snapshot.SnapshotError(
            f"snapshot field 'settings' differs from this engine's sampler settings ({_show(differ)}); "
            f"a session restores only with the sampler it was made with"
        )
    for name, limit in (("height", rules.max_height), ("width", rules.max_width)):
        value = meta[name]
        if not _is_int(value) or value <= 0 or value % rules.size_multiple or value > limit:
            raise _refuse(name, f"a positive multiple of {rules.size_multiple} pixels up to {limit}", value)
    if not _is_int(meta["seed"]) or not 0 <= meta["seed"] < 2**63:
        raise _refuse("seed", "an int in [0, 2**63)", meta["seed"])
    if meta["noise"] == "counter":
        if meta["rng_device"] != "":
            raise _refuse("rng_device", "empty for counter noise", meta["rng_device"])
    elif meta["noise"] == "stream":
        devices = ("cpu", str(rules.device))
        if meta["rng_device"] not in devices:
            raise _refuse("rng_device", f"one of {devices}", meta["rng_device"])
    else:
        raise _refuse("noise", "'counter' or 'stream'", meta["noise"])
    if not _is_int(meta["chunk"]) or not 1 <= meta["chunk"] <= MAX_CHUNK:
        raise _refuse("chunk", f"an int in [1, {MAX_CHUNK}] (chunks made so far)", meta["chunk"])
    _check_scene(meta["scene"], rules.max_scene_chars)
    weights = meta["prompt_weights"]
    if (
        not isinstance(weights, list)
        or len(weights) > MAX_TRANSITION_CHUNKS
        or not all(_is_weight(w) for w in weights)
    ):
        raise _refuse("prompt_weights", f"at most {MAX_TRANSITION_CHUNKS} numbers in [0, 1]", weights)
    if meta["has_anchor"] is not True:
        raise _refuse(
            "has_anchor", "true (a session past its first chunk has its anchor)", meta["has_anchor"]
        )

    C, (K, E) = rules.channels, rules.text_shape
    h, w = meta["height"] // 8, meta["width"] // 8
    text = ((1, K, E), rules.text_dtype)
    expected: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
        "history": ((1, C, HISTORY_FRAMES, h, w), torch.float32),
        "anchor": ((1, C, 1, h, w), torch.float32),
        "prompt_current": text,
    }
    if weights:  # a transition under way: its start
        expected["prompt_source"] = text
    if rules.negative:
        expected["negative"] = text
    stream = {"rng_state"} if meta["noise"] == "stream" else set()  # a generator's state, bytes
    # The last frame shown, in a snapshot of a session whose engine blends seams (seam.py): optional.
    if "last_frame" in tensors:
        expected["last_frame"] = ((meta["height"], meta["width"], 3), torch.uint8)
    missing = (expected.keys() | stream) - tensors.keys()
    unknown = tensors.keys() - expected.keys() - stream
    if missing or unknown:
        raise snapshot.SnapshotError(
            f"snapshot tensors are wrong: missing {sorted(missing)}, unexpected {_show(sorted(unknown))}"
        )
    for name, (shape, dtype) in expected.items():
        t = tensors[name]
        if t.dtype != dtype or tuple(t.shape) != shape:
            raise snapshot.SnapshotError(
                f"snapshot tensor {name!r} must be {str(dtype).removeprefix('torch.')} {shape} for this "
                f"model and size, got {str(t.dtype).removeprefix('torch.')} {_show(tuple(t.shape))}"
            )
        if not torch.isfinite(t).all():
            raise snapshot.SnapshotError(f"snapshot tensor {name!r} contains NaN or inf")
    if stream and (tensors["rng_state"].dtype != torch.uint8 or tensors["rng_state"].dim() != 1):
        raise snapshot.SnapshotError("snapshot tensor 'rng_state' must be a 1-D uint8 generator state")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _is_weight(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _check_scene(scene: Any, max_chars: int) -> None:
    """The scene prompt obeys a Reset prompt's rules: text, no NUL, valid Unicode, within the limit."""
    if not isinstance(scene, str):
        raise _refuse("scene", "a str", scene)
    if len(scene) > max_chars:
        raise snapshot.SnapshotError(
            f"snapshot field 'scene' is {len(scene)} characters; the limit is {max_chars}"
        )
    if "\x00" in scene:
        raise snapshot.SnapshotError("snapshot field 'scene' contains a NUL character")
    try:
        scene.encode("utf-8")
    except UnicodeEncodeError:
        raise snapshot.SnapshotError(
            "snapshot field 'scene' is not valid Unicode (a lone surrogate)"
        ) from None


def _clone_noise(noise: CounterNoise | StreamNoise) -> CounterNoise | StreamNoise:
    if isinstance(noise, CounterNoise):
        return CounterNoise(noise.seed)
    gen = noise.generator(0, "cpu")
    twin = torch.Generator(device=gen.device)
    twin.set_state(gen.get_state())
    return StreamNoise(twin)


def settings_to_dict(settings: SamplerSettings) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, SchedulerConfig):
            value = value.to_dict()
        elif isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out
