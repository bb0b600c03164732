"""The front's codec: a client's action is checked at the edge against the action space its
worker's model reported, so nothing a model would ignore reaches a worker."""

from __future__ import annotations

import grpc
import pytest

from helios_runtime.engine.actions import MovePanActions, PromptTemplateAdapter
from helios_runtime.server.front import codec
from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk.actions import Control, Move

TOY = {"actions": MovePanActions().space.to_dict()}  # a worker's ready message, as describe_model sends it
TEMPLATE = {"actions": PromptTemplateAdapter().space.to_dict()}


def refused(proto: pb.Action, info: dict) -> str:
    with pytest.raises(codec.RpcError) as caught:
        codec.action(proto, codec.action_space(info))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return caught.value.message


def test_actions_are_checked_against_the_workers_model():
    zoom = pb.Action(control=pb.ControlAction(camera_yaw=15, camera_zoom=1))
    assert "does not read camera_zoom" in refused(zoom, TOY)
    assert codec.action(zoom, codec.action_space(TEMPLATE)) == Control(camera_yaw=15.0, camera_zoom=1.0)
    space = pb.Action(control=pb.ControlAction(keys=["w", "space"]))
    assert "unknown key 'space' for this model" in refused(space, TOY)
    move = pb.Action(move=pb.MoveAction(move="ne"))
    assert codec.action(move, codec.action_space(TOY)) == Move("ne", "")
    assert "no move/pan actions" in refused(move, TEMPLATE)
    assert "unknown pan 'up'" in refused(pb.Action(move=pb.MoveAction(pan="up")), TOY)
    assert codec.action_space({}) is None, "a worker that did not say: the engine checks alone"
    assert codec.action(move, None) == Move("ne", "")


def test_each_adapter_describes_what_it_applies():
    """The description is the adapter's own: what its space admits, it applies without error."""
    toy, template = MovePanActions(), PromptTemplateAdapter()
    for key in toy.space.keys:
        toy.apply({"keys": [key]}, "x")
    for move in toy.space.moves:
        toy.apply({"move": move, "pan": move}, "x")
    for key in template.space.keys:
        template.apply({"keys": [key]}, "x")
    assert set(template.space.axes) == {"mouse_dx", "mouse_dy", "camera_yaw", "camera_pitch", "camera_zoom"}
