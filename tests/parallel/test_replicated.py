"""A context-parallel engine (leader + follower over gloo) rolls out exactly what one device does."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from helios_runtime.engine.engine import WorldEngine
from helios_runtime.engine.errors import Cancelled, InvalidInput
from helios_runtime.engine.world_model import WorldModel
from helios_runtime.server.worker.context_parallel.launch import (
    free_port,
    init_worker_group,
    leave_worker_group,
)
from helios_runtime.server.worker.context_parallel.replicated import LeaderEngine, follow

SIZE = dict(height=64, width=64)


def _rollout(engine) -> list[torch.Tensor]:
    """reset, two steps (one with a prompt change), a fork stepped once, a cancelled step, a bad step,
    and one more step: the latents of every chunk."""
    first = engine.reset("a quiet harbour", seed=7, session_id="s0", **SIZE)
    out = [first.latents]
    out.append(engine.step_many([("s0", None)])[0].latents)
    twin = engine.fork("s0")
    out.append(engine.step_many([("s0", "a storm rolls in"), (twin, None)])[0].latents)
    polls = iter([False, True])
    with pytest.raises(Cancelled):
        engine.step_many([(twin, None)], cancel=lambda: next(polls))
    with pytest.raises(InvalidInput):
        engine.step_many([(twin, 42)])
    out.append(engine.step_many([(twin, None)])[0].latents)
    engine.close(twin)
    return out


def _rank_main(rank: int, address: str) -> None:
    torch.set_num_threads(1)
    model = WorldModel.load("tiny", device="cpu")
    reference = _rollout(WorldEngine(model)) if rank == 0 else None
    group = init_worker_group(rank, 2, address, "cpu")
    try:
        model.transformer.enable_context_parallel(group.cp)
        if rank == 0:
            leader = LeaderEngine(WorldEngine(model), group)
            got = _rollout(leader)
            leader.shutdown()
            for i, (a, b) in enumerate(zip(got, reference, strict=True)):
                err = ((a - b).norm() / b.norm()).item()
                assert err < 1e-5, f"chunk {i}: relative error {err:.2e}"
        else:
            engine = WorldEngine(model, decodes=False)
            follow(engine, group)
            assert list(engine.sessions) == ["s0"], "the follower's sessions must mirror the leader's"
    finally:
        leave_worker_group()


def test_leader_and_follower_roll_out_like_one_device() -> None:
    mp.spawn(_rank_main, args=(f"127.0.0.1:{free_port()}",), nprocs=2, join=True)
