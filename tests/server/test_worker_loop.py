"""The engine worker's loop, driven in-process through a scripted transport (no front, no sockets)."""

from __future__ import annotations

import pytest

from helios_runtime.engine.engine import WorldEngine
from helios_runtime.engine.world_model import WorldModel
from helios_runtime.server.protocol.messages import Cancel, Frame, Step
from helios_runtime.server.worker.loop import Worker


class ScriptedTransport:
    """Hands the loop pre-planned messages, one batch per receive() call, and records what it sends."""

    def __init__(self, script: list[list], passes: int):
        self.script, self.passes, self.sent = script, passes, []

    def send(self, reply) -> None:
        self.sent.append(reply)

    def receive(self, timeout_ms: int):
        return self.script.pop(0) if self.script else []

    def closed(self) -> bool:
        self.passes -= 1
        return self.passes < 0


def test_a_cancel_that_arrives_while_another_batch_runs_is_kept(one_thread):
    """Step y and its cancel arrive while session a's step denoises; y must not run afterwards."""
    engine = WorldEngine(WorldModel.load("tiny", device="cpu"))
    for sid in ("a", "y"):
        engine.reset("a quiet harbour", seed=1, height=64, width=64, session_id=sid)
    transport = ScriptedTransport(
        [
            [Step("a", frames="none", id=1)],  # the loop's first poll
            [Step("y", frames="none", id=2), Cancel(2)],
        ],
        passes=2,
    )
    Worker(engine, transport).run()
    outcome = {r.id: getattr(r, "code", r.kind) for r in transport.sent}
    assert outcome == {1: "result", 2: "CANCELLED"}
    assert engine.session("y").chunk == 1, "the cancelled step must not advance its session"


class CancellingTransport(ScriptedTransport):
    """Cancels request `target` (as the I/O thread would) once request `during` sent frame `at`."""

    def __init__(self, script: list[list], passes: int, during: int, at: int, target: int):
        super().__init__(script, passes)
        self.during, self.at, self.target = during, at, target
        self.worker: Worker | None = None

    def send(self, reply) -> None:
        super().send(reply)
        if isinstance(reply, Frame) and (reply.id, reply.index_in_chunk) == (self.during, self.at):
            self.worker.cancel(self.target)


@pytest.mark.parametrize(
    ("during", "target"),
    [(1, 2), (1, 1), (3, 3)],
    ids=["another-waits", "itself-mid-decode", "the-last-mid-decode"],
)
def test_a_cancel_inside_a_batch_fails_only_its_own_step(one_thread, during, target):
    """Three steps taken together; one is cancelled while a chunk decodes. Only it fails (CANCELLED),
    its session unchanged; the others commit, and each is answered as soon as its chunk commits."""
    engine = WorldEngine(WorldModel.load("tiny", device="cpu"))
    for sid in ("a", "b", "c"):
        engine.reset("a quiet harbour", seed=1, height=64, width=64, session_id=sid)
    transport = CancellingTransport(
        [[Step("a", id=1), Step("b", id=2), Step("c", id=3)]], passes=1, during=during, at=10, target=target
    )
    worker = transport.worker = Worker(engine, transport)
    worker.run()
    outcome = {r.id: getattr(r, "code", r.kind) for r in transport.sent if not isinstance(r, Frame)}
    assert outcome == {i: "CANCELLED" if i == target else "result" for i in (1, 2, 3)}
    assert [engine.session(s).chunk for s in "abc"] == [1 if i == target else 2 for i in (1, 2, 3)]
    kinds = [(r.kind, r.id) for r in transport.sent]
    first_frame_of_3 = kinds.index(("frame", 3))
    assert kinds.index(("result" if target != 1 else "error", 1)) < first_frame_of_3
    assert not worker.tokens, "every request's token is released once it is answered"
