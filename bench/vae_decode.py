"""Our Wan 2.1 VAE against diffusers 0.42.1 on one GPU: parity and time per 33-frame chunk.

Both VAEs hold the same tensors (diffusers' parameters are ours, assigned). At 384×640 it decodes
one chunk of 9 latents with a fresh cache (what the reference pipeline does per chunk) in float32
(TF32 convolutions, the reference setting) and in bfloat16, and with our streaming decoder (one
latent at a time, cache carried across chunks: the time to the first frame is what a viewer waits).
It also encodes one 33-frame window (the I2V / V2V path).

Run on the GPU machine (diffusers carried as a wheel):
    python bench/vae_decode.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import cuda_ms, gpu_state, rel_l2, run_header

from helios_runtime.model.vae import WanVAE


def reference_from(ours: WanVAE):
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        ref = AutoencoderKLWan(**{k: v for k, v in ours.config.to_dict().items() if not k.startswith("_")})
    ref.load_state_dict(ours.state_dict(), strict=True, assign=True)
    return ref.eval()


def measure(dtype: torch.dtype, latents: torch.Tensor, video: torch.Tensor, repeat: int) -> dict:
    """One row of the table: parity and timings of both VAEs in `dtype`."""
    device = latents.device
    ours = WanVAE.from_config("wan2.1", device=device, dtype=dtype, seed=0).eval()
    ref = reference_from(ours)
    z = latents.to(dtype)
    with torch.inference_mode():
        mine = ours.decode(z)
        theirs = ref.decode(z, return_dict=False)[0].clamp(-1, 1)
        err = rel_l2(mine, theirs)
        ours.decode(z)
        ref.decode(z, return_dict=False)  # warm-up
        t_ours, t_ref = [], []
        for _ in range(repeat):  # interleaved
            t_ours += cuda_ms(lambda: ours.decode(z), 1)
            t_ref += cuda_ms(lambda: ref.decode(z, return_dict=False), 1)

        # Streaming: one latent at a time; the first push of a chunk is what a viewer waits for.
        stream = ours.stream_decoder()
        stream.push(z[:, :, :1])  # a previous chunk's tail, so the cache is warm and carried
        first, whole = [], []
        for _ in range(repeat):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(9):
                stream.push(z[:, :, i : i + 1])
                if i == 0:
                    torch.cuda.synchronize()
                    first.append((time.perf_counter() - t0) * 1e3)
            torch.cuda.synchronize()
            whole.append((time.perf_counter() - t0) * 1e3)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        ours.decode(z)
        torch.cuda.synchronize()
        peak_ours = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        ref.decode(z, return_dict=False)
        torch.cuda.synchronize()
        peak_ref = torch.cuda.max_memory_allocated() / 2**30

        v = video.to(dtype)
        enc_err = rel_l2(ours.encode(v), ref.encode(v).latent_dist.mean)
        t_enc_ours = cuda_ms(lambda: ours.encode(v), repeat)
        t_enc_ref = cuda_ms(lambda: ref.encode(v), repeat)
    row = {
        "dtype": str(dtype).removeprefix("torch."),
        "decode_rel_l2_vs_diffusers": err,
        "encode_rel_l2_vs_diffusers": enc_err,
        "ours_decode_ms_median": statistics.median(t_ours),
        "diffusers_decode_ms_median": statistics.median(t_ref),
        "stream_first_frame_ms_median": statistics.median(first),
        "stream_chunk_ms_median": statistics.median(whole),
        "ours_encode_ms_median": statistics.median(t_enc_ours),
        "diffusers_encode_ms_median": statistics.median(t_enc_ref),
        "ours_peak_gib": peak_ours,
        "diffusers_peak_gib": peak_ref,
        "ours_decode_ms_all": t_ours,
        "diffusers_decode_ms_all": t_ref,
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    import diffusers

    device = torch.device("cuda")
    torch.backends.cudnn.allow_tf32 = True  # the reference setting for its fp32 VAE
    torch.backends.cuda.matmul.allow_tf32 = True
    g = torch.Generator(device=device).manual_seed(0)
    latents = torch.randn(1, 16, 9, 48, 80, generator=g, device=device)
    video = torch.rand(1, 3, 33, 384, 640, generator=g, device=device) * 2 - 1
    results: dict = {
        **run_header("vae_decode", cudnn=torch.backends.cudnn.version(), diffusers=diffusers.__version__),
        "settings": {
            "preset": "wan2.1",
            "resolution": "384x640",
            "latent_frames": 9,
            "repeat": args.repeat,
            "tf32": True,
            "cudnn_benchmark": False,
            "mode": "eager",
        },
        "rows": [],
    }
    for dtype in (torch.float32, torch.bfloat16):
        row = measure(dtype, latents, video, args.repeat)
        results["rows"].append(row)
        print(
            f"  {row['dtype']}: ours {row['ours_decode_ms_median']:.0f} ms, "
            f"diffusers {row['diffusers_decode_ms_median']:.0f} ms",
            flush=True,
        )
        torch.cuda.empty_cache()
    results["gpu_after"] = gpu_state()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"vae_decode_{results['device'].replace(' ', '_')}.json"
    (out / name).write_text(json.dumps(results, indent=2) + "\n")

    print(
        f"\n{results['device']}, torch {torch.__version__}, diffusers {diffusers.__version__}, eager, 384x640"
    )
    print(
        f"{'dtype':>8} {'dec rel':>8} {'enc rel':>8} {'ours ms':>8} {'diff ms':>8} {'stream 1st':>10} "
        f"{'stream 9':>9} {'enc ours':>9} {'enc diff':>9} {'peak o/d GiB':>13}"
    )
    for r in results["rows"]:
        print(
            f"{r['dtype']:>8} {r['decode_rel_l2_vs_diffusers']:>8.1e} "
            f"{r['encode_rel_l2_vs_diffusers']:>8.1e} "
            f"{r['ours_decode_ms_median']:>8.0f} {r['diffusers_decode_ms_median']:>8.0f} "
            f"{r['stream_first_frame_ms_median']:>10.0f} {r['stream_chunk_ms_median']:>9.0f} "
            f"{r['ours_encode_ms_median']:>9.0f} {r['diffusers_encode_ms_median']:>9.0f} "
            f"{r['ours_peak_gib']:>6.1f}/{r['diffusers_peak_gib']:<6.1f}"
        )
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
