"""Real time on one GPU: our engine's fast path against diffusers' HeliosPyramidPipeline, compiled as
the reference ships it, on the same weights, in one run (issue 7).

The world: the `14b` transformer with random bf16 weights initialised on the GPU, the Wan 2.1 VAE in
bf16, 384×640, Distilled sampling with the amplified first chunk, `--chunks` chunks (33 frames each),
VAE decode included. In order:

1. ours, eager (the plain path): per-stage forward ms and a short rollout whose latents are the
   parity reference for the fast path;
2. ours, fast path (`WorldModel.fast_path`: Triton kernels for the blocks' row operations, cuDNN
   attention, channels-last bf16 VAE with its decoder step compiled): warm-up seconds, per-stage
   forward ms and achieved TFLOP/s, rollouts at [2,2,2] and [1,1,1];
3. ours with the blocks torch.compile'd instead of the kernels: per-stage ms and a rollout;
4. diffusers 0.42.1 `HeliosPyramidPipeline` holding the very same tensors, its transformer blocks
   compiled with `compile_repeated_blocks(fullgraph=True)`: warm-up, then the same rollouts.

FPS = decoded frames / wall time. The matmul rate of this GPU is measured in the same run (a large
bf16 GEMM) so the transformer's share of it can be read off.

    python bench/realtime.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import random_world_model, rel_l2, rollout, run_header, summarize
from transformer_forward import STAGES, chunk, reference_from

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
    for _ in range(5):
        a @ b
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return 2 * 8192**3 / statistics.median(times) / 1e9


def stage_times(transformer, repeat: int) -> list[dict]:
    cfg, rows = transformer.config, []
    for h, w, t in STAGES:
        inputs = chunk(cfg, h, w, t, (48, 80), "cuda", torch.bfloat16, seed=0)
        times = []
        with torch.no_grad():
            for i in range(repeat + 2):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                transformer(**inputs)
                e.record()
                e.synchronize()
                if i >= 2:
                    times.append(s.elapsed_time(e))
        ms = statistics.median(times)
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
    frames = out.frames[0].shape[0]
    return {"wall_s": wall, "frames": int(frames), "fps": frames / wall}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="14b")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--parity-chunks", type=int, default=3, help="eager chunks for the parity check")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode of our blocks")
    parser.add_argument("--skip-diffusers", action="store_true")
    parser.add_argument("--skip-compiled-blocks", action="store_true")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    device = torch.device("cuda")
    res: dict = {
        **run_header("realtime"),
        "settings": {
            "preset": args.preset,
            "resolution": "384x640",
            "sampler": "distilled, amplified first chunk",
            "chunks": args.chunks,
            "transformer_dtype": "bfloat16",
            "vae_dtype": "bfloat16",
            "attention_backend": get_attention_backend(),
            "compile_mode": args.compile_mode,
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"realtime_{args.preset}_{res['device'].replace(' ', '_')}.json"

    def save() -> None:  # after every section, so a run cut short still leaves its numbers
        path.write_text(json.dumps(res, indent=2) + "\n")

    res["matmul_tflops"] = matmul_rate()
    print(f"bf16 GEMM: {res['matmul_tflops']:.0f} TFLOP/s", flush=True)

    t0 = time.perf_counter()
    model = random_world_model(args.preset, device)
    torch.cuda.synchronize()
    res["build_seconds"] = time.perf_counter() - t0
    fast_steps = sampler_preset("distilled")
    one_step = fast_steps.replace(steps=(1, 1, 1))

    print("ours, eager:", flush=True)
    res["ours_eager_stages"] = stage_times(model.transformer, args.repeat)
    eager_rows = rollout(WorldEngine(model), args.parity_chunks, PROMPT, keep_latents=True)
    res["ours_eager_222"] = summarize(eager_rows)
    save()

    print("ours, fast path (Triton kernels, cuDNN attention, compiled bf16 VAE):", flush=True)
    t0 = time.perf_counter()
    model.fast_path()
    engine = WorldEngine(model)
    warm = rollout(engine, 2, "warm-up")  # compiles the three stage shapes; the server does this too
    res["ours_fast_warmup_seconds"] = time.perf_counter() - t0
    res["ours_fast_stages"] = stage_times(model.transformer, args.repeat)
    del warm
    torch.cuda.reset_peak_memory_stats()
    fast_rows = rollout(engine, args.chunks, PROMPT, keep_latents=True)
    res["ours_fast_222"] = summarize(fast_rows)
    res["ours_fast_222"]["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    res["ours_fast_111"] = summarize(rollout(engine, args.chunks, PROMPT, settings=one_step))
    res["ours_fast_transformer"] = "kernels" if model.transformer.blocks[0].kernels else "compiled"
    res["parity_fast_vs_eager_rel_l2"] = [
        rel_l2(f["latents"], e["latents"]) for f, e in zip(fast_rows, eager_rows, strict=False)
    ]
    res["parity_note"] = (
        "relative L2 of the fast path's chunk latents from the eager path's, same seed; both bf16. "
        "Later chunks condition on earlier ones, so rounding differences compound along the chain."
    )
    save()

    if not args.skip_compiled_blocks:
        print("ours, transformer blocks torch.compile'd instead of the kernels:", flush=True)
        model.transformer.use_kernels(False).compile_blocks(mode=args.compile_mode)
        t0 = time.perf_counter()
        rollout(engine, 1, "warm-up")
        res["ours_compiled_blocks_warmup_seconds"] = time.perf_counter() - t0
        res["ours_compiled_blocks_stages"] = stage_times(model.transformer, args.repeat)
        res["ours_compiled_blocks_222"] = summarize(rollout(engine, args.chunks, PROMPT))
        save()

    if not args.skip_diffusers:
        import diffusers
        from diffusers import AutoencoderKLWan, HeliosDMDScheduler, HeliosPyramidPipeline

        res["versions"]["diffusers"] = diffusers.__version__
        transformer = reference_from(model.transformer)
        vae_cfg = {k: v for k, v in model.vae.config.to_dict().items() if not k.startswith("_")}
        with torch.device("meta"):
            vae = AutoencoderKLWan(**vae_cfg)
        vae.load_state_dict(model.vae.state_dict(), strict=True, assign=True)
        vae = vae.eval()
        scheduler = HeliosDMDScheduler.from_config(scheduler_preset("distilled").to_dict())
        pipe = HeliosPyramidPipeline(None, None, vae, scheduler, transformer, is_distilled=True)
        pipe.set_progress_bar_config(disable=True)
        text = model.text_encoder.encode([PROMPT]).to(device)
        print("diffusers, compiled (warm-up):", flush=True)
        t0 = time.perf_counter()
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
        pipeline_run(pipe, text, 2, [2, 2, 2])
        res["diffusers_compiled_warmup_seconds"] = time.perf_counter() - t0
        res["diffusers_compiled_222"] = pipeline_run(pipe, text, args.chunks, [2, 2, 2])
        print(f"  [2,2,2]: {res['diffusers_compiled_222']['fps']:.2f} FPS", flush=True)
        res["diffusers_compiled_111"] = pipeline_run(pipe, text, args.chunks, [1, 1, 1])
        print(f"  [1,1,1]: {res['diffusers_compiled_111']['fps']:.2f} FPS", flush=True)
        res["ratio_222"] = res["ours_fast_222"]["fps"] / res["diffusers_compiled_222"]["fps"]
        res["ratio_111"] = res["ours_fast_111"]["fps"] / res["diffusers_compiled_111"]["fps"]

    stage_flops = sum(
        2 * forward_flops(model.transformer.config, 9 * h * w // 4, N_HIST, 512) for h, w, _ in STAGES
    )
    fast_ms = sum(2 * r["ms"] for r in res["ours_fast_stages"])
    res["transformer_tflops_222"] = stage_flops / fast_ms / 1e9
    res["transformer_share_of_matmul_rate"] = res["transformer_tflops_222"] / res["matmul_tflops"]
    res["flop_floor_fps_222"] = 33 / (
        stage_flops / (res["matmul_tflops"] * 1e12) + VAE_TFLOP_PER_CHUNK / res["matmul_tflops"]
    )

    save()
    f2, f1 = res["ours_fast_222"], res["ours_fast_111"]
    print(
        f"\n{res['device']}: ours fast [2,2,2] {f2['fps']:.2f} FPS (steady {f2['steady_fps']:.2f}, chunk p50 "
        f"{f2['chunk_s_p50']:.3f} s p99 {f2['chunk_s_p99']:.3f} s, VAE {f2['decode_s_p50']:.3f} s, first "
        f"frame {f2['first_frame_s_p50']:.3f} s, peak {f2['peak_gib']:.1f} GiB); "
        f"[1,1,1] {f1['fps']:.2f} FPS; "
        f"eager {res['ours_eager_222']['fps']:.2f} FPS; transformer {res['transformer_tflops_222']:.0f} "
        f"TFLOP/s = {100 * res['transformer_share_of_matmul_rate']:.0f}% of the GEMM rate"
    )
    if "ratio_222" in res:
        print(
            f"diffusers compiled: [2,2,2] {res['diffusers_compiled_222']['fps']:.2f} FPS, [1,1,1] "
            f"{res['diffusers_compiled_111']['fps']:.2f} FPS; ours / diffusers {res['ratio_222']:.2f}x and "
            f"{res['ratio_111']:.2f}x"
        )
    print(f"parity fast vs eager (rel L2 per chunk): {res['parity_fast_vs_eager_rel_l2']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
