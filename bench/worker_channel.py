"""Cost of the worker channel's CURVE encryption (`server/protocol/channel.py`): frames sent from a
DEALER (the worker) to a ROUTER (the front) over TCP loopback, plain against CURVE, at the frame
sizes the server sends (raw RGB24 frames of the tiny, toy and 14B defaults).

    python bench/worker_channel.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from pathlib import Path

import zmq

from helios_runtime.server.protocol.channel import WorkerKeys

SIZES = {"64x64": (64, 64), "192x320": (192, 320), "384x640": (384, 640)}


def frames_per_second(payload: bytes, count: int, curve: bool) -> float:
    """Send `count` messages [header, payload] worker -> front and time until the last arrives."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    dealer = context.socket(zmq.DEALER)
    if curve:
        public, secret = zmq.curve_keypair()
        router.curve_server = True
        router.curve_secretkey = secret
        WorkerKeys.new(public).apply(dealer)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send_multipart([b"hello"])
    router.recv_multipart()  # connected and, with CURVE, handshaken

    def send() -> None:
        for _ in range(count):
            dealer.send_multipart([b"\x96\x08", payload], copy=False)

    start = time.perf_counter()
    sender = threading.Thread(target=send)
    sender.start()
    for _ in range(count):
        router.recv_multipart(copy=False)
    seconds = time.perf_counter() - start
    sender.join()
    context.destroy(linger=0)
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--frames", type=int, default=660, help="frames per measurement (20 chunks)")
    args = parser.parse_args()
    rows = {}
    for name, (h, w) in SIZES.items():
        payload = bytes(h * w * 3)
        plain = max(frames_per_second(payload, args.frames, False) for _ in range(3))
        curve = max(frames_per_second(payload, args.frames, True) for _ in range(3))
        rows[name] = {"frame_bytes": len(payload), "plain_fps": plain, "curve_fps": curve}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "bench": "worker_channel",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "libzmq": zmq.zmq_version(),
        "frames": args.frames,
        "rows": rows,
    }
    (out / "worker_channel.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| frame | bytes | plain frames/s | CURVE frames/s | CURVE MB/s |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        mbs = r["curve_fps"] * r["frame_bytes"] / 1e6
        print(f"| {name} | {r['frame_bytes']} | {r['plain_fps']:.0f} | {r['curve_fps']:.0f} | {mbs:.0f} |")


if __name__ == "__main__":
    main()
