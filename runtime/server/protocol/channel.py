"""The worker channel's security: ZeroMQ CURVE between the front and its engine worker processes.

The front's ROUTER socket is a CURVE server with a keypair made when the pool starts; every worker
process gets a keypair of its own, made when it is spawned, and the front accepts a connection only
from a current worker's public key (a ZAP handler: `front/zmq_pool.py`), which also names the worker
the connection speaks for. A worker learns its keys (and the front's public key) from its
environment, `HELIOS_WORKER_CHANNEL`, never from its command line (which any local user can read),
and removes them from its environment at once. Why CURVE and not only a private socket file:
docs/server.md, "Security".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import zmq
from zmq.utils import z85

ENV = "HELIOS_WORKER_CHANNEL"
ZAP_DOMAIN = b"helios-workers"


def require_curve() -> None:
    """Raise when this libzmq cannot encrypt (pyzmq's wheels bundle libsodium; a system build may not)."""
    if not zmq.has("curve"):
        raise RuntimeError(
            f"libzmq {zmq.zmq_version()} has no CURVE support, which the engine worker channel "
            "needs: install pyzmq from its wheels (they bundle libsodium)"
        )


@dataclass(frozen=True)
class WorkerKeys:
    """What one worker process needs to connect: the front's public key and its own keypair
    (Z85-encoded, 40 characters each)."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def new(cls, server_public: bytes) -> WorkerKeys:
        public, secret = zmq.curve_keypair()
        return cls(server_public, public, secret)

    def to_env(self) -> str:
        return b" ".join((self.server_public, self.public, self.secret)).decode()

    @classmethod
    def take_from_env(cls) -> WorkerKeys | None:
        """The keys the front put in this process's environment (removed from it, so nothing this
        process starts inherits them); None when there are none."""
        value = os.environ.pop(ENV, "")
        if not value:
            return None
        server_public, public, secret = (part.encode() for part in value.split())
        return cls(server_public, public, secret)

    def apply(self, socket: zmq.Socket) -> None:
        """Make `socket` (before it connects) a CURVE client of the front with these keys."""
        socket.curve_serverkey = self.server_public
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret


def public_key_bytes(z85_key: bytes) -> bytes:
    """A Z85 public key -> its 32 raw bytes (the form a ZAP request carries)."""
    return z85.decode(z85_key)
