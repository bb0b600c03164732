"""HeliosClient: the synchronous Python client of a helios server (helios.v1 over gRPC; no torch).

    with HeliosClient("127.0.0.1:50051") as client:        # token= or $HELIOS_TOKEN
        session = client.create_session(width=320, height=192)
        chunk = client.reset(session, "a harbour at dusk", seed=1)   # chunk.frames: (33, H, W, 3) uint8
        chunk = client.step(session, "a storm rolls in")
        for item in client.stream(session, ["a", "b"]):    # StreamFrame / StreamEvent, frame by frame
            ...

Connecting calls GetServerInfo (the handshake): another major API version is refused
(`VersionMismatch`), a newer minor one warned about. Each RPC has a default deadline (`Timeouts`);
UNAVAILABLE (server starting, draining, unreachable) is retried with exponential backoff — the server
refuses such calls before doing any work, so a retried Step does not advance the world twice. Every
failure raises a typed `HeliosError` (errors.py). Frames decode from RGB24, JPEG or H.264 (messages.py).
"""

from __future__ import annotations

import os
import queue
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from . import actions as _actions
from ._proto.helios.v1 import world_pb2 as pb
from ._proto.helios.v1 import world_pb2_grpc as pb_grpc
from .errors import Unavailable, VersionMismatch, from_rpc_error
from .messages import (
    Chunk,
    FrameDecoder,
    ServerInfo,
    Session,
    SnapshotInfo,
    StreamEvent,
    StreamFrame,
    chunk_from_proto,
    frame_options,
    image_proto,
    session_id,
    stream_item,
    stream_mode,
    video_proto,
)

API_MAJOR, API_MINOR = 1, 0
T = TypeVar("T")


@dataclass(frozen=True)
class Timeouts:
    """Default deadlines per call, in seconds (a first chunk on a CPU or a cold GPU is slow)."""

    info: float = 30.0
    create_session: float = 60.0
    reset: float = 300.0
    step: float = 120.0
    fork: float = 60.0
    snapshot: float = 60.0
    restore: float = 60.0
    close: float = 30.0


@dataclass(frozen=True)
class Retry:
    """Exponential backoff on UNAVAILABLE: `attempts` tries in all, waits initial·multiplier^k (± jitter)."""

    attempts: int = 5
    initial_s: float = 0.2
    multiplier: float = 2.0
    max_s: float = 5.0

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        for _ in range(self.attempts - 1):
            yield min(delay, self.max_s) * random.uniform(0.8, 1.2)
            delay *= self.multiplier


