"""One WorldEngine over the P ranks of a context-parallel worker, kept identical on every rank.

The leader (rank 0) answers the front. Before each call that changes sessions (reset, step_many,
fork, restore, close) it broadcasts the call, minus its callbacks, on the control group; every
follower makes the same call on its own engine. All ranks then run the same code on the same inputs:
the transformer forwards meet in their collectives, and since every rank receives the same gathered
prediction, the sessions stay bit-identical everywhere. Read-only calls (snapshot, session lookups)
stay on the leader. Ids a call would draw at random (a fork's, a restored session's) are drawn by the
leader and sent along, so every rank names its sessions alike.

Cancelling: the engine polls `cancel` before every forward and before a chunk commits. The leader's
poll result is broadcast and the followers poll the broadcast instead, so all ranks stop before the
same forward and commit the same chunks; with one token per request (`step_many`), one broadcast per
token. Between decoded frames (the leader alone decodes) the engine only `peek`s at the leader's
token, without a broadcast: once set, a token stays set, so the poll before the commit carries it to
every rank. A call that fails validation fails on every rank before any collective (the checks are
deterministic).

Followers never decode frames (`WorldEngine(decodes=False)`): the VAE runs on the leader only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from ....engine.engine import WorldEngine
from .launch import WorkerGroup

log = logging.getLogger("helios.parallel")

CALLS = ("reset", "step_many", "fork", "restore", "close")


def _broadcast(group: WorkerGroup, obj: Any = None) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group.control)
    return box[0]


class LeaderEngine:
    """The leader's engine: same API as WorldEngine; mutating calls are mirrored on the followers."""

    def __init__(self, engine: WorldEngine, group: WorkerGroup):
        self._engine = engine
        self._group = group

    def __getattr__(self, name: str) -> Any:  # reads: model, device, sessions, session, snapshot, ...
        return getattr(self._engine, name)

    def _cancel(self, local: Callable[[], bool] | None) -> _SharedCheck:
        return _SharedCheck(self._group, local)

    def _mirror(self, method: str, *args: Any, **kwargs: Any) -> None:
        _broadcast(self._group, (method, args, kwargs))

    def reset(self, prompt: str = "", *, on_frame=None, cancel=None, session_id: str | None = None, **kw):
        session_id = session_id if session_id is not None else uuid.uuid4().hex
        self._mirror("reset", prompt, session_id=session_id, **kw)
        return self._engine.reset(
            prompt, session_id=session_id, on_frame=on_frame, cancel=self._cancel(cancel), **kw
        )

    def step(self, session_id: str, action: Any = None, *, on_frame=None, decode: bool = True):
        return self.step_many([(session_id, action)], on_frame=[on_frame], decode=decode)[0]

    def step_many(self, requests, *, on_frame=None, cancel=None, on_result=None, **kw):
        requests = list(requests)
        if cancel is None or callable(cancel):
            self._mirror("step_many", requests, **kw)
            checks: Any = self._cancel(cancel)
        else:  # one token per request: the followers poll one broadcast per token
            self._mirror("step_many", requests, per_request=True, **kw)
            checks = [self._cancel(c) for c in cancel]
        return self._engine.step_many(requests, on_frame=on_frame, cancel=checks, on_result=on_result, **kw)

    def fork(self, session_id: str, new_id: str | None = None) -> str:
        new_id = new_id or uuid.uuid4().hex
        self._mirror("fork", session_id, new_id)
        return self._engine.fork(session_id, new_id)

    def restore(self, data: bytes, session_id: str | None = None) -> str:
        session_id = session_id or uuid.uuid4().hex
        self._mirror("restore", data, session_id)
        return self._engine.restore(data, session_id)

    def close(self, session_id: str) -> None:
        self._mirror("close", session_id)
        self._engine.close(session_id)

    def shutdown(self) -> None:
        """Tell the followers to return from `follow`."""
        _broadcast(self._group, None)


class _SharedCheck:
    """The leader's side of a cancel token: a call broadcasts the local token's value (every rank
    polls it at the same point); `peek` reads it without a broadcast."""

    def __init__(self, group: WorkerGroup, local: Callable[[], bool] | None):
        self.group, self.local = group, local

    def peek(self) -> bool:
        return bool(self.local()) if self.local is not None else False

    def __call__(self) -> bool:
        return bool(_broadcast(self.group, self.peek()))


def follow(engine: WorldEngine, group: WorkerGroup) -> None:
    """A follower's loop: make each call the leader announces, until it says stop (or the group
    breaks because the leader is gone, which raises)."""

    def cancel() -> bool:
        return bool(_broadcast(group))

    while True:
        call = _broadcast(group)
        if call is None:
            return
        method, args, kwargs = call
        if method not in CALLS:
            raise RuntimeError(f"the leader sent an unknown call {method!r}")
        if method in ("reset", "step_many"):
            per_request = kwargs.pop("per_request", False)
            kwargs = {**kwargs, "cancel": [cancel] * len(args[0]) if per_request else cancel}
        try:
            getattr(engine, method)(*args, **kwargs)
        except Exception as exc:  # the leader meets the same error and reports it to its client
            log.debug("rank %d: %s failed like on the leader: %s", group.rank, method, exc)
