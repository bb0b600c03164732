"""Recording an episode and replaying it to identical frames."""

from __future__ import annotations

import json

import helios_sdk
from helios_sdk import Control, Transition
from helios_sdk.recording import RecordEpisode, replay
from helios_sdk.video import read_frames

from .conftest import SIZE


def test_record_and_replay(tmp_path):
    env = RecordEpisode(helios_sdk.make(backend="local", **SIZE), tmp_path / "ep")
    env.reset(seed=21, options={"prompt": "a desert at dusk"})  # the toy world's grammar
    env.step("a desert at night")
    env.step(Control(keys=("w",)))
    env.close()
    record = json.loads((tmp_path / "ep.json").read_text())
    assert record["seed"] == 21 and record["options"] == {"prompt": "a desert at dusk"}
    assert record["steps"] == [{"prompt": "a desert at night"}, {"control": Control(keys=("w",)).to_dict()}]
    assert record["world"]["backend"] == "local" and len(record["chunks"]) == 3
    assert read_frames(tmp_path / "ep.mp4").shape == (99, 64, 64, 3)

    assert replay(tmp_path / "ep.json").matches
    # A changed action is caught at the chunk it changes.
    record["steps"][1] = {"transition": {"text": "a desert at night in snow", "chunks": 1}}
    (tmp_path / "ep.json").write_text(json.dumps(record))
    result = replay(tmp_path / "ep.json")
    assert result.mismatched == [2]
    assert Transition("a", 1) != Transition("b", 1)