DEFAULT_TIMEOUTS, DEFAULT_RETRY = Timeouts(), Retry()


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Raise the receive limit (gRPC's default is 4 MiB: a chunk of raw frames is larger)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def resolve_token(token: str | None) -> str:
    return token if token is not None else os.environ.get("HELIOS_TOKEN", "")


def check_version(info: ServerInfo, address: str) -> None:
    major, _, minor = info.api_version.partition(".")
    if not major.isdigit() or int(major) != API_MAJOR:
        raise VersionMismatch(
            f"the server at {address} speaks helios API {info.api_version!r}; "
            f"this client speaks {API_MAJOR}.x (upgrade or downgrade helios-world-sdk)"
        )
    if minor.isdigit() and int(minor) > API_MINOR:
        warnings.warn(
            f"the server at {address} speaks helios API {info.api_version}, newer than this client's "
            f"{API_MAJOR}.{API_MINOR}: newer features are not available here",
            stacklevel=3,
        )


class HeliosClient:
    """A connection to one helios server. Thread-safe: calls from several threads run concurrently
    (the server batches concurrent Steps into one forward)."""

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        token: str | None = None,
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        retry: Retry = DEFAULT_RETRY,
        max_message_bytes: int = 64 << 20,
        options: Iterable[tuple[str, Any]] = (),
        handshake: bool = True,
    ):
        self.address = address
        self.timeouts = timeouts
        self.retry = retry
        token = resolve_token(token)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = grpc.insecure_channel(
            address, options=channel_options(max_message_bytes) + list(options)
        )
        self._stub = pb_grpc.WorldServiceStub(self._channel)
        self._info: ServerInfo | None = None
        self._closed = False
        if handshake:
            check_version(self.server_info(), address)

    # --- plumbing -----------------------------------------------------------------------------------

    def _call(self, name: str, fn: Callable[..., T], request: Any, timeout: float | None, **kw: Any) -> T:
        delays = self.retry.delays()
        while True:
            try:
                return fn(request, metadata=self._metadata, timeout=timeout, **kw)
            except grpc.RpcError as exc:
                err = from_rpc_error(exc, name, self.address)
                delay = next(delays, None) if isinstance(err, Unavailable) else None
                if delay is None:
                    raise err from None
                time.sleep(delay)

    # --- the API ------------------------------------------------------------------------------------

    def server_info(self, refresh: bool = False) -> ServerInfo:
        """The server's versions, model, sizes, encodings and limits (GetServerInfo; cached)."""
        if self._info is None or refresh:
            reply = self._call(
                "GetServerInfo", self._stub.GetServerInfo, pb.GetServerInfoRequest(), self.timeouts.info
            )
            self._info = ServerInfo.from_proto(reply)
        return self._info

    def create_session(self, width: int = 0, height: int = 0, *, timeout: float | None = None) -> Session:
        """A new session of that frame size (0: the server's default). Nothing is generated yet."""
        reply = self._call(
            "CreateSession",
            self._stub.CreateSession,
            pb.CreateSessionRequest(width=width, height=height),
            timeout or self.timeouts.create_session,
        )
        return Session(reply.session_id, reply.width, reply.height)

    def reset(
        self,
        session: Session | str,
        prompt: str = "",
        *,
        image: Any = None,
        video: Any = None,
        seed: int = 0,
        negative_prompt: str = "",
        encoding: str = "rgb24",
        selection: str = "all",
        jpeg_quality: int = 0,
        timeout: float | None = None,
    ) -> Chunk:
        """Start the session's world from a prompt, optionally an image ((H, W, 3) uint8 or file bytes)
        or a video ((T, H, W, 3) uint8, T >= 33, or file bytes); return chunk 0."""
        request = reset_request(
            session, prompt, image, video, seed, negative_prompt, encoding, selection, jpeg_quality
        )
        reply = self._call("Reset", self._stub.Reset, request, timeout or self.timeouts.reset)
        return chunk_from_proto(reply.chunk)

    def step(
        self,
        session: Session | str,
        action: _actions.Action = None,
        *,
        encoding: str = "rgb24",
        selection: str = "all",
        jpeg_quality: int = 0,
        action_seq: int = 0,
        timeout: float | None = None,
    ) -> Chunk:
        """Apply an action (prompt str, Prompt, Blend, Transition, Control or structured dict; None
        continues) and return the next chunk."""
        request = pb.StepRequest(
            session_id=session_id(session),
            action=_actions.to_proto(action),
            frames=frame_options(encoding, selection, jpeg_quality),
            action_seq=action_seq,
        )
        reply = self._call("Step", self._stub.Step, request, timeout or self.timeouts.step)
        return chunk_from_proto(reply.chunk)

    def stream(
        self,
        session: Session | str,
        actions: Iterable[_actions.Action] | queue.Queue,
        *,
        mode: str = "lockstep",
        encoding: str = "rgb24",
        jpeg_quality: int = 0,
        timeout: float | None = None,
    ) -> Iterator[StreamFrame | StreamEvent]:
        """Frames as the server decodes them, plus events, until the actions end and their chunks are
        done. `actions` is an iterable (each item one chunk in lockstep mode) or a `queue.Queue` fed
        while streaming (put `STOP` on it to end; `None` is the continue action)."""
        requests = stream_requests(session, actions, mode, encoding, jpeg_quality)
        try:
            call = self._stub.Stream(requests, metadata=self._metadata, timeout=timeout)
            decoder = FrameDecoder()
            for msg in call:
                yield stream_item(msg, decoder)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, "Stream", self.address) from None

    def fork(self, session: Session | str) -> str:
        """An independent copy of the session; returns the new session's id."""
        reply = self._call(
            "Fork", self._stub.Fork, pb.ForkRequest(session_id=session_id(session)), self.timeouts.fork
        )
        return reply.session_id

    def snapshot(self, session: Session | str, include_data: bool = False) -> SnapshotInfo:
        """Save the session on the server (restore by `snapshot_id`); `include_data` also returns bytes."""
        request = pb.SnapshotRequest(session_id=session_id(session), include_data=include_data)
        reply = self._call("Snapshot", self._stub.Snapshot, request, self.timeouts.snapshot)
        return SnapshotInfo(reply.snapshot_id, reply.size_bytes, reply.sha256, reply.data)

    def restore(self, source: SnapshotInfo | str | bytes) -> str:
        """A new session from a snapshot (SnapshotInfo, its id, or its bytes); returns the session id."""
        request = restore_request(source)
        return self._call("Restore", self._stub.Restore, request, self.timeouts.restore).session_id

    def close_session(self, session: Session | str) -> None:
        """End a session on the server (closing twice is fine)."""
        request = pb.CloseSessionRequest(session_id=session_id(session))
        self._call("CloseSession", self._stub.CloseSession, request, self.timeouts.close)

    def close(self) -> None:
        """Close the channel (idempotent). Sessions stay on the server until closed or idle."""
        if not self._closed:
            self._closed = True
            self._channel.close()

    def __enter__(self) -> HeliosClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------
