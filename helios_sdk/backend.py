"""Where the env's worlds run: a helios server (`RemoteBackend`, through HeliosClient) or the engine
in this process (`LocalBackend`, through `helios_runtime`'s in-process client, imported lazily),
behind one small interface so HeliosEnv and HeliosVectorEnv do not care which.

Both step several sessions together: each sends its N steps at once, and the engine worker (behind
the server, or in this process) takes the steps waiting together in one `WorldEngine.step_many`
call, which steps them one after another so that each world's frames depend only on its own seed
and actions (docs/engine.md, "Batching and replay").
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import actions as _actions
from .client import HeliosClient
from .errors import FailedPrecondition, HeliosError, InvalidArgument, error_class
from .messages import Chunk

FRAMES_PER_CHUNK = 33


class Backend(ABC):
    """Sessions of one size on a world engine, local or remote."""

    width: int
    height: int
    fps: int = 16
    frames_per_chunk: int = FRAMES_PER_CHUNK
    # The structured actions the model understands, as its engine describes them (a server before
    # API 1.1 describes none: then the prompt-template adapter's, which such servers ran by default).
    actions: _actions.ActionSpace = _actions.PROMPT_TEMPLATE_SPACE

    @abstractmethod
    def open(self) -> str:
        """A handle for a new session (nothing is generated until reset)."""

    @abstractmethod
    def reset(
        self, handle: str, prompt: str, *, image: Any = None, video: Any = None, seed: int = 0
    ) -> Chunk: ...

    @abstractmethod
    def step_many(self, requests: Sequence[tuple[str, _actions.Action]]) -> list[Chunk]:
        """Step the sessions together (one `step_many` call on the worker)."""

    def step(self, handle: str, action: _actions.Action) -> Chunk:
        return self.step_many([(handle, action)])[0]

    @abstractmethod
    def close_session(self, handle: str) -> None: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the world: backend, model, sampler, versions (for recordings)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release what the backend holds (its client, its sessions)."""


class RemoteBackend(Backend):
    """Sessions on a helios server. `selection="last"` asks only for each chunk's last frame."""

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        *,
        width: int | None = None,
        height: int | None = None,
        encoding: str = "rgb24",
        selection: str = "all",
        client: HeliosClient | None = None,
    ):
        if client is None and not address:
            raise ValueError("the remote backend needs address='HOST:PORT' (or backend='local')")
        self._own = client is None
        self.client = client or HeliosClient(address or "", token)
        info = self.client.server_info()
        self.info = info
        self.width = width or info.default_width
        self.height = height or info.default_height
        self.fps = info.fps
        self.frames_per_chunk = info.frames_per_chunk
        self.actions = info.actions or _actions.PROMPT_TEMPLATE_SPACE
        self.encoding, self.selection = encoding, selection
        self._sessions: dict[str, str] = {}  # handle -> server session id (created on first reset)
        self._pool: ThreadPoolExecutor | None = None

    def open(self) -> str:
        handle = uuid.uuid4().hex
        self._sessions[handle] = ""
        return handle

    def reset(
        self, handle: str, prompt: str, *, image: Any = None, video: Any = None, seed: int = 0
    ) -> Chunk:
        if not self._sessions.get(handle):
            self._sessions[handle] = self.client.create_session(self.width, self.height).session_id
        return self.client.reset(
            self._sessions[handle],
            prompt,
            image=image,
            video=video,
            seed=seed,
            encoding=self.encoding,
            selection=self.selection,
        )

    def step_many(self, requests: Sequence[tuple[str, _actions.Action]]) -> list[Chunk]:
        ids = [self._session(h) for h, _ in requests]
        if len(requests) == 1:
            return [self._step(ids[0], requests[0][1])]
        if self._pool is None or self._pool._max_workers < len(requests):
            self._pool = ThreadPoolExecutor(max_workers=len(requests), thread_name_prefix="helios-step")
        futures = [self._pool.submit(self._step, sid, a) for sid, (_, a) in zip(ids, requests, strict=True)]
        return [f.result() for f in futures]

    def _step(self, sid: str, action: _actions.Action) -> Chunk:
        return self.client.step(sid, action, encoding=self.encoding, selection=self.selection)

    def _session(self, handle: str) -> str:
        sid = self._sessions.get(handle)
        if not sid:
            raise FailedPrecondition("step before reset: reset the env (or the sub-env) first")
        return sid

    def session_id(self, handle: str) -> str:
        return self._sessions.get(handle, "")

    def close_session(self, handle: str) -> None:
        sid = self._sessions.pop(handle, "")
        if sid:
            try:
                self.client.close_session(sid)
            except HeliosError:
                pass  # the server may be gone already; the session expires there anyway

    def describe(self) -> dict[str, Any]:
        i = self.info
        return {
            "backend": "remote",
            "address": self.client.address,
            "api_version": i.api_version,
            "server_version": i.server_version,
            "model": i.model,
            "parameters": i.parameters,
            "sampler": i.sampler,
        }

    def close(self) -> None:
        for handle in list(self._sessions):
            self.close_session(handle)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        if self._own:
            self.client.close()


