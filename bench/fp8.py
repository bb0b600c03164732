"""FP8 on one GPU, piece by piece (issue 17): the kernels, the GEMMs, and the 14B transformer's
forward per pyramid stage in bf16 and FP8, with its distance from float32.

1. `helios_kernels.selftest` at 14B shapes (every kernel, the FP8 ones included) on this GPU;
2. GEMMs at the transformer's shapes (tokens 2940 / 4560 / 11040 = the three stages with the full
   memory; 5120→5120, 5120→13824, 13824→5120): bf16 `x @ Wᵀ`; FP8 `torch._scaled_mm` with row-wise
   scales; FP8 with the activation quantised by separate torch ops first; FP8 with it quantised by
   our one-pass kernel (`quantize_rows`) — the last is what the unfused attention output costs;
3. the `14b` transformer (random bf16 weights), Triton-kernel path, per stage: forward ms in bf16 and
   in FP8 keeping the first/last k blocks in bf16 (k = 3, 1, 0), each also replayed as a CUDA graph;
   relative L2 of each output from the bf16 and the float32 forward (float32: the same weights
   upcast, TF32 off) — the per-forward error beside bf16's own;
4. with `--torchao`: torchao's float8 recipe (`Float8DynamicActivationFloat8WeightConfig`, PerRow)
   on the blocks, compiled, for the stages in `--torchao-stages` (compiling stage 2 takes minutes).

    python bench/fp8.py --out bench/results
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from _common import median_ms, rel_l2, run_header
from transformer_forward import STAGES, chunk

import helios_kernels
from helios_runtime.model.transformer import HeliosTransformer, forward_flops

N_HIST = 2 * 24 * 40 + 12 * 20 + 4 * 6 * 10  # short, mid, long history tokens at 384×640
TOKENS = tuple(N_HIST + 9 * h * w // 4 for h, w, _ in STAGES)  # 2940, 4560, 11040
GEMMS = ((5120, 5120), (5120, 13824), (13824, 5120))  # (K, N): q/k/v/out, FFN in, FFN out


def torch_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row quantisation by separate torch ops (abs-max, divide, cast): what the fused kernels avoid."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp_min(1e-12) / 448.0
    return (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn), scale


def gemm_rates() -> list[dict]:
    from helios_runtime.model.fp8 import quantize_weight

    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for M in TOKENS:
        for K, N in GEMMS:
            x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
            w = (torch.randn(N, K, device="cuda", generator=g) / K**0.5).to(torch.bfloat16)
            bias = torch.randn(N, device="cuda", generator=g).to(torch.bfloat16)
            wq, ws = quantize_weight(w)
            ws = ws.reshape(1, N).contiguous()
            xq, xs = helios_kernels.quantize_rows(x)
            xs = xs.reshape(-1, 1)

            def fp8(xq=xq, xs=xs, wq=wq, ws=ws, bias=bias):
                return torch._scaled_mm(
                    xq, wq.t(), scale_a=xs, scale_b=ws, bias=bias, out_dtype=torch.bfloat16
                )

            def fp8_torch_quant(x=x, wq=wq, ws=ws, bias=bias):
                q, s = torch_quantize(x)
                return torch._scaled_mm(q, wq.t(), scale_a=s, scale_b=ws, bias=bias, out_dtype=torch.bfloat16)

            def fp8_kernel_quant(x=x, wq=wq, ws=ws, bias=bias):
                q, s = helios_kernels.quantize_rows(x)
                return torch._scaled_mm(
                    q, wq.t(), scale_a=s.reshape(-1, 1), scale_b=ws, bias=bias, out_dtype=torch.bfloat16
                )

            flops = 2 * M * K * N
            row = {"M": M, "K": K, "N": N}
            for name, fn in (
                ("bf16", lambda x=x, w=w, bias=bias: torch.nn.functional.linear(x, w, bias)),
                ("fp8", fp8),
                ("fp8_torch_quant", fp8_torch_quant),
                ("fp8_kernel_quant", fp8_kernel_quant),
                ("quantize_rows_only", lambda x=x: helios_kernels.quantize_rows(x)),
            ):
                ms = median_ms(fn)
                row[f"{name}_ms"] = ms
                if name != "quantize_rows_only":
                    row[f"{name}_tflops"] = flops / ms / 1e9
            ref = x.double() @ w.double().t() + bias.double()
            row["bf16_rel_l2"] = rel_l2(torch.nn.functional.linear(x, w, bias), ref)
            row["fp8_rel_l2"] = rel_l2(fp8(), ref)
            row["fp8_speedup"] = row["bf16_ms"] / row["fp8_ms"]
            row["fp8_kernel_quant_speedup"] = row["bf16_ms"] / row["fp8_kernel_quant_ms"]
            print(
                f"  M={M:5d} {K:5d}->{N:5d}: bf16 {row['bf16_tflops']:.0f}, fp8 {row['fp8_tflops']:.0f}, "
                f"+torch quant {row['fp8_torch_quant_tflops']:.0f}, +kernel quant "
                f"{row['fp8_kernel_quant_tflops']:.0f} TFLOP/s",
                flush=True,
            )
            rows.append(row)
    return rows


def stage_inputs(cfg) -> list[dict]:
    return [
        chunk(cfg, h, w, t, (48, 80), "cuda", torch.bfloat16, seed=i) for i, (h, w, t) in enumerate(STAGES)
    ]


@torch.no_grad()
def stage_rows(model: HeliosTransformer, inputs: list[dict], repeat: int, graphs: bool) -> list[dict]:
    """Per stage: eager forward ms (median), CUDA-graph replay ms, TFLOP/s, and the output."""
    rows = []
    for (h, w, _), kw in zip(STAGES, inputs, strict=True):
        flops = forward_flops(model.config, 9 * h * w // 4, N_HIST, 512)
        ms = median_ms(lambda kw=kw: model(**kw), repeat=repeat, warmup=2)
        row = {"latent_hw": [h, w], "ms": ms, "tflops": flops / ms / 1e9, "out": model(**kw).float()}
        if graphs:
            try:
                row.update(graph_replay(model, kw, repeat, row["out"]))
            except Exception as exc:  # a capture this forward does not allow is a finding, not a crash
                row["graph_error"] = f"{type(exc).__name__}: {exc}"[:500]
        print(
            f"    stage {h}x{w}: {ms:.1f} ms ({row['tflops']:.0f} TFLOP/s)"
            + (f", CUDA graph {row['graph_ms']:.1f} ms" if "graph_ms" in row else ""),
            flush=True,
        )
        rows.append(row)
    return rows


def graph_replay(model, kw: dict, repeat: int, eager_out: torch.Tensor) -> dict:
    """The forward captured as one CUDA graph: its replay time, and whether it equals eager."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        model(**kw)  # warm-up on a side stream, as CUDA graph capture requires
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = model(**kw)
    graph_ms = median_ms(graph.replay, repeat=repeat, warmup=2)
    return {"graph_ms": graph_ms, "graph_matches_eager": bool(torch.equal(static_out.float(), eager_out))}


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "out"} for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="14b")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", default="3,1,0", help="bf16 blocks kept at each end, one FP8 run each")
    parser.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph replays")
    parser.add_argument("--torchao", action="store_true", help="also time torchao's float8 recipe")
    parser.add_argument("--torchao-stages", default="0,1")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 in the reference forward
    res: dict = {**run_header("fp8"), "settings": {"preset": args.preset, "resolution": "384x640"}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fp8_{args.preset}_{res['device'].replace(' ', '_')}.json"

    def save() -> None:
        path.write_text(json.dumps(res, indent=2) + "\n")

    print("kernel self-test at 14B shapes:", flush=True)
    checks = helios_kernels.selftest("cuda")
    res["kernel_selftest_failures"] = {k: v for k, v in checks.items() if not v["ok"]}
    res["kernel_selftest_cases"] = len(checks)
    print(f"  {len(checks)} outputs, {len(res['kernel_selftest_failures'])} outside tolerance", flush=True)
    for name, m in res["kernel_selftest_failures"].items():
        print(f"  FAIL {name}: {m}", flush=True)
    save()

    print("GEMMs (TFLOP/s):", flush=True)
    res["gemms"] = gemm_rates()
    save()

    t0 = time.perf_counter()
    model = HeliosTransformer.from_config(args.preset, device="cuda", dtype=torch.bfloat16).eval()
    model.use_kernels()
    res["build_seconds"] = time.perf_counter() - t0
    inputs = stage_inputs(model.config)
    print("bf16 (kernels):", flush=True)
    bf16 = stage_rows(model, inputs, args.repeat, not args.no_graphs)
    res["bf16_stages"] = strip(bf16)
    save()

    print("float32 reference forward:", flush=True)
    with torch.no_grad():
        fp32_model = copy.deepcopy(model).to_dtype(torch.float32)
        fp32_out = []
        for kw in inputs:
            kw32 = {k: (v.float() if v.is_floating_point() else v) for k, v in kw.items()}
            fp32_out.append(fp32_model(**kw32).float())
    del fp32_model
    torch.cuda.empty_cache()
    res["bf16_rel_l2_vs_fp32"] = [rel_l2(r["out"], ref) for r, ref in zip(bf16, fp32_out, strict=True)]
    print(f"  bf16 vs fp32 per stage: {res['bf16_rel_l2_vs_fp32']}", flush=True)
    save()

    fp8_model = copy.deepcopy(model)
    res["fp8"] = {}
    for keep in sorted({int(k) for k in args.keep.split(",")}, reverse=True):
        fp8_model.quantize_fp8(keep_first=keep, keep_last=keep)
        print(f"fp8, first/last {keep} blocks bf16:", flush=True)
        rows = stage_rows(fp8_model, inputs, args.repeat, not args.no_graphs)
        entry = {
            "stages": strip(rows),
            "rel_l2_vs_bf16": [rel_l2(r["out"], b["out"]) for r, b in zip(rows, bf16, strict=True)],
            "rel_l2_vs_fp32": [rel_l2(r["out"], ref) for r, ref in zip(rows, fp32_out, strict=True)],
            "speedup_vs_bf16": [b["ms"] / r["ms"] for r, b in zip(rows, bf16, strict=True)],
        }
        res["fp8"][f"keep{keep}"] = entry
        print(
            f"  speed-up {[round(s, 3) for s in entry['speedup_vs_bf16']]}, rel L2 vs bf16 "
            f"{[round(e, 4) for e in entry['rel_l2_vs_bf16']]}, vs fp32 "
            f"{[round(e, 4) for e in entry['rel_l2_vs_fp32']]}",
            flush=True,
        )
        save()
    del fp8_model
    torch.cuda.empty_cache()

    if args.torchao:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        print("torchao float8 (PerRow), blocks compiled:", flush=True)
        ao = copy.deepcopy(model).use_kernels(False)
        quantize_(ao.blocks, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        ao.compile_blocks()
        res["torchao"] = {}
        for i in (int(s) for s in args.torchao_stages.split(",")):
            h, w, _ = STAGES[i]
            t0 = time.perf_counter()
            with torch.no_grad():
                out_ao = ao(**inputs[i]).float()
            compile_s = time.perf_counter() - t0
            with torch.no_grad():
                ms = median_ms(lambda i=i: ao(**inputs[i]), repeat=args.repeat, warmup=1)
            res["torchao"][f"stage{i}"] = {
                "latent_hw": [h, w],
                "ms": ms,
                "compile_seconds": compile_s,
                "rel_l2_vs_bf16": rel_l2(out_ao, bf16[i]["out"]),
                "rel_l2_vs_fp32": rel_l2(out_ao, fp32_out[i]),
            }
            print(f"  stage {h}x{w}: {ms:.1f} ms (compile {compile_s:.0f} s)", flush=True)
            save()

    save()
    print(f"\n{res['device']}: bf16 stages {[round(r['ms'], 1) for r in res['bf16_stages']]} ms")
    for name, entry in res["fp8"].items():
        print(
            f"fp8 {name}: {[round(r['ms'], 1) for r in entry['stages']]} ms, speed-up "
            f"{[round(s, 2) for s in entry['speedup_vs_bf16']]}, vs fp32 "
            f"{[round(e, 4) for e in entry['rel_l2_vs_fp32']]} (bf16: "
            f"{[round(e, 4) for e in res['bf16_rel_l2_vs_fp32']]})"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
