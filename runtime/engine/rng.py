"""Where a session's random numbers come from.

Each chunk draws its noise (and each reset its encoding noise) from a torch.Generator handed out
by a NoiseSource. Two policies:

- `CounterNoise(seed)` (the default): chunk k gets a fresh generator seeded from (seed, k). A chunk's
  noise depends only on the seed and its index, so a session is reproducible from (seed, chunk
  index) alone, a fork or restored snapshot continues bit-identically, and changing the sampler
  settings mid-session does not shift the noise of later chunks.
- `StreamNoise(generator)`: every draw continues one generator, in the order the reference
  pipelines draw (used by the parity tests against diffusers; state is the generator's).
"""

from __future__ import annotations

import hashlib

import torch

RESET = -1  # the "chunk index" of the draws made while resetting (image / video encoding)


def mix_seed(seed: int, index: int) -> int:
    """A 63-bit seed for (session seed, chunk index): splitmix-style hashing via blake2b."""
    digest = hashlib.blake2b(f"helios:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class CounterNoise:
    """Generator for chunk k = Generator(device).manual_seed(mix_seed(seed, k))."""

    def __init__(self, seed: int):
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        self.seed = seed

    def generator(self, index: int, device: torch.device | str) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(mix_seed(self.seed, index))


class StreamNoise:
    """One generator for everything, drawn in call order (the reference pipelines' behaviour)."""

    def __init__(self, generator: torch.Generator):
        self._generator = generator

    def generator(self, index: int, device: torch.device | str) -> torch.Generator:
        return self._generator
