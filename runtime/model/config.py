"""Configuration of the Helios transformer: a frozen dataclass whose fields are `config.json`'s.

Spec: shared/spec/helios-model.md section 2. The same class describes every size; presets:

- `tiny`: CPU tests (random weights, milliseconds).
- `toy`: the toy world's transformer, trained by `helios train` and shipped as the default model.
- `1.3b`: the public Wan2.1-T2V-1.3B shape plus the three history patch embedders.
- `14b`: the released Helios Base / Mid / Distilled config (14,312,427,584 parameters).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# Fields an official (non-diffusers) Helios config may carry that change nothing at inference time
# for the released weights (spec 2.2). Accepted and ignored; anything else unknown is logged.
_IGNORED_FIELDS = {
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
    "image_dim",
    "is_train_restrict_lora",
    "restrict_lora",
    "restrict_lora_rank",
    "is_use_gan",
    "is_use_gan_hooks",
    "is_use_gan_final",
    "gan_cond_map_dim",
    "gan_hooks",
    "restrict_self_attn",
}

CLASS_NAME = "HeliosTransformer3DModel"


@dataclass(frozen=True)
class HeliosConfig:
    """Shape and behaviour of a Helios transformer. Defaults are the released 14B config."""

    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) patch of the noisy latents
    num_attention_heads: int = 40
    attention_head_dim: int = 128  # inner width d = heads × head_dim = 5120
    in_channels: int = 16  # VAE z_dim
    out_channels: int = 16
    text_dim: int = 4096  # umT5-XXL hidden size
    freq_dim: int = 256  # sinusoidal timestep features
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True  # affine LayerNorm before cross-attention
    qk_norm: str | None = "rms_norm_across_heads"  # stored; q/k are always RMS-normed over all heads
    eps: float = 1e-6
    added_kv_proj_dim: int | None = None  # Wan I2V image branch: never used by Helios (ignored on load)
    rope_dim: tuple[int, int, int] = (44, 42, 42)  # (t, y, x) split of the head
    rope_theta: float = 10000.0
    guidance_cross_attn: bool = True  # text cross-attention only for the noisy tokens
    zero_history_timestep: bool = True  # history tokens modulated with t = 0
    has_multi_term_memory_patch: bool = True  # patch_short / patch_mid / patch_long exist
    is_amplify_history: bool = False  # learnable per-head history-key scaling (off in the release)
    history_scale_mode: str = "per_head"  # "per_head" or "scalar"
    # Discrete actions the model is conditioned on (0: none, as in every released checkpoint). An
    # action's embedding is added to the noisy tokens' time embedding; zero-initialised, so a model
    # that gains it starts out exactly as it was. Written to config.json only when non-zero.
    num_actions: int = 0
    # Fields of the source config.json this class does not use; kept so save_pretrained writes them back.
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("patch_size", "rope_dim"):
            value = getattr(self, name)
            if not (isinstance(value, (tuple, list)) and len(value) == 3 and all(int(v) > 0 for v in value)):
                raise ValueError(f"HeliosConfig.{name} must be three positive ints, got {value!r}")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if any(v % 2 for v in self.rope_dim) or sum(self.rope_dim) != self.attention_head_dim:
            raise ValueError(
                f"HeliosConfig.rope_dim {self.rope_dim} must be even numbers summing to "
                f"attention_head_dim={self.attention_head_dim}"
            )
        if self.freq_dim % 2:
            raise ValueError(f"HeliosConfig.freq_dim must be even, got {self.freq_dim}")
        if self.history_scale_mode not in ("per_head", "scalar"):
            raise ValueError(
                "HeliosConfig.history_scale_mode must be 'per_head' or 'scalar', "
                f"got {self.history_scale_mode!r}"
            )
        if self.out_channels != self.in_channels:
            raise ValueError(
                f"HeliosConfig: out_channels ({self.out_channels}) must equal "
                f"in_channels ({self.in_channels})"
            )
        for name in ("num_attention_heads", "attention_head_dim", "in_channels", "text_dim", "ffn_dim"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"HeliosConfig.{name} must be positive, got {getattr(self, name)!r}")
        if not isinstance(self.num_actions, int) or self.num_actions < 0:
            raise ValueError(f"HeliosConfig.num_actions must be an int >= 0, got {self.num_actions!r}")
        if self.num_layers < 0:
            raise ValueError(f"HeliosConfig.num_layers must be >= 0, got {self.num_layers}")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    # --- (de)serialisation -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeliosConfig:
        """Build from a diffusers `config.json` dict; unknown fields are kept aside, not fatal."""
        if data.get("restrict_self_attn"):
            raise ValueError(
                "restrict_self_attn=true is not supported: the released Helios weights use full "
                "bidirectional self-attention (spec 3.10), and so does this runtime"
            )
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and not k.startswith("_")}
        unknown = sorted(set(extra) - _IGNORED_FIELDS)
        if unknown:
            logger.warning("HeliosConfig: ignoring unknown config fields %s", unknown)
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        if not out["num_actions"]:
            del out["num_actions"]  # the released configs (and diffusers) have no such field
        return {"_class_name": CLASS_NAME, **self.extra, **out}

    def replace(self, **changes: Any) -> HeliosConfig:
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------

PRESETS: dict[str, HeliosConfig] = {
    # Small enough for a CPU forward in milliseconds, with every mechanism of the real model present:
    # multi-term memory convs, 3D RoPE with an uneven (t, y, x) split, guidance cross-attention.
    "tiny": HeliosConfig(
        num_attention_heads=2,
        attention_head_dim=16,
        rope_dim=(4, 6, 6),
        text_dim=32,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
    ),
    # The toy world's transformer (`helios train`, the embedded default model): 96×160 frames, a
    # learned move + camera-pan action (18 ids), the byte-level text encoder's 64-wide features.
    # ~4.8M parameters: a full-history forward takes ~40 ms on two CPU cores.
    "toy": HeliosConfig(
        num_attention_heads=3,
        attention_head_dim=64,
        rope_dim=(16, 24, 24),
        text_dim=64,
        freq_dim=64,
        ffn_dim=768,
        num_layers=6,
        num_actions=18,
    ),
    "1.3b": HeliosConfig(num_attention_heads=12, ffn_dim=8960, num_layers=30),
    "14b": HeliosConfig(),
}


def preset(name: str) -> HeliosConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown Helios preset {name!r}; known presets: {sorted(PRESETS)}") from None
