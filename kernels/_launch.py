"""What every kernel wrapper shares: argument checks with clear errors, block size and warp count.

The wrappers launch one Triton program per token row (grid (N, B)), with the whole row of D channels
in one power-of-two block (masked past D). At 14B, D = 5120 gives a block of 8192, held in registers
over 4 to 16 warps, so a row is read from memory once and normalised in place.
"""

from __future__ import annotations

import torch
import triton

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Launch option for every kernel: no fused multiply-add, so that each product and sum rounds as in the
# eager torch reference (separate kernels there). The kernels are memory-bound; the FMAs buy nothing.
LAUNCH = {"enable_fp_fusion": False}


def row_block(width: int) -> int:
    """The power-of-two block that holds a row of `width` channels."""
    return triton.next_power_of_2(max(width, 2))


def row_warps(block: int, per_thread: int) -> int:
    """Warps that give each thread `per_thread` values of a block (1 to 16 warps)."""
    return max(1, min(16, block // (32 * per_thread)))


def interpreted(kernel) -> bool:
    """Whether `kernel` was built by Triton's interpreter (TRITON_INTERPRET=1 when it was defined)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def check_device(kernel, name: str, tensors: dict[str, torch.Tensor | None]) -> None:
    """All tensors on one device, and that device one the kernel can run on."""
    devices = {k: t.device for k, t in tensors.items() if t is not None}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        where = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"{name}: all tensors must be on one device, got {where}")
    if first.type == "cpu" and not interpreted(kernel):
        raise RuntimeError(
            f"{name}: CPU tensors need Triton's interpreter; set TRITON_INTERPRET=1 before helios_kernels "
            "(and triton) are imported, or pass CUDA tensors"
        )
    if first.type not in ("cpu", "cuda"):
        raise ValueError(
            f"{name}: tensors must be on a CUDA device (or the CPU when interpreting), got {first}"
        )


def check_float(name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES) -> None:
    if t.dtype not in dtypes:
        want = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{name} must be {want}, got {t.dtype}")


def check_rows(name: str, t: torch.Tensor, shape: tuple[int, int, int]) -> tuple[int, int]:
    """A (B, N, D) tensor with unit stride over D; returns its (batch, token) strides."""
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must have shape {shape} (B, N, D), got {got}")
    if t.stride(2) != 1 and shape[2] > 1:
        raise ValueError(f"{name} must be contiguous over its last axis, got strides {t.stride()}")
    return t.stride(0), t.stride(1)


def check_mod_rows(name: str, t: torch.Tensor, batch: int, dim: int) -> tuple[int, int]:
    """Modulation rows (B or 1, 2, D) float32, unit stride over D; returns (batch, segment) strides
    (batch stride 0 when one row pair serves the whole batch)."""
    if (
        not isinstance(t, torch.Tensor)
        or t.ndim != 3
        or t.shape[0] not in (1, batch)
        or t.shape[1:] != (2, dim)
    ):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must have shape ({batch}, 2, {dim}) (rows for history, noisy), got {got}")
    if t.dtype != torch.float32:
        raise ValueError(f"{name} must be float32 (the block keeps modulation in float32), got {t.dtype}")
    if t.stride(2) != 1 and dim > 1:
        raise ValueError(f"{name} must be contiguous over its last axis, got strides {t.stride()}")
    return (t.stride(0) if t.shape[0] > 1 else 0), t.stride(1)


def check_split(name: str, value: int, tokens: int) -> int:
    """A token index in [0, N] (n_hist, y_start, norm_start): a Python int, never a tensor."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= tokens:
        raise ValueError(f"{name} must be an int in [0, {tokens}] (N = {tokens} tokens), got {value!r}")
    return value


def check_eps(eps: float) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    return float(eps)
