"""HeliosEnv: gymnasium's check_env on both backends and both action modes (the toy world, the
default model, and tiny), the action space the server describes, the modes, reward, truncation,
RecordVideo."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import RecordVideo

import helios_sdk
from helios_runtime.moves import MOVE_NAMES
from helios_sdk import Control, Move

from .conftest import SIZE, TOKEN, TOY_SIZE


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


def toy_env(where: str, request: pytest.FixtureRequest, **kw):
    """The toy world through `gymnasium.make("helios_sdk:helios/World-v0")`, no model named: the
    default model, in this process or on a server started without --model."""
    if where == "remote":
        kw.update(address=request.getfixturevalue("toy_address"), token=TOKEN)
    else:
        kw.update(backend="local")
    return gymnasium.make("helios_sdk:helios/World-v0", **TOY_SIZE, **kw)


@pytest.mark.parametrize("action_mode", ["prompt", "control"])
@pytest.mark.parametrize("where", ["local", "remote"])
def test_check_env_on_the_toy_world(where, action_mode, request):
    env = toy_env(where, request, action_mode=action_mode, render_mode="rgb_array", max_chunks=2)
    assert env.unwrapped.backend.describe()["model"] == "toy", "the default model everywhere"
    if action_mode == "prompt":  # only its grammar: the space samples the server's examples
        assert env.action_space.sample() in env.unwrapped.actions.prompts
    check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("where", ["local", "remote"])
def test_the_toy_worlds_actions_are_its_moves_and_pans(where, request):
    env = toy_env(where, request, action_mode="control", obs_mode="last")
    assert env.action_space == spaces.Dict(move=spaces.Discrete(9), pan=spaces.Discrete(9))
    assert env.unwrapped.actions.moves == env.unwrapped.actions.pans == MOVE_NAMES
    assert "camera_zoom" not in env.unwrapped.actions.axes

    def after(action):
        env.reset(seed=5)
        return env.step(action)[0]

    east = after({"move": MOVE_NAMES.index("e"), "pan": 0})  # a sample of the space: indices
    assert np.array_equal(after({"move": "e"}), east), "by name, pan left out: stay"
    assert np.array_equal(after(Move("e", pan="stay")), east)
    assert np.array_equal(after({"keys": ["d"]}), east), "the key that makes the same move"
    assert not np.array_equal(after(Move("w")), east), "the move conditions the chunk"
    for bad, match in (
        ({"keys": ["space"]}, "unknown key 'space'"),
        (Control(camera_zoom=0.5), "does not read camera_zoom"),
        ({"move": "up"}, "unknown move 'up'.*stay, n, ne"),
    ):
        with pytest.raises(helios_sdk.InvalidArgument, match=match):  # the server's (or engine's) word
            env.step(bad)
    with pytest.raises(ValueError, match="only 'move' and 'pan'"):  # no such action form at all
        env.step({"move": "n", "keys": ["w"]})
    assert env.step(None)[4]["chunk_index"] == 2, "refused actions moved nothing"
    env.close()


def test_control_actions_last_frame_reward_and_truncation():
    seen = []

    def reward_fn(obs, action, info):
        seen.append(info["chunk_index"])
        return float(obs.mean())

    env = local_env(action_mode="control", obs_mode="last", max_chunks=1, reward_fn=reward_fn)
    # tiny reads structured actions as prompt phrases: every key and field of a Control
    assert set(env.action_space) == {"keys", "mouse", "camera"} and env.action_space["camera"].shape == (3,)
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
