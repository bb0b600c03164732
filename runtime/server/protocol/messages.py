"""Messages between the gRPC front and an engine worker: ZeroMQ multipart, msgpack headers, raw blobs.

Every message is `[header, *blobs]`: the header a msgpack map, the blobs raw bytes (frames, images,
snapshots) that never pass through msgpack. The front's ROUTER socket talks to each worker's
DEALER socket; requests carry an `id` that every reply for them repeats.

front -> worker, `op`:
  reset {session_id, prompt, seed, width, height, negative_prompt, frames, source: none|image|video,
         shape}              blobs: [pixels uint8 (T, H, W, 3)] for an image (T = 1) or a video
  step  {session_id, action, action_seq, frames}
  fork {session_id}   snapshot {session_id}   restore {} blobs: [snapshot]   close {session_id}
  cancel {target}     (stop the request `target` between denoising steps)
worker -> front, `kind`:
  ready {model}                               once, after warm-up
  frame {id, chunk_index, index_in_chunk, width, height}  blobs: [RGB24 bytes]
  result {id, ...}                            blobs: op-specific (snapshot bytes)
  error {id, code, message}                   code: a grpc.StatusCode name
`frames` in reset/step says which decoded frames to send: "all", "last" or "none".
"""

from __future__ import annotations

from typing import Any

import msgpack


def pack(header: dict[str, Any], *blobs: bytes) -> list[bytes]:
    return [msgpack.packb(header, use_bin_type=True), *blobs]


def unpack(parts: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
    return msgpack.unpackb(parts[0], raw=False), list(parts[1:])
