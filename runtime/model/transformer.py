"""The Helios transformer: Wan 2.1's video DiT plus multi-term memory (spec sections 3 and 4).

One forward denoises a chunk of noisy latent frames given clean history latents. The sequence is
`[long | mid | short | noisy]` tokens; history tokens are modulated with t = 0 and never receive
text cross-attention; only the noisy tokens are read out. Parameter names equal the diffusers
checkpoint keys, so a state dict maps one to one (spec 4).

Shape letters used in this file:
  B batch, C latent channels (16), T latent frames, H/W latent height/width,
  N tokens in the sequence, n noisy tokens, L history tokens (N = L + n),
  D inner width (heads × head width), Hd heads, Dh head width, K text tokens, E text width.

Precision follows the reference (spec 3.12): the time embedder, every scale_shift_table, norm2 and
history_key_scale stay float32; LayerNorms, modulation sums and residual additions run in float32
and are cast back to the compute dtype; RoPE tables are float32; attention runs in the compute dtype.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .checkpoint import (
    CheckpointError,
    load_weights,
    read_config,
    resolve_device,
    save_weights,
    write_config,
)
from .config import CLASS_NAME, PRESETS, HeliosConfig, preset
from .ulysses import ContextParallel, ShardedAttention

# Parameters kept in float32 whatever the compute dtype: any whose dotted name has one of these parts
# (the reference's `_keep_in_fp32_modules`, matched the same way).
FP32_PARTS = frozenset({"time_embedder", "scale_shift_table", "norm1", "norm2", "norm3", "history_key_scale"})

HISTORY_INPUTS = (
    "indices_latents_history_short",
    "indices_latents_history_mid",
    "indices_latents_history_long",
    "latents_history_short",
    "latents_history_mid",
    "latents_history_long",
)


def keeps_fp32(name: str) -> bool:
    return not FP32_PARTS.isdisjoint(name.split("."))


# ---------------------------------------------------------------------------------------------------
# Positional and timestep features (pure functions, float32)
# ---------------------------------------------------------------------------------------------------


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of timesteps t (M,) -> (M, dim) float32, cosine half first (spec 3.6)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # (M, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _rope_freqs(dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """The dim/2 rotation frequencies of one RoPE axis: theta^(-2k/dim)."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device)[: dim // 2] / dim))


def rope_grid(
    frame_indices: torch.Tensor, height: int, width: int, rope_dim: tuple[int, int, int], theta: float
) -> torch.Tensor:
    """cos/sin RoPE table on a (T, height, width) token grid -> (B, Dh, T, height, width) float32.

    Channels [0, Dh/2) hold the cosines and [Dh/2, Dh) the sines of the Dh/2 rotation angles, ordered
    (t pairs, y pairs, x pairs). The reference stores each value twice (once per channel of a pair);
    this compact form holds the same numbers once, also after mean pooling (spec 3.5).
    frame_indices: (B, T), the frame position of each latent frame.
    """
    device = frame_indices.device
    B, T = frame_indices.shape
    f = frame_indices.to(torch.float32)
    y = torch.arange(height, dtype=torch.float32, device=device)
    x = torch.arange(width, dtype=torch.float32, device=device)
    dt, dy, dx = rope_dim
    ang_t = f[:, :, None] * _rope_freqs(dt, theta, device)  # (B, T, dt/2)
    ang_y = y[:, None] * _rope_freqs(dy, theta, device)  # (H, dy/2)
    ang_x = x[:, None] * _rope_freqs(dx, theta, device)  # (W, dx/2)
    angles = torch.cat(
        [
            ang_t[:, :, None, None, :].expand(B, T, height, width, -1),
            ang_y[None, None, :, None, :].expand(B, T, height, width, -1),
            ang_x[None, None, None, :, :].expand(B, T, height, width, -1),
        ],
        dim=-1,
    )  # (B, T, H, W, Dh/2)
    table = torch.cat([angles.cos(), angles.sin()], dim=-1)  # (B, T, H, W, Dh)
    return table.permute(0, 4, 1, 2, 3)  # (B, Dh, T, H, W)


def patch_embed(conv: nn.Conv3d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """A stride = kernel Conv3d as one matrix product: (B, C, T, H, W) -> tokens (B, T'·h'·w', D).

    Each patch is flattened as (c, kt, kh, kw), the layout of the conv weight (D, C, kt, kh, kw), so
    the result is the conv's. Unlike a batched convolution (whose algorithm depends on the batch
    size), a sample's tokens do not depend on the batch it is in. Also returns the grid (T', h', w').
    """
    kt, kh, kw = conv.kernel_size
    B, C, T, H, W = x.shape
    grid = (T // kt, H // kh, W // kw)
    patches = x.reshape(B, C, grid[0], kt, grid[1], kh, grid[2], kw)
    patches = patches.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, -1, C * kt * kh * kw)  # (B, n, C·kt·kh·kw)
    return F.linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias), grid


def pad_to_multiple(x: torch.Tensor, multiple: tuple[int, int, int]) -> torch.Tensor:
    """Replicate-pad the trailing side of (B, C, T, H, W) up to multiples of (t, h, w) (spec 3.3)."""
    T, H, W = x.shape[2:]
    pt, ph, pw = ((m - s % m) % m for s, m in zip((T, H, W), multiple, strict=True))
    if pt == ph == pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph, 0, pt), mode="replicate")