# Requests shared with the async client
# ---------------------------------------------------------------------------------------------------

STOP = object()  # put on a stream's action queue to end the stream


def reset_request(
    session: Session | str,
    prompt: str,
    image: Any,
    video: Any,
    seed: int,
    negative_prompt: str,
    encoding: str,
    selection: str,
    jpeg_quality: int,
) -> pb.ResetRequest:
    if image is not None and video is not None:
        raise ValueError("reset takes an image or a video, not both")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    request = pb.ResetRequest(
        session_id=session_id(session),
        prompt=prompt,
        seed=seed,
        negative_prompt=negative_prompt,
        frames=frame_options(encoding, selection, jpeg_quality),
    )
    if image is not None:
        request.image.CopyFrom(image_proto(image))
    if video is not None:
        request.video.CopyFrom(video_proto(video))
    return request


def restore_request(source: SnapshotInfo | str | bytes) -> pb.RestoreRequest:
    if isinstance(source, SnapshotInfo):
        return pb.RestoreRequest(snapshot_id=source.snapshot_id)
    if isinstance(source, str):
        return pb.RestoreRequest(snapshot_id=source)
    if isinstance(source, (bytes, bytearray)):
        return pb.RestoreRequest(data=bytes(source))
    raise ValueError(
        f"restore takes a SnapshotInfo, a snapshot id or snapshot bytes, got {type(source).__name__}"
    )


def stream_requests(
    session: Session | str,
    actions: Iterable[_actions.Action] | queue.Queue,
    mode: str,
    encoding: str,
    jpeg_quality: int,
) -> Iterator[pb.StreamRequest]:
    start = pb.StreamStart(
        session_id=session_id(session),
        mode=stream_mode(mode),
        frames=frame_options(encoding, "all", jpeg_quality),
    )
    yield pb.StreamRequest(start=start)
    seq = 0
    for action in _drain(actions):
        seq += 1
        yield pb.StreamRequest(action=pb.StreamAction(seq=seq, action=_actions.to_proto(action)))


def _drain(actions: Iterable[Any] | queue.Queue) -> Iterator[Any]:
    if isinstance(actions, queue.Queue):
        while (item := actions.get()) is not STOP:
            yield item
    else:
        yield from actions
