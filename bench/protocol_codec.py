"""Per-frame cost of the engine protocol's codec (`server/protocol/messages.py`) against the untyped
msgpack dict it replaced: encode on the worker, decode on the front, for one 96×160 RGB24 frame
(the payload travels as its own ZeroMQ part either way, so its size does not enter).

    python bench/protocol_codec.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import platform
import timeit
from pathlib import Path

import msgpack

from helios_runtime.server.protocol.messages import Frame, Step, decode, encode
from helios_sdk.actions import Control

PAYLOAD = bytes(96 * 160 * 3)


def untyped_frame() -> list[bytes]:
    header = {"kind": "frame", "id": 7, "chunk_index": 3, "index_in_chunk": 12, "width": 160, "height": 96}
    return [msgpack.packb(header, use_bin_type=True), PAYLOAD]


def untyped_decode(parts: list[bytes]) -> tuple[dict, list[bytes]]:
    return msgpack.unpackb(parts[0], raw=False), list(parts[1:])


def per_call_us(fn, number: int = 20000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    frame = Frame(7, 3, 12, 160, 96, PAYLOAD)
    typed_parts, untyped_parts = encode(frame), untyped_frame()
    step = Step("a" * 32, Control(("w",), 12.0), id=9)
    rows = {
        "frame_encode_typed_us": per_call_us(lambda: encode(Frame(7, 3, 12, 160, 96, PAYLOAD))),
        "frame_encode_untyped_us": per_call_us(untyped_frame),
        "frame_decode_typed_us": per_call_us(lambda: decode(typed_parts)),
        "frame_decode_untyped_us": per_call_us(lambda: untyped_decode(untyped_parts)),
        "step_roundtrip_typed_us": per_call_us(lambda: decode(encode(step))),
        "frame_header_bytes_typed": len(typed_parts[0]),
        "frame_header_bytes_untyped": len(untyped_parts[0]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "bench": "protocol_codec",
        "python": platform.python_version(),
        "machine": platform.machine(),
        **rows,
    }
    (out / "protocol_codec.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| per frame | typed (dataclass) | untyped (dict) |")
    print("| --- | --- | --- |")
    print(f"| encode µs | {rows['frame_encode_typed_us']:.2f} | {rows['frame_encode_untyped_us']:.2f} |")
    print(f"| decode µs | {rows['frame_decode_typed_us']:.2f} | {rows['frame_decode_untyped_us']:.2f} |")
    print(f"| header bytes | {rows['frame_header_bytes_typed']} | {rows['frame_header_bytes_untyped']} |")
    print(f"step encode + decode: {rows['step_roundtrip_typed_us']:.2f} µs")


if __name__ == "__main__":
    main()
