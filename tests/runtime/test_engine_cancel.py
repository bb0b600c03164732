"""Cancelling a step: atomic commits (a cancelled step leaves its session exactly as it was) and
per-request tokens in `step_many` (a cancelled member leaves, the others finish)."""

from __future__ import annotations

import pytest
import torch

from helios_runtime.engine.actions import Prompt, Transition
from helios_runtime.engine.cancel import CancelToken
from helios_runtime.engine.engine import ChunkResult, WorldEngine
from helios_runtime.engine.errors import Cancelled
from helios_runtime.engine.world_model import WorldModel

SIZE = dict(height=64, width=64)


@pytest.fixture(scope="module")
def model(one_thread) -> WorldModel:
    return WorldModel.load("tiny", device="cpu", seed=0)


def after_polls(n: int):
    """A cancel check that turns True at its n-th read (1: before the first forward)."""
    reads = iter(range(1, 10_000))
    return lambda: next(reads) >= n


def start(engine: WorldEngine, sid: str, seed: int, noise: str) -> None:
    generator = torch.Generator().manual_seed(seed) if noise == "stream" else None
    engine.reset("a quiet harbour", seed=seed, session_id=sid, generator=generator, **SIZE)


def same(a: ChunkResult, b: ChunkResult) -> None:
    assert a.chunk_index == b.chunk_index
    assert torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames)


# Where the cancel lands: before the n-th forward, or once frame k of the chunk has been decoded
# (frame 32 is the last: the chunk is complete but not committed).
POINTS = [("forward", 1), ("forward", 4), ("frame", 0), ("frame", 16), ("frame", 32)]


@pytest.mark.parametrize("noise", ["counter", "stream"])
@pytest.mark.parametrize("point", POINTS, ids=lambda p: f"{p[0]}{p[1]}")
def test_a_cancelled_step_leaves_the_session_exactly_as_it_was(model, point, noise):
    """Mid-transition (prompt state with weights), a step that switches the prompt is cancelled;
    the next steps give bit-identical chunks to a twin whose step was never cancelled."""
    victim, twin = WorldEngine(model), WorldEngine(model)
    for engine in (victim, twin):
        start(engine, "s", 5, noise)
        engine.step("s", Transition("snow falling", 3))
    kind, n = point
    token = CancelToken()

    def on_frame(index, frame):
        if kind == "frame" and index == n:
            token.set()

    check = after_polls(n) if kind == "forward" else token
    with pytest.raises(Cancelled):
        victim.step_many([("s", Prompt("a desert at noon"))], on_frame=[on_frame], cancel=check)
    assert victim.session("s").chunk == 2 and victim.session("s").scene == "snow falling"
    for action in (Prompt("a desert at noon"), None):
        same(victim.step("s", action), twin.step("s", action))


def test_a_cancelled_member_leaves_step_many_and_the_others_finish(model):
    """Four sessions in one call: #1 is cancelled while #0 decodes (before its own turn), #3 while it
    decodes itself; #0 and #2 commit and match stepping alone; #1 and #3 are unchanged."""
    engine, alone = WorldEngine(model), WorldEngine(model)
    ids = ["a", "b", "c", "d"]
    for seed, sid in enumerate(ids):
        start(engine, sid, seed, "counter")
        start(alone, sid, seed, "counter")
    tokens = [CancelToken() for _ in ids]

    def cancel_at(token: CancelToken, index: int):
        return lambda i, frame: token.set() if i == index else None

    heard = []
    outcomes = engine.step_many(
        [(sid, None) for sid in ids],
        on_frame=[cancel_at(tokens[1], 10), None, None, cancel_at(tokens[3], 5)],
        cancel=tokens,
        on_result=lambda i, outcome: heard.append((i, type(outcome))),
    )
    assert heard == [(0, ChunkResult), (1, Cancelled), (2, ChunkResult), (3, Cancelled)]
    assert [type(o) for o in outcomes] == [ChunkResult, Cancelled, ChunkResult, Cancelled]
    assert [engine.session(s).chunk for s in ids] == [2, 1, 2, 1]
    same(outcomes[0], alone.step("a"))
    same(outcomes[2], alone.step("c"))
    for sid in ("b", "d", "a"):
        same(engine.step(sid), alone.step(sid))


def test_a_member_that_leaves_a_batch_mid_denoise_lets_the_rest_finish(model):
    engine, reference = WorldEngine(model), WorldEngine(model)
    for seed, sid in enumerate(["a", "b", "c"]):
        start(engine, sid, seed, "counter")
        start(reference, sid, seed, "counter")
    outcomes = engine.step_many(
        [("a", None), ("b", "a storm"), ("c", None)], batch=True, cancel=[None, after_polls(3), None]
    )
    assert isinstance(outcomes[1], Cancelled) and engine.session("b").chunk == 1
    # The rest of the group started again without it: a batch of two, as if "b" was never there.
    a, c = reference.step_many([("a", None), ("c", None)], batch=True)
    same(outcomes[0], a)
    same(outcomes[2], c)
    same(engine.step("b", "a storm"), reference.step("b", "a storm"))


def test_one_token_for_the_call_cancels_it_all_and_nothing_advances(model):
    """The single-token form (in-process callers): set while the second session decodes, after the
    first one's chunk was complete; neither session advances."""
    engine, reference = WorldEngine(model), WorldEngine(model)
    for seed, sid in enumerate(["a", "b"]):
        start(engine, sid, seed, "stream")
        start(reference, sid, seed, "stream")
    token = CancelToken()
    with pytest.raises(Cancelled):
        engine.step_many(
            [("a", None), ("b", None)],
            on_frame=[None, lambda i, f: token.set() if i == 20 else None],
            cancel=token,
        )
    assert [engine.session(s).chunk for s in "ab"] == [1, 1]
    for sid in "ab":
        same(engine.step(sid), reference.step(sid))


def test_a_token_list_must_match_the_requests(model):
    engine = WorldEngine(model)
    start(engine, "a", 1, "counter")
    with pytest.raises(ValueError, match="1 requests but 2 cancel tokens"):
        engine.step_many([("a", None)], cancel=[None, None])
    assert engine.session("a").chunk == 1
