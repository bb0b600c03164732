"""AsyncHeliosClient: HeliosClient's API over grpc.aio, for asyncio programs (no torch).

    async with AsyncHeliosClient("127.0.0.1:50051") as client:   # the handshake runs on enter
        session = await client.create_session(64, 64)
        chunk = await client.reset(session, "a harbour", seed=1)
        chunks = await asyncio.gather(*(client.step(s, "rain") for s in sessions))  # batched server-side
        async for item in client.stream(session, ["a", "b"]):
            ...

Deadlines, the shared retry policy (gRPC's own retries, retry_policy.json), `action_seq` on every
Step, `SessionLost` for a session lost with its worker, TLS, typed errors and frame decoding are the
sync client's (client.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
import grpc.aio

from . import actions as _actions
from ._proto.helios.v1 import world_pb2 as pb
from ._proto.helios.v1 import world_pb2_grpc as pb_grpc
from .client import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    HEALTH_CHECK,
    STOP,
    ActionSeqs,
    Retry,
    Timeouts,
    channel_options,
    check_version,
    reset_request,
    resolve_token,
    restore_request,
    serving,
)
from .credentials import Pem, channel_credentials
from .errors import Unavailable, from_rpc_error
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
    session_id,
    stream_item,
    stream_mode,
)

T = TypeVar("T")


class AsyncHeliosClient:
    """A grpc.aio connection to one helios server; create it inside the event loop that uses it."""

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        token: str | None = None,
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        retry: Retry | None = DEFAULT_RETRY,
        max_message_bytes: int = 64 << 20,
        options: Iterable[tuple[str, Any]] = (),
        tls: bool = False,
        root_certificates: Pem | None = None,
        certificate_chain: Pem | None = None,
        private_key: Pem | None = None,
    ):
        """As HeliosClient: TLS with `tls=True` or `root_certificates=`, a client certificate with
        `certificate_chain` + `private_key`; `retry=None` turns gRPC's retries off."""
        self.address = address
        self.timeouts = timeouts
        self.retry = retry
        token = resolve_token(token)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        credentials = channel_credentials(tls, root_certificates, certificate_chain, private_key)
        channel_opts = channel_options(max_message_bytes, retry) + list(options)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(address, options=channel_opts)
        else:
            self._channel = grpc.aio.secure_channel(address, credentials, options=channel_opts)
        self._stub = pb_grpc.WorldServiceStub(self._channel)
        self._health = self._channel.unary_unary(HEALTH_CHECK)  # bytes in, bytes out: no stubs
        self._seqs = ActionSeqs()
        self._info: ServerInfo | None = None

    async def connect(self) -> AsyncHeliosClient:
        """The version handshake (GetServerInfo); `async with` calls it."""
        check_version(await self.server_info(), self.address)
        return self

    async def _call(self, name: str, fn: Callable[..., Awaitable[T]], request: Any, timeout: float) -> T:
        """One RPC; gRPC itself retries what the channel's retry policy allows."""
        try:
            return await fn(request, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, name, self.address) from None

    async def wait_ready(self, timeout: float = 300.0) -> None:
        """As HeliosClient.wait_ready: until health reports SERVING, else `Unavailable`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay, last = 0.2, "no answer"
        while True:
            try:
                reply = await self._health(b"", timeout=min(5.0, max(0.1, deadline - loop.time())))
                if serving(reply):
                    return
                last = "NOT_SERVING"
            except grpc.RpcError as exc:
                last = exc.code().name if exc.code() is not None else str(exc)
            if loop.time() + delay > deadline:
                raise Unavailable(
                    f"{self.address} did not report SERVING within {timeout:g} s (last: {last})",
                    details=last,
                    call="Health/Check",
                )
            await asyncio.sleep(delay)
            delay = min(2 * delay, 2.0)

    async def server_info(self, refresh: bool = False) -> ServerInfo:
        if self._info is None or refresh:
            reply = await self._call(
                "GetServerInfo", self._stub.GetServerInfo, pb.GetServerInfoRequest(), self.timeouts.info
            )
            self._info = ServerInfo.from_proto(reply)
        return self._info

    async def create_session(
        self, width: int = 0, height: int = 0, *, timeout: float | None = None
    ) -> Session:
        request = pb.CreateSessionRequest(width=width, height=height)
        reply = await self._call(
            "CreateSession", self._stub.CreateSession, request, timeout or self.timeouts.create_session
        )
        return Session(reply.session_id, reply.width, reply.height)

    async def reset(
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
        request = reset_request(
            session, prompt, image, video, seed, negative_prompt, encoding, selection, jpeg_quality
        )
        reply = await self._call("Reset", self._stub.Reset, request, timeout or self.timeouts.reset)
        return chunk_from_proto(reply.chunk)

    async def step(
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
        sid = session_id(session)
        request = pb.StepRequest(
            session_id=sid,
            action=_actions.to_proto(action),
            frames=frame_options(encoding, selection, jpeg_quality),
            action_seq=self._seqs.next(sid, action_seq),
        )
        reply = await self._call("Step", self._stub.Step, request, timeout or self.timeouts.step)
        return chunk_from_proto(reply.chunk)

    async def stream(
        self,
        session: Session | str,
        actions: Iterable[_actions.Action] | AsyncIterable[_actions.Action] | asyncio.Queue,
        *,
        mode: str = "lockstep",
        encoding: str = "rgb24",
        jpeg_quality: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamFrame | StreamEvent]:
        """As HeliosClient.stream; `actions` may also be an async iterable or an asyncio.Queue (end it
        with `STOP`)."""

        sid = session_id(session)

        async def requests() -> AsyncIterator[pb.StreamRequest]:
            start = pb.StreamStart(
                session_id=sid, mode=stream_mode(mode), frames=frame_options(encoding, "all", jpeg_quality)
            )
            yield pb.StreamRequest(start=start)
            async for action in _aiter(actions):
                action_proto = _actions.to_proto(action)
                yield pb.StreamRequest(action=pb.StreamAction(seq=self._seqs.next(sid), action=action_proto))

        call = self._stub.Stream(requests(), metadata=self._metadata, timeout=timeout)
        decoder = FrameDecoder()
        try:
            async for msg in call:
                yield stream_item(msg, decoder)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, "Stream", self.address) from None
        finally:
            call.cancel()

    async def fork(self, session: Session | str) -> str:
        request = pb.ForkRequest(session_id=session_id(session))
        return (await self._call("Fork", self._stub.Fork, request, self.timeouts.fork)).session_id

    async def snapshot(self, session: Session | str, include_data: bool = False) -> SnapshotInfo:
        request = pb.SnapshotRequest(session_id=session_id(session), include_data=include_data)
        reply = await self._call("Snapshot", self._stub.Snapshot, request, self.timeouts.snapshot)
        return SnapshotInfo(reply.snapshot_id, reply.size_bytes, reply.sha256, reply.data)

    async def restore(self, source: SnapshotInfo | str | bytes) -> str:
        reply = await self._call(
            "Restore", self._stub.Restore, restore_request(source), self.timeouts.restore
        )
        return reply.session_id

    async def close_session(self, session: Session | str) -> None:
        request = pb.CloseSessionRequest(session_id=session_id(session))
        await self._call("CloseSession", self._stub.CloseSession, request, self.timeouts.close)
        self._seqs.forget(request.session_id)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncHeliosClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _aiter(actions: Any) -> AsyncIterator[Any]:
    if isinstance(actions, asyncio.Queue):
        while (item := await actions.get()) is not STOP:
            yield item
    elif hasattr(actions, "__aiter__"):
        async for item in actions:
            yield item
    else:
        for item in actions:
            yield item
