"""The versioned, signed byte format of session snapshots.

Layout (little endian), format version 2:

    magic      16 bytes  b"HELIOS-SNAPSHOT\\0"
    version     4 bytes  u32, FORMAT_VERSION
    length      8 bytes  u64, payload length
    signature  32 bytes  HMAC-SHA256 under the engine's snapshot key of the 28 bytes above + payload
    payload              safetensors bytes: the session's tensors, and its metadata as JSON
                         under the "helios" key of the safetensors metadata

The key is the server's (`snapshot_key.py`), so only an engine holding it can make bytes that
restore; version 1 (a plain sha256 of the payload, which anyone could recompute after editing it) is
refused. Reading rejects, each with a SnapshotError that says which: data that is not a snapshot, a
version this runtime does not read, truncated or extended data, a signature that does not match
(another key, an edit, corruption: checked in constant time before anything of the payload is
parsed), and a payload that does not parse. Whether the content is a session this engine may run —
every field against the engine's model and limits — is `session.py`'s check, signed or not.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from typing import Any

import torch

from .errors import InvalidInput
from .snapshot_key import check_key

MAGIC = b"HELIOS-SNAPSHOT\x00"
FORMAT_VERSION = 2
UNSIGNED_VERSIONS = (1,)  # sha256 only: refused, with a message saying so
_SIGNED = struct.Struct("<16sIQ")  # magic, version, payload length: signed together with the payload
_SIGNATURE_BYTES = 32
HEADER_BYTES = _SIGNED.size + _SIGNATURE_BYTES
SIGNATURE_MISMATCH = (
    "snapshot signature does not match: it was made by a server with another snapshot key, or edited "
    "or corrupted since (servers restore each other's snapshots only when they share a key: "
    "--snapshot-key-file or $HELIOS_SNAPSHOT_KEY)"
)


class SnapshotError(InvalidInput):
    """Snapshot bytes that cannot be restored; the message says why (INVALID_ARGUMENT)."""


def _signature(key: bytes, signed_header: bytes, payload: bytes) -> bytes:
    mac = hmac.new(key, signed_header, hashlib.sha256)
    mac.update(payload)
    return mac.digest()


def encode(tensors: dict[str, torch.Tensor], meta: dict[str, Any], key: bytes) -> bytes:
    """Snapshot bytes of `tensors` and `meta`, signed with `key`."""
    from safetensors.torch import save

    check_key(key)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    payload = save(cpu, metadata={"helios": json.dumps(meta, sort_keys=True)})
    signed = _SIGNED.pack(MAGIC, FORMAT_VERSION, len(payload))
    return signed + _signature(key, signed, payload) + payload


def decode(data: bytes, key: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors (on the CPU) and metadata of snapshot bytes signed with `key`; SnapshotError
    otherwise. Nothing of the payload is parsed before its signature has matched."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    check_key(key)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnapshotError(f"a snapshot is bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _SIGNED.size or not data.startswith(MAGIC):
        raise SnapshotError("not a Helios session snapshot (bad magic bytes)")
    _, version, length = _SIGNED.unpack_from(data)
    if version in UNSIGNED_VERSIONS:
        raise SnapshotError(
            f"snapshot format version {version} is unsigned and no longer restored (anyone could edit "
            f"it); this runtime reads signed version {FORMAT_VERSION}: take the snapshot again"
        )
    if version != FORMAT_VERSION:
        raise SnapshotError(f"snapshot format version {version}; this runtime reads version {FORMAT_VERSION}")
    payload = data[HEADER_BYTES:]
    if len(data) < HEADER_BYTES or len(payload) != length:
        raise SnapshotError(
            f"snapshot is truncated or has trailing data: payload {len(payload)} bytes, header says {length}"
        )
    expected = _signature(key, data[: _SIGNED.size], payload)
    if not hmac.compare_digest(expected, data[_SIGNED.size : HEADER_BYTES]):
        raise SnapshotError(SIGNATURE_MISMATCH)
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
    if not isinstance(meta, dict):
        raise SnapshotError(f"snapshot metadata must be a JSON object, got {type(meta).__name__}")
    return tensors, meta
