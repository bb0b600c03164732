"""FP8 inference (issue 17): weight quantisation, the FP8 linear's maths, the model's quantised
blocks, the switches that choose it, CUDA-graph fallback and the compile cache, on the CPU.

The Triton kernels' FP8 outputs are checked against their torch references in tests/kernels (under
TRITON_INTERPRET=1); here the FP8 linear runs its CPU path, the same function of the quantised values
that `torch._scaled_mm` computes on a GPU."""

from __future__ import annotations

import argparse
import copy
import os

import pytest
import torch

import helios_kernels
from helios_kernels.parity import tiny_forward_inputs
from helios_runtime.engine.engine import WorldEngine
from helios_runtime.engine.fastpath import FastPathChoice, compile_cache_dir, use_compile_cache
from helios_runtime.engine.graphs import GraphedForward
from helios_runtime.engine.world_model import FP8_KEEP_BF16_BLOCKS, WorldModel
from helios_runtime.model.fp8 import Fp8Linear, quantize_weight
from helios_runtime.model.transformer import HeliosTransformer

E4M3_STEP = 2.0**-4  # e4m3 keeps 3 mantissa bits: a rounding moves a normal value by at most 1/16 of it


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_weight_quantisation_is_per_output_channel_and_within_a_rounding():
    g = torch.Generator().manual_seed(0)
    # Rows of very different magnitudes: one scale per row keeps each row's precision.
    w = torch.randn(32, 48, generator=g) * torch.logspace(-3, 2, 32)[:, None]
    q, scale = quantize_weight(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape and scale.shape == (32,)
    torch.testing.assert_close(scale, w.abs().amax(dim=1) / 448, rtol=1e-6, atol=0)
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((32,), 448.0))  # each row's max hits 448
    back = q.float() * scale[:, None]
    # Normal values: within 1/16 relative; subnormals (below 2^-6 of the scale·448): 2^-10·scale absolute.
    bound = E4M3_STEP * w.abs() + 2.0**-10 * scale[:, None]
    assert bool(((back - w).abs() <= bound).all())


def test_fp8_linear_computes_the_product_of_its_quantised_operands():
    g = torch.Generator().manual_seed(1)
    linear = torch.nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(48, 64, generator=g) * 0.1)
        linear.bias.copy_(torch.randn(48, generator=g))
    fp8 = Fp8Linear.from_linear(linear)
    x = torch.randn(2, 5, 64, generator=g)
    out = fp8(x)
    assert out.shape == (2, 5, 48) and out.dtype == torch.float32
    q, s = helios_kernels.reference.quantize_rows(x)
    want = (q.double() * s.double()[..., None]) @ (
        fp8.weight.double() * fp8.weight_scale.double().t()
    ).t() + linear.bias.double()
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    # Already-quantised rows (what the fused norms hand over) give the same result.
    torch.testing.assert_close(fp8((q, s)), out, rtol=0, atol=0)
    # And it is FP8: close to the float32 layer, but not equal to it.
    err = _rel(out, linear(x))
    assert 1e-4 < err < 0.05, err


def test_fp8_linear_refuses_what_an_fp8_gemm_cannot_take():
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        Fp8Linear(torch.zeros(16, 16), torch.ones(16), None, torch.bfloat16)
    with pytest.raises(ValueError, match="divisible by 16"):
        Fp8Linear(torch.zeros(16, 24, dtype=torch.float8_e4m3fn), torch.ones(16), None, torch.bfloat16)


def _tiny_inputs(model: HeliosTransformer, seed: int = 0) -> dict:
    return tiny_forward_inputs(model.config.in_channels, model.config.text_dim, seed)


@torch.no_grad()
def test_quantize_fp8_replaces_the_middle_blocks_linears():
    model = HeliosTransformer.from_config("tiny", device="cpu", seed=0).eval()
    kw = _tiny_inputs(model)
    want = model(**kw)
    L = len(model.blocks)
    fp8 = copy.deepcopy(model).quantize_fp8(keep_first=1, keep_last=0)
    assert [b.fp8 for b in fp8.blocks] == [False] + [True] * (L - 1)
    assert fp8.precision == "fp8" and model.precision == "float32"
    assert isinstance(fp8.blocks[1].ffn.net[2], Fp8Linear)
    assert isinstance(fp8.blocks[0].attn1.to_q, torch.nn.Linear)  # kept block untouched
    assert not isinstance(fp8.blocks[1].scale_shift_table, Fp8Linear)
    err = _rel(fp8(**kw), want)
    assert 1e-4 < err < 0.1, err  # FP8's error, not a different function
    # All blocks quantised moves further from float32 than keeping one.
    all8 = copy.deepcopy(model).quantize_fp8()
    assert all(b.fp8 for b in all8.blocks)
    for bad in (-1, L + 1, 1.5, True):
        with pytest.raises(ValueError, match="keep_first"):
            copy.deepcopy(model).quantize_fp8(keep_first=bad)


