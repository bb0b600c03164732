"""The one attention dispatch point of the runtime.

Every softmax attention of the Helios transformer (self- and cross-) goes through `attention`, so
performance work changes this file only. Layout in and out: (B, S, H, D) — batch, sequence, heads,
head width — which is what FlashAttention takes natively; SDPA gets a transposed view.

Backends:
- "sdpa": torch.nn.functional.scaled_dot_product_attention with PyTorch's own kernel choice.
- "cudnn": SDPA with cuDNN's fused attention first (on Hopper it is PyTorch's fastest attention
  kernel for these shapes), falling back to SDPA's other kernels where cuDNN declines the input.
- "flash3": FlashAttention-3 (`flash_attn_interface`, Hopper), CUDA + fp16/bf16 only.
- "flash2": FlashAttention-2 (`flash_attn`), CUDA + fp16/bf16 only.
- "auto": flash3 where importable, then cudnn on a Hopper-or-newer GPU, then flash2; otherwise sdpa.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# cuDNN first, then SDPA's usual order (set_priority makes the list an order, not just a filter).
_CUDNN_FIRST = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]

BACKENDS = ("auto", "sdpa", "cudnn", "flash3", "flash2")
_backend = "auto"


_FLASH: dict[str, Callable | None] = {}  # filled once per name; a plain dict, so compiled code reads it


def _flash_fn(name: str) -> Callable | None:
    """The FlashAttention function of `name`, or None when the package is not importable."""
    if name not in _FLASH:
        module = {"flash3": "flash_attn_interface", "flash2": "flash_attn"}[name]
        try:
            _FLASH[name] = importlib.import_module(module).flash_attn_func
        except Exception:  # a missing or broken install (ABI mismatch) both mean "not available"
            _FLASH[name] = None
    return _FLASH[name]


def available_backends() -> list[str]:
    """Backends usable in this process (flash ones need their package and a CUDA device)."""
    found = ["sdpa"]
    _flash_fn("flash3"), _flash_fn("flash2")  # resolve outside any compiled region
    if torch.cuda.is_available():
        found.append("cudnn")
        found += [name for name in ("flash3", "flash2") if _flash_fn(name) is not None]
    return found


def set_attention_backend(name: str) -> None:
    """Choose the backend for every later call; a flash backend must be available now."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; expected one of {BACKENDS}")
    if name in ("cudnn", "flash3", "flash2") and name not in available_backends():
        raise ValueError(
            f"attention backend {name!r} is not available here; available: {available_backends()}"
        )
    _backend = name


def get_attention_backend() -> str:
    return _backend


def _pick(q: torch.Tensor) -> str:
    if _backend == "sdpa":
        return "sdpa"
    flash_ok = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256
    if _backend in ("cudnn", "flash3", "flash2"):
        return _backend if flash_ok else "sdpa"
    if flash_ok:
        hopper = torch.cuda.get_device_capability(q.device)[0] >= 9
        if hopper and _flash_fn("flash3") is not None:
            return "flash3"
        if hopper:
            return "cudnn"
        if _flash_fn("flash2") is not None:
            return "flash2"
    return "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full (unmasked, non-causal) softmax attention with scale 1/sqrt(D).

    q: (B, Sq, H, D); k, v: (B, Sk, H, D) -> (B, Sq, H, D) in q's dtype.
    """
    backend = _pick(q)
    if backend == "cudnn":
        with sdpa_kernel(_CUDNN_FIRST, set_priority=True):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if backend != "sdpa":
        out = _flash_fn(backend)(q, k, v, causal=False)
        # Some FlashAttention-3 releases return (out, softmax_lse).
        return out[0] if isinstance(out, tuple) else out
    # SDPA wants (B, H, S, D).
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
