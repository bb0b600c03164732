"""A model trained on the procedural grammar (the toy world) refuses prompts outside it — at reset and
in every prompt, transition and blend action — with INVALID_ARGUMENT and the grammar spelled out;
`tiny` and the real models take any prompt."""

from __future__ import annotations

import dataclasses
import json

import pytest

from helios_runtime.configfile import CheckpointError
from helios_runtime.engine.actions import Blend, Prompt, Transition
from helios_runtime.engine.engine import WorldEngine
from helios_runtime.engine.errors import InvalidInput
from helios_runtime.engine.known_prompts import EXAMPLE, grammar_text
from helios_runtime.engine.world_model import TOY_FOLDER, WorldModel
from helios_runtime.sim.grammar import BIOMES, OBJECTS, PromptGrammar

SIZE = dict(height=64, width=64)
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only contend


@pytest.fixture(scope="module")
def tiny() -> WorldModel:
    return WorldModel.load("tiny", device="cpu", seed=0)


@pytest.fixture(scope="module")
def grammar_world(tiny) -> WorldModel:
    """The tiny model with the toy world's prompt rule: the engine's logic, at tiny's speed."""
    return dataclasses.replace(tiny, name="toy", prompt_grammar=PromptGrammar())


def test_the_shipped_toy_world_refuses_prompts_outside_its_grammar():
    model = WorldModel.load("toy", device="cpu")
    assert isinstance(model.prompt_grammar, PromptGrammar)
    engine = WorldEngine(model)
    with pytest.raises(InvalidInput) as refused:
        engine.reset("a harbour at dusk", seed=1)  # refused before anything is generated
    message = str(refused.value)
    assert "'a harbour at dusk'" in message and "unknown biome 'harbour'" in message
    assert "a BIOME at TIME" in message and all(word in message for word in (*BIOMES, *OBJECTS))
    assert refused.value.code == "INVALID_ARGUMENT"
    assert not engine.sessions


def test_every_prompt_action_is_checked_and_a_refusal_changes_nothing(grammar_world):
    engine = WorldEngine(grammar_world)
    first = engine.reset("a desert at dusk with rocks", seed=2, **SIZE)
    sid = first.session_id
    for action in (
        "the storm clears",
        Prompt("a lighthouse on a cliff"),
        Transition("night falls", 3),
        Blend(("a forest at noon", "a castle"), (1.0, 1.0)),
    ):
        with pytest.raises(InvalidInput, match="knows only prompts of its grammar"):
            engine.step(sid, action)
        assert engine.session(sid).chunk == 1, f"{action!r} changed the session"
    for action in ("a forest at night in fog", Transition("a tundra at dawn in snow", 2)):
        assert engine.step(sid, action).frames.shape == (33, 64, 64, 3)
    with pytest.raises(InvalidInput, match="not of the grammar's form"):
        engine.reset("", seed=2, **SIZE)


def test_models_without_a_grammar_take_any_prompt(tiny):
    assert tiny.prompt_grammar is None
    first = WorldEngine(tiny).reset("a harbour at dusk", seed=1, **SIZE)
    assert first.frames.shape == (33, 64, 64, 3)


def test_the_grammar_comes_from_the_pipeline_folder(tmp_path):
    """A `helios train export` folder knows the procedural grammar unless its model_index says
    "prompt_grammar": null; an unknown grammar is a CheckpointError."""
    for name in ("transformer", "vae", "text_encoder", "scheduler"):
        (tmp_path / name).symlink_to(TOY_FOLDER / name)
    index = json.loads((TOY_FOLDER / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps({**index, "prompt_grammar": None}))
    assert WorldModel.load(tmp_path, device="cpu").prompt_grammar is None
    (tmp_path / "model_index.json").write_text(json.dumps({**index, "prompt_grammar": "klingon"}))
    with pytest.raises(CheckpointError, match="unknown prompt_grammar 'klingon'"):
        WorldModel.load(tmp_path, device="cpu")


def test_the_example_is_a_sentence_of_the_grammar():
    PromptGrammar().parse(EXAMPLE)  # the warm-up prompt, every model's
    assert EXAMPLE in grammar_text()


def test_a_grammar_world_reports_examples_of_its_form_and_a_free_text_world_none():
    """GetServerInfo's ActionSpace.prompts: what a client samples prompts from (Gymnasium's prompt
    space on the toy world); every example parses, and each biome and time appears."""
    from helios_runtime.engine.world_model import WorldModel
    from helios_runtime.sim.grammar import BIOMES, TIMES, PromptGrammar

    toy = WorldModel.load("toy", device="cpu")
    examples = toy.prompt_examples()
    scenes = [PromptGrammar().parse(p) for p in examples]
    assert {s.biome for s in scenes} == set(BIOMES) and {s.time for s in scenes} == set(TIMES)
    for prompt in examples:
        toy.check_prompt(prompt)
    assert WorldModel.load("tiny", device="cpu").prompt_examples() == []
