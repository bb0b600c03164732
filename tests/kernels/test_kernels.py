"""The fused Triton kernels against their torch references (kernels/; spec 3.5, 3.7, 3.10, 3.12).

Kernel runs happen under Triton's CPU interpreter in one subprocess (`_interpret.py`, started with
TRITON_INTERPRET=1), since the variable must be set before a kernel is defined and this process may
have defined them already. Argument checks, the metric and the references' parity with the runtime's
own functions run here.

Tolerances (`helios_kernels.parity.within_tolerance`): outputs that are pure elementwise arithmetic
(residuals, RoPE) must equal the reference bit for bit in every dtype; outputs of a norm may differ
where the float32 sums round differently: in float32 by a relative 1e-6, in bfloat16 / float16 by one
rounding on few elements.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import helios_kernels
from helios_kernels import reference as ref
from helios_kernels.parity import EXACT, KERNELS, compare, ulp_distance, within_tolerance
from helios_runtime.model import transformer as rt

ROOT = Path(__file__).resolve().parents[2]

# id: (batch, tokens, n_hist, heads, head_dim); the width D = heads × head_dim.
SHAPES = {
    "B2-N7-hist3-D32": (2, 7, 3, 2, 16),
    "no-history": (2, 6, 0, 2, 16),
    "all-history": (2, 5, 5, 2, 16),
    "B1-N5-D48": (1, 5, 2, 3, 16),  # D not a power of two: a masked block
    "B2-N9-D96-Dh32": (2, 9, 4, 3, 32),
    "one-token": (1, 1, 1, 1, 16),
    "no-tokens": (1, 0, 0, 2, 16),
}
DTYPES = ("float32", "bfloat16")

KERNEL_CASES = {
    f"{kernel}/{dtype}/{shape}": {
        "kernel": kernel,
        "dtype": dtype,
        **dict(zip(("batch", "tokens", "n_hist", "heads", "head_dim"), SHAPES[shape], strict=True)),
    }
    for kernel in KERNELS
    for dtype in DTYPES
    for shape in SHAPES
}
# float16 on one shape: the kernels round through the same helpers as for bfloat16.
KERNEL_CASES.update(
    {
        f"{kernel}/float16/B2-N7-hist3-D32": {
            **KERNEL_CASES[f"{kernel}/float32/B2-N7-hist3-D32"],
            "dtype": "float16",
        }
        for kernel in KERNELS
    }
)
# A float32 branch added to a bfloat16 stream: the residuals round it to bfloat16 first.
KERNEL_CASES.update(
    {
        f"{kernel}/bfloat16-y-float32/B2-N7-hist3-D32": {
            **KERNEL_CASES[f"{kernel}/bfloat16/B2-N7-hist3-D32"],
            "y_dtype": "float32",
        }
        for kernel in (
            "gated_residual",
            "residual_norm_modulate",
            "residual_add_norm_modulate",
            "residual_layer_norm",
        )
    }
)
# A residual starting past the first token, gated (history and noisy rows) or not.
KERNEL_CASES.update(
    {
        f"{kernel}/{dtype}/B2-N9-hist4-y_start{start}": {
            **KERNEL_CASES[f"{kernel}/{dtype}/B2-N9-D96-Dh32"],
            "y_start": start,
        }
        for kernel in ("residual_norm_modulate", "residual_add_norm_modulate", "residual_layer_norm")
        for dtype in DTYPES
        for start in (2, 6)
    }
)
BLOCK_CASES = {
    f"block/{dtype}/hist{n_hist}/{mode}": {
        "kernel": "block",
        "dtype": dtype,
        "batch": 2,
        "tokens": 6,
        "n_hist": n_hist,
        "scale_mode": mode,
    }
    for dtype in DTYPES
    for n_hist, mode in ((0, "per_head"), (2, "per_head"), (2, "scalar"), (6, "per_head"))
}
MODEL_CASES = {f"model/{dtype}": {"kernel": "model", "dtype": dtype} for dtype in ("float32", "bfloat16")}
FP8_MODEL_CASES = {
    f"model_fp8/{dtype}": {"kernel": "model_fp8", "dtype": dtype} for dtype in ("float32", "bfloat16")
}
E4M3_CASES = {"e4m3_table/float32": {"kernel": "e4m3_table", "dtype": "float32"}}


@pytest.fixture(scope="module")
def interpreted() -> dict:
    """Every case's metrics, computed once in a subprocess under TRITON_INTERPRET=1."""
    everything = {**KERNEL_CASES, **BLOCK_CASES, **MODEL_CASES, **FP8_MODEL_CASES, **E4M3_CASES}
    cases = [{"id": ident, **case} for ident, case in everything.items()]
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_interpret.py"))],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def _result(interpreted: dict, ident: str) -> dict:
    result = interpreted[ident]
    assert "error" not in result, result["error"]
    return result


