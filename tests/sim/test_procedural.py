"""The procedural world: grammar, determinism, action following, the agent's unique colour, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from helios_runtime.chunk import FRAMES_PER_CHUNK
from helios_runtime.eval.drift import agent_position
from helios_runtime.sim import MOVES, Action, ProceduralWorld, PromptGrammar, RandomPolicy
from helios_runtime.sim.procedural import OTHER_MAGENTA_MAX

BUSY = "a forest at dusk in heavy rain with rocks, trees, houses, deer, sheep and birds"


def test_grammar_round_trip_and_sampling():
    g = PromptGrammar()
    scene = g.parse("A Forest at dusk in light rain with rocks and deer.")
    assert (scene.biome, scene.time, scene.weather, scene.objects) == (
        "forest",
        "dusk",
        "light rain",
        ("rocks", "deer"),
    )
    assert g.format(scene) == "a forest at dusk in light rain with rocks and deer"
    assert g.parse("an island at noon").weather == "clear"
    rng = np.random.default_rng(0)
    for _ in range(50):
        prompt = g.sample(rng)
        assert g.format(g.parse(prompt)) == prompt


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        ("a jungle at dusk", ["unknown biome 'jungle'", "forest", "island"]),
        ("a forest at teatime", ["unknown time of day 'teatime'", "dawn", "night"]),
        ("a forest at dusk in hail", ["unknown weather 'hail'", "light rain", "fog"]),
        ("a forest at dusk with rocks and dragons", ["unknown object 'dragons'", "deer", "houses"]),
        ("forest please", ["cannot parse", "a BIOME at TIME"]),
    ],
)
def test_grammar_errors_list_allowed_words(prompt, words):
    with pytest.raises(ValueError) as info:
        PromptGrammar().parse(prompt)
    for word in words:
        assert word in str(info.value)


def test_bad_actions_are_refused():
    world = ProceduralWorld("a meadow at noon", 0)
    with pytest.raises(ValueError, match="unknown move 'up'"):
        world.step("up")
    with pytest.raises(ValueError, match="unknown action fields"):
        world.step({"move": "n", "zoom": 1})


def rollout(prompt: str, seed: int, actions) -> np.ndarray:
    world = ProceduralWorld(prompt, seed)
    return np.concatenate([world.frame()[None], *(world.step(a) for a in actions)])


def test_deterministic_from_prompt_seed_and_actions():
    actions = ["n", Action("e", "s"), {"move": "sw"}, "stay"]
    a = rollout(BUSY, 7, actions)
    assert a.shape == (1 + 4 * FRAMES_PER_CHUNK, 96, 160, 3) and a.dtype == np.uint8
    assert a.tobytes() == rollout(BUSY, 7, actions).tobytes()
    assert a.tobytes() != rollout(BUSY, 8, actions).tobytes()
    assert a.tobytes() != rollout(BUSY, 7, ["n", "e", "sw", "stay"]).tobytes()
    world = ProceduralWorld(BUSY, 7)
    world.step("n")
    assert world.reset().tobytes() == a[0].tobytes()  # reset re-makes the same world


def test_world_moves_without_actions():
    frames = rollout(BUSY, 1, ["stay", "stay"])
    assert not np.array_equal(frames[1], frames[2])  # animals, rain
    assert frames[-1].astype(float).mean() < frames[0].astype(float).mean()  # dusk grows darker


def test_frozen_daylight_holds_the_prompts_light():
    moving = ProceduralWorld("a tundra at dusk with rocks", 2)
    frozen = ProceduralWorld("a tundra at dusk with rocks", 2, day_frames=None)
    assert frozen.frame().tobytes() == moving.frame().tobytes()  # same world at t = 0
    light = frozen._light()
    for _ in range(3):
        moving.step("stay"), frozen.step("stay")
    np.testing.assert_array_equal(frozen._light(), light)
    assert not np.allclose(moving._light(), light)  # dusk darkens
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="day_frames"):
            ProceduralWorld("a tundra at dusk with rocks", 2, day_frames=bad)


@pytest.mark.parametrize("move", [m for m in MOVES if m != "stay"])
def test_agent_follows_the_commanded_move(move):
    world = ProceduralWorld("a desert at noon with deer", 3)
    x0, y0 = world.agent_position()
    frames = world.step(move)
    x1, y1 = world.agent_position()
    dx, dy = MOVES[move]
    assert np.sign(x1 - x0) == dx and np.sign(y1 - y0) == dy
    assert max(abs(x1 - x0), abs(y1 - y0)) == pytest.approx(world.speed * FRAMES_PER_CHUNK, abs=1)
    # The drawn agent is where the world says, and found by its colour alone.
    assert agent_position(frames[-1]) == pytest.approx((x1, y1), abs=1e-9)


def test_camera_follows_and_pans():
    world = ProceduralWorld("a meadow at noon with rocks", 0)
    first = world.frame()
    for _ in range(6):  # far past the dead zone: the view scrolls and the agent stays inside it
        world.step("e")
    x, _ = world.agent_position()
    assert x == pytest.approx(world.width - world.margin, abs=1)
    assert not np.array_equal(world.frame(), first)
    world = ProceduralWorld("a meadow at noon with rocks", 0)
    x0, _ = world.agent_position()
    world.step(Action("stay", "e"))  # panning right slides the agent left across the view
    assert world.agent_position()[0] == pytest.approx(x0 - world.speed * FRAMES_PER_CHUNK, abs=1)


def test_agent_colour_is_unique():
    for seed, prompt in enumerate(
        ["an island at dusk in fog with houses", BUSY, "a tundra at night in snow"]
    ):
        world = ProceduralWorld(prompt, seed)
        frames = world.step("ne").astype(np.int16)
        score = np.minimum(frames[..., 0], frames[..., 2]) - frames[..., 1]
        x, y = world.agent_position()
        r = world.radius
        score[-1, int(y) - r : int(y) + r + 1, int(x) - r : int(x) + r + 1] = 0  # the agent itself
        assert score[-1].max() <= OTHER_MAGENTA_MAX


def test_policy_keeps_commanded_motion_exact():
    world = ProceduralWorld(BUSY, 5)
    policy = RandomPolicy(5)
    moves = set()
    for _ in range(30):
        action = policy(world)
        moves.add(action.move)
        before = np.array(world.agent_position())
        world.step(action)
        shift = np.array(world.agent_position()) - before
        np.testing.assert_allclose(shift, world.expected_shift(action), atol=1)
    assert len(moves) >= 6


def test_a_chunk_is_fast():
    world = ProceduralWorld(BUSY, 0)
    world.step("n")  # warm up
    start = time.perf_counter()
    for move in ("e", "s", "w"):
        world.step(move)
    assert (time.perf_counter() - start) / 3 < 0.1
