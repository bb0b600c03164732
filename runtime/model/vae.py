"""The Wan 2.1 video VAE: pixels (B, 3, T, H, W) <-> latents (B, 16, T_lat, H/8, W/8).

Spec: shared/spec/helios-model.md section 6 (architecture, geometry, causal caches) and 5.12 (how
the reference pipeline decodes each chunk). Checkpoints are diffusers `AutoencoderKLWan` folders; the
state-dict keys here equal diffusers' so they load as they are, while the code is our own.

Letters used in shape comments: B batch, C channels, T frames, H height, W width (pixels for video,
latent cells for latents), N = B·T frames folded into the batch.

Every temporal convolution is causal: an output frame sees only its own and earlier input frames.
Both directions therefore run chunk by chunk with a small per-conv cache holding the last input
frames of the previous chunk (`_TimeCache`). Encode feeds the first pixel frame alone and then groups
of 4; decode feeds one latent frame at a time. A whole `decode` and a `StreamingDecoder` run the very
same per-frame function (`WanVAE._decode_frames`), so streaming is bit-identical to decoding the
whole sequence at once, and the cache has a fixed size however long the stream runs.

Input checks (rank, channels, dtype, device, divisibility, NaN/inf) run once per call, outside the
per-frame loop; the finiteness check is one reduction plus one host sync per call, negligible next to
the decode itself.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, load_weights, read_config, resolve_device, save_weights, write_config

logger = logging.getLogger(__name__)

CLASS_NAME = "AutoencoderKLWan"
# Written into config.json so diffusers itself reads our folders without complaint.
DIFFUSERS_FORMAT_VERSION = "0.42.1"

# Posterior log-variance clamp of the reference (spec 6.4).
_LOGVAR_MIN, _LOGVAR_MAX = -30.0, 20.0

_WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
_WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WanVAEConfig:
    """Shape of a Wan VAE; field names are those of diffusers' `vae/config.json` (spec 6.1).

    Defaults are the released Wan 2.1 VAE (the one Helios ships).
    """

    base_dim: int = 96  # encoder width of the first stage; stage i has base_dim · dim_mult[i]
    decoder_base_dim: int | None = None  # None = base_dim
    z_dim: int = 16  # latent channels (the transformer's in_channels)
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)  # one stage per entry; a ×2 spatial resample between stages
    num_res_blocks: int = 2  # per encoder stage (the decoder has one more per stage)
    attn_scales: tuple[float, ...] = ()  # encoder resolutions (1, 1/2, ...) that get attention; Wan: none
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # (sic) which resamples also halve time
    dropout: float = 0.0  # training only; inference ignores it
    latents_mean: tuple[float, ...] = _WAN21_LATENTS_MEAN  # per-channel statistics used by normalize()
    latents_std: tuple[float, ...] = _WAN21_LATENTS_STD
    is_residual: bool = False  # True is the Wan 2.2 VAE: not supported
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None  # Wan 2.2 pixel patchify: not supported
    scale_factor_temporal: int = 4  # recorded in config.json; must agree with the architecture
    scale_factor_spatial: int = 8

    def __post_init__(self) -> None:
        for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)):
                raise ValueError(f"WanVAEConfig.{name} must be a list, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.decoder_base_dim is None:
            object.__setattr__(self, "decoder_base_dim", self.base_dim)
        if self.is_residual:
            raise ValueError(
                "WanVAEConfig: is_residual=true is the Wan 2.2 VAE, which is not supported; "
                "only the Wan 2.1 VAE (is_residual=false) is"
            )
        if self.patch_size is not None:
            raise ValueError(
                f"WanVAEConfig: patch_size={self.patch_size!r} (Wan 2.2 pixel patchify) is not supported; "
                "expected null"
            )
        sizes = ("base_dim", "decoder_base_dim", "z_dim", "num_res_blocks", "in_channels", "out_channels")
        for name in sizes:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"WanVAEConfig.{name} must be positive, got {getattr(self, name)!r}")
        if not self.dim_mult or any(int(m) <= 0 for m in self.dim_mult):
            raise ValueError(
                f"WanVAEConfig.dim_mult must be non-empty positive ints, got {list(self.dim_mult)}"
            )
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"WanVAEConfig.temperal_downsample needs one entry per resample, i.e. len(dim_mult) - 1 = "
                f"{len(self.dim_mult) - 1}, got {len(self.temperal_downsample)}"
            )
        # Each decoder resample halves the channels of its stage.
        if any((self.decoder_base_dim * m) % 2 for m in self.dim_mult[1:]):
            raise ValueError(
                f"WanVAEConfig: decoder_base_dim · dim_mult[i] must be even for i >= 1, got "
                f"decoder_base_dim={self.decoder_base_dim}, dim_mult={list(self.dim_mult)}"
            )
        for name in ("latents_mean", "latents_std"):
            if len(getattr(self, name)) != self.z_dim:
                raise ValueError(
                    f"WanVAEConfig.{name} must have z_dim={self.z_dim} entries, "
                    f"got {len(getattr(self, name))}"
                )
        if any(s <= 0 for s in self.latents_std):
            raise ValueError(f"WanVAEConfig.latents_std must be positive, got {list(self.latents_std)}")
        spatial = 2 ** (len(self.dim_mult) - 1)
        temporal = 2 ** sum(bool(t) for t in self.temperal_downsample)
        if (self.scale_factor_spatial, self.scale_factor_temporal) != (spatial, temporal):
            raise ValueError(
                f"WanVAEConfig: dim_mult/temperal_downsample give spatial ×{spatial}, temporal ×{temporal}, "
                f"but scale_factor_spatial={self.scale_factor_spatial} and "
                f"scale_factor_temporal={self.scale_factor_temporal}"
            )

    # --- geometry (spec 6.2) ------------------------------------------------------------------------

    def latent_frames(self, pixel_frames: int) -> int:
        """T_lat for T pixel frames (T must be 1 + scale_factor_temporal·k)."""
        return (pixel_frames - 1) // self.scale_factor_temporal + 1

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames decoded from T_lat latents in one stream: 1 + scale_factor_temporal·(T_lat − 1)."""
        return 1 + self.scale_factor_temporal * (latent_frames - 1) if latent_frames > 0 else 0

    # --- (de)serialisation --------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WanVAEConfig:
        """Build from a diffusers `config.json` dict; unknown fields are logged and ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        # diffusers writes null for these when the defaults apply.
        for name in ("scale_factor_temporal", "scale_factor_spatial"):
            if kwargs.get(name, 0) is None:
                del kwargs[name]
        unknown = sorted(k for k in data if k not in known and not k.startswith("_"))
        if unknown:
            logger.warning("WanVAEConfig: ignoring unknown config fields %s", unknown)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The `config.json` content, `_class_name` included."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        return {"_class_name": CLASS_NAME, "_diffusers_version": DIFFUSERS_FORMAT_VERSION, **out}

    def replace(self, **changes: Any) -> WanVAEConfig:
        return dataclasses.replace(self, **changes)


VAE_PRESETS: dict[str, WanVAEConfig] = {
    # The released VAE: 126,892,531 parameters.
    "wan2.1": WanVAEConfig(),
    # CPU tests: the real geometry (4× time, 8× space, causal first frame) and z_dim 16 so it pairs with
    # the tiny transformer, at widths 8-16 so a 9-frame 32×32 clip round-trips in a fraction of a second.
    "tiny": WanVAEConfig(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1),
    # The toy world's VAE (`helios train vae`): the same geometry, a 16-wide encoder and an 8-wide
    # decoder (widths ×1, 2, 4, 8 down the resolutions), so a 33-frame 96×160 chunk decodes in
    # ~0.4 s on two CPU cores. Latent statistics start as N(0, 1) and are measured after training.
    "toy": WanVAEConfig(
        base_dim=16,
        decoder_base_dim=8,
        dim_mult=(1, 2, 4, 8),
        num_res_blocks=1,
        latents_mean=(0.0,) * 16,
        latents_std=(1.0,) * 16,
    ),
}


def vae_preset(name: str) -> WanVAEConfig:
    try:
        return VAE_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown VAE preset {name!r}; known presets: {sorted(VAE_PRESETS)}") from None


# ---------------------------------------------------------------------------------------------------
# Causal time cache
# ---------------------------------------------------------------------------------------------------


class _TimeCache:
    """Per-conv history of the last input frames, carried from one chunk to the next (spec 6.5).

    Each temporal conv owns a fixed slot index. A slot is allocated on its first use (zeros, i.e. the
    causal zero padding of the sequence start) and afterwards only overwritten in place, so the cache
    never grows. `first_chunk` is True until the first chunk (first pixel frame / first latent frame)
    has gone through; the temporal resamplers treat that chunk specially.
    """

    def __init__(self, num_slots: int) -> None:
        self.slots: list[torch.Tensor | None] = [None] * num_slots
        self.first_chunk = True

    def slot(self, index: int, like: torch.Tensor, frames: int) -> torch.Tensor:
        """The history of slot `index`: (B, C, frames, H, W) shaped after `like` (B, C, t, H, W)."""
        buf = self.slots[index]
        if buf is None:
            b, c, _, h, w = like.shape
            # The history takes the layout of the frames it precedes, so the concatenation fed to the
            # conv keeps it (channels-last decoding stays channels-last).
            layout = torch.channels_last_3d if _channels_last(like) else torch.contiguous_format
            buf = torch.zeros((b, c, frames, h, w), dtype=like.dtype, device=like.device)
            buf = buf.contiguous(memory_format=layout)
            self.slots[index] = buf
        return buf

    def reset(self) -> None:
        """Back to the start of a sequence, keeping the allocated buffers."""
        for buf in self.slots:
            if buf is not None:
                buf.zero_()
        self.first_chunk = True

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.slots if b is not None)


def _channels_last(x: torch.Tensor) -> bool:
    return x.shape[1] > 1 and x.stride(1) == 1 and x.is_contiguous(memory_format=torch.channels_last_3d)


def _causal_step(
    conv: nn.Module, x: torch.Tensor, cache: _TimeCache, slot: int, history: int
) -> torch.Tensor:
    """Run `conv` on [history frames, x] and keep the last `history` frames of that input."""
    past = cache.slot(slot, x, history)  # (B, C, history, H, W)
    seq = torch.cat([past, x], dim=2)  # (B, C, history + t, H, W)
    past.copy_(seq[:, :, -history:])
    return conv(seq)


# ---------------------------------------------------------------------------------------------------
# Building blocks (spec 6.3)
# ---------------------------------------------------------------------------------------------------


class CausalConv3d(nn.Conv3d):
    """3D conv, causal in time: the past is the cache (zeros at the start), the future is never seen.

    Spatial padding is the conv's own zero padding; temporal padding comes from `_TimeCache`.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int | tuple[int, int, int], spatial_pad: int = 0
    ) -> None:
        kernel = (kernel, kernel, kernel) if isinstance(kernel, int) else kernel
        super().__init__(in_ch, out_ch, kernel, padding=(0, spatial_pad, spatial_pad))
        self.history = kernel[0] - 1
        self.slot = -1  # assigned by _assign_slots once the whole network exists

    def forward(self, x: torch.Tensor, cache: _TimeCache | None = None) -> torch.Tensor:
        # x: (B, C, t, H, W) -> (B, C_out, t, H, W)
        if self.history == 0:
            return self._conv(x)
        assert cache is not None, "a temporal causal conv needs the time cache"
        return _causal_step(self._conv, x, cache, self.slot, self.history)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32:
            return _conv3d_by_taps(x, self.weight, self.bias, self.padding[1:])
        return super().forward(x)