def test_fp8_choice_reads_the_environment_and_refuses_unknown_precisions():
    assert FastPathChoice.from_env({}).precision == "bf16"
    assert FastPathChoice.from_env({"HELIOS_PRECISION": "fp8"}).precision == "fp8"
    with pytest.raises(ValueError, match="precision"):
        FastPathChoice.from_env({"HELIOS_PRECISION": "fp4"})
    with pytest.raises(ValueError, match="precision"):
        FastPathChoice(precision="int8")
    with pytest.raises(ValueError, match="precision"):
        WorldModel.load("tiny", device="cpu").fast_path(precision="int8")


def test_fp8_on_the_cpu_is_an_emulation_the_engine_runs(monkeypatch):
    # From the environment (a server's worker) FP8 on the CPU is ignored: it would only be slower.
    monkeypatch.setenv("HELIOS_PRECISION", "fp8")
    assert WorldModel.load("tiny", device="cpu").transformer.precision == "float32"
    # Asked for explicitly (rollout / eval drift --precision fp8): emulated.
    model = WorldModel.load("tiny", device="cpu", fast=FastPathChoice(precision="fp8"))
    blocks = model.transformer.blocks
    keep = min(FP8_KEEP_BF16_BLOCKS, len(blocks) // 2)
    assert [b.fp8 for b in blocks] == [i >= keep and i < len(blocks) - keep for i in range(len(blocks))]
    engine = WorldEngine(model)
    first = engine.reset("a lighthouse on a cliff", seed=3, width=64, height=64)
    chunk = engine.step(first.session_id, "night falls")
    assert chunk.frames.shape == (33, 64, 64, 3)


def test_cuda_graphs_fall_back_to_the_module_off_the_gpu():
    model = HeliosTransformer.from_config("tiny", device="cpu", seed=0).eval()
    graphed = GraphedForward(model)
    kw = _tiny_inputs(model)
    with torch.no_grad():
        assert torch.equal(graphed(**kw), model(**kw))
    assert not graphed._graphs  # nothing captured on the CPU
    plain = WorldModel.load("tiny", device="cpu")
    assert plain.forward is plain.transformer  # no fast path on the CPU: no graphs


def test_compile_cache_folder(tmp_path, monkeypatch):
    assert compile_cache_dir({"HELIOS_CACHE_DIR": str(tmp_path / "c")}) == tmp_path / "c"
    assert compile_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "helios" / "compile"
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(name, "")  # recorded first, so what use_compile_cache sets is undone after
        monkeypatch.delenv(name)
    folder = use_compile_cache({"HELIOS_CACHE_DIR": str(tmp_path / "c")})
    assert folder.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(folder / "triton")
    import torch._inductor.config

    assert torch._inductor.config.fx_graph_cache is True
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    assert cache_dir() == str(folder / "inductor")  # where Inductor really writes
    # Importing torch._dynamo sets the variable to Inductor's default: that is replaced too.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    use_compile_cache({"HELIOS_CACHE_DIR": str(tmp_path / "c")})
    assert cache_dir() == str(folder / "inductor")
    # A user's own cache folders win.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine-inductor"))
    use_compile_cache({"HELIOS_CACHE_DIR": str(tmp_path / "c")})
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine-inductor")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))
    use_compile_cache({"HELIOS_CACHE_DIR": str(tmp_path / "c")})
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "mine")


def test_precision_flags_on_serve_rollout_and_eval(capsys):
    from helios_runtime.commands import fast_path_choice
    from helios_sdk.cli import build_parser

    parser = build_parser()
    for argv in (["serve"], ["rollout", "--prompt", "x"], ["eval", "drift"]):
        assert parser.parse_args([*argv, "--precision", "fp8"]).precision == "fp8"
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--precision", "fp4"])
    assert "invalid choice" in capsys.readouterr().err
    assert fast_path_choice(argparse.Namespace(precision="fp8")).precision == "fp8"
    assert fast_path_choice(argparse.Namespace(precision=None)) == FastPathChoice.from_env()