@pytest.mark.parametrize("ident", list(KERNEL_CASES))
def test_kernel_matches_reference(interpreted, ident):
    case = KERNEL_CASES[ident]
    outputs = _result(interpreted, ident)
    assert outputs, "no outputs compared"
    for name, m in outputs.items():
        assert within_tolerance(case["kernel"], name, getattr(torch, case["dtype"]), m), f"{name}: {m}"
        if (case["kernel"], name) in EXACT or case["dtype"] == "float32" or name in ("q", "scale"):
            continue  # float8 rows and their float32 scales: within_tolerance is their criterion
        # These tiny rows sum in few enough steps that bfloat16 / float16 results agree exactly or
        # by a single rounding; a wrong segment, rounding or rotation moves most elements by more.
        assert m["max_ulp"] <= 1, f"{name}: {m}"


@pytest.mark.parametrize("ident", list(BLOCK_CASES))
def test_fused_block_matches_runtime_block(interpreted, ident):
    """A tiny block (history-key scale on) with every row operation a kernel, against Block.forward."""
    m = _result(interpreted, ident)["x"]
    if BLOCK_CASES[ident]["dtype"] == "float32":
        assert m["max_rel"] <= 1e-5, m
    else:
        # bfloat16 roundings inside agree (see above); a rare 1-ulp norm difference can pass through
        # the matrix products, so allow a few ulps on a few elements.
        assert m["max_ulp"] <= 4 and m["mismatch"] <= 0.02, m


@pytest.mark.parametrize("ident", list(MODEL_CASES))
def test_transformer_with_kernels_matches_torch_path(interpreted, ident):
    """`HeliosTransformer.use_kernels()`: a whole tiny model with history, kernels vs torch."""
    m = _result(interpreted, ident)["out"]
    limit = 1e-5 if MODEL_CASES[ident]["dtype"] == "float32" else 2e-2
    assert m["max_rel"] <= limit, m


@pytest.mark.parametrize("ident", list(FP8_MODEL_CASES))
def test_fp8_transformer_fused_path_matches_its_torch_path(interpreted, ident):
    """FP8: norms that hand their rows over quantised, GELU fused with the FFN's quantisation, against
    the same `Fp8Linear`s fed by the torch path (which quantises bf16 / float32 activations itself).
    Only the rounding of the norms' sums (float32 vs bf16 activations in between) separates them."""
    m = _result(interpreted, ident)["out"]
    limit = 1e-3 if FP8_MODEL_CASES[ident]["dtype"] == "float32" else 3e-2
    assert m["max_rel"] <= limit, m


def test_e4m3_rounding_is_exact_on_every_value_tie_and_subnormal(interpreted):
    """The kernels' float8 rounding (integer arithmetic under the interpreter) gives torch's bytes."""
    result = _result(interpreted, "e4m3_table/float32")
    assert result["q"]["elements"] > 2400
    assert result["q"]["mismatch"] == 0, result["q"]
    assert result["scale"]["mismatch"] == 0, result["scale"]


def test_available_under_interpreter(interpreted):
    assert interpreted["available(cpu)"] is True


# ---------------------------------------------------------------------------------------------------
# In this process: no kernel launches
# ---------------------------------------------------------------------------------------------------


def test_available_here_matches_the_defined_kernels():
    from helios_kernels import modulation
    from helios_kernels._launch import interpreted

    assert helios_kernels.available("cpu") is interpreted(modulation._residual_norm_kernel)
    assert helios_kernels.available("meta") is False
    assert helios_kernels.available("cuda") is torch.cuda.is_available()


