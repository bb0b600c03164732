"""How a process chooses the fast path (`WorldModel.fast_path`): without torch, so the gRPC front
can read the switches and hand them to Ray replicas, which do not see its environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("bf16", "fp8")


@dataclass(frozen=True)
class FastPathChoice:
    """Whether `WorldModel.load` applies the fast path, and how. `fast` None: on a GPU.
    `precision` "fp8": the transformer blocks' linears in float8 (`WorldModel.fast_path`)."""

    fast: bool | None = None
    compile_vae: bool = True
    precision: str = "bf16"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> FastPathChoice:
        """The server's switches: HELIOS_EAGER=1 turns the fast path off; HELIOS_COMPILE=0 keeps it
        without torch.compile (a shorter warm-up, a slower VAE); HELIOS_PRECISION=fp8 (what
        `helios serve --precision fp8` sets) runs the blocks in FP8. Read in the process that decides
        (a worker, or the front for Ray replicas, which do not see its environment)."""
        return cls(
            fast=False if environ.get("HELIOS_EAGER") == "1" else None,
            compile_vae=environ.get("HELIOS_COMPILE", "1") != "0",
            precision=environ.get("HELIOS_PRECISION", "bf16") or "bf16",
        )


def compile_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where compiled and autotuned artefacts persist across processes: $HELIOS_CACHE_DIR, else
    $XDG_CACHE_HOME/helios/compile, else ~/.cache/helios/compile."""
    if environ.get("HELIOS_CACHE_DIR"):
        return Path(environ["HELIOS_CACHE_DIR"])
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "helios" / "compile"


def use_compile_cache(environ: Mapping[str, str] = os.environ) -> Path:
    """Point Inductor's and Triton's on-disk caches at `compile_cache_dir` (unless the user set
    TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR) and turn on the caches that let a second process
    skip compilation: Inductor's FX-graph cache, AOTAutograd's cache and the autotuning cache.
    Must run before the first torch.compile of the process; returns the folder."""
    import torch._functorch.config
    import torch._inductor.config
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    folder = compile_cache_dir(environ)
    folder.mkdir(parents=True, exist_ok=True)
    # Importing torch._dynamo already sets TORCHINDUCTOR_CACHE_DIR to Inductor's default (a /tmp
    # folder), so a value equal to that default is Inductor's own, not the user's: replace it.
    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not inductor or inductor == default_cache_dir():
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    torch._inductor.config.fx_graph_cache = True
    torch._inductor.config.autotune_local_cache = True
    torch._functorch.config.enable_autograd_cache = True
    return folder
