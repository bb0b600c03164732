"""HeliosVectorEnv: sessions stepped together, equal to the single env's worlds, NEXT_STEP autoreset."""

from __future__ import annotations

import numpy as np
from gymnasium.vector import AutoresetMode

import helios_sdk

from .conftest import SIZE, TOKEN

# The local backend's default model is the toy world, which knows only prompts of its grammar.
RAIN, SNOW = "a meadow at noon in light rain", "a meadow at noon in snow"


def test_local_vector_env_matches_single_envs_and_autoresets():
    local = dict(backend="local", obs_mode="last", prompt="a meadow at noon", **SIZE)
    envs = helios_sdk.make_vec(num_envs=2, max_chunks=1, **local)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, infos = envs.reset(seed=10)
    assert obs.shape == (2, 64, 64, 3) and list(infos["chunk_index"]) == [0, 0]
    obs, _, _, truncated, infos = envs.step((RAIN, SNOW))
    assert list(truncated) == [True, True] and list(infos["chunk_index"]) == [1, 1]
    single = helios_sdk.make(**local)
    single.reset(seed=11)
    alone, *_ = single.step(SNOW)
    assert np.array_equal(obs[1], alone)  # sub-env 1 has seed 10 + 1; batched == alone on the CPU
    obs, _, _, truncated, infos = envs.step(("x", "y"))  # autoreset
    assert list(infos["chunk_index"]) == [0, 0] and not truncated.any()
    envs.close()
    single.close()


def test_remote_vector_env_steps_concurrently(address):
    envs = helios_sdk.make_vec(num_envs=2, address=address, token=TOKEN, **SIZE)
    obs, _ = envs.reset(seed=[3, 3])
    obs, *_ = envs.step(("rain", "rain"))
    assert obs.shape == (2, 33, 64, 64, 3) and np.array_equal(obs[0], obs[1])
    envs.close()
