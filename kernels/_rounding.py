"""Rounding float32 values to the activation dtype inside a kernel, ties to even, as torch does.

A GPU rounds `.to(tl.bfloat16)` to nearest even, but Triton's CPU interpreter truncates (and flushes
bfloat16 subnormals to zero), so the CPU tests could not tell a right kernel from a wrong one. These
helpers round bfloat16 by integer arithmetic on the float32 bits instead: the same answer on both,
for a few integer operations per element in kernels whose time is all memory traffic.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _bf16_bits(x):
    """The float32 bits of x rounded to bfloat16 precision, ties to even (low 16 bits zero)."""
    bits = x.to(tl.uint32, bitcast=True)
    return (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000


@triton.jit
def round_as(x, dtype: tl.constexpr):
    """x (float32) rounded to the nearest value of `dtype`, kept in float32: what storing it in
    `dtype` and reading it back gives."""
    if dtype == tl.bfloat16:
        return tl.where(x == x, _bf16_bits(x).to(tl.float32, bitcast=True), x)  # NaN stays NaN
    elif dtype == tl.float16:
        return x.to(tl.float16).to(tl.float32)
    else:
        return x


@triton.jit
def cast_to(x, dtype: tl.constexpr):
    """x (float32) converted to `dtype`, ties to even (for storing)."""
    if dtype == tl.bfloat16:
        bits = tl.where(x == x, _bf16_bits(x), 0x7FC00000)  # NaN: the canonical quiet NaN
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


# float8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; largest finite 448 (reference.E4M3_MAX),
# no infinity; below 2^-6 the values step by 2^-9 (subnormals).


@triton.jit
def e4m3_bits(x):
    """The float8 e4m3fn byte (as uint32) of x (float32), rounded to nearest even and saturated at
    ±448. By integer arithmetic on the float32 bits, for the same reason as bfloat16 above: Triton's
    interpreter truncates `.to(tl.float8e4nv)`. x must not be NaN (the callers scale finite rows)."""
    sign = (x.to(tl.uint32, bitcast=True) >> 24) & 0x80
    a = tl.minimum(tl.abs(x), 448.0)
    bits = a.to(tl.uint32, bitcast=True)
    # Normal numbers: round the 23-bit mantissa to 3 bits, then re-bias the exponent (127 -> 7).
    r = (bits + 0x7FFFF + ((bits >> 20) & 1)) & 0xFFF00000
    normal = (((r >> 23) - 120) << 3) | ((r >> 20) & 7)
    # Subnormals: multiples of 2^-9; a·512 rounded to an integer (ties to even) by the 1.5·2^23 trick.
    # 8 (a value that rounds up to 2^-6) is also the byte of the smallest normal number.
    sub = ((a * 512.0 + 12582912.0) - 12582912.0).to(tl.uint32)
    return tl.where(a < 0.015625, sub, normal) | sign
