"""The JSON files of a diffusers-format pipeline folder: reading one, and the error a bad folder raises.

A leaf module: the model loaders (`model/checkpoint.py`) and the sampler's `SchedulerConfig`
(`sampling/schedule.py`) both read these files, and neither package imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path


class CheckpointError(ValueError):
    """A folder is not a loadable checkpoint of the expected model; the message says why."""


def read_json_object(path: str | Path) -> dict:
    """A JSON file that must hold an object (config.json, model_index.json, scheduler_config.json)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data
