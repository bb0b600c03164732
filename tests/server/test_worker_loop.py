"""The engine worker's loop, driven in-process through a scripted transport (no front, no sockets)."""

from __future__ import annotations

from helios_runtime.engine.engine import WorldEngine
from helios_runtime.engine.world_model import WorldModel
from helios_runtime.server.protocol.messages import Cancel, Step
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