def test_cpu_tensors_without_the_interpreter_are_refused():
    from helios_kernels import modulation
    from helios_kernels._launch import interpreted

    if interpreted(modulation._residual_norm_kernel):
        pytest.skip("this process defined the kernels under TRITON_INTERPRET=1")
    x = torch.zeros(1, 2, 8)
    rows = torch.zeros(1, 2, 8)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        helios_kernels.norm_modulate(x, rows, rows, 1, 1e-6)


def _args():
    """Valid arguments of a small problem: B 2, N 3, D 8 as 2 heads of 4."""
    x = torch.zeros(2, 3, 8, dtype=torch.bfloat16)
    rows = torch.zeros(2, 2, 8)
    w = torch.ones(8, dtype=torch.bfloat16)
    table = torch.zeros(2, 3, 4)
    return x, rows, w, table


BAD_CALLS = {
    "x not 3-d": (
        lambda x, r, w, t: helios_kernels.norm_modulate(x[0], r, r, 0, 1e-6),
        r"x must be \(B, N, D\)",
    ),
    "x int": (lambda x, r, w, t: helios_kernels.norm_modulate(x.int(), r, r, 0, 1e-6), "x must be float32"),
    "x strided": (
        lambda x, r, w, t: helios_kernels.norm_modulate(x.transpose(1, 2), r[..., :3], r[..., :3], 0, 1e-6),
        "contiguous over its last axis",
    ),
    "shift bf16": (
        lambda x, r, w, t: helios_kernels.norm_modulate(x, r.bfloat16(), r, 0, 1e-6),
        "shift must be float32",
    ),
    "scale rows": (
        lambda x, r, w, t: helios_kernels.norm_modulate(x, r, r[:, :1], 0, 1e-6),
        r"scale must have shape \(2, 2, 8\)",
    ),
    "n_hist past N": (
        lambda x, r, w, t: helios_kernels.norm_modulate(x, r, r, 4, 1e-6),
        r"n_hist must be an int in \[0, 3\]",
    ),
    "n_hist tensor": (
        lambda x, r, w, t: helios_kernels.norm_modulate(x, r, r, torch.tensor(1), 1e-6),
        "n_hist must be an int",
    ),
    "eps zero": (
        lambda x, r, w, t: helios_kernels.norm_modulate(x, r, r, 0, 0.0),
        "eps must be a positive float",
    ),
    "y shape": (
        lambda x, r, w, t: helios_kernels.gated_residual(x, x[:, :2], r, 0),
        r"y must have shape \(2, 3, 8\)",
    ),
    "y_start": (
        lambda x, r, w, t: helios_kernels.residual_norm_modulate(x, x, None, r, r, 0, 1e-6, y_start=1),
        r"y must have shape \(2, 2, 8\)",
    ),
    "out dtype": (
        lambda x, r, w, t: helios_kernels.gated_residual(x, x, r, 0, out=x.float()),
        "out must have x's dtype",
    ),
    "norm2 weight bf16": (
        lambda x, r, w, t: helios_kernels.residual_layer_norm(x, x, r, 0, w, w.float(), 1e-6),
        "weight must be float32",
    ),
    "norm_start": (
        lambda x, r, w, t: helios_kernels.residual_layer_norm(
            x, x, r, 0, w.float(), w.float(), 1e-6, norm_start=5
        ),
        r"norm_start must be an int in \[0, 3\]",
    ),
    "rms weight dtype": (
        lambda x, r, w, t: helios_kernels.rms_norm(x, w.float(), 1e-6),
        "weight must have x's dtype",
    ),
    "rms weight shape": (
        lambda x, r, w, t: helios_kernels.rms_norm(x, w[:4], 1e-6),
        r"weight must have shape \(8,\)",
    ),
    "heads": (lambda x, r, w, t: helios_kernels.rms_norm_rope(x, w, t, 3, 1e-6), "heads must divide D = 8"),
    "table shape": (
        lambda x, r, w, t: helios_kernels.rms_norm_rope(x, w, t[:, :2], 2, 1e-6),
        r"table must have shape \(2, 3, 4\)",
    ),
    "table dtype": (
        lambda x, r, w, t: helios_kernels.rms_norm_rope(x, w, t.double(), 2, 1e-6),
        "table must be float32",
    ),
    "head_scale shape": (
        lambda x, r, w, t: helios_kernels.rms_norm_rope(x, w, t, 2, 1e-6, n_hist=1, head_scale=torch.ones(3)),
        r"head_scale must have shape \(2,\) or \(1,\)",
    ),
    "rope x 3-d": (lambda x, r, w, t: helios_kernels.rope(x, t), r"x must be \(B, N, Hd, Dh\)"),
    "rope odd Dh": (
        lambda x, r, w, t: helios_kernels.rope(x.view(2, 3, 8, 1), t),
        "head width Dh must be even",
    ),
    "devices": (
        lambda x, r, w, t: helios_kernels.norm_modulate(x, r.to("meta"), r, 0, 1e-6),
        "all tensors must be on one device",
    ),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_arguments_say_what_was_expected(name):
    call, match = BAD_CALLS[name]
    with pytest.raises(ValueError, match=match):
        call(*_args())


def test_ulp_distance():
    one = torch.tensor([1.0], dtype=torch.bfloat16)
    assert ulp_distance(one, torch.tensor([1.0078125], dtype=torch.bfloat16)).item() == 1  # 1 + 2^-7
    assert ulp_distance(torch.tensor([1.0]), torch.tensor([1.0 + 2**-22])).item() == 2
    assert ulp_distance(torch.tensor([0.0]), torch.tensor([-0.0])).item() == 0
    tiny = torch.tensor([1e-45])  # the smallest float32 subnormal: one step either side of zero
    assert ulp_distance(tiny, -tiny).item() == 2
    m = compare(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]))
    assert m["max_abs"] == 0.5 and m["max_rel"] == 0.2 and m["mismatch"] == 0.5 and m["elements"] == 2


