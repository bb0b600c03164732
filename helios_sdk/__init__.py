"""helios_sdk: the light client of helios-sdk (no torch).

- `HeliosClient` / `AsyncHeliosClient` (client.py, aio.py): helios.v1 over gRPC, frames as numpy;
- `HeliosEnv` / `HeliosVectorEnv` (env.py, vector.py): a world as a Gymnasium env, registered as
  `helios/World-v0` (`gymnasium.make("helios_sdk:helios/World-v0")` imports this package first), on
  a server (`address=`) or in-process (`backend="local"`);
- actions (actions.py): `Prompt`, `Blend`, `Transition`, `Control`, `Move`, and `ActionSpace`, the
  structured actions a world's model understands as its server describes them;
- `RecordEpisode` / `replay` (recording.py): an episode to mp4 + JSON, replayed deterministically;
- the `helios` command line (cli.py).

Importing this package is cheap: the client, gymnasium and the runtime load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .actions import ActionSpace, Blend, Control, Move, Prompt, Transition
from .errors import (
    DeadlineExceeded,
    FailedPrecondition,
    HeliosError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SessionLost,
    Unauthenticated,
    Unavailable,
    VersionMismatch,
)

if TYPE_CHECKING:
    from .aio import AsyncHeliosClient
    from .client import HeliosClient
    from .env import HeliosEnv
    from .vector import HeliosVectorEnv

__version__ = "0.1.0"

ENV_ID = "helios/World-v0"

_LAZY = {
    "HeliosClient": "client",
    "AsyncHeliosClient": "aio",
    "HeliosEnv": "env",
    "HeliosVectorEnv": "vector",
    "RecordEpisode": "recording",
    "replay": "recording",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'helios_sdk' has no attribute {name!r}")


def make(env_id: str = ENV_ID, **kwargs: Any) -> Any:
    """`gymnasium.make` for helios envs: `make("helios/World-v0", address=...)` or `backend="local"`."""
    import gymnasium

    return gymnasium.make(env_id, **kwargs)


def make_vec(env_id: str = ENV_ID, num_envs: int = 2, **kwargs: Any) -> Any:
    """`gymnasium.make_vec` through the native HeliosVectorEnv (sessions stepped together)."""
    import gymnasium

    return gymnasium.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)


def _register() -> None:
    """Register helios/World-v0 with gymnasium when gymnasium is installed (registration is data)."""
    try:
        import gymnasium
    except ImportError:
        return
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id=ENV_ID,
            entry_point="helios_sdk.env:HeliosEnv",
            vector_entry_point="helios_sdk.vector:HeliosVectorEnv",
            disable_env_checker=False,
        )


_register()

__all__ = [
    "ENV_ID",
    "ActionSpace",
    "AsyncHeliosClient",
    "Blend",
    "Control",
    "DeadlineExceeded",
    "FailedPrecondition",
    "HeliosClient",
    "HeliosEnv",
    "HeliosError",
    "HeliosVectorEnv",
    "InvalidArgument",
    "Move",
    "NotFound",
    "Prompt",
    "RecordEpisode",
    "ResourceExhausted",
    "SessionLost",
    "Transition",
    "Unauthenticated",
    "Unavailable",
    "VersionMismatch",
    "__version__",
    "make",
    "make_vec",
    "replay",
]