# One engine per (model, device) per process: loading a model is the expensive part, and sessions of
# several envs share an engine as the server's worker shares one.
_CLIENTS: dict[tuple[str, str | None], Any] = {}


def shared_client(model: str | None = None, device: str | None = None) -> Any:
    """The in-process engine client (`helios_runtime`'s `LocalClient`) of `model` (None: the
    runtime's default, `toy`) on `device`."""
    try:
        from helios_runtime import DEFAULT_MODEL
        from helios_runtime.server.worker.inprocess import LocalClient
    except ImportError as exc:
        raise ImportError(
            "backend='local' runs the engine in this process: pip install 'helios-world-sdk[runtime]'"
        ) from exc
    key = (str(model or DEFAULT_MODEL), device)
    if key not in _CLIENTS:
        _CLIENTS[key] = LocalClient.load(key[0], device)
    return _CLIENTS[key]


class LocalBackend(Backend):
    """Sessions on an engine in this process, through the runtime's in-process client: the same
    protocol, errors and frames as a server's worker, with no socket (`model`: a preset such as
    "tiny", None for the runtime's default "toy", or a Helios pipeline folder; `engine`: bring your
    own WorldEngine)."""

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        width: int | None = None,
        height: int | None = None,
        engine: Any = None,
    ):
        if engine is not None:
            from helios_runtime.server.worker.inprocess import LocalClient

            self.client = LocalClient(engine)
        else:
            self.client = shared_client(model, device)
        info = self.client.info
        self.width, self.height = width or info["default_width"], height or info["default_height"]
        if info.get("actions"):
            self.actions = _actions.ActionSpace.from_dict(info["actions"])
        self._handles: set[str] = set()
        self._live: set[str] = set()

    def open(self) -> str:
        handle = uuid.uuid4().hex
        self._handles.add(handle)
        return handle

    def reset(
        self, handle: str, prompt: str, *, image: Any = None, video: Any = None, seed: int = 0
    ) -> Chunk:
        with _typed_errors():
            result = self.client.reset(
                handle, prompt, image=image, video=video, seed=seed, width=self.width, height=self.height
            )
        self._live.add(handle)
        return _chunk(result)

    def step_many(self, requests: Sequence[tuple[str, _actions.Action]]) -> list[Chunk]:
        for handle, _ in requests:
            if handle not in self._live:
                raise FailedPrecondition("step before reset: reset the env (or the sub-env) first")
        with _typed_errors():
            results = self.client.step_many([(h, _actions.normalize(a)) for h, a in requests])
        return [_chunk(r) for r in results]

    def session_id(self, handle: str) -> str:
        return handle if handle in self._live else ""

    def close_session(self, handle: str) -> None:
        if handle in self._live:
            self._live.discard(handle)
            with _typed_errors():
                self.client.close_session(handle)
        self._handles.discard(handle)

    def describe(self) -> dict[str, Any]:
        info = self.client.info
        return {"backend": "local", "model": info["name"], "device": info["device"]}

    def close(self) -> None:
        for handle in list(self._handles):
            self.close_session(handle)


def _chunk(result: Any) -> Chunk:
    return Chunk(result.session_id, result.chunk_index, result.frames, result.indices, dict(result.timings))


class _typed_errors:
    """The in-process client's errors (a status code name each, as a server's) -> the client's
    typed errors, so both backends raise the same exceptions."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, HeliosError):
            return False
        code = getattr(exc, "code", None)
        if isinstance(code, str):  # helios_runtime's WorkerError
            raise error_class(code)(str(exc), details=str(exc)) from exc
        if isinstance(exc, ValueError):
            raise InvalidArgument(str(exc), details=str(exc)) from exc
        return False
