"""Real time on one GPU: our engine's fast path, bf16 and FP8, against diffusers'
HeliosPyramidPipeline at its best, on the same weights, in one run (issues 7 and 17).

The world: the `14b` transformer with random bf16 weights initialised on the GPU, the Wan 2.1 VAE in
bf16, 384×640, Distilled sampling with the amplified first chunk, `--chunks` chunks (33 frames each),
VAE decode included. In order:

1. ours, bf16 fast path (`WorldModel.fast_path`: Triton kernels for the blocks' row operations,
   cuDNN attention, CUDA graphs for pyramid stage 0, channels-last bf16 VAE with its decoder step
   compiled): warm-up seconds, per-stage forward ms and TFLOP/s, rollouts at [2,2,2] and [1,1,1];
2. diffusers 0.42.1 `HeliosPyramidPipeline` holding the very same tensors, at its best: transformer
   blocks compiled (`compile_repeated_blocks(fullgraph=True)`), the faster of its attention backends
   (PyTorch's default SDPA or cuDNN's, timed on the largest stage first), the VAE in bf16 and
   channels-last, its decoder eager and then compiled (both rollouts reported; the faster counts);
3. ours, FP8 (`fast_path(precision="fp8")`, the blocks' linears in float8): per-stage ms, rollouts;
4. float32 (the same weights upcast, TF32 off, eager), [1,1,1], `--fp32-chunks` chunks: the
   accuracy reference. Latents per chunk: FP8 against bf16 ([2,2,2] and [1,1,1]) and both against
   float32 ([1,1,1]), relative L2.
Optional: ours eager (`--with-eager`), our blocks torch.compile'd (`--with-compiled-blocks`).

Both sides do the same work: `--chunks` chunks of 33 decoded frames. diffusers trims its output to
4k + 1 frames at the end (261 of 264 for 8 chunks); every FPS here counts the 33·chunks frames
decoded, so a ratio is a ratio of wall times. The bf16 GEMM rate is measured in the same run.

    python bench/realtime.py --out bench/results
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import time
from pathlib import Path

import torch
from _common import median_ms, random_world_model, rel_l2, rollout, run_header, summarize
from transformer_forward import STAGES, chunk, reference_from

import helios_kernels
from helios_runtime.engine.engine import WorldEngine
from helios_runtime.model.attention import get_attention_backend
from helios_runtime.model.transformer import forward_flops
from helios_runtime.sampling import sampler_preset
from helios_runtime.sampling.schedule import preset as scheduler_preset

PROMPT = "a lighthouse on a cliff above a stormy sea"
N_HIST = 2 * 24 * 40 + 12 * 20 + 4 * 6 * 10  # short, mid, long history tokens at 384×640
VAE_TFLOP_PER_CHUNK = 69.0  # issue 7's figure for a 33-frame 384×640 decode


def matmul_rate() -> float:
    """TFLOP/s of a large bf16 GEMM on this GPU now (median of 20)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192**3 / median_ms(lambda: a @ b, repeat=20, warmup=5) / 1e9


