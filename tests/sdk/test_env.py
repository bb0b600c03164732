"""HeliosEnv: gymnasium's check_env on both backends, the modes, reward, truncation, RecordVideo."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import RecordVideo

import helios_sdk

from .conftest import SIZE, TOKEN


def local_env(**kw):
    return helios_sdk.make("helios/World-v0", backend="local", model="tiny", **SIZE, **kw)


def test_check_env_local():
    env = local_env(render_mode="rgb_array", max_chunks=2)
    check_env(env.unwrapped)
    env.close()


def test_check_env_remote(address):
    env = helios_sdk.make(
        "helios/World-v0", address=address, token=TOKEN, render_mode="rgb_array", max_chunks=2, **SIZE
    )
    check_env(env.unwrapped)
    assert env.unwrapped.session_id  # volatile values live outside info
    env.close()
    env.close()


def test_control_actions_last_frame_reward_and_truncation():
    seen = []

    def reward_fn(obs, action, info):
        seen.append(info["chunk_index"])
        return float(obs.mean())

    env = local_env(action_mode="control", obs_mode="last", max_chunks=1, reward_fn=reward_fn)
    obs, info = env.reset(seed=4, options={"prompt": "a corridor"})
    assert obs.shape == (64, 64, 3) and info == {"chunk_index": 0, "frame_index": 0}
    action = env.action_space.sample()
    action["keys"][:] = [1, 0, 0, 0, 0, 0]  # w: moving forward
    obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs)
    assert reward == pytest.approx(float(obs.mean())) and seen == [1]
    assert info == {"chunk_index": 1, "frame_index": 33} and not terminated and truncated
    assert set(env.unwrapped.stats) >= {"session_id", "timings"}
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"promt": "typo"})
    with pytest.raises(helios_sdk.InvalidArgument, match="unknown key"):
        env.step({"keys": ["q"]})
    env.close()


def test_record_video_wrapper(tmp_path):
    env = RecordVideo(
        local_env(render_mode="rgb_array", max_chunks=1), str(tmp_path / "v"), disable_logger=True
    )
    env.reset(seed=0)
    _, _, _, truncated, _ = env.step("rain")
    assert truncated
    env.close()
    videos = list((tmp_path / "v").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0
    from helios_sdk.video import read_frames

    assert read_frames(videos[0]).shape[1:] == (64, 64, 3)


def test_image_reset_option():
    env = local_env(obs_mode="last")
    image = np.full((64, 64, 3), 200, np.uint8)
    obs, _ = env.reset(seed=1, options={"image": image, "prompt": "a white wall"})
    assert obs.shape == (64, 64, 3)
    env.close()
