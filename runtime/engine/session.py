"""One session's state: memory, conditioning, randomness, position — and its snapshot form.

Everything a session needs to continue lives here, in tensors of fixed size: the multi-term memory
(`memory.py`), the prompt conditioning (current embedding, and during a transition its start and
the remaining weights), the negative-prompt embedding when the sampler guides, the noise source
(seed, or a generator's state) and the chunk counter. About 10 MB at 384×640 with umT5 embeddings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ..model.text_encoder import interpolate
from ..sampling.denoise import SamplerSettings
from ..sampling.schedule import SchedulerConfig
from . import snapshot
from .errors import InvalidInput
from .memory import MultiTermMemory
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
        )

    # --- snapshot -----------------------------------------------------------------------------------

    def to_bytes(self, model_fingerprint: dict[str, Any]) -> bytes:
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
        return snapshot.encode(tensors, meta)

    @classmethod
    def from_bytes(
        cls, data: bytes, new_id: str, model_fingerprint: dict[str, Any], device: torch.device
    ) -> Session:
        tensors, meta = snapshot.decode(data, device)
        if meta.get("model") != model_fingerprint:
            raise snapshot.SnapshotError(
                f"snapshot was taken with model {meta.get('model')}, this engine runs {model_fingerprint}"
            )
        try:
            if meta["noise"] == "stream":
                gen = torch.Generator(device=meta["rng_device"])
                gen.set_state(tensors["rng_state"].cpu())
                noise: CounterNoise | StreamNoise = StreamNoise(gen)
            else:
                noise = CounterNoise(meta["seed"])
            weights = tuple(float(w) for w in meta["prompt_weights"])
            memory = MultiTermMemory(tensors["history"], tensors["anchor"], bool(meta["has_anchor"]))
            session = cls(
                id=new_id,
                height=int(meta["height"]),
                width=int(meta["width"]),
                settings=settings_from_dict(meta["settings"]),
                seed=int(meta["seed"]),
                noise=noise,
                memory=memory,
                prompt=PromptState(tensors["prompt_current"], tensors.get("prompt_source"), weights),
                negative=tensors.get("negative"),
                scene=str(meta["scene"]),
                chunk=int(meta["chunk"]),
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise snapshot.SnapshotError(f"snapshot content is incomplete or inconsistent: {exc!r}") from exc
        if bool(weights) != (session.prompt.source is not None):
            raise snapshot.SnapshotError(
                "snapshot content is inconsistent: transition weights without a source"
            )
        return session


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


def settings_from_dict(data: dict[str, Any]) -> SamplerSettings:
    kwargs = dict(data)
    kwargs["scheduler"] = SchedulerConfig.from_dict(kwargs["scheduler"])
    if "block_noise_dtype" in kwargs and isinstance(kwargs["block_noise_dtype"], str):
        kwargs["block_noise_dtype"] = getattr(torch, kwargs["block_noise_dtype"])
    try:
        return SamplerSettings(**kwargs)
    except TypeError as exc:
        raise InvalidInput(f"unknown sampler settings: {exc}") from exc
