"""Latency budget of a game client, per frame, at 384×640: server encode, transport, client decode,
for raw RGB24, JPEG and H.264 (issue 9).

The client is the Unreal plugin's C++ core (integrations/unreal, built with Debian's grpc++,
libturbojpeg and libavcodec by integrations/unreal/harness/build.py), driven by
helios_world_harness's `latency` scenario against `helios serve --model tiny` on loopback, a
lockstep Stream of `--chunks` chunks per encoding. Per frame:

- server encode: the front's encode seconds for the chunk (the stream's CHUNK_DONE timings) over
  its frames — a per-chunk mean, as the server reports encode time per chunk;
- transport: the client's receive time minus the frame's timestamp_ns, which the server takes after
  encoding, just before the write (same machine, same wall clock): protobuf serialisation, HTTP/2,
  the loopback socket, the client's parse;
- client decode: the core's decode into RGBA (RGB24: adding alpha; JPEG: libturbojpeg; H.264:
  libavcodec + libswscale).

    python bench/client_latency.py --out bench/results        # about 3 minutes on 2 CPU cores

The tiny model's random weights make noise-like frames, the worst case for JPEG and H.264 sizes.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import latency_summary, percentile, run_header

from helios_sdk.record_command import local_server

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "integrations" / "unreal" / "harness" / "build.py"
ENCODINGS = ("rgb24", "jpeg", "h264")


def facts(output: str, word: str) -> list[dict[str, str]]:
    """The `WORD key=value ...` lines of a harness run."""
    rows = []
    for line in output.splitlines():
        parts = line.split()
        if parts and parts[0] == word:
            rows.append(dict(p.split("=", 1) for p in parts[1:] if "=" in p))
    return rows


def measure(harness: str, target: str, token: str, encoding: str, args: argparse.Namespace) -> dict:
    argv = [harness, "--target", target, "--token", token, "--scenario", "latency"]
    argv += ["--encoding", encoding, "--width", str(args.width), "--height", str(args.height)]
    argv += ["--chunks", str(args.chunks), "--timeout", "600"]
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv)} exited {out.returncode}\n{out.stdout[-4000:]}{out.stderr[-2000:]}"
        )
    frames = facts(out.stdout, "FRAME")
    chunks = facts(out.stdout, "CHUNK")
    encode_ms = {c["index"]: 1e3 * float(c["encode_s"]) / int(c["frames"]) for c in chunks}
    encode = [encode_ms[f["chunk"]] for f in frames]  # each frame gets its chunk's mean
    transport = [float(f["transport_us"]) / 1e3 for f in frames]
    decode = [float(f["decode_us"]) / 1e3 for f in frames]
    return {
        "encoding": encoding,
        "frames": len(frames),
        "chunks": len(chunks),
        "wire_bytes_per_frame": statistics.fmean(int(f["bytes"]) for f in frames),
        "server_encode_ms": latency_summary(encode),
        "server_encode_ms_per_chunk": [encode_ms[k] for k in sorted(encode_ms, key=int)],
        "transport_ms": latency_summary(transport),
        "client_decode_ms": latency_summary(decode),
        "total_ms_p50": percentile(encode, 0.5) + percentile(transport, 0.5) + percentile(decode, 0.5),
        "harness_wall_s": wall,
    }


def versions() -> dict[str, str]:
    out = {}
    for name in ("grpc++", "protobuf", "libturbojpeg", "libavcodec", "libswscale"):
        got = subprocess.run(["pkg-config", "--modversion", name], capture_output=True, text=True)
        out[name] = got.stdout.strip()
    import grpc

    out["grpcio (server)"] = grpc.__version__
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=3, help="lockstep chunks per encoding")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    built = subprocess.run([sys.executable, str(BUILD), "--install"], capture_output=True, text=True)
    if built.returncode != 0:
        raise SystemExit(f"building the harness failed:\n{built.stdout}{built.stderr}")
    harness = built.stdout.strip().splitlines()[-1]
    token = secrets.token_hex(8)
    rows = []
    with local_server("tiny", token) as target:
        for encoding in ENCODINGS:
            print(f"{encoding}: {args.chunks} chunks at {args.height}×{args.width} ...", flush=True)
            rows.append(measure(harness, target, token, encoding, args))

    header = run_header("client_latency", **versions())
    result = {
        **header,
        "machine": "a 2-core CPU machine, no GPU: the tiny model, the server (front + worker) and the "
        "C++ client share the two cores over loopback",
        "settings": {
            "model": "tiny",
            "width": args.width,
            "height": args.height,
            "chunks_per_encoding": args.chunks,
            "mode": "lockstep",
            "client": "integrations/unreal helios_world core (helios_world_harness --scenario latency)",
            "pixel_format": "RGBA8",
            "jpeg_quality": "server default (90)",
            "h264": "libx264 ultrafast + zerolatency, IDR every 33 frames (server); libavcodec, 1 thread",
        },
        "definitions": {
            "server_encode_ms": "the stream's CHUNK_DONE encode_seconds / frames of that chunk",
            "transport_ms": "client receive (Read returned) minus Frame.timestamp_ns, taken by the "
            "server after encoding, before the write",
            "client_decode_ms": "wire bytes to RGBA pixels in the C++ core",
        },
        "results": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"client_latency_{header['device'].replace(' ', '_')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}\n")
    print(f"per frame at {args.height}×{args.width} (H×W), ms (p50 / p95); 2-core CPU, loopback")
    print("| encoding | bytes/frame | server encode | transport | client decode | sum of p50 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cells = [
            f"{r[k]['p50']:.2f} / {r[k]['p95']:.2f}"
            for k in ("server_encode_ms", "transport_ms", "client_decode_ms")
        ]
        size = f"{r['wire_bytes_per_frame']:,.0f}"
        print(f"| {r['encoding']} | {size} | {' | '.join(cells)} | {r['total_ms_p50']:.2f} |")


if __name__ == "__main__":
    main()
