"""Test seams of the engine worker: faults the server tests inject. Off unless the worker's
environment has `HELIOS_TEST_SEAMS`, which only tests set (never a production path).

`HELIOS_TEST_SEAMS` is a JSON object:
- `"hang_prompt": "TEXT"`: a Step whose action is `Prompt(TEXT)` makes the loop thread sleep for an
  hour without reading its cancel token or reporting progress: a wedged engine, for the watchdog;
- `"frame_delay_s": S`: every decoded frame waits S seconds before it leaves: a slow decode, so a
  test's deadline can land in it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

from helios_sdk.actions import Action, Prompt

ENV = "HELIOS_TEST_SEAMS"
HANG_SECONDS = 3600.0

log = logging.getLogger("helios.worker")


@dataclass(frozen=True)
class Seams:
    hang_prompt: str | None = None
    frame_delay_s: float = 0.0

    @classmethod
    def from_env(cls) -> Seams | None:
        value = os.environ.get(ENV)
        if not value:
            return None
        seams = cls(**json.loads(value))
        log.warning("test seams are on (%s=%s): this worker is for tests only", ENV, value)
        return seams

    def hang_if_asked(self, action: Action) -> None:
        """Wedge the calling thread when `action` is the hang prompt."""
        if self.hang_prompt is not None and isinstance(action, Prompt) and action.text == self.hang_prompt:
            log.warning("test seam: the engine loop hangs for %.0f s", HANG_SECONDS)
            time.sleep(HANG_SECONDS)

    def frame_delay(self) -> None:
        if self.frame_delay_s > 0:
            time.sleep(self.frame_delay_s)
