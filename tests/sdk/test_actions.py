"""The action vocabulary without a world: `ActionSpace` (what a model understands, its checks and
its forms on the wire), `Move`, and the Gymnasium spaces HeliosEnv makes of them."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from helios_sdk import actions as A
from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk.env import action_space, control_space, to_sdk_action
from helios_sdk.messages import ServerInfo

TOY = A.ActionSpace(
    keys=("w", "up", "s", "down", "a", "left", "d", "right"),
    axes=("mouse_dx", "mouse_dy", "camera_yaw", "camera_pitch"),
    moves=("stay", "n", "e"),
    pans=("stay", "n", "e"),
)


def test_the_prompt_space_admits_ordinary_prompts():
    space = action_space("prompt")
    for prompt in ("a storm rolls in", "A forest at dusk, with rain.", "sheep (white) & a river: noon!"):
        assert space.contains(prompt), prompt
    space.seed(0)
    assert all(space.contains(space.sample()) for _ in range(20))


def test_a_space_refuses_what_its_model_does_not_read():
    A.PROMPT_TEMPLATE_SPACE.check(A.Control(("w", "SHIFT"), 5.0, 0.0, 1.0, 2.0, 0.5))
    TOY.check(A.Control(("ArrowUp", "d"), camera_yaw=15.0))  # "ArrowUp" is "up"
    TOY.check(A.Move())  # "": the first name, no move
    TOY.check(A.Move("e", "n"))
    TOY.check(A.Control(camera_zoom=0.0))  # a field it does not read, left at 0
    for space, action, match in (
        (TOY, A.Control(("space",)), "unknown key 'space' for this model; its keys: w, up, s"),
        (TOY, A.Control(camera_zoom=0.5), r"does not read camera_zoom \(got camera_zoom=0.5\)"),
        (TOY, A.Move("up"), "unknown move 'up'; this model's moves: stay, n, e"),
        (TOY, A.Move("n", "x" * 500), "unknown pan 'x{40}\\.\\.\\.'"),  # a long name is cut
        (A.PROMPT_TEMPLATE_SPACE, A.Move("n"), "no move/pan actions; it takes keys w a s d space shift"),
        (A.ActionSpace(keys=("w",)), A.Control(mouse_dx=9.0), "does not read mouse_dx"),
    ):
        with pytest.raises(ValueError, match=match):
            space.check(action)


def test_a_space_survives_its_plain_and_proto_forms():
    assert A.ActionSpace.from_dict(TOY.to_dict()) == TOY
    assert A.ActionSpace.from_proto(pb.ActionSpace.FromString(TOY.to_proto().SerializeToString())) == TOY
    reply = pb.GetServerInfoResponse(api_version="1.1", model=pb.ModelInfo(actions=TOY.to_proto()))
    assert ServerInfo.from_proto(reply).actions == TOY
    older = pb.GetServerInfoResponse(api_version="1.0", model=pb.ModelInfo(name="toy"))
    assert ServerInfo.from_proto(older).actions is None, "a 1.0 server describes no action space"


def test_move_in_every_form():
    assert A.normalize({"move": "ne"}) == A.Move("ne", "")
    assert A.to_proto({"move": "ne", "pan": "w"}) == pb.Action(move=pb.MoveAction(move="ne", pan="w"))
    assert A.from_json(A.to_json(A.Move("s", "e"))) == A.Move("s", "e")
    assert A.to_engine(A.Move("s")) == {"move": "s", "pan": ""}
    with pytest.raises(ValueError, match="only 'move' and 'pan', got \\['keys'\\]"):
        A.normalize({"move": "n", "keys": ["w"]})
    with pytest.raises(ValueError, match="'move' must be a name"):
        A.normalize({"move": 3})
    with pytest.raises(ValueError, match=r"Move\.pan contains a NUL"):
        A.check(A.Move("n", "\x00"))


def test_control_spaces_hold_only_what_the_model_reads():
    assert control_space(TOY) == spaces.Dict(move=spaces.Discrete(3), pan=spaces.Discrete(3))
    full = control_space(A.PROMPT_TEMPLATE_SPACE)
    assert full["keys"] == spaces.MultiBinary(6) and full["mouse"].shape == (2,)
    assert full["camera"].high.tolist() == [30.0, 30.0, 1.0]
    partial = A.ActionSpace(keys=("w", "s"), axes=("mouse_dy", "camera_pitch"))
    some = control_space(partial)
    assert set(some) == {"keys", "mouse", "camera"} and some["camera"].shape == (1,)
    sample = {
        "keys": np.array([0, 1], np.int8),
        "mouse": np.array([3.0], np.float32),
        "camera": np.array([-7.0], np.float32),
    }
    assert some.contains(sample)
    assert to_sdk_action(sample, "control", partial) == A.Control(("s",), mouse_dy=3.0, camera_pitch=-7.0)
    assert to_sdk_action({"move": np.int64(2), "pan": 1}, "control", TOY) == A.Move("e", "n")
    assert to_sdk_action({"keys": ["w"]}, "control", TOY) == A.Control(("w",)), "names pass as they are"
    with pytest.raises(ValueError, match="move 3 is not one of the model's 3"):
        to_sdk_action({"move": 3}, "control", TOY)
    with pytest.raises(ValueError, match="understands no structured action"):
        control_space(A.ActionSpace())
