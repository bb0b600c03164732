"""How a process chooses the fast path (`WorldModel.fast_path`): without torch, so the gRPC front
can read the switches and hand them to Ray replicas, which do not see its environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FastPathChoice:
    """Whether `WorldModel.load` applies the fast path, and how. `fast` None: on a GPU."""

    fast: bool | None = None
    compile_vae: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> FastPathChoice:
        """The server's switches: HELIOS_EAGER=1 turns the fast path off; HELIOS_COMPILE=0 keeps it
        without torch.compile (a shorter warm-up, a slower VAE). Read in the process that decides
        (a worker, or the front for Ray replicas, which do not see its environment)."""
        return cls(
            fast=False if environ.get("HELIOS_EAGER") == "1" else None,
            compile_vae=environ.get("HELIOS_COMPILE", "1") != "0",
        )