def _conv3d_by_taps(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, ...]
) -> torch.Tensor:
    """A stride-1 conv3d without temporal padding as one 2D conv per temporal tap, summed.

    The same numbers as `F.conv3d` (to float rounding), 5-8× faster on a CPU: PyTorch's CPU conv3d
    is an im2col loop (`slow_conv3d`), while its 2D convolutions are oneDNN's. x (B, C, T, H, W)
    with weight (O, C, k, kh, kw) gives (B, O, T - k + 1, H', W').
    """
    B, C, T, H, W = x.shape
    k = weight.shape[2]
    steps = T - k + 1
    frames = x.transpose(1, 2).contiguous()  # (B, T, C, H, W): each tap's window is one block
    out = None
    for tap in range(k):
        window = frames[:, tap : tap + steps].reshape(B * steps, C, H, W)
        y = F.conv2d(window, weight[:, :, tap], bias if tap == 0 else None, padding=padding)
        out = y if out is None else out.add_(y)
    assert out is not None
    return out.view(B, steps, *out.shape[1:]).transpose(1, 2).contiguous()


class ChannelRMSNorm(nn.Module):
    """x / ‖x‖₂ over channels · √C · γ (spec 6.3); the L2 normalisation runs in fp32 for half inputs."""

    def __init__(self, dim: int, spatial_dims: int) -> None:
        super().__init__()
        # γ broadcasts over (T, H, W) for video tensors and over (H, W) inside the per-frame attention.
        self.gamma = nn.Parameter(torch.ones((dim,) + (1,) * spatial_dims))
        self.scale = dim**0.5

        self.fused: Callable | None = None  # compiled SiLU(norm(x)), set by WanVAE.compile_norms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, ...)
        return _channel_rms_norm(x, self.gamma, self.scale)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        """SiLU(norm(x)): what every norm of the VAE but the attention's feeds its conv. Compiled, it
        is one pass over x instead of eight element-wise kernels (the VAE's largest cost after its
        convolutions)."""
        if self.fused is not None:
            return self.fused(x, self.gamma, self.scale)
        return F.silu(self(x))