def stage_times(transformer, repeat: int, forward=None) -> list[dict]:
    """Per pyramid stage: median forward ms (of `forward`, default the transformer) and TFLOP/s."""
    forward = forward or transformer
    cfg, rows = transformer.config, []
    for h, w, t in STAGES:
        inputs = chunk(cfg, h, w, t, (48, 80), "cuda", torch.bfloat16, seed=0)
        with torch.no_grad():
            ms = median_ms(lambda inputs=inputs: forward(**inputs), repeat=repeat, warmup=2)
        flops = forward_flops(cfg, 9 * h * w // 4, N_HIST, 512)
        rows.append({"latent_hw": [h, w], "ms": ms, "tflops": flops / ms / 1e9})
        print(f"  stage {h}x{w}: {ms:.1f} ms, {flops / ms / 1e9:.0f} TFLOP/s", flush=True)
    return rows


def pipeline_run(pipe, text: torch.Tensor, chunks: int, steps: list[int]) -> dict:
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = pipe(
        prompt_embeds=text,
        height=384,
        width=640,
        num_frames=33 * chunks,
        guidance_scale=1.0,
        pyramid_num_inference_steps_list=steps,
        is_amplify_first_chunk=True,
        generator=torch.Generator("cuda").manual_seed(1),
        output_type="pt",
    )
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    decoded = 33 * chunks  # the pipeline decodes every chunk's 33 frames, then trims to 4k + 1
    return {
        "wall_s": wall,
        "frames_decoded": decoded,
        "frames_returned": int(out.frames[0].shape[0]),
        "fps": decoded / wall,
    }


def diffusers_attention(transformer, inputs: dict) -> dict:
    """Largest-stage forward ms of diffusers' model under each attention backend; leaves the faster set."""
    times = {}
    for name in ("native", "_native_cudnn"):
        transformer.set_attention_backend(name)
        with torch.no_grad():
            times[name] = median_ms(lambda: transformer(**inputs, return_dict=False), repeat=3, warmup=1)
        print(f"  diffusers attention {name}: {times[name]:.1f} ms (stage 2, eager)", flush=True)
    best = min(times, key=times.get)
    transformer.set_attention_backend(best)
    return {"stage2_eager_ms": times, "chosen": best}


def measure_ours(res: dict, name: str, model, engine, chunks: int, repeat: int) -> tuple[list, list]:
    """Per-stage forward times, then [2,2,2] and [1,1,1] rollouts (peak memory of the first) into
    res[name + "_stages" / "_222" / "_111"]; returns both rollouts' rows, latents kept."""
    res[f"{name}_stages"] = stage_times(model.transformer, repeat, model.forward)
    torch.cuda.reset_peak_memory_stats()
    rows_222 = rollout(engine, chunks, PROMPT, keep_latents=True)
    res[f"{name}_222"] = {**summarize(rows_222), "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    one_step = sampler_preset("distilled").replace(steps=(1, 1, 1))
    rows_111 = rollout(engine, chunks, PROMPT, settings=one_step, keep_latents=True)
    res[f"{name}_111"] = summarize(rows_111)
    return rows_222, rows_111


def per_chunk_rel_l2(rows: list[dict], ref_rows: list[dict]) -> list[float]:
    return [rel_l2(r["latents"], q["latents"]) for r, q in zip(rows, ref_rows, strict=False)]


def run_diffusers(model, args, res: dict, save) -> None:
    import diffusers
    import torch._dynamo
    from diffusers import AutoencoderKLWan, HeliosDMDScheduler, HeliosPyramidPipeline

    res["versions"]["diffusers"] = diffusers.__version__
    transformer = reference_from(model.transformer)
    vae_cfg = {k: v for k, v in model.vae.config.to_dict().items() if not k.startswith("_")}
    with torch.device("meta"):
        vae = AutoencoderKLWan(**vae_cfg)
    # bf16, channels-last: the reference's VAE as fast as its own code allows (same tensors as ours).
    vae.load_state_dict(model.vae.state_dict(), strict=True, assign=True)
    vae = vae.to(torch.bfloat16).eval()
    for param in vae.parameters():  # the 3D convolutions' weights (channels_last_3d needs rank 5)
        if param.dim() == 5:
            param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
    scheduler = HeliosDMDScheduler.from_config(scheduler_preset("distilled").to_dict())
    pipe = HeliosPyramidPipeline(None, None, vae, scheduler, transformer, is_distilled=True)
    pipe.set_progress_bar_config(disable=True)
    text = model.text_encoder.encode([PROMPT]).to("cuda")
    h, w, t = STAGES[2]
    inputs = chunk(model.transformer.config, h, w, t, (48, 80), "cuda", torch.bfloat16, seed=0)
    res["diffusers_attention"] = diffusers_attention(transformer, inputs)
    del inputs
    print("diffusers, blocks compiled, VAE eager (warm-up):", flush=True)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    t0 = time.perf_counter()
    pipe.transformer.compile_repeated_blocks(fullgraph=True)
    try:
        pipeline_run(pipe, text, 2, [2, 2, 2])
    except Exception as exc:  # an attention backend that full-graph compilation refuses
        if res["diffusers_attention"]["chosen"] == "native":
            raise
        res["diffusers_attention"]["compile_error"] = f"{type(exc).__name__}: {exc}"[:500]
        res["diffusers_attention"]["chosen"] = "native"
        transformer.set_attention_backend("native")
        torch._dynamo.reset()
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
        pipeline_run(pipe, text, 2, [2, 2, 2])
    res["diffusers_warmup_seconds"] = time.perf_counter() - t0
    res["diffusers_vae_eager_222"] = pipeline_run(pipe, text, args.chunks, [2, 2, 2])
    print(f"  [2,2,2] VAE eager: {res['diffusers_vae_eager_222']['fps']:.2f} FPS", flush=True)
    save()
    print("diffusers, VAE decoder compiled (warm-up):", flush=True)
    eager_decoder = pipe.vae.decoder
    pipe.vae.decoder = torch.compile(eager_decoder)
    t0 = time.perf_counter()
    pipeline_run(pipe, text, 2, [2, 2, 2])
    res["diffusers_vae_compile_warmup_seconds"] = time.perf_counter() - t0
    res["diffusers_vae_compiled_222"] = pipeline_run(pipe, text, args.chunks, [2, 2, 2])
    print(f"  [2,2,2] VAE compiled: {res['diffusers_vae_compiled_222']['fps']:.2f} FPS", flush=True)
    compiled_faster = res["diffusers_vae_compiled_222"]["fps"] >= res["diffusers_vae_eager_222"]["fps"]
    res["diffusers_vae"] = "compiled" if compiled_faster else "eager"
    if not compiled_faster:
        pipe.vae.decoder = eager_decoder
    res["diffusers_best_222"] = res[f"diffusers_vae_{res['diffusers_vae']}_222"]
    res["diffusers_best_111"] = pipeline_run(pipe, text, args.chunks, [1, 1, 1])
    print(f"  [1,1,1] at its best: {res['diffusers_best_111']['fps']:.2f} FPS", flush=True)
    save()


def serve_start_seconds(preset: str, timeout: float = 240.0) -> dict:
    """Start `helios serve --model random-<preset>` and time it to its 'listening on' line (printed
    once the worker has warmed up and health reports SERVING); then stop it."""
    import subprocess
    import sys
    import threading

    gc.collect()
    torch.cuda.empty_cache()
    cmd = [sys.executable, "-m", "helios_sdk.cli", "serve", "--model", f"random-{preset}", "--port", "0"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(timeout, proc.terminate)  # a silent server ends the read below
    watchdog.start()
    lines, seconds = [], None
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "listening on" in line:
                seconds = time.perf_counter() - start
                break
    finally:
        watchdog.cancel()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"helios serve (warm cache) to SERVING: {seconds} s", flush=True)
    return {"seconds_to_serving": seconds, "log_tail": lines[-8:]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="14b")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--fp32-chunks", type=int, default=8, help="float32 reference chunks (0: skip)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-diffusers", action="store_true")
    parser.add_argument("--skip-fp8", action="store_true")
    parser.add_argument("--with-eager", action="store_true", help="also ours eager (stages + 3 chunks)")
    parser.add_argument("--with-compiled-blocks", action="store_true", help="also our blocks compiled")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode of our blocks")
    parser.add_argument(
        "--serve-restart",
        action="store_true",
        help="last: time a `helios serve --model random-PRESET` start to SERVING with the compile cache "
        "this run filled (the second start on this machine)",
    )
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 (our bf16 GEMMs don't care)
    device = torch.device("cuda")
    res: dict = {
        **run_header("realtime"),
        "settings": {
            "preset": args.preset,
            "resolution": "384x640",
            "sampler": "distilled, amplified first chunk",
            "chunks": args.chunks,
            "frames_counted": f"33 per chunk on both sides ({33 * args.chunks})",
            "transformer_dtype": "bfloat16 (fp8 rows: float8 e4m3fn linears)",
            "vae_dtype": "bfloat16",
            "ours_attention_backend": get_attention_backend(),
            "diffusers": "blocks compile_repeated_blocks(fullgraph=True); attention: the faster of "
            "native / _native_cudnn; VAE bf16 channels-last, decoder eager and torch.compile'd",
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"realtime_{args.preset}_{res['device'].replace(' ', '_')}.json"

    def save() -> None:  # after every section, so a run cut short still leaves its numbers
        path.write_text(json.dumps(res, indent=2) + "\n")

    from helios_runtime.engine.fastpath import compile_cache_dir

    cache = compile_cache_dir()
    res["settings"]["compile_cache"] = {
        "dir": str(cache),
        "warm_at_start": cache.is_dir() and any(cache.rglob("*")),
    }
    res["matmul_tflops"] = matmul_rate()
    print(f"bf16 GEMM: {res['matmul_tflops']:.0f} TFLOP/s", flush=True)

    t0 = time.perf_counter()
    model = random_world_model(args.preset, device)
    torch.cuda.synchronize()
    res["build_seconds"] = time.perf_counter() - t0
    one_step = sampler_preset("distilled").replace(steps=(1, 1, 1))

    if args.with_eager:
        print("ours, eager:", flush=True)
        res["ours_eager_stages"] = stage_times(model.transformer, args.repeat)
        res["ours_eager_222_3chunks"] = summarize(rollout(WorldEngine(model), 3, PROMPT))
        save()

    checks = helios_kernels.selftest("cuda")  # every kernel, the FP8 ones included, at 14B shapes
    res["kernel_selftest"] = {
        "outputs": len(checks),
        "failures": {k: v for k, v in checks.items() if not v["ok"]},
    }
    print(f"kernel self-test: {len(res['kernel_selftest']['failures'])} of {len(checks)} off", flush=True)

    print("ours, bf16 fast path:", flush=True)
    t0 = time.perf_counter()
    model.fast_path()
    engine = WorldEngine(model)
    rollout(engine, 2, "warm-up")  # compiles the VAE, captures stage 0's graph; the server does this too
    res["ours_bf16_warmup_seconds"] = time.perf_counter() - t0
    bf16_222, bf16_111 = measure_ours(res, "ours_bf16", model, engine, args.chunks, args.repeat)
    save()

    if args.with_compiled_blocks:
        print("ours, transformer blocks torch.compile'd instead of the kernels:", flush=True)
        model.transformer.use_kernels(False).compile_blocks(mode=args.compile_mode)
        rollout(WorldEngine(model), 1, "warm-up")
        res["ours_compiled_blocks_stages"] = stage_times(model.transformer, args.repeat)
        res["ours_compiled_blocks_222"] = summarize(rollout(WorldEngine(model), args.chunks, PROMPT))
        model.transformer.use_kernels()
        save()

    if not args.skip_diffusers:
        run_diffusers(model, args, res, save)
        res["ratio_bf16_222"] = res["ours_bf16_222"]["fps"] / res["diffusers_best_222"]["fps"]
        res["ratio_bf16_111"] = res["ours_bf16_111"]["fps"] / res["diffusers_best_111"]["fps"]
        save()

    if not args.skip_fp8:
        print("ours, FP8:", flush=True)
        t0 = time.perf_counter()
        # A copy, quantised: the bf16 model stays whole for the float32 reference below.
        fp8_model = dataclasses.replace(model, transformer=copy.deepcopy(model.transformer))
        fp8_model.fast_path(precision="fp8")
        engine = WorldEngine(fp8_model)
        rollout(engine, 1, "warm-up")
        res["ours_fp8_warmup_seconds"] = time.perf_counter() - t0
        blocks = fp8_model.transformer.blocks
        res["ours_fp8_bf16_blocks"] = [i for i, b in enumerate(blocks) if not b.fp8]
        fp8_222, fp8_111 = measure_ours(res, "ours_fp8", fp8_model, engine, args.chunks, args.repeat)
        res["fp8_vs_bf16_rel_l2_222"] = per_chunk_rel_l2(fp8_222, bf16_222)
        res["fp8_vs_bf16_rel_l2_111"] = per_chunk_rel_l2(fp8_111, bf16_111)
        if "diffusers_best_222" in res:
            res["ratio_fp8_222"] = res["ours_fp8_222"]["fps"] / res["diffusers_best_222"]["fps"]
            res["ratio_fp8_111"] = res["ours_fp8_111"]["fps"] / res["diffusers_best_111"]["fps"]
        save()
        del fp8_model, engine, blocks
        gc.collect()
        torch.cuda.empty_cache()

    if args.fp32_chunks:
        print("float32 reference ([1,1,1], eager torch path, TF32 off):", flush=True)
        fp32 = copy.deepcopy(model.transformer).use_kernels(False).to_dtype(torch.float32)
        fp32_model = dataclasses.replace(model, transformer=fp32)  # no fast path: no graphs
        fp32_111 = rollout(
            WorldEngine(fp32_model), args.fp32_chunks, PROMPT, settings=one_step, keep_latents=True
        )
        res["fp32_111_wall_s"] = [r["wall_s"] for r in fp32_111]
        res["bf16_vs_fp32_rel_l2_111"] = per_chunk_rel_l2(bf16_111, fp32_111)
        if not args.skip_fp8:
            res["fp8_vs_fp32_rel_l2_111"] = per_chunk_rel_l2(fp8_111, fp32_111)
        del fp32_model, fp32
        save()

    if args.serve_restart:
        res["serve_warm_start"] = serve_start_seconds(args.preset)
        save()

    stage_flops = sum(
        2 * forward_flops(model.transformer.config, 9 * h * w // 4, N_HIST, 512) for h, w, _ in STAGES
    )
    fast_ms = sum(2 * r["ms"] for r in res["ours_bf16_stages"])
    res["transformer_tflops_222"] = stage_flops / fast_ms / 1e9
    res["transformer_share_of_matmul_rate"] = res["transformer_tflops_222"] / res["matmul_tflops"]
    save()

    print(f"\n{res['device']} ({args.chunks} chunks, 384x640, FPS = {33 * args.chunks} frames / wall):")
    print(
        f"{'':28} {'[2,2,2] FPS':>12} {'steady':>8} {'p50 s':>7} {'p99 s':>7} {'1st frame':>9} {'[1,1,1]':>8}"
    )
    for name in ("ours_bf16", "ours_fp8"):
        if f"{name}_222" in res:
            a, b = res[f"{name}_222"], res[f"{name}_111"]
            print(
                f"{name:28} {a['fps']:12.2f} {a['steady_fps']:8.2f} {a['chunk_s_p50']:7.3f} "
                f"{a['chunk_s_p99']:7.3f} {a['first_frame_s_p50']:9.3f} {b['fps']:8.2f}"
            )
    if "diffusers_best_222" in res:
        print(
            f"{'diffusers (VAE eager)':28} {res['diffusers_vae_eager_222']['fps']:12.2f}\n"
            f"{'diffusers (VAE compiled)':28} {res['diffusers_vae_compiled_222']['fps']:12.2f} "
            f"{'':35} {res['diffusers_best_111']['fps']:8.2f}"
        )
        for key in ("ratio_bf16_222", "ratio_bf16_111", "ratio_fp8_222", "ratio_fp8_111"):
            if key in res:
                print(f"{key}: {res[key]:.2f}x")
    for key in (
        "fp8_vs_bf16_rel_l2_222",
        "fp8_vs_bf16_rel_l2_111",
        "bf16_vs_fp32_rel_l2_111",
        "fp8_vs_fp32_rel_l2_111",
    ):
        if key in res:
            print(f"{key}: {[round(v, 4) for v in res[key]]}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
