"""Ulysses context parallelism equals the single-device transformer (gloo, 2–4 CPU processes)."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from helios_runtime.model.config import preset
from helios_runtime.model.transformer import HeliosTransformer
from helios_runtime.model.ulysses import ContextParallel, shard_sizes
from helios_runtime.server.worker.context_parallel.launch import (
    free_port,
    init_worker_group,
    leave_worker_group,
)

# Four heads so that 2 and 4 ranks split them evenly.
CONFIG = preset("tiny").replace(num_attention_heads=4, attention_head_dim=16)


def _inputs(batch: int, frames: int, side: int, history: bool, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    C = CONFIG.in_channels
    kw = {
        "hidden_states": torch.randn(batch, C, frames, side, side, generator=g),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(batch, 7, CONFIG.text_dim, generator=g),
        "indices_hidden_states": torch.arange(10, 10 + frames).expand(batch, frames),
    }
    if history:
        for name, n, start in (("short", 2, 8), ("mid", 2, 6), ("long", 5, 1)):
            kw[f"latents_history_{name}"] = torch.randn(batch, C, n, side + 2, side + 2, generator=g)
            kw[f"indices_latents_history_{name}"] = torch.arange(start, start + n).expand(batch, n)
    return kw


CASES = [
    # (batch, noisy frames, latent side, history): token counts that split unevenly, a batch of
    # two, and history long enough that some ranks of four hold no noisy token at all.
    (1, 3, 6, False),
    (2, 1, 4, True),
    (1, 1, 2, True),
]


def _rank_main(rank: int, world: int, address: str) -> None:
    torch.set_num_threads(1)
    group = init_worker_group(rank, world, address, "cpu")
    try:
        model = HeliosTransformer.from_config(CONFIG, device="cpu", dtype=torch.float32, seed=3).eval()
        with torch.no_grad():
            for i, (batch, frames, side, history) in enumerate(CASES):
                kw = _inputs(batch, frames, side, history, seed=i)
                model.enable_context_parallel(None)
                ref = model(**kw)
                model.enable_context_parallel(group.cp)
                out = model(**kw)
                err = ((out - ref).norm() / ref.norm()).item()
                assert out.shape == ref.shape, (out.shape, ref.shape)
                assert err < 1e-6, f"case {i} rank {rank}/{world}: relative error {err:.2e}"
    finally:
        leave_worker_group()


@pytest.mark.parametrize("world", [2, 4])
def test_context_parallel_forward_equals_single_device(world: int) -> None:
    mp.spawn(_rank_main, args=(world, f"127.0.0.1:{free_port()}"), nprocs=world, join=True)


def test_shard_sizes_cover_the_sequence_unevenly() -> None:
    assert shard_sizes(10, 4) == [3, 3, 2, 2]
    assert shard_sizes(3, 4) == [1, 1, 1, 0]
    assert sum(shard_sizes(20160, 8)) == 20160


def test_heads_must_divide() -> None:
    model = HeliosTransformer.from_config(CONFIG, device="cpu", seed=0)
    with pytest.raises(ValueError, match="do not divide"):
        model.enable_context_parallel(ContextParallel(rank=0, world=3))
    assert model.enable_context_parallel(ContextParallel(rank=0, world=1)).context_parallel is None
