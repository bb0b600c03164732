"""The Wan 2.1 VAE decode of one 384×640 chunk (9 latents -> 33 frames, streamed latent by latent as
the engine does) in bf16 under each set-up: NCDHW or channels-last (NDHWC) convolutions, with and
without cuDNN autotuning (`torch.backends.cudnn.benchmark`), eager or with the SiLU(norm) passes
compiled (`WanVAE.compile_norms`). Reports ms per chunk (median) and the largest difference from the
default set-up's frames.

    python bench/vae_layout.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import run_header

from helios_runtime.model.vae import WanVAE

LAYOUTS = (torch.contiguous_format, torch.channels_last_3d)


def decode_chunk(vae: WanVAE, z: torch.Tensor) -> torch.Tensor:
    stream = vae.stream_decoder()
    return torch.cat([stream.push(z[:, :, i : i + 1]) for i in range(z.shape[2])], dim=2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    vae = WanVAE.from_config("wan2.1", device="cuda", dtype=torch.bfloat16).eval()
    z = torch.randn(1, 16, 9, 48, 80, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    z = z.to(torch.bfloat16)
    rows, reference = [], None
    setups = [(layout, benchmark, False) for layout in LAYOUTS for benchmark in (False, True)]
    setups += [(layout, True, True) for layout in LAYOUTS]
    setups += [(torch.channels_last_3d, True, "decoder")]
    for layout, benchmark, compiled in setups:
        if compiled == "decoder":
            vae.compile_decoder()
        elif compiled:
            vae.compile_norms()
        torch.backends.cudnn.benchmark = benchmark
        vae.set_memory_format(layout)
        with torch.no_grad():
            out = decode_chunk(vae, z)  # warm-up (and autotuning when on)
            times = []
            for _ in range(args.repeat):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = decode_chunk(vae, z)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        if reference is None:
            reference = out.float()
        row = {
            "layout": "channels_last_3d" if layout == torch.channels_last_3d else "ncdhw",
            "cudnn_benchmark": benchmark,
            "compiled_norms": compiled,
            "ms": 1000 * statistics.median(times),
            "max_abs_diff_vs_default": (out.float() - reference).abs().max().item(),
        }
        rows.append(row)
        print(row, flush=True)
    res = {
        **run_header("vae_layout", cudnn=torch.backends.cudnn.version()),
        "settings": {"resolution": "384x640", "latents": 9, "dtype": "bfloat16", "streamed": True},
        "rows": rows,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"vae_layout_{res['device'].replace(' ', '_')}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