def _channel_rms_norm(x: torch.Tensor, gamma: torch.Tensor, scale: float) -> torch.Tensor:
    x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    # F.normalize(x32, dim=1) by hand: the same x / max(‖x‖, 1e-12), but linalg.vector_norm over the
    # strided channel axis is ~10-25× slower on a CPU than this sum of squares.
    unit = x32 / x32.square().sum(1, keepdim=True).sqrt().clamp_min(1e-12)
    return unit.to(x.dtype) * scale * gamma


def _norm_silu(x: torch.Tensor, gamma: torch.Tensor, scale: float) -> torch.Tensor:
    return F.silu(_channel_rms_norm(x, gamma, scale))


class ResBlock(nn.Module):
    """h = conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))) + shortcut(x); both 3×3×3 convs causal."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = ChannelRMSNorm(in_ch, spatial_dims=3)
        self.conv1 = CausalConv3d(in_ch, out_ch, 3, spatial_pad=1)
        self.norm2 = ChannelRMSNorm(out_ch, spatial_dims=3)
        self.conv2 = CausalConv3d(out_ch, out_ch, 3, spatial_pad=1)
        self.conv_shortcut = CausalConv3d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cache: _TimeCache) -> torch.Tensor:
        # x: (B, C_in, t, H, W) -> (B, C_out, t, H, W)
        skip = self.conv_shortcut(x)
        x = self.conv1(self.norm1.silu(x), cache)
        x = self.conv2(self.norm2.silu(x), cache)
        return x + skip


class FrameAttention(nn.Module):
    """Single-head self-attention over the H·W positions of each frame separately, plus residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = ChannelRMSNorm(dim, spatial_dims=2)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: _TimeCache | None = None) -> torch.Tensor:
        # x: (B, C, t, H, W). `cache` is unused (nothing mixes across time); it keeps one call signature.
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # (N, C, H, W)
        qkv = self.to_qkv(self.norm(frames)).flatten(2).transpose(1, 2).contiguous()  # (N, H·W, 3C)
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)  # 3 × (N, 1 head, H·W, C)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, 1, H·W, C)
        out = out.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)  # (N, C, H, W)
        out = self.proj(out).reshape(b, t, c, h, w).transpose(1, 2)  # (B, C, t, H, W)
        return out + x  # `out` first: the sum takes its memory layout, as in the reference (same bits)


