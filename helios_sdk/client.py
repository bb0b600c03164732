"""HeliosClient: the synchronous Python client of a helios server (helios.v1 over gRPC; no torch).

    with HeliosClient("127.0.0.1:50051") as client:        # token= or $HELIOS_TOKEN
        session = client.create_session(width=320, height=192)
        chunk = client.reset(session, "a harbour at dusk", seed=1)   # chunk.frames: (33, H, W, 3) uint8
        chunk = client.step(session, "a storm rolls in")
        for item in client.stream(session, ["a", "b"]):    # StreamFrame / StreamEvent, frame by frame
            ...

Connecting calls GetServerInfo (the handshake): another major API version is refused
(`VersionMismatch`), a newer minor one warned about. Each RPC has a default deadline (`Timeouts`).
Retries are gRPC's own, from the service config shared by every helios client (retry_policy.json):
UNAVAILABLE only, and only on the RPCs a second attempt cannot harm — GetServerInfo, Reset, Step
(idempotent by its `action_seq`, which this client sets on every Step) and CloseSession. A session
lost with its worker (ABORTED) raises `SessionLost` at once. Every failure raises a typed
`HeliosError` (errors.py). TLS: `tls=True` or `root_certificates=` (and a client certificate for
mutual TLS). Frames decode from RGB24, JPEG or H.264 (messages.py).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import grpc

from . import actions as _actions
from ._proto.helios.v1 import world_pb2 as pb
from ._proto.helios.v1 import world_pb2_grpc as pb_grpc
from .credentials import Pem, channel_credentials
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

# the helios.v1 version this client speaks (1.1: ModelInfo.actions; 1.2: ModelInfo.seam_blend_frames)
API_MAJOR, API_MINOR = 1, 2
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


# The retry policy every helios client uses (the C++ and C# clients embed the same text; a test
# keeps the copies identical). Its numbers are Retry's defaults below.
SERVICE = pb.DESCRIPTOR.services_by_name["WorldService"].full_name
RETRY_POLICY_JSON = resources.files(__package__).joinpath("retry_policy.json").read_text()
_POLICY = json.loads(RETRY_POLICY_JSON)["methodConfig"][0]


def _seconds(duration: str) -> float:
    return float(duration.removesuffix("s"))


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Retry:
    """gRPC's retry of UNAVAILABLE on the idempotent RPCs, as a service config: `attempts` tries in
    all (gRPC allows at most 5), the k-th retry after a random wait in [0, min(initial·multiplier^k,
    max)]. The defaults are retry_policy.json's; `attempts=1` turns retries off."""

    attempts: int = _POLICY["retryPolicy"]["maxAttempts"]
    initial_s: float = _seconds(_POLICY["retryPolicy"]["initialBackoff"])
    multiplier: float = _POLICY["retryPolicy"]["backoffMultiplier"]
    max_s: float = _seconds(_POLICY["retryPolicy"]["maxBackoff"])
    methods: tuple[str, ...] = tuple(name["method"] for name in _POLICY["name"])

    def service_config(self) -> str:
        """The gRPC service config (JSON) of this policy; retry_policy.json for the defaults."""
        policy = {
            "maxAttempts": self.attempts,
            "initialBackoff": _duration(self.initial_s),
            "maxBackoff": _duration(self.max_s),
            "backoffMultiplier": self.multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        names = [{"service": SERVICE, "method": method} for method in self.methods]
        return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


DEFAULT_TIMEOUTS, DEFAULT_RETRY = Timeouts(), Retry()

# Keepalive on every channel: a ping after 30 s without traffic, even with no call open, so a
# connection through a NAT or load balancer that dropped it is noticed. The server accepts pings
# from 10 s apart (front/server.py), so it never answers these with GOAWAY "too_many_pings".
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 20_000


def channel_options(max_message_bytes: int, retry: Retry | None = DEFAULT_RETRY) -> list[tuple[str, Any]]:
    """The receive limit (gRPC's default is 4 MiB: a chunk of raw frames is larger), keepalive, and
    the retry policy as a service config (None or one attempt: no retries)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging an idle connection
    ]
    if retry is None or retry.attempts <= 1:
        return [*options, ("grpc.enable_retries", 0)]
    return [*options, ("grpc.enable_retries", 1), ("grpc.service_config", retry.service_config())]


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
        retry: Retry | None = DEFAULT_RETRY,
        max_message_bytes: int = 64 << 20,
        options: Iterable[tuple[str, Any]] = (),
        handshake: bool = True,
        tls: bool = False,
        root_certificates: Pem | None = None,
        certificate_chain: Pem | None = None,
        private_key: Pem | None = None,
    ):
        """`tls=True` (or any certificate) connects over TLS, verified by `root_certificates` (PEM
        bytes or a file; default: the system's roots); `certificate_chain` + `private_key` are this
        client's certificate for a server that asks for one (`helios serve --tls-client-ca`).
        `retry=None` turns gRPC's retries off."""
        self.address = address
        self.timeouts = timeouts
        self.retry = retry
        token = resolve_token(token)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        credentials = channel_credentials(tls, root_certificates, certificate_chain, private_key)
        channel_opts = channel_options(max_message_bytes, retry) + list(options)
        if credentials is None:
            self._channel = grpc.insecure_channel(address, options=channel_opts)
        else:
            self._channel = grpc.secure_channel(address, credentials, options=channel_opts)
        self._stub = pb_grpc.WorldServiceStub(self._channel)
        self._health = self._channel.unary_unary(HEALTH_CHECK)  # bytes in, bytes out: no stubs
        self._seqs = ActionSeqs()
        self._info: ServerInfo | None = None
        self._closed = False
        if handshake:
            check_version(self.server_info(), address)

    # --- plumbing -----------------------------------------------------------------------------------

    def _call(self, name: str, fn: Callable[..., T], request: Any, timeout: float | None, **kw: Any) -> T:
        """One RPC; gRPC itself retries what the channel's retry policy allows."""
        try:
            return fn(request, metadata=self._metadata, timeout=timeout, **kw)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, name, self.address) from None

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Wait until the server's health service reports SERVING (every engine worker ready), as
        after a start or a worker restart; raise `Unavailable` after `timeout` seconds. A wait for a
        state, not a retry of a failed call, so it is written here rather than in the retry policy."""
        deadline = time.monotonic() + timeout
        delay, last = 0.2, "no answer"
        while True:
            try:
                if serving(self._health(b"", timeout=min(5.0, max(0.1, deadline - time.monotonic())))):
                    return
                last = "NOT_SERVING"
            except grpc.RpcError as exc:
                last = exc.code().name if exc.code() is not None else str(exc)
            if time.monotonic() + delay > deadline:
                raise Unavailable(
                    f"{self.address} did not report SERVING within {timeout:g} s (last: {last})",
                    details=last,
                    call="Health/Check",
                )
            time.sleep(delay)
            delay = min(2 * delay, 2.0)

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
        continues) and return the next chunk. `action_seq` (default: this client's next number for
        the session, from 1) lets the server answer a retried Step with the chunk it already made."""
        sid = session_id(session)
        request = pb.StepRequest(
            session_id=sid,
            action=_actions.to_proto(action),
            frames=frame_options(encoding, selection, jpeg_quality),
            action_seq=self._seqs.next(sid, action_seq),
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
        while streaming (put `STOP` on it to end; `None` is the continue action). Each action's `seq`
        continues the session's `action_seq` numbering. A stream is never retried."""
        requests = stream_requests(session, actions, mode, encoding, jpeg_quality, self._seqs)
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
        self._seqs.forget(request.session_id)

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
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def serving(reply: bytes) -> bool:
    """A grpc.health.v1 HealthCheckResponse (bytes) says SERVING: field 1, a varint, equal to 1."""
    return reply[:2] == b"\x08\x01"


class ActionSeqs:
    """The `action_seq` of each session's next Step or stream action: 1, 2, 3, ... per session and
    never reused, not even after a Reset, so the server can tell a retried Step (the same number as
    its last step: it returns that chunk again) from a new one. A number given by the caller is used
    as it is and the count continues above it."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()

    def next(self, sid: str, given: int = 0) -> int:
        with self._lock:
            last = self._last.get(sid, 0)
            seq = given or last + 1
            self._last[sid] = max(last, seq)
            return seq

    def forget(self, sid: str) -> None:
        with self._lock:
            self._last.pop(sid, None)


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
    seqs: ActionSeqs,
) -> Iterator[pb.StreamRequest]:
    sid = session_id(session)
    start = pb.StreamStart(
        session_id=sid, mode=stream_mode(mode), frames=frame_options(encoding, "all", jpeg_quality)
    )
    yield pb.StreamRequest(start=start)
    for action in _drain(actions):
        action_proto = _actions.to_proto(action)
        yield pb.StreamRequest(action=pb.StreamAction(seq=seqs.next(sid), action=action_proto))


def _drain(actions: Iterable[Any] | queue.Queue) -> Iterator[Any]:
    if isinstance(actions, queue.Queue):
        while (item := actions.get()) is not STOP:
            yield item
    else:
        yield from actions
