"""The key that signs session snapshots, and where a server gets it. Torch-free: the front reads it.

A snapshot carries an HMAC-SHA256 under this key (`snapshot.py`), so only a holder of the key can
make bytes that restore: a client cannot edit a snapshot, and a server refuses another server's
unless the two share a key on purpose. A server takes, in this order:

1. `--snapshot-key-file PATH` (`ServerSettings.snapshot_key_file`): a file holding the key as hex;
2. `$HELIOS_SNAPSHOT_KEY`: the key as hex;
3. neither: a random key for this server start (its snapshots restore only on it, until it stops).

A key is at least 32 bytes (64 hex digits): `openssl rand -hex 32 > snapshot.key`. The front hands
it to its worker processes in their environment (`$HELIOS_SNAPSHOT_KEY`), never on a command line.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("helios.snapshot")
KEY_ENV = "HELIOS_SNAPSHOT_KEY"
MIN_KEY_BYTES = 32  # HMAC-SHA256's block of strength; shorter keys are refused


def new_key() -> bytes:
    """A random key: for one server start, one worker, or one in-process engine."""
    return secrets.token_bytes(MIN_KEY_BYTES)


def check_key(key: object) -> bytes:
    """`key` when it is bytes of at least MIN_KEY_BYTES, else ValueError (never echoing it)."""
    if not isinstance(key, bytes):
        raise ValueError(f"a snapshot key is bytes, got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"a snapshot key needs at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return key


def parse_key(text: str, source: str) -> bytes:
    """The key written as hex (surrounding whitespace ignored); ValueError naming `source`."""
    digits = text.strip()
    try:
        key = bytes.fromhex(digits)
    except ValueError:
        raise ValueError(
            f"{source}: a snapshot key is written as hex digits (e.g. `openssl rand -hex 32`)"
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"{source}: a snapshot key needs at least {MIN_KEY_BYTES} bytes ({2 * MIN_KEY_BYTES} hex "
            f"digits), got {len(key)}"
        )
    return key


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The hex key in a file (OSError if it cannot be read, ValueError if it is not a key)."""
    path = Path(path)
    return parse_key(path.read_text(encoding="ascii", errors="replace"), str(path))


def key_from_env(environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The key in $HELIOS_SNAPSHOT_KEY, or None when it is unset or empty."""
    text = environ.get(KEY_ENV, "")
    return parse_key(text, f"${KEY_ENV}") if text.strip() else None


def load_key(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str] = os.environ
) -> tuple[bytes, str]:
    """A server's key and where it came from (for the log): the file, else the environment, else a
    new random key."""
    if path is not None:
        key = read_key_file(path)
        if os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("snapshot key file %s is readable by other users (chmod 600 it)", path)
        return key, f"from {path}"
    key = key_from_env(environ)
    if key is not None:
        return key, f"from ${KEY_ENV}"
    return new_key(), "random for this server start (its snapshots restore only here)"