class MidBlock(nn.Module):
    """Residual → attention → residual at the lowest resolution."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(dim, dim), ResBlock(dim, dim)])
        self.attentions = nn.ModuleList([FrameAttention(dim)])

    def forward(self, x: torch.Tensor, cache: _TimeCache) -> torch.Tensor:
        x = self.resnets[0](x, cache)
        x = self.attentions[0](x)
        return self.resnets[1](x, cache)


class _NearestUp2x(nn.Module):
    """×2 nearest-exact spatial upsampling of (N, C, H, W), computed in fp32 like the reference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").to(x.dtype)


def _per_frame(spatial: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to every frame: (B, C, t, H, W) -> (B, C', t, H', W')."""
    b, c, t, h, w = x.shape
    y = spatial(x.transpose(1, 2).reshape(b * t, c, h, w))  # (N, C', H', W')
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class Downsample(nn.Module):
    """Halve H and W (pad right/bottom, 3×3 conv stride 2); with `temporal`, then halve T too.

    The temporal conv (3 taps, stride 2) sees [last frame of the previous chunk, this chunk]. On the
    first chunk (the lone first frame) it does not run: that frame passes through, which is what makes
    T_lat = (T − 1)/4 + 1.
    """

    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        self.temporal = temporal
        if temporal:
            self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        self.slot = -1

    def forward(self, x: torch.Tensor, cache: _TimeCache) -> torch.Tensor:
        x = _per_frame(self.resample, x)  # (B, C, t, H/2, W/2)
        if not self.temporal:
            return x
        if cache.first_chunk:
            cache.slot(self.slot, x, 1).copy_(x[:, :, -1:])
            return x
        return _causal_step(self.time_conv, x, cache, self.slot, 1)  # (B, C, t/2, H/2, W/2)


class Upsample(nn.Module):
    """With `temporal`, double T first; then double H and W (nearest-exact, 3×3 conv to out_dim).

    The temporal conv (3 taps) maps C to 2C channels whose halves become two consecutive frames. It
    is skipped on the first latent frame (1 latent → 1 frame) and runs causally from the second on.
    """

    def __init__(self, dim: int, out_dim: int, temporal: bool) -> None:
        super().__init__()
        self.resample = nn.Sequential(_NearestUp2x(), nn.Conv2d(dim, out_dim, 3, padding=1))
        self.temporal = temporal
        if temporal:
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1))

    def forward(self, x: torch.Tensor, cache: _TimeCache) -> torch.Tensor:
        if self.temporal and not cache.first_chunk:
            b, c, t, h, w = x.shape
            pairs = self.time_conv(x, cache)  # (B, 2C, t, H, W): [earlier frames | later frames]
            pairs = pairs.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5)  # (B, C, t, 2, H, W)
            x = pairs.reshape(b, c, 2 * t, h, w)  # (B, C, 2t, H, W), interleaved in time
        return _per_frame(self.resample, x)  # (B, C_out, t', 2H, 2W)


