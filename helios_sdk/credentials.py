"""What a connection carries besides requests: TLS credentials and the bearer token, read so that no
secret has to sit on a command line (docs/server.md, "TLS and tokens").

A token comes from `--token-file PATH` or `$HELIOS_TOKEN`; `--token VALUE` still works, with a
warning, because every user of the machine can read a process's arguments (`ps`, /proc/PID/cmdline).
PEM material is given as bytes (the PEM itself) or as a path to a PEM file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import grpc

Pem = bytes | str | os.PathLike  # the PEM bytes, or the path of a PEM file

TOKEN_ON_COMMAND_LINE = (
    "--token puts the secret in the process list, where every user of this machine can read it "
    "(ps, /proc/PID/cmdline); use --token-file PATH or $HELIOS_TOKEN instead"
)


def read_pem(value: Pem | None) -> bytes | None:
    """PEM bytes as given, or the contents of the PEM file at a path; None stays None."""
    if value is None or isinstance(value, bytes):
        return value
    path = Path(value)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read the PEM file {str(path)!r}: {exc.strerror}") from exc
    if b"-----BEGIN " not in data:
        raise ValueError(f"{str(path)!r} is not a PEM file (no '-----BEGIN' line)")
    return data


def channel_credentials(
    tls: bool,
    root_certificates: Pem | None = None,
    certificate_chain: Pem | None = None,
    private_key: Pem | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials for a client channel, or None for plaintext. Any certificate given implies
    TLS; without `root_certificates` the system's roots verify the server. A client certificate
    (mutual TLS) needs both `certificate_chain` and `private_key`."""
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("a client certificate needs both certificate_chain and private_key")
    if not (tls or root_certificates is not None or certificate_chain is not None):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(root_certificates),
        private_key=read_pem(private_key),
        certificate_chain=read_pem(certificate_chain),
    )


def read_token_file(path: str | os.PathLike) -> str:
    """The token in a file: its first line, surrounding whitespace removed (an empty file is an error,
    not "no auth": a server meant to require a token must not start open)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise OSError(f"cannot read the token file {str(path)!r}: {exc.strerror}") from exc
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise ValueError(f"the token file {str(path)!r} is empty")
    return token


def token_from_flags(
    token: str | None, token_file: str | None, warn: Callable[[str], None] | None = None
) -> str:
    """The token of a command: --token (with `warn(TOKEN_ON_COMMAND_LINE)`, stderr by default), else
    --token-file, else $HELIOS_TOKEN, else "" (none). Both flags at once is an error."""
    if token and token_file:
        raise ValueError("give --token or --token-file, not both")
    if token:
        (warn or _warn_on_stderr)(TOKEN_ON_COMMAND_LINE)
        return token
    if token_file:
        return read_token_file(token_file)
    return os.environ.get("HELIOS_TOKEN", "")


def _warn_on_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
