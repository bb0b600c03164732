"""The versioned byte format of session snapshots.

Layout (little endian):

    magic    16 bytes  b"HELIOS-SNAPSHOT\\0"
    version   4 bytes  u32, FORMAT_VERSION
    length    8 bytes  u64, payload length
    sha256   32 bytes  of the payload
    payload            safetensors bytes: the session's tensors, and its metadata as JSON
                       under the "helios" key of the safetensors metadata

Reading rejects, each with a SnapshotError that says which: data that is not a snapshot, a version
this runtime does not read, truncated or extended data, a checksum mismatch (corruption), and a
payload that does not parse. Whether a valid snapshot fits the engine (model, latent size) is the
engine's check, made from the metadata.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import torch

from .errors import InvalidInput

MAGIC = b"HELIOS-SNAPSHOT\x00"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<16sIQ32s")


class SnapshotError(InvalidInput):
    """Snapshot bytes that cannot be restored; the message says why (INVALID_ARGUMENT)."""


def encode(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    from safetensors.torch import save

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    payload = save(cpu, metadata={"helios": json.dumps(meta, sort_keys=True)})
    return _HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest()) + payload


def decode(data: bytes, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnapshotError(f"a snapshot is bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size or not data.startswith(MAGIC):
        raise SnapshotError("not a Helios session snapshot (bad magic bytes)")
    _, version, length, digest = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise SnapshotError(f"snapshot format version {version}; this runtime reads version {FORMAT_VERSION}")
    payload = data[_HEADER.size :]
    if len(payload) != length:
        raise SnapshotError(
            f"snapshot is truncated or has trailing data: payload {len(payload)} bytes, header says {length}"
        )
    if hashlib.sha256(payload).digest() != digest:
        raise SnapshotError("snapshot checksum mismatch: the data is corrupt")
    try:
        (header_len,) = struct.unpack_from("<Q", payload)
        header = json.loads(payload[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"]["helios"])
        tensors = load(payload)
    except (
        ValueError,
        KeyError,
        TypeError,
        struct.error,
        SafetensorError,
    ) as exc:  # json errors are ValueErrors
        raise SnapshotError(f"snapshot payload does not parse: {exc}") from exc
    return {k: v.to(device) for k, v in tensors.items()}, meta