class UpStage(nn.Module):
    """One decoder stage: num_res_blocks + 1 residual blocks, then an optional upsample."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, upsample: str | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResBlock(in_ch if i == 0 else out_ch, out_ch) for i in range(num_blocks)]
        )
        # The upsample halves the channels (Wan 2.1): the next stage starts from out_ch // 2.
        self.upsamplers = (
            nn.ModuleList([Upsample(out_ch, out_ch // 2, temporal=upsample == "3d")]) if upsample else None
        )

    def forward(self, x: torch.Tensor, cache: _TimeCache) -> torch.Tensor:
        for block in self.resnets:
            x = block(x, cache)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, cache)
        return x


# ---------------------------------------------------------------------------------------------------
# Encoder and decoder stacks (spec 6.4)
# ---------------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """Video (B, 3, t, H, W) chunk -> posterior parameters (B, 2·z, t_lat, H/8, W/8) before quant_conv."""

    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        widths = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv_in = CausalConv3d(cfg.in_channels, widths[0], 3, spatial_pad=1)
        layers: list[nn.Module] = []
        scale = 1.0  # resolution relative to the input, for attn_scales
        for i, (c_in, c_out) in enumerate(pairwise(widths)):
            for j in range(cfg.num_res_blocks):
                layers.append(ResBlock(c_in if j == 0 else c_out, c_out))
                if scale in cfg.attn_scales:
                    layers.append(FrameAttention(c_out))
            if i < len(cfg.dim_mult) - 1:
                layers.append(Downsample(c_out, temporal=bool(cfg.temperal_downsample[i])))
                scale /= 2.0
        self.down_blocks = nn.ModuleList(layers)
        self.mid_block = MidBlock(widths[-1])
        self.norm_out = ChannelRMSNorm(widths[-1], spatial_dims=3)
        self.conv_out = CausalConv3d(widths[-1], 2 * cfg.z_dim, 3, spatial_pad=1)

    def forward(self, x: torch.Tensor, cache: _TimeCache) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for layer in self.down_blocks:
            x = layer(x, cache)
        x = self.mid_block(x, cache)
        return self.conv_out(self.norm_out.silu(x), cache)


class Decoder(nn.Module):
    """One latent frame (B, z, 1, h, w) -> 1 pixel frame (first latent) or 4 (B, 3, n, 8h, 8w)."""

    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dim = cfg.decoder_base_dim
        assert dim is not None
        mults = cfg.dim_mult
        widths = [dim * m for m in (mults[-1], *reversed(mults))]
        time_up = tuple(reversed(cfg.temperal_downsample))  # mirror of the encoder
        self.conv_in = CausalConv3d(cfg.z_dim, widths[0], 3, spatial_pad=1)
        self.mid_block = MidBlock(widths[0])
        stages = []
        for i, (c_in, c_out) in enumerate(pairwise(widths)):
            if i > 0:
                c_in //= 2  # the previous stage's upsample halved its channels
            last = i == len(mults) - 1
            upsample = None if last else ("3d" if time_up[i] else "2d")
            stages.append(UpStage(c_in, c_out, cfg.num_res_blocks + 1, upsample))
        self.up_blocks = nn.ModuleList(stages)
        self.norm_out = ChannelRMSNorm(widths[-1], spatial_dims=3)
        self.conv_out = CausalConv3d(widths[-1], cfg.out_channels, 3, spatial_pad=1)

    def forward(self, x: torch.Tensor, cache: _TimeCache) -> torch.Tensor:
        x = self.conv_in(x, cache)
        x = self.mid_block(x, cache)
        for stage in self.up_blocks:
            x = stage(x, cache)
        return self.conv_out(self.norm_out.silu(x), cache)


def _assign_slots(stack: nn.Module) -> int:
    """Give every cached temporal conv of `stack` its own cache slot; returns the number of slots."""
    count = 0
    for module in stack.modules():
        cached = (isinstance(module, CausalConv3d) and module.history > 0) or (
            isinstance(module, Downsample) and module.temporal
        )
        if cached:
            module.slot = count
            count += 1
    return count


# ---------------------------------------------------------------------------------------------------
# The VAE
# ---------------------------------------------------------------------------------------------------


class WanVAE(nn.Module):
    """The Wan 2.1 VAE (diffusers `AutoencoderKLWan` keys): encode, decode, streaming decode.

    Video is (B, 3, T, H, W) in [-1, 1]; latents are (B, z_dim, T_lat, H/8, W/8) in the VAE's own
    scale (use `normalize` / `denormalize` to go to and from the transformer's scale).
    """

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder(config)
        self._encoder_slots = _assign_slots(self.encoder)
        self._decoder_slots = _assign_slots(self.decoder)
        self._stats: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self.memory_format = torch.contiguous_format
        # The compiled decoder after compile_decoder(), in a tuple so that nn.Module does not register
        # it as a submodule (its parameters would appear twice in the state dict).
        self._compiled_decoder: tuple[Callable, ...] = ()

    @property
    def dtype(self) -> torch.dtype:
        return self.post_quant_conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.post_quant_conv.weight.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- construction -------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: WanVAEConfig | str,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> WanVAE:
        """A randomly initialised VAE built on the meta device and materialised once on `device`.

        Deterministic for a given (seed, device): convs get PyTorch's default-like uniform(±1/√fan_in)
        weights and biases, norms γ = 1.
        """
        cfg = vae_preset(config) if isinstance(config, str) else config
        _check_float_dtype(dtype)
        device = resolve_device(device)
        with torch.device("meta"):
            model = cls(cfg)
        gen = torch.Generator(device=device).manual_seed(seed)
        for module in model.modules():
            fan_in = module.weight[0].numel() if isinstance(module, (nn.Conv2d, nn.Conv3d)) else 1
            for name, param in list(module.named_parameters(recurse=False)):
                data = torch.empty(param.shape, device=device, dtype=torch.float32)
                if name == "gamma":
                    data.fill_(1.0)
                else:
                    bound = 1.0 / math.sqrt(fan_in)
                    data.uniform_(-bound, bound, generator=gen)
                setattr(module, name, nn.Parameter(data.to(dtype), requires_grad=False))
        return model.eval()

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> WanVAE:
        """Load a diffusers `AutoencoderKLWan` folder; tensors go from disk straight to `device`.

        `device` None means the GPU when there is one. The reference runs the VAE in float32.
        """
        folder = Path(folder)
        raw = read_config(folder, [CLASS_NAME], "Wan VAE")
        try:
            cfg = WanVAEConfig.from_dict(raw)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{str(folder / 'config.json')!r}: {exc}") from exc
        _check_float_dtype(dtype)
        with torch.device("meta"):
            model = cls(cfg)
        load_weights(model, folder, device=resolve_device(device), dtype=dtype)
        model.requires_grad_(False)
        return model.eval()

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> WanVAE:
        """A preset name (random weights, see `from_config`) or a checkpoint folder (`from_pretrained`)."""
        if isinstance(model, str) and model in VAE_PRESETS:
            return cls.from_config(model, device=device, dtype=dtype, seed=seed)
        if not Path(model).exists():
            raise CheckpointError(
                f"VAE {str(model)!r} is neither a preset ({', '.join(sorted(VAE_PRESETS))}) "
                "nor an existing folder"
            )
        return cls.from_pretrained(model, device=device, dtype=dtype)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write config.json (`_class_name` AutoencoderKLWan) and the safetensors weights."""
        write_config(folder, self.config.to_dict())
        save_weights(self.state_dict(), folder)

    # --- latent scale -------------------------------------------------------------------------------

    def _latent_stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1/std), each (1, z_dim, 1, 1, 1), built once per (device, dtype)."""
        key = (z.device, z.dtype)
        if key not in self._stats:
            shape = (1, self.config.z_dim, 1, 1, 1)
            mean = torch.tensor(self.config.latents_mean, dtype=torch.float32).view(shape)
            inv_std = 1.0 / torch.tensor(self.config.latents_std, dtype=torch.float32).view(shape)
            self._stats[key] = (mean.to(z.device, z.dtype), inv_std.to(z.device, z.dtype))
        return self._stats[key]

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> the transformer's scale: (z − mean) / std per channel.

        Computed as (z − mean) · (1/std), the reference pipeline's arithmetic, so results match it
        bit for bit.
        """
        _check_tensor(z, "normalize latents", self.config.z_dim, "latents", rank_only=True)
        mean, inv_std = self._latent_stats(z)
        return (z - mean) * inv_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The transformer's scale -> VAE latents: z · std + mean, computed as z / (1/std) + mean."""
        _check_tensor(z, "denormalize latents", self.config.z_dim, "latents", rank_only=True)
        mean, inv_std = self._latent_stats(z)
        return z / inv_std + mean

    # --- encode -------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(
        self, video: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] -> latents (B, z_dim, (T − 1)/4 + 1, H/8, W/8).

        Returns the posterior mean, or with `sample=True` a draw mean + exp(½·logvar)·ε with ε from
        `generator` (the same draw as diffusers' `latent_dist.sample(generator)`). T must be 1 + 4k and
        H, W multiples of 8. Each call starts from an empty cache.
        """
        self._check_input(video, "encode video", self.config.in_channels, "video")
        mean, logvar = self._posterior(video)
        if not sample:
            return mean.contiguous()
        std = torch.exp(0.5 * logvar.clamp(_LOGVAR_MIN, _LOGVAR_MAX))
        # Drawn where the generator lives, then moved (as diffusers does), so draws agree across devices.
        noise_device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=noise_device, dtype=mean.dtype)
        return mean + std * noise.to(mean.device)

    def _posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's (mean, logvar), each (B, z, T_lat, h, w); differentiable."""
        cfg = self.config
        _, _, t, h, w = video.shape
        st, ss = cfg.scale_factor_temporal, cfg.scale_factor_spatial
        if (t - 1) % st:
            raise ValueError(
                f"encode expects 1 + {st}·k frames (1, {1 + st}, {1 + 2 * st}, ...), got T={t} "
                f"(video shape {tuple(video.shape)})"
            )
        if h % ss or w % ss:
            raise ValueError(
                f"encode expects H and W divisible by {ss}, got H={h}, W={w} (shape {tuple(video.shape)})"
            )
        cache = _TimeCache(self._encoder_slots)
        chunks = []
        # The first frame alone, then groups of `st` frames: each group becomes one latent frame.
        for start, end in [(0, 1)] + [(s, s + st) for s in range(1, video.shape[2], st)]:
            chunks.append(self.encoder(video[:, :, start:end], cache))  # (B, 2z, 1, h, w)
            cache.first_chunk = False
        stats = self.quant_conv(torch.cat(chunks, dim=2))  # (B, 2z, T_lat, h, w)
        mean, logvar = stats.chunk(2, dim=1)  # 2 × (B, z, T_lat, h, w)
        return mean, logvar

    def autoencode(
        self, video: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training path, with gradients: video (B, 3, 1 + 4k, H, W) in [-1, 1] -> (reconstruction,
        posterior mean, logvar); the decoder sees a posterior sample (its mean when `generator` is
        None). The same encoder and decoder code as `encode` / `decode`."""
        self._check_input(video, "autoencode video", self.config.in_channels, "video")
        mean, logvar = self._posterior(video)
        z = mean
        if generator is not None:
            std = torch.exp(0.5 * logvar.clamp(_LOGVAR_MIN, _LOGVAR_MAX))
            noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=mean.dtype)
            z = mean + std * noise.to(mean.device)
        recon = self._decode_frames(z, _TimeCache(self._decoder_slots))
        return recon, mean, logvar

    # --- decode -------------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, z_dim, T_lat, h, w) -> video (B, 3, 1 + 4·(T_lat − 1), 8h, 8w) clamped to [-1, 1].

        Starts from an empty cache, as the reference does for every chunk (spec 5.12): the first latent
        becomes 1 frame, each later one 4.
        """
        self._check_input(latents, "decode latents", self.config.z_dim, "latents")
        return self._decode_frames(latents, _TimeCache(self._decoder_slots))

    def set_memory_format(self, memory_format: torch.memory_format) -> WanVAE:
        """Run the convolutions channels-last (`torch.channels_last_3d`: cuDNN's tensor-core kernels
        for half precision take NDHWC) or in the default layout. Same numbers either way up to the
        convolution algorithm's rounding. Returns self."""
        if memory_format not in (torch.channels_last_3d, torch.contiguous_format):
            raise ValueError(
                f"memory_format must be channels_last_3d or contiguous_format, got {memory_format}"
            )
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                module.weight.data = module.weight.data.contiguous(memory_format=memory_format)
        self.memory_format = memory_format
        return self

    def compile_norms(self, backend: str = "inductor") -> WanVAE:
        """torch.compile the SiLU(norm(x)) of every residual block and head (one shared function,
        one graph per activation shape). Same numbers as eager up to the rounding of the fused
        float32 arithmetic. Returns self."""
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        fused = torch.compile(_norm_silu, dynamic=False, backend=backend)
        for module in self.modules():
            if isinstance(module, ChannelRMSNorm):
                module.fused = fused
        return self

    def compile_decoder(self, backend: str = "inductor") -> WanVAE:
        """torch.compile the whole per-frame decoder step, time cache included (its history
        updates become part of the graph; one graph per frame size and for the first latent of a
        stream). Returns self."""
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        self._compiled_decoder = (torch.compile(self.decoder, dynamic=False, backend=backend),)
        return self

    def stream_decoder(self) -> StreamingDecoder:
        """A decoder that keeps its cache across `push` calls (see `StreamingDecoder`)."""
        return StreamingDecoder(self)

    def _decode_frames(self, latents: torch.Tensor, cache: _TimeCache) -> torch.Tensor:
        """The one decode path: latent frames one at a time through the decoder, continuing `cache`."""
        frames = []
        for i in range(latents.shape[2]):
            # A contiguous copy so every frame meets the convs with the same layout, however it arrived.
            z = latents[:, :, i : i + 1].contiguous(memory_format=self.memory_format)  # (B, z, 1, h, w)
            decoder = self._compiled_decoder[0] if self._compiled_decoder else self.decoder
            x = decoder(self.post_quant_conv(z), cache)  # (B, 3, 1 or 4, 8h, 8w)
            cache.first_chunk = False
            frames.append(x.clamp(-1.0, 1.0))
        return torch.cat(frames, dim=2) if len(frames) > 1 else frames[0]

    # --- input checks -------------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor, what: str, channels: int, kind: str) -> None:
        _check_tensor(x, what, channels, kind)
        if x.dtype != self.dtype:
            raise ValueError(f"{what} must have the VAE's dtype {self.dtype}, got {x.dtype}")
        if x.device != self.device:
            raise ValueError(f"{what} must be on the VAE's device {self.device}, got {x.device}")
        if 0 in x.shape:
            raise ValueError(f"{what} must not be empty, got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
            raise ValueError(f"{what} contain {bad} values; expected finite numbers")


def _check_float_dtype(dtype: torch.dtype) -> None:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"the VAE dtype must be a floating torch dtype, got {dtype!r}")


def _check_tensor(x: Any, what: str, channels: int, kind: str, rank_only: bool = False) -> None:
    layout = "(B, C, T, H, W)"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(
            f"{what} must be a 5-D {kind} tensor {layout}, got {x.dim()}-D shape {tuple(x.shape)}"
        )
    if x.shape[1] != channels:
        raise ValueError(f"{what} must have C={channels} channels (dim 1), got shape {tuple(x.shape)}")
    if not rank_only and not x.dtype.is_floating_point:
        raise ValueError(f"{what} must be a floating tensor, got {x.dtype}")


# ---------------------------------------------------------------------------------------------------
# Streaming decode
# ---------------------------------------------------------------------------------------------------


class StreamingDecoder:
    """Decode an unbounded latent stream with the causal cache carried across `push` calls.

    Pushing latents in any grouping (one at a time, chunks of 9, uneven pieces) yields exactly the
    frames that `vae.decode` gives for the concatenated sequence, bit for bit: both run
    `WanVAE._decode_frames`. The cache holds at most two frames per temporal conv, so memory is flat
    however long the stream runs.

    This differs from the reference pipeline (spec 5.12), which decodes every 9-latent chunk from an
    empty cache; for that mode call `vae.decode(chunk)` instead.
    """

    def __init__(self, vae: WanVAE) -> None:
        self.vae = vae
        self._cache = _TimeCache(vae._decoder_slots)
        self._signature: tuple | None = None  # (B, h, w, dtype, device) the cache was built for
        self.latents_seen = 0
        self.frames_emitted = 0

    @torch.no_grad()
    def push(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, z_dim, t, h, w), t >= 1 -> the new pixel frames (B, 3, n, 8h, 8w) in [-1, 1].

        n = 1 + 4·(t − 1) on the first push of a stream, 4·t afterwards.
        """
        vae = self.vae
        vae._check_input(latents, "push latents", vae.config.z_dim, "latents")
        b, _, _, h, w = latents.shape
        signature = (b, h, w, latents.dtype, latents.device)
        if self._signature != signature:
            if self.latents_seen:
                raise ValueError(
                    f"push latents must keep the stream's (B, h, w) = {self._signature[:3]}, got {(b, h, w)} "
                    "(call reset() to start a new stream)"
                )
            self._cache = _TimeCache(vae._decoder_slots)  # new geometry: drop buffers of another shape
            self._signature = signature
        frames = vae._decode_frames(latents, self._cache)
        self.latents_seen += latents.shape[2]
        self.frames_emitted += frames.shape[2]
        return frames

    def reset(self) -> None:
        """Start a new stream: the next latent is decoded as a first frame (buffers are reused)."""
        self._cache.reset()
        self.latents_seen = 0
        self.frames_emitted = 0

    def cache_nbytes(self) -> int:
        """Bytes held by the cache tensors (constant once the second latent has been pushed)."""
        return self._cache.nbytes()

    def cache_tensors(self) -> list[torch.Tensor]:
        """The cache buffers themselves (for inspection and tests; do not modify)."""
        return [t for t in self._cache.slots if t is not None]