# ---------------------------------------------------------------------------------------------------
# The references are the runtime's arithmetic
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_hist", [0, 2, 5])
def test_references_equal_the_runtime_functions(dtype, n_hist):
    g = torch.Generator().manual_seed(n_hist)
    B, N, Hd, Dh = 2, 5, 2, 8
    D = Hd * Dh
    x = (torch.randn(B, N, D, generator=g) * 3).to(dtype)
    y = torch.randn(B, N, D, generator=g).to(dtype)
    shift, scale, gate = torch.randn(B, 2, 3, D, generator=g).unbind(2)
    angles = torch.randn(B, N, Dh // 2, generator=g)
    table = torch.cat([angles.cos(), angles.sin()], dim=-1)
    eps = 1e-6

    expected = rt.modulate(rt.layer_norm32(x, None, eps), shift, scale, n_hist).to(x.dtype)
    assert torch.equal(ref.norm_modulate(x, shift, scale, n_hist, eps), expected)
    assert torch.equal(ref.gated_residual(x, y, gate, n_hist), rt.gated_residual(x, y, gate, n_hist))

    norm2 = rt._AffineNorm(D)
    norm2.weight.data = torch.randn(D, generator=g)
    norm2.bias.data = torch.randn(D, generator=g)
    want = rt.layer_norm32(x[:, n_hist:], norm2, eps).to(x.dtype)
    got = ref.residual_layer_norm(
        x, torch.zeros_like(y), gate, n_hist, norm2.weight, norm2.bias, eps, norm_start=n_hist
    )
    assert torch.equal(got[1], want)

    heads = x.unflatten(-1, (Hd, Dh))
    assert torch.equal(ref.apply_rope(heads, table), rt.apply_rope(heads, table))
    norm_q = torch.nn.RMSNorm(D, eps=eps).to(dtype)
    norm_q.weight.data = (1 + 0.3 * torch.randn(D, generator=g)).to(dtype)
    with torch.no_grad():
        want = rt.apply_rope(norm_q(x).unflatten(-1, (Hd, -1)), table)
    assert torch.equal(ref.rms_norm_rope(x, norm_q.weight, table, Hd, eps), want)
    assert torch.equal(ref.rms_norm(x, norm_q.weight, eps), F.rms_norm(x, (D,), norm_q.weight, eps))
