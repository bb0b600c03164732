"""`CancelToken`: how the owner of a request tells the engine to stop it.

The engine reads the token before every model forward (`WorldEngine.step_many(cancel=...)`) and,
once it is set, raises `Cancelled` with no session advanced. The engine never asks anyone whether to
stop: the worker sets the token from the thread that receives the cancel (`server/worker/loop.py`).
A token is also a `() -> bool` callable, the form the engine accepts from any caller.
"""

from __future__ import annotations

import threading


class CancelToken:
    """A one-way flag, safe to set from another thread."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    __call__ = is_set