def pool_rope(table: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of cos and of sin over k×k×k windows (not the rotation of a mean angle; spec 3.5)."""
    return F.avg_pool3d(pad_to_multiple(table, (k, k, k)), k, stride=k)


def flatten_grid(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, T·H·W, C), tokens in row-major (t, y, x) order."""
    return x.flatten(2).transpose(1, 2)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (B, S, Hd, Dh) by the table (B, S, Dh) [cos | sin]."""
    cos, sin = table[:, :, None].chunk(2, dim=-1)  # (B, S, 1, Dh/2) each, float32
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)  # (B, S, Hd, Dh/2) each
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)  # (B, S, Hd, Dh/2, 2)
    return out.flatten(-2).type_as(x)


# ---------------------------------------------------------------------------------------------------
# Per-segment modulation: history rows and noisy rows carry different (shift, scale, gate)
# ---------------------------------------------------------------------------------------------------


def _per_segment(x: torch.Tensor, rows: torch.Tensor, n_hist: int, fn) -> torch.Tensor:
    """Apply fn(x_segment, row) with rows (B, 2, D): row 0 for the first n_hist tokens, row 1 after.

    Every history token shares one modulation and every noisy token another, so the (B, N, D) per-token
    tensors of the reference are never materialised.
    """
    if n_hist == 0:
        return fn(x, rows[:, 1:2])
    return torch.cat([fn(x[:, :n_hist], rows[:, 0:1]), fn(x[:, n_hist:], rows[:, 1:2])], dim=1)


def modulate(x32: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, n_hist: int) -> torch.Tensor:
    """x·(1 + scale) + shift in float32, segment-wise; x32 (B, N, D) float32, shift/scale (B, 2, D)."""
    rows = torch.stack([shift, scale], dim=2)  # (B, 2, 2, D)
    return _per_segment(x32, rows, n_hist, lambda seg, r: seg * (1 + r[:, :, 1]) + r[:, :, 0])


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, n_hist: int) -> torch.Tensor:
    """x + y·gate added in float32 and cast back to x's dtype; gate (B, 2, D)."""
    both = torch.cat([x, y.to(x.dtype)], dim=-1)  # pairs the two so one segment split serves both

    def fn(seg: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        xs, ys = seg.chunk(2, dim=-1)
        return xs.float() + ys.float() * g

    return _per_segment(both, gate, n_hist, fn).type_as(x)


def layer_norm32(x: torch.Tensor, norm: nn.Module | None, eps: float) -> torch.Tensor:
    """LayerNorm over D in float32 (affine when `norm` carries weight and bias)."""
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    return F.layer_norm(x.float(), (x.shape[-1],), weight, bias, eps)


# ---------------------------------------------------------------------------------------------------
# Modules (names follow the checkpoint keys)
# ---------------------------------------------------------------------------------------------------


class _MLP(nn.Module):
    """linear_1 -> activation -> linear_2 (time_embedder: SiLU; text_embedder: GELU tanh)."""

    def __init__(self, d_in: int, d_out: int, act: str):
        super().__init__()
        self.linear_1 = nn.Linear(d_in, d_out)
        self.linear_2 = nn.Linear(d_out, d_out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear_1(x)
        h = F.silu(h) if self.act == "silu" else F.gelu(h, approximate="tanh")
        return self.linear_2(h)


class ConditionEmbedder(nn.Module):
    """Timestep and text conditioning (spec 3.6)."""

    def __init__(self, cfg: HeliosConfig):
        super().__init__()
        D = cfg.inner_dim
        self.freq_dim = cfg.freq_dim
        self.time_embedder = _MLP(cfg.freq_dim, D, "silu")
        self.time_proj = nn.Linear(D, 6 * D)
        self.text_embedder = _MLP(cfg.text_dim, D, "gelu_tanh")

    def time(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """t (M,) -> temb (M, D) and its projection (M, 6, D), both in `dtype`."""
        feats = timestep_features(t, self.freq_dim).to(self.time_embedder.linear_1.weight.dtype)
        temb = self.time_embedder(feats).to(dtype)
        proj = self.time_proj(F.silu(temb))
        return temb, proj.unflatten(-1, (6, -1))


class Attention(nn.Module):
    """q/k/v/out projections with q/k RMSNorm over all heads (attn1: self, attn2: cross)."""

    def __init__(self, cfg: HeliosConfig, amplify_history: bool = False):
        super().__init__()
        D = cfg.inner_dim
        self.heads = cfg.num_attention_heads
        self.to_q = nn.Linear(D, D)
        self.to_k = nn.Linear(D, D)
        self.to_v = nn.Linear(D, D)
        self.to_out = nn.ModuleList([nn.Linear(D, D)])  # index 0 as in the checkpoint (`to_out.0`)
        self.norm_q = nn.RMSNorm(D, eps=cfg.eps)
        self.norm_k = nn.RMSNorm(D, eps=cfg.eps)
        if amplify_history:
            n = self.heads if cfg.history_scale_mode == "per_head" else 1
            self.history_key_scale = nn.Parameter(torch.ones(n))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1))  # (B, S, D) -> (B, S, Hd, Dh)

    def self_attend(self, x: torch.Tensor, rope: torch.Tensor, n_hist: int, attend=attention) -> torch.Tensor:
        """x (B, N, D), rope (B, N, Dh) -> (B, N, D). `attend` is `attention`, or under context
        parallelism the plan's all-to-all wrapper around it (x is then this rank's shard)."""
        q = apply_rope(self._heads(self.norm_q(self.to_q(x))), rope)
        k = apply_rope(self._heads(self.norm_k(self.to_k(x))), rope)
        v = self._heads(self.to_v(x))
        if hasattr(self, "history_key_scale") and n_hist > 0:
            # History keys × (1 + 9·sigmoid(s)), per head or scalar (spec 3.10).
            scale = (1.0 + 9.0 * torch.sigmoid(self.history_key_scale)).view(1, 1, -1, 1)
            k = torch.cat([(k[:, :n_hist] * scale).to(k.dtype), k[:, n_hist:]], dim=1)
        return self.to_out[0](attend(q, k, v).flatten(2))

    def cross_attend(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, n, D) attends to context (B, K, D); no RoPE."""
        q = self._heads(self.norm_q(self.to_q(x)))
        k = self._heads(self.norm_k(self.to_k(context)))
        v = self._heads(self.to_v(context))
        return self.to_out[0](attention(q, k, v).flatten(2))


class _GeluProj(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """W₂·GELU_tanh(W₁·x); `net` indices 0 and 2 match the checkpoint (1 was a dropout)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.ModuleList([_GeluProj(dim, hidden), nn.Identity(), nn.Linear(hidden, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class _AffineNorm(nn.Module):
    """Holds norm2's weight and bias; the float32 LayerNorm itself is `layer_norm32`."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))


class Block(nn.Module):
    """One transformer block (spec 3.7)."""

    def __init__(self, cfg: HeliosConfig):
        super().__init__()
        D = cfg.inner_dim
        self.eps = cfg.eps
        self.guidance_cross_attn = cfg.guidance_cross_attn
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, D) / D**0.5)
        self.attn1 = Attention(cfg, amplify_history=cfg.is_amplify_history)
        self.attn2 = Attention(cfg)
        self.norm2 = _AffineNorm(D) if cfg.cross_attn_norm else None
        self.ffn = FeedForward(D, cfg.ffn_dim)
        self._kernels_on = False  # HeliosTransformer.use_kernels; read through `kernels`
        self.fp8 = False  # linears are `Fp8Linear`s (HeliosTransformer.quantize_fp8)

    @property
    def kernels(self):
        """The helios_kernels module when the fused kernels are on, else None (a flag underneath, so
        that a block deep-copies: a module object does not)."""
        if not self._kernels_on:
            return None
        import helios_kernels

        return helios_kernels

    @kernels.setter
    def kernels(self, module) -> None:
        self._kernels_on = module is not None

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        mod: torch.Tensor,
        rope: torch.Tensor,
        n_hist: int,
        attend=attention,
    ) -> torch.Tensor:
        """x (B, N, D); context (B, K, D); mod (B, 2, 6, D) time projections of [history, noisy]
        tokens; rope (B, N, Dh); the first n_hist tokens are history. Under context parallelism x and
        rope are this rank's shard, n_hist its history tokens and `attend` the all-to-all attention."""
        m = self.scale_shift_table[:, None] + mod.float()  # (B, 2, 6, D) float32
        rows = m.unbind(2)  # shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff: (B, 2, D) each
        if self.kernels is not None:
            return self._forward_kernels(x, context, rows, rope, n_hist, attend)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = rows

        h = modulate(layer_norm32(x, None, self.eps), shift_sa, scale_sa, n_hist).to(x.dtype)
        x = gated_residual(x, self.attn1.self_attend(h, rope, n_hist, attend), gate_sa, n_hist)

        # Text guidance reaches only the noisy tokens; history passes through unchanged.
        split = n_hist if self.guidance_cross_attn else 0
        hist, noisy = x[:, :split], x[:, split:]
        if noisy.shape[1] == 0:  # a context-parallel shard of history only
            return self._feed_forward(x, shift_ff, scale_ff, gate_ff, n_hist)
        y = layer_norm32(noisy, self.norm2, self.eps).to(x.dtype) if self.norm2 is not None else noisy
        noisy = noisy + self.attn2.cross_attend(y, context)
        x = torch.cat([hist, noisy], dim=1) if split else noisy
        return self._feed_forward(x, shift_ff, scale_ff, gate_ff, n_hist)

    def _feed_forward(self, x, shift, scale, gate, n_hist: int) -> torch.Tensor:
        h = modulate(layer_norm32(x, None, self.eps), shift, scale, n_hist).to(x.dtype)
        return gated_residual(x, self.ffn(h), gate, n_hist)

    def _forward_kernels(self, x, context, rows, rope, n_hist: int, attend) -> torch.Tensor:
        """`forward` with every row operation a fused Triton kernel (`helios_kernels`): each reads and
        writes the (B, N, D) activation once instead of once per torch op. Same numbers as `forward`:
        element-wise parts bit for bit, norms up to the order of float32 sums (kernels/README.md).
        Under FP8 (`self.fp8`) the norms hand the linears their rows quantised per token (q, scale)
        from the same pass, and the FFN's GELU is fused with the quantisation of its hidden rows."""
        hk, eps, attn1, attn2, fp8 = self.kernels, self.eps, self.attn1, self.attn2, self.fp8
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = rows
        h = hk.norm_modulate(x, shift_sa, scale_sa, n_hist, eps, fp8=fp8)
        amplify = getattr(attn1, "history_key_scale", None)
        head_scale = 1.0 + 9.0 * torch.sigmoid(amplify) if amplify is not None and n_hist > 0 else None
        q = hk.rms_norm_rope(attn1.to_q(h), attn1.norm_q.weight, rope, attn1.heads, eps)
        k = hk.rms_norm_rope(
            attn1.to_k(h), attn1.norm_k.weight, rope, attn1.heads, eps, n_hist=n_hist, head_scale=head_scale
        )
        v = attn1._heads(attn1.to_v(h))
        out = attn1.to_out[0](attend(q, k, v).flatten(2))

        split = n_hist if self.guidance_cross_attn else 0
        if split == x.shape[1]:  # a context-parallel shard of history only: no cross-attention
            x = hk.gated_residual(x, out, gate_sa, n_hist)
            return self._feed_forward_kernels(x, shift_ff, scale_ff, gate_ff, n_hist)
        if self.norm2 is None:  # no cross-attention norm to fuse with the residual
            x = hk.gated_residual(x, out, gate_sa, n_hist)
            noisy = x[:, split:]
            noisy = noisy + attn2.cross_attend(noisy, context)
            x = torch.cat([x[:, :split], noisy], dim=1) if split else noisy
            return self._feed_forward_kernels(x, shift_ff, scale_ff, gate_ff, n_hist)
        x, y = hk.residual_layer_norm(
            x, out, gate_sa, n_hist, self.norm2.weight, self.norm2.bias, eps, norm_start=split, fp8=fp8
        )
        out = attn2.cross_attend(y, context)
        x, h = hk.residual_norm_modulate(
            x, out, None, shift_ff, scale_ff, n_hist, eps, y_start=split, fp8=fp8
        )
        return hk.gated_residual(x, self._ffn_kernels(h), gate_ff, n_hist)

    def _feed_forward_kernels(self, x, shift, scale, gate, n_hist: int) -> torch.Tensor:
        h = self.kernels.norm_modulate(x, shift, scale, n_hist, self.eps, fp8=self.fp8)
        return self.kernels.gated_residual(x, self._ffn_kernels(h), gate, n_hist)

    def _ffn_kernels(self, h) -> torch.Tensor:
        """The FFN; under FP8 its GELU and the quantisation of the hidden rows are one kernel."""
        if not self.fp8:
            return self.ffn(h)
        hidden = self.ffn.net[0].proj(h)  # (B, N, F) bf16, bias added in the GEMM
        return self.ffn.net[2](self.kernels.quantize_rows(hidden, gelu=True))


class OutputNorm(nn.Module):
    """Final modulated LayerNorm (spec 3.8); scale_shift_table rows are (shift, scale)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x (B, n, D), temb (B, D) -> (B, n, D) in x's dtype."""
        shift, scale = (self.scale_shift_table + temb[:, None].float()).unbind(1)  # (B, D) each
        y = layer_norm32(x, None, self.eps) * (1 + scale[:, None]) + shift[:, None]
        return y.to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------


class HeliosTransformer(nn.Module):
    """Helios video DiT with multi-term memory. Build with `from_pretrained` or `from_config`."""

    def __init__(self, config: HeliosConfig):
        super().__init__()
        if config.has_multi_term_memory_patch and config.patch_size[0] != 1:
            raise ValueError(
                f"the multi-term memory needs a temporal patch of 1, got patch_size={config.patch_size}"
            )
        self.config = config
        D, C, p = config.inner_dim, config.in_channels, config.patch_size
        self.patch_embedding = nn.Conv3d(C, D, kernel_size=p, stride=p)
        if config.has_multi_term_memory_patch:
            self.patch_short = nn.Conv3d(C, D, kernel_size=p, stride=p)
            self.patch_mid = nn.Conv3d(
                C, D, kernel_size=tuple(2 * s for s in p), stride=tuple(2 * s for s in p)
            )
            self.patch_long = nn.Conv3d(
                C, D, kernel_size=tuple(4 * s for s in p), stride=tuple(4 * s for s in p)
            )
        self.condition_embedder = ConditionEmbedder(config)
        if config.num_actions:
            self.action_embedder = nn.Embedding(config.num_actions, D)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.norm_out = OutputNorm(D, config.eps)
        self.proj_out = nn.Linear(D, C * math.prod(p))
        self.context_parallel: ContextParallel | None = None
        self._sharded_attention = ShardedAttention(attention)
        self.compiled = False

    # --- properties ---------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype (that of the projections; some small tensors stay float32)."""
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def compile_blocks(self, mode: str | None = None, backend: str = "inductor") -> HeliosTransformer:
        """torch.compile every block in place (Inductor fuses the float32 norm / modulation / RoPE /
        residual element-wise work around the matmuls). The blocks share one code object, so each
        token-count shape (one per pyramid stage and frame size) compiles once for all of them; the
        first forward at a new shape pays the compile (seconds to a minute), which is why servers
        warm up at their serving size. `mode` is torch.compile's (None, "max-autotune-no-cudagraphs").
        """
        import torch._dynamo

        from .attention import available_backends

        available_backends()  # import-probe FlashAttention now, not while tracing
        # 3 stages × a few frame sizes × batch sizes per code object: well above the default of 8.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        for block in self.blocks:
            block.compile(dynamic=False, mode=mode, backend=backend)
        self.compiled = True
        return self

    def use_kernels(self, on: bool = True) -> HeliosTransformer:
        """Run every block's row operations (norms, modulation, RoPE, residuals) as fused Triton
        kernels (`helios_kernels`): most of torch.compile's gain without its compile time, for eager
        serving. Needs Triton and a CUDA device (or TRITON_INTERPRET=1 on the CPU). Returns self."""
        kernels = None
        if on:
            import helios_kernels

            if not helios_kernels.available(self.device):
                raise RuntimeError(
                    f"the Triton kernels cannot run on {self.device}: they need Triton and a CUDA GPU "
                    "(or TRITON_INTERPRET=1 on the CPU)"
                )
            kernels = helios_kernels
        for block in self.blocks:
            block.kernels = kernels
        return self

    def quantize_fp8(self, keep_first: int = 0, keep_last: int = 0) -> HeliosTransformer:
        """FP8 inference: every block's linears (attention q/k/v/out, FFN) become `Fp8Linear`s,
        weights quantised now per output channel, activations per token at run time (`fp8.py`),
        except the first `keep_first` and last `keep_last` blocks, which stay in the compute dtype.
        Embedders, norms, modulation and the output head are untouched. In place, one way (the bf16
        weights of the quantised blocks are freed); returns self."""
        from .fp8 import quantize_block

        L = len(self.blocks)
        for name, value in (("keep_first", keep_first), ("keep_last", keep_last)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= L:
                raise ValueError(
                    f"{name} must be an int in [0, {L}] (blocks kept in {self.dtype}), got {value!r}"
                )
        for i, block in enumerate(self.blocks):
            if keep_first <= i < L - keep_last and not block.fp8:
                quantize_block(block)
        return self

    @property
    def precision(self) -> str:
        """ "fp8" when any block runs FP8 linears, else the compute dtype's name."""
        if any(block.fp8 for block in self.blocks):
            return "fp8"
        return str(self.dtype).removeprefix("torch.")

    def enable_context_parallel(self, cp: ContextParallel | None) -> HeliosTransformer:
        """Split every later forward's token sequence over `cp`'s ranks (None: back to one device).

        Every rank of the group must call forward with the same inputs at the same time; each
        returns the whole prediction. See `helios_runtime.model.ulysses`.
        """
        if cp is not None:
            cp.check_heads(self.config.num_attention_heads)
            if cp.world == 1:
                cp = None
        self.context_parallel = cp
        return self

    # --- construction -------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: HeliosConfig | str,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        seed: int = 0,
    ) -> HeliosTransformer:
        """A randomly initialised model, materialised directly on `device` in `dtype`.

        Built on the meta device, then each tensor is allocated once on the target and filled there
        (a 14B bf16 model on a GPU takes seconds). Initialisation follows the official class (spec
        3.11) except that proj_out is not zeroed, so a random model's output depends on every layer.
        """
        cfg = preset(config) if isinstance(config, str) else config
        device = resolve_device(device)
        dtype = dtype or _default_dtype(device)
        with torch.device("meta"):
            model = cls(cfg)
        gen = torch.Generator(device=device).manual_seed(seed)
        for module_name, module in model.named_modules():
            for pname, param in list(module.named_parameters(recurse=False)):
                full = f"{module_name}.{pname}" if module_name else pname
                data = torch.empty(
                    param.shape, device=device, dtype=torch.float32 if keeps_fp32(full) else dtype
                )
                _init_tensor(full, data, gen, cfg.inner_dim)
                setattr(module, pname, nn.Parameter(data, requires_grad=param.requires_grad))
        if cfg.has_multi_term_memory_patch:
            model._init_history_patches()
        return model

    @torch.no_grad()
    def _init_history_patches(self) -> None:
        """patch_short = patch_embedding; mid/long = the base embedding of 2×/4× mean-pooled latents."""
        w, b = self.patch_embedding.weight, self.patch_embedding.bias  # (D, C, pt, ph, pw)
        for conv, k in ((self.patch_short, 1), (self.patch_mid, 2), (self.patch_long, 4)):
            rep = w.repeat_interleave(k, 2).repeat_interleave(k, 3).repeat_interleave(k, 4) / k**3
            conv.weight.copy_(rep)
            conv.bias.copy_(b)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> HeliosTransformer:
        """Load a diffusers-format transformer folder (config.json + safetensors, single or sharded).

        Tensors go straight from disk to `device` (default: the GPU when there is one) in `dtype`
        (default: bfloat16 on a GPU, float32 on the CPU), except the float32 ones of spec 3.12.
        """
        folder = Path(folder)
        raw = read_config(folder, [CLASS_NAME], "Helios transformer")
        try:
            cfg = HeliosConfig.from_dict(raw)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{str(folder / 'config.json')!r}: {exc}") from exc
        device = resolve_device(device)
        dtype = dtype or _default_dtype(device)
        with torch.device("meta"):
            model = cls(cfg)
        load_weights(model, folder, device=device, dtype=dtype, keep_fp32=keeps_fp32, rename=_rename_key)
        return model

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        seed: int = 0,
    ) -> HeliosTransformer:
        """A preset name (random weights, see `from_config`) or a checkpoint folder (`from_pretrained`)."""
        if isinstance(model, str) and model in PRESETS:
            return cls.from_config(model, device=device, dtype=dtype, seed=seed)
        if not Path(model).exists():
            raise CheckpointError(
                f"model {str(model)!r} is neither a preset ({', '.join(sorted(PRESETS))}) "
                "nor an existing folder"
            )
        return cls.from_pretrained(model, device=device, dtype=dtype)

    def to_dtype(self, dtype: torch.dtype) -> HeliosTransformer:
        """Cast the compute tensors to `dtype` in place; the float32 ones of spec 3.12 stay float32."""
        for name, param in self.named_parameters():
            if param.is_floating_point():
                param.data = param.data.to(torch.float32 if keeps_fp32(name) else dtype)
        return self

    def save_pretrained(self, folder: str | Path, *, max_shard_bytes: int | None = 10 * 1024**3) -> None:
        """Write config.json and safetensors weights in the diffusers layout (sharded above the limit)."""
        write_config(folder, self.config.to_dict())
        save_weights(self.state_dict(), folder, max_shard_bytes=max_shard_bytes)

    # --- forward ------------------------------------------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        indices_hidden_states: torch.Tensor | None = None,
        indices_latents_history_short: torch.Tensor | None = None,
        indices_latents_history_mid: torch.Tensor | None = None,
        indices_latents_history_long: torch.Tensor | None = None,
        latents_history_short: torch.Tensor | None = None,
        latents_history_mid: torch.Tensor | None = None,
        latents_history_long: torch.Tensor | None = None,
        action: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity of the noisy latents (same arguments as diffusers' model).

        hidden_states: (B, C, T, H, W) noisy latents; timestep: (B,) or a scalar, 0..1000;
        encoder_hidden_states: (B, K, E) text features; indices_hidden_states: (B, T) frame indices.
        History (all six or none): latents_history_short / mid / long (B, C, Ts / Tm / Tl, Hh, Wh),
        at full latent resolution, with their frame indices (B, Ts / Tm / Tl).
        action: (B,) or (B, K) integer action ids, for a model built with `num_actions` > 0 (the K
        ids' embeddings are summed, e.g. a move and a camera pan; they condition the noisy tokens'
        modulation; history tokens stay at t = 0 without an action). An id of -1 is "no action"
        (a zero embedding): the unconditional rows of action dropout and action guidance.
        Returns (B, C, T, H, W) in the compute dtype. Inputs are cast to the compute dtype.
        """
        history = [
            indices_latents_history_short,
            indices_latents_history_mid,
            indices_latents_history_long,
            latents_history_short,
            latents_history_mid,
            latents_history_long,
        ]
        t = self._check_inputs(hidden_states, timestep, encoder_hidden_states, indices_hidden_states, history)
        cfg, dtype = self.config, self.dtype
        B = hidden_states.shape[0]
        pt, ph, pw = cfg.patch_size

        # Noisy tokens: (B, C, T, H, W) -> (B, n, D) on the (T', h', w') token grid.
        noisy, (Tp, hp, wp) = patch_embed(self.patch_embedding, hidden_states.to(dtype))
        tokens, ropes = [noisy], []
        if indices_hidden_states is None:
            indices_hidden_states = torch.arange(Tp, device=noisy.device).expand(B, Tp)
        theta, rdim = cfg.rope_theta, cfg.rope_dim
        ropes.append(flatten_grid(rope_grid(indices_hidden_states, hp, wp, rdim, theta)))  # (B, n, Dh)
        n = tokens[0].shape[1]

        if latents_history_short is not None:
            short, (_, Hs, Ws) = patch_embed(self.patch_short, latents_history_short.to(dtype))
            mid_in = pad_to_multiple(latents_history_mid.to(dtype), self.patch_mid.kernel_size)
            long_in = pad_to_multiple(latents_history_long.to(dtype), self.patch_long.kernel_size)
            # Mid/long RoPE: computed on the short grid (Hs, Ws), then mean-pooled to their coarser tokens.
            rope_short = rope_grid(indices_latents_history_short, Hs, Ws, rdim, theta)
            rope_mid = pool_rope(rope_grid(indices_latents_history_mid, Hs, Ws, rdim, theta), 2)
            rope_long = pool_rope(rope_grid(indices_latents_history_long, Hs, Ws, rdim, theta), 4)
            # Sequence order [long | mid | short | noisy] (spec 3.4).
            tokens = [
                patch_embed(self.patch_long, long_in)[0],
                patch_embed(self.patch_mid, mid_in)[0],
                short,
                *tokens,
            ]
            ropes = [flatten_grid(rope_long), flatten_grid(rope_mid), flatten_grid(rope_short), *ropes]
        x = torch.cat(tokens, dim=1).contiguous()  # (B, N, D)
        rope = torch.cat(ropes, dim=1).contiguous()  # (B, N, Dh) float32
        n_hist = x.shape[1] - n
        if x.shape[1] != rope.shape[1]:
            raise ValueError(
                f"history token count {n_hist} does not match its RoPE table "
                f"({rope.shape[1] - n} positions): "
                "the frame indices and history latents disagree in length"
            )

        # Timestep conditioning: noisy tokens use t, history tokens t = 0 (zero_history_timestep).
        context = self.condition_embedder.text_embedder(encoder_hidden_states.to(dtype))  # (B, K, D)
        # t is (1,) when every sample shares it: embedded once, then broadcast, so a sample's result
        # does not depend on the batch it runs in.
        temb, proj = self.condition_embedder.time(t, dtype)  # (B or 1, D), (B or 1, 6, D)
        temb, proj = temb.expand(B, -1), proj.expand(B, -1, -1)
        if action is not None:
            temb = temb + self._action_embedding(action, B).to(dtype)
            proj = self.condition_embedder.time_proj(F.silu(temb)).unflatten(-1, (6, -1))
        if cfg.zero_history_timestep and n_hist > 0:
            # A separate batch-1 call, as in the reference, so the bf16 GEMMs round the same way.
            _, proj0 = self.condition_embedder.time(t.new_zeros(1), dtype)
            mod = torch.stack([proj0.expand(B, -1, -1), proj], dim=1)  # (B, 2, 6, D)
        else:
            mod = torch.stack([proj, proj], dim=1)

        attend, plan = attention, None
        if self.context_parallel is not None:
            # This rank keeps its shard of the sequence; self-attention trades shards for heads.
            plan = self.context_parallel.plan(x.shape[1], n_hist)
            x, rope, n_hist = plan.local(x), plan.local(rope), plan.local_hist
            attend = self._sharded_attention
            attend.plan = plan

        for block in self.blocks:
            x = block(x, context, mod, rope, n_hist, attend)

        # Read out the noisy tokens only; unpatchify (B, n, pt·ph·pw·C) -> (B, C, T, H, W).
        out = self.proj_out(self.norm_out(x[:, n_hist:], temb))
        if plan is not None:
            out = plan.gather_noisy(out)
        out = out.reshape(B, Tp, hp, wp, pt, ph, pw, -1)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, T', pt, h', ph, w', pw)
        return out.reshape(B, -1, Tp * pt, hp * ph, wp * pw)

    def _action_embedding(self, action: torch.Tensor, batch: int) -> torch.Tensor:
        n = self.config.num_actions
        if not n:
            raise ValueError("this model has no action conditioning (num_actions=0); pass action=None")
        if (
            not isinstance(action, torch.Tensor)
            or action.dim() not in (1, 2)
            or action.shape[0] != batch
            or action.is_floating_point()
        ):
            shape = tuple(action.shape) if isinstance(action, torch.Tensor) else type(action).__name__
            raise ValueError(
                f"action must be an integer tensor of shape ({batch},) or ({batch}, K), got {shape}"
            )
        # Checked where the ids are: free for CPU ids (what callers build from actions); ids already on
        # the GPU would cost a device sync per forward, so an out-of-range one fails in the lookup.
        if action.device.type == "cpu" and (int(action.min()) < -1 or int(action.max()) >= n):
            raise ValueError(f"action ids must be in [0, {n}) or -1 (no action), got {action.tolist()}")
        action = action.to(self.device)
        present = (action >= 0).unsqueeze(-1)
        emb = self.action_embedder(action.clamp_min(0)) * present.to(self.action_embedder.weight.dtype)
        return emb.sum(1) if action.dim() == 2 else emb  # (B, D)

    # --- input validation ---------------------------------------------------------------------------

    def _check_inputs(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        indices: torch.Tensor | None,
        history: list[torch.Tensor | None],
    ) -> torch.Tensor:
        """Raise ValueError naming the argument, what was expected and what arrived.

        Returns the timesteps as (B,), or (1,) when one value is given for the whole batch.
        """
        cfg = self.config
        C, (pt, ph, pw) = cfg.in_channels, cfg.patch_size
        if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[1] != C:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"hidden_states must be (B, {C}, T, H, W), got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"hidden_states must be a floating tensor, got {x.dtype}")
        B, _, T, H, W = x.shape
        if T % pt or H % ph or W % pw:
            raise ValueError(
                f"hidden_states (T, H, W) = {(T, H, W)} must be divisible by the patch size {cfg.patch_size}"
            )
        if (
            not isinstance(text, torch.Tensor)
            or text.ndim != 3
            or text.shape[0] != B
            or text.shape[2] != cfg.text_dim
        ):
            shape = tuple(text.shape) if isinstance(text, torch.Tensor) else type(text).__name__
            raise ValueError(f"encoder_hidden_states must be ({B}, K, {cfg.text_dim}), got {shape}")
        t = torch.as_tensor(timestep, device=x.device)
        if t.ndim > 1 or t.numel() not in (1, B):
            raise ValueError(f"timestep must be a scalar or have shape ({B},), got {tuple(t.shape)}")
        t = t.reshape(-1)
        if indices is not None:
            _check_indices("indices_hidden_states", indices, B, T // pt)

        given = [h is not None for h in history]
        if any(given) and not all(given):
            missing = [name for name, g in zip(HISTORY_INPUTS, given, strict=True) if not g]
            raise ValueError(
                f"history inputs are all-or-none; got some but missing {missing} (spec 3.1: the pipelines "
                "pass zeros when there is no history yet)"
            )
        if not any(given):
            return t
        if not cfg.has_multi_term_memory_patch:
            raise ValueError("this model has no multi-term memory patch (has_multi_term_memory_patch=false)")
        if indices is None:
            raise ValueError("indices_hidden_states is required when history latents are given (spec 3.5)")
        idx_short, idx_mid, idx_long, *latents = history
        spatial = None
        for name, lat, idx in zip(HISTORY_INPUTS[3:], latents, (idx_short, idx_mid, idx_long), strict=True):
            if not isinstance(lat, torch.Tensor) or lat.ndim != 5 or lat.shape[:2] != (B, C):
                shape = tuple(lat.shape) if isinstance(lat, torch.Tensor) else type(lat).__name__
                raise ValueError(f"{name} must be ({B}, {C}, T, H, W), got {shape}")
            if spatial is None:
                spatial = tuple(lat.shape[3:])
                if spatial[0] % ph or spatial[1] % pw:
                    raise ValueError(f"{name} (H, W) = {spatial} must be divisible by the patch {(ph, pw)}")
            elif tuple(lat.shape[3:]) != spatial:
                raise ValueError(
                    f"{name} has (H, W) = {tuple(lat.shape[3:])}, but the short history has {spatial}: "
                    "all history terms are at full latent resolution"
                )
            _check_indices(name.replace("latents_", "indices_latents_"), idx, B, lat.shape[2])
        return t


def _check_indices(name: str, idx: torch.Tensor, batch: int, frames: int) -> None:
    if not isinstance(idx, torch.Tensor) or tuple(idx.shape) != (batch, frames):
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(
            f"{name} must have shape ({batch}, {frames}) (one index per latent frame), got {shape}"
        )


def _default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _rename_key(name: str) -> str | None:
    """Map a stored tensor name to ours; None skips tensors inference never uses (spec 4)."""
    if name == "scale_shift_table":  # older official checkpoints
        return "norm_out.scale_shift_table"
    parts = name.split(".")
    if "norm_added_q" in parts or "norm_added_k" in parts or "add_k_proj" in parts or "add_v_proj" in parts:
        return None  # Wan I2V image branch, unused by the Helios attention
    if any(p in ("q_loras", "k_loras", "v_loras", "gan_heads", "gan_final_head") for p in parts):
        return None  # official-only training heads
    return name


@torch.no_grad()
def _init_tensor(name: str, t: torch.Tensor, gen: torch.Generator, dim: int) -> None:
    """Official-class initialisation (spec 3.11), proj_out included in the Xavier rule."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "scale_shift_table":
        t.normal_(0.0, 1.0, generator=gen).div_(dim**0.5)
    elif leaf == "history_key_scale" or (leaf == "weight" and t.ndim == 1):
        t.fill_(1.0)  # RMSNorm and LayerNorm weights
    elif leaf == "bias":
        t.zero_()
    elif name.startswith("action_embedder."):
        t.zero_()  # an added action embedding starts out harmless (issue 8)
    elif name.startswith("condition_embedder."):
        t.normal_(0.0, 0.02, generator=gen)
    else:  # Linear and Conv3d weights: Xavier-uniform on the (out, in·kernel) matrix
        fan_out, fan_in = t.shape[0], t[0].numel()
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        t.uniform_(-bound, bound, generator=gen)


def forward_flops(cfg: HeliosConfig, n_noisy: int, n_history: int, text_tokens: int) -> int:
    """Multiply-add FLOPs (×2) of one forward: the linear layers and attention, which are > 99% of it.

    Spec 8 / 9.3: 20,160 noisy tokens, no history, 512 text tokens at 14B ≈ 8.25e14.
    """
    D, F_, K = cfg.inner_dim, cfg.ffn_dim, text_tokens
    N, n = n_noisy + n_history, n_noisy
    cross_n = n if cfg.guidance_cross_attn else N
    per_block = (
        8 * N * D * D  # q, k, v, out of self-attention
        + 4 * N * N * D  # QKᵀ and AV over the whole sequence
        + 4 * cross_n * D * D  # q, out of cross-attention
        + 4 * K * D * D  # k, v of the text
        + 4 * cross_n * K * D  # cross-attention scores and values
        + 4 * N * D * F_  # feed-forward
    )
    text = 2 * K * (cfg.text_dim * D + D * D)
    head = 2 * n * D * cfg.in_channels * math.prod(cfg.patch_size)
    return cfg.num_layers * per_block + text + head
