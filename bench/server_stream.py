"""The whole stack on one GPU: `helios serve --model random-14b` (the real 14B architecture and Wan VAE
with random weights; fast path by default) driven by a gRPC client over a lockstep Stream.

Reports the time from start to SERVING (warm-up and compilation included), and per chunk the time
from sending an action to receiving its first frame and its last frame (raw RGB24 over loopback),
and the client-side FPS (frames received / wall time).

    python bench/server_stream.py --chunks 8 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from _common import run_header

from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk._proto.helios.v1 import world_pb2_grpc as pb_grpc


def start_server(model: str) -> tuple[subprocess.Popen, str, float]:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "helios_sdk.cli", "serve", "--model", model, "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("listening on "):
            return proc, line.split()[-1], time.perf_counter() - t0
    raise SystemExit(f"the server exited with {proc.wait()} before listening")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="random-14b")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    proc, target, ready_s = start_server(args.model)
    print(f"SERVING after {ready_s:.1f} s at {target}", flush=True)
    try:
        stub = pb_grpc.WorldServiceStub(
            grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
        )
        info = stub.GetServerInfo(pb.GetServerInfoRequest())
        sid = stub.CreateSession(pb.CreateSessionRequest(width=args.width, height=args.height)).session_id
        t0 = time.perf_counter()
        stub.Reset(
            pb.ResetRequest(
                session_id=sid,
                prompt="a harbour at dusk",
                seed=1,
                frames=pb.FrameOptions(selection=pb.FRAME_SELECTION_LAST, encoding=pb.FRAME_ENCODING_JPEG),
            )
        )
        reset_s = time.perf_counter() - t0

        actions: queue.Queue = queue.Queue()

        def requests():
            yield pb.StreamRequest(
                start=pb.StreamStart(
                    session_id=sid,
                    mode=pb.STREAM_MODE_LOCKSTEP,
                    frames=pb.FrameOptions(encoding=pb.FRAME_ENCODING_RGB24),
                )
            )
            while (item := actions.get()) is not None:
                yield item

        rows, sent = [], {}
        stream = stub.Stream(requests())
        first: dict[int, float] = {}
        start = time.perf_counter()
        actions.put(pb.StreamRequest(action=pb.StreamAction(seq=1)))
        sent[1] = time.perf_counter()
        frames = 0
        for msg in stream:
            now = time.perf_counter()
            if msg.HasField("frame"):
                frames += 1
                first.setdefault(len(rows) + 1, now)
                continue
            event = msg.event
            if event.type != pb.SESSION_EVENT_TYPE_CHUNK_DONE:
                continue
            seq = len(rows) + 1
            rows.append(
                {"chunk": seq, "first_frame_s": first[seq] - sent[seq], "last_frame_s": now - sent[seq]}
            )
            print(
                f"  chunk {seq}: first frame {rows[-1]['first_frame_s']:.3f} s, "
                f"last {rows[-1]['last_frame_s']:.3f} s"
            )
            if seq == args.chunks:
                break
            sent[seq + 1] = time.perf_counter()
            actions.put(pb.StreamRequest(action=pb.StreamAction(seq=seq + 1)))
        wall = time.perf_counter() - start
        actions.put(None)
        stream.cancel()
        later = rows[1:] or rows
        res = {
            **run_header("server_stream", grpcio=grpc.__version__),
            "settings": {
                "model": args.model,
                "server_model": info.model.name,
                "resolution": f"{args.height}x{args.width}",
                "encoding": "RGB24",
                "mode": "lockstep stream",
                "chunks": args.chunks,
            },
            "ready_seconds": ready_s,
            "reset_seconds": reset_s,
            "chunks": rows,
            "client_fps": frames / wall,
            "first_frame_s_p50": statistics.median(r["first_frame_s"] for r in later),
            "chunk_s_p50": statistics.median(r["last_frame_s"] for r in later),
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"server_stream_{args.model}_{res['device'].replace(' ', '_')}.json"
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(
            f"{res['device']}: SERVING after {ready_s:.1f} s; stream {res['client_fps']:.2f} FPS at the "
            f"client, action -> first frame {res['first_frame_s_p50']:.3f} s, -> last frame "
            f"{res['chunk_s_p50']:.3f} s"
        )
        print(f"wrote {path}")
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
