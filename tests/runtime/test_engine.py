"""WorldEngine behaviour on the tiny model: stepping, determinism, fork, snapshot, actions, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from helios_runtime.engine import snapshot
from helios_runtime.engine.actions import Blend, Prompt, PromptTemplateAdapter, Transition
from helios_runtime.engine.engine import WorldEngine
from helios_runtime.engine.errors import CapacityExceeded, InvalidInput, SessionClosed, SessionNotFound
from helios_runtime.engine.session import PromptState
from helios_runtime.engine.world_model import WorldModel

SIZE = dict(height=64, width=64)  # latent 8×8: pyramid stages 2×2, 4×4, 8×8
KEY = bytes(range(32))  # the snapshot key of the `engine` fixture


@pytest.fixture(scope="module")
def model() -> WorldModel:
    return WorldModel.load("tiny", device="cpu", seed=0)


@pytest.fixture
def engine(model) -> WorldEngine:
    return WorldEngine(model, max_sessions=4, snapshot_key=KEY)


def rollout(engine: WorldEngine, actions, seed=3, decode=True):
    first = engine.reset("a quiet forest", seed=seed, **SIZE)
    chunks = [first]
    for a in actions:
        chunks.append(engine.step(first.session_id, a, decode=decode))
    return first.session_id, chunks


def test_reset_and_step_return_chunks_of_33_frames(engine):
    seen = []
    first = engine.reset("a quiet forest", seed=1, on_frame=lambda i, f: seen.append((i, f)), **SIZE)
    assert first.chunk_index == 0
    assert first.frames.shape == (33, 64, 64, 3) and first.frames.dtype == torch.uint8
    assert first.latents.shape == (1, 16, 9, 8, 8)
    # Frames reach the callback one by one, in order, equal to the returned chunk.
    assert [i for i, _ in seen] == list(range(33))
    assert torch.equal(torch.stack([f for _, f in seen]), first.frames)
    nxt = engine.step(first.session_id)
    assert nxt.chunk_index == 1 and nxt.frames.shape == (33, 64, 64, 3)
    assert engine.session(first.session_id).chunk == 2


def test_same_seed_and_actions_give_the_same_world(model):
    actions = [None, "a desert at noon", Transition("snow falling", 2), None]
    _, a = rollout(WorldEngine(model), actions)
    _, b = rollout(WorldEngine(model), actions)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.frames, y.frames) and torch.equal(x.latents, y.latents)
    _, c = rollout(WorldEngine(model), actions, seed=4)
    assert not torch.equal(a[-1].latents, c[-1].latents)


def test_fork_continues_exactly_like_the_original(engine):
    sid, _ = rollout(engine, [None, "a river"])
    twin = engine.fork(sid)
    for action in [None, "a storm", {"keys": ["w"]}]:
        x, y = engine.step(sid, action), engine.step(twin, action)
        assert torch.equal(x.frames, y.frames) and torch.equal(x.latents, y.latents)
    # ...and they are independent: different actions diverge.
    assert not torch.equal(engine.step(sid, "lava").latents, engine.step(twin, "ice").latents)


def test_snapshot_restore_is_bit_identical_even_on_another_engine(model, engine):
    sid, _ = rollout(engine, [Transition("a canyon", 3)])  # mid-transition state must survive too
    data = engine.snapshot(sid)
    expected = [engine.step(sid, a) for a in (None, "rain", None)]
    other = WorldEngine(model, snapshot_key=KEY)  # servers that share a key on purpose
    restored = other.restore(data)
    got = [other.step(restored, a) for a in (None, "rain", None)]
    for x, y in zip(expected, got, strict=True):
        assert torch.equal(x.frames, y.frames) and torch.equal(x.latents, y.latents)
    assert len(data) < 200_000  # small state: memory + embeddings + metadata


def test_bad_snapshots(engine, model):
    sid, _ = rollout(engine, [])
    data = engine.snapshot(sid)
    with pytest.raises(snapshot.SnapshotError, match="signature does not match"):
        engine.restore(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(snapshot.SnapshotError, match="truncated"):
        engine.restore(data[:-100])
    with pytest.raises(snapshot.SnapshotError, match="bad magic"):
        engine.restore(b"hello world, this is not a snapshot at all")
    other_model = WorldModel.load("tiny", device="cpu", seed=1)  # other weights: other text encoder digest?
    other_model.name = "tiny-other"
    with pytest.raises(snapshot.SnapshotError, match="taken with model"):
        WorldEngine(other_model, snapshot_key=KEY).restore(data)


def test_memory_stays_flat_over_a_long_rollout(engine):
    sid, _ = rollout(engine, [None] * 5, decode=False)
    session = engine.session(sid)
    size = session.memory.nbytes()
    ptr = session.memory.history.data_ptr()
    for _ in range(95):
        engine.step(sid, decode=False)
    assert session.chunk == 101
    assert session.memory.nbytes() == size and session.memory.history.data_ptr() == ptr
    assert len(engine.snapshot(sid)) < 200_000


def _forward_batches(engine: WorldEngine) -> list[int]:
    """Record the batch size of every transformer forward the engine makes."""
    seen: list[int] = []
    engine.model.transformer.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).shape[0]),
        with_kwargs=True,
    )
    return seen


def test_step_many_matches_single_steps_bit_for_bit(model):
    """The replay guarantee (docs/engine.md): a session stepped beside others gives exactly the frames
    it gives alone, on any CPU, because step_many steps sessions one at a time by default."""
    single, many_engine = WorldEngine(model), WorldEngine(copy.deepcopy(model))
    ids_s = [single.reset("a", seed=s, **SIZE).session_id for s in (1, 2, 3)]
    ids_b = [many_engine.reset("a", seed=s, **SIZE).session_id for s in (1, 2, 3)]
    actions = [None, "b", Blend(("a", "b"), (1.0, 3.0))]
    batches = _forward_batches(many_engine)
    for _ in range(2):
        one = [single.step(i, a) for i, a in zip(ids_s, actions, strict=True)]
        many = many_engine.step_many(list(zip(ids_b, actions, strict=True)))
        for x, y in zip(one, many, strict=True):
            assert torch.equal(x.latents, y.latents) and torch.equal(x.frames, y.frames)
    assert set(batches) == {1}


def test_batched_step_many_runs_one_forward_and_agrees_with_single_steps(model):
    """batch=True: one forward for the three sessions, the same world up to the matrix kernels'
    batch-size-dependent rounding (bit-identical on some CPUs, not on all: not asserted)."""
    single, batched = WorldEngine(model), WorldEngine(copy.deepcopy(model))
    ids_s = [single.reset("a", seed=s, **SIZE).session_id for s in (1, 2, 3)]
    ids_b = [batched.reset("a", seed=s, **SIZE).session_id for s in (1, 2, 3)]
    actions = [None, "b", Blend(("a", "b"), (1.0, 3.0))]
    batches = _forward_batches(batched)
    one = [single.step(i, a) for i, a in zip(ids_s, actions, strict=True)]
    many = batched.step_many(list(zip(ids_b, actions, strict=True)), batch=True)
    assert set(batches) == {3}
    for x, y in zip(one, many, strict=True):
        assert (x.latents - y.latents).abs().max() <= 1e-4 * x.latents.abs().max()
        assert (x.frames.int() - y.frames.int()).abs().max() <= 2


def test_actions_change_the_world(engine):
    sid, _ = rollout(engine, [None])
    snap = engine.snapshot(sid)
    plain = engine.step(sid, None)
    for action in ("a volcano", Prompt("a volcano"), Blend(("x", "y"), (0.5, 0.5)), {"keys": ["w", "shift"]}):
        restored = engine.restore(snap)
        assert not torch.equal(engine.step(restored, action).latents, plain.latents), action
        engine.close(restored)


def test_transition_weights_follow_the_reference():
    a, b = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    state = PromptState(a).switched(b, (0.0, 0.5, 1.0))
    seen = []
    for _ in range(4):
        seen.append(state.for_next_chunk().mean().item())
        state = state.advanced()
    assert seen == [0.0, 0.5, 1.0, 1.0]
    assert state.source is None and state.weights == ()


def test_prompt_template_adapter():
    adapter = PromptTemplateAdapter()
    cond = adapter.to_conditioning(
        {"keys": ["W"], "mouse": {"dx": 10, "dy": 0}, "camera": {"zoom": 1}}, "a city"
    )
    assert cond.text == "a city, moving forward, turning right, the camera zooms in"
    assert adapter.to_conditioning({"mouse": {"dx": 1}}, "a city").text == "a city"
    with pytest.raises(InvalidInput, match="unknown key 'q'"):
        adapter.to_conditioning({"keys": ["q"]}, "x")
    with pytest.raises(InvalidInput, match=r"mouse\.dx must be a finite number"):
        adapter.to_conditioning({"mouse": {"dx": float("nan")}}, "x")
    with pytest.raises(InvalidInput, match="unknown structured action fields"):
        adapter.to_conditioning({"jump": True}, "x")


@pytest.mark.parametrize(
    "action,match",
    [
        (42, "an action is None, a prompt str"),
        (Blend(("a", "b"), (1.0,)), "2 prompts but 1 weights"),
        (Blend(("a",), (-1.0,)), "finite number >= 0"),
        (Blend(("a",), (float("nan"),)), "finite number >= 0"),
        (Blend((), ()), "at least one prompt"),
        (Transition("x", 0), "Transition.chunks"),
        (Prompt(None), "Prompt.text must be a str"),
        ({"keys": "w"}, "'keys' must be a list"),
    ],
)
def test_bad_actions_are_refused_and_change_nothing(engine, action, match):
    sid, _ = rollout(engine, [])
    before = engine.snapshot(sid)
    with pytest.raises(InvalidInput, match=match):
        engine.step(sid, action)
    assert engine.snapshot(sid) == before


def test_bad_requests(engine):
    with pytest.raises(SessionNotFound, match="no session 'nope'"):
        engine.step("nope")
    sid, _ = rollout(engine, [])
    engine.close(sid)
    engine.close(sid)  # idempotent
    with pytest.raises(SessionClosed, match="is closed"):
        engine.step(sid)
    with pytest.raises(SessionClosed):
        engine.snapshot(sid)
    with pytest.raises(InvalidInput, match="multiple of 64"):
        engine.reset("x", height=96, width=64)
    with pytest.raises(InvalidInput, match="seed must be an int"):
        engine.reset("x", seed=-3, **SIZE)
    with pytest.raises(InvalidInput, match="prompt must be a str"):
        engine.reset(None, **SIZE)
    with pytest.raises(InvalidInput, match="an image or a video, not both"):
        engine.reset("x", image=torch.zeros(3, 64, 64), video=torch.zeros(33, 3, 64, 64), **SIZE)
    with pytest.raises(InvalidInput, match="NaN"):
        engine.reset("x", image=torch.full((3, 64, 64), float("nan")), **SIZE)
    with pytest.raises(InvalidInput, match="at least 33 frames"):
        engine.reset("x", video=torch.zeros(20, 3, 64, 64), **SIZE)
    with pytest.raises(InvalidInput, match="one RGB frame"):
        engine.reset("x", image=torch.zeros(4, 64, 64), **SIZE)


def test_capacity_and_closed(engine):
    ids = [engine.reset("x", seed=i, **SIZE).session_id for i in range(4)]
    with pytest.raises(CapacityExceeded, match="maximum of 4"):
        engine.reset("x", **SIZE)
    with pytest.raises(CapacityExceeded):
        engine.fork(ids[0])
    engine.close(ids[0])
    engine.reset("x", **SIZE)  # room again


def test_image_and_video_resets(engine):
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8)
    r = engine.reset("a statue", image=image, seed=5, **SIZE)
    s = engine.session(r.session_id)
    assert s.memory.has_anchor and r.frames.shape == (33, 64, 64, 3)
    # An image of another size is resized to the session's size.
    engine.reset("a statue", image=image.numpy()[:32], seed=5, **SIZE)
    video = torch.rand(70, 3, 64, 64, generator=g) * 2 - 1  # 2 windows of 33 frames (the first 4 dropped)
    r = engine.reset("a river", video=video, seed=5, **SIZE)
    assert engine.step(r.session_id).frames.shape == (33, 64, 64, 3)


@pytest.mark.parametrize(
    "content,match", [("{not json", "not valid JSON"), ("[1, 2]", "must hold a JSON object")]
)
def test_bad_pipeline_folder(tmp_path, content, match):
    from helios_runtime.model.checkpoint import CheckpointError

    (tmp_path / "model_index.json").write_text(content)
    with pytest.raises(CheckpointError, match=match):
        WorldModel.load(tmp_path)
    with pytest.raises(CheckpointError, match="is neither a preset"):
        WorldModel.load(tmp_path / "missing")


def test_a_read_only_image_makes_no_warning(engine):
    """The worker hands the engine np.frombuffer views of a request's bytes, which are read-only."""
    import warnings

    import numpy as np

    image = np.frombuffer(bytes(64 * 64 * 3), np.uint8).reshape(64, 64, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = engine.reset("a quiet forest", image=image, seed=1, **SIZE)
    assert first.frames.shape == (33, 64, 64, 3)
