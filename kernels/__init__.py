"""helios_kernels: Triton kernels of the runtime, each with its torch reference and a CPU test.

Imported as `helios_kernels` (the folder is `kernels/`; PyPI already has a `kernels` package).
The fused kernels of the transformer block's hot path (issue 7; spec 3.5, 3.7, 3.10, 9.2):

- `norm_modulate`: float32 LayerNorm + per-segment `x·(1 + scale) + shift` (norm1 / norm3 of a block);
- `gated_residual`, and `residual_norm_modulate` / `residual_layer_norm`, which add a residual and
  normalise the result in the same pass (the block always normalises right after adding);
- `rms_norm_rope`: q/k RMSNorm over all heads + RoPE + history-key scale; `rope` and `rms_norm` alone;
- FP8 (issue 17): the norms above with `fp8=True` return their rows quantised per token (float8 e4m3fn
  + a float32 scale per row) for the FP8 linears; `quantize_rows` (optionally GELU first) does the same
  for rows that come from elsewhere (`fp8.py`).

`reference` holds the torch code each kernel reproduces; `selftest(device)` runs every kernel against it.
Importing this package does not import Triton: the kernels are defined at first use, so that
TRITON_INTERPRET=1 (Triton's CPU interpreter) still applies if it is set after this import.
See kernels/README.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import TYPE_CHECKING

import torch

from . import reference

if TYPE_CHECKING:
    from .fp8 import quantize_rows
    from .modulation import gated_residual, norm_modulate, residual_layer_norm, residual_norm_modulate
    from .parity import selftest
    from .rotary import rms_norm, rms_norm_rope, rope

# Public name -> the module that defines it (imported on first access, with Triton).
_LAZY = {
    "norm_modulate": "modulation",
    "gated_residual": "modulation",
    "residual_norm_modulate": "modulation",
    "residual_layer_norm": "modulation",
    "rms_norm_rope": "rotary",
    "rms_norm": "rotary",
    "rope": "rotary",
    "quantize_rows": "fp8",
    "selftest": "parity",
}

__all__ = [
    "available",
    "gated_residual",
    "norm_modulate",
    "quantize_rows",
    "reference",
    "residual_layer_norm",
    "residual_norm_modulate",
    "rms_norm",
    "rms_norm_rope",
    "rope",
    "selftest",
]


def available(device: torch.device | str | None = None) -> bool:
    """Whether the kernels can run on `device` (default: anywhere here).

    True when Triton is importable and the device is a CUDA GPU, or the CPU under Triton's interpreter
    (TRITON_INTERPRET=1, in effect when the kernels were first defined). The runtime uses this to pick
    the kernels or the torch path.
    """
    if importlib.util.find_spec("triton") is None:
        return False
    kind = None if device is None else torch.device(device).type
    if kind in (None, "cuda") and torch.cuda.is_available():
        return True
    return kind in (None, "cpu") and _interpreting()


def _interpreting() -> bool:
    """Whether the kernels run (or, once defined, will run) in Triton's interpreter."""
    for name, kernel in (("modulation", "_residual_norm_kernel"), ("rotary", "_rms_norm_rope_kernel")):
        module = sys.modules.get(f"{__name__}.{name}")
        if module is not None:
            from ._launch import interpreted

            return interpreted(getattr(module, kernel))
    import triton

    return bool(triton.knobs.runtime.interpret)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
