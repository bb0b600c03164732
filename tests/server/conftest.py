"""A real server for the tests: the grpc.aio front in a background thread, a real worker process.

`serve()` is both the entry point of `helios serve` and this fixture; clients use plain sync gRPC.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from helios_runtime.server.front.server import RunningServer, serve
from helios_runtime.server.front.settings import ServerSettings
from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk._proto.helios.v1 import world_pb2_grpc as pb_grpc

TOKEN = "s3cret-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@dataclass
class Handle:
    server: RunningServer
    loop: asyncio.AbstractEventLoop
    target: str

    def stub(self, small_window: bool = False) -> pb_grpc.WorldServiceStub:
        # Without BDP probing the receive window stays at 64 KiB, so a client that stops reading
        # pushes back on the server quickly (the drop test needs that).
        options = [("grpc.http2.bdp_probe", 0)] if small_window else []
        return pb_grpc.WorldServiceStub(grpc.insecure_channel(self.target, options=options))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="package")
def running() -> Iterator[Handle]:
    settings = ServerSettings(
        model="tiny",
        port=0,
        token=TOKEN,
        max_sessions=6,
        metrics_port=free_port(),
        stream_buffer_frames=8,
        max_message_bytes=4 * 1024 * 1024,  # small, so a 64×64 world can reach it in the tests
    )
    yield from start_server(settings)


def start_server(settings: ServerSettings) -> Iterator[Handle]:
    ready = threading.Event()
    stop: list[asyncio.Event] = []
    holder: list[Handle] = []
    failure: list[BaseException] = []

    async def main() -> None:
        async with serve(settings) as server:
            stop.append(asyncio.Event())
            holder.append(Handle(server, asyncio.get_running_loop(), f"127.0.0.1:{server.port}"))
            ready.set()
            await stop[0].wait()

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=thread_main, daemon=True)
    thread.start()
    assert ready.wait(300), "the server did not start in 300 s"
    if failure:
        raise failure[0]
    handle = holder[0]
    yield handle
    handle.loop.call_soon_threadsafe(stop[0].set)
    thread.join(60)


def new_world(
    stub: pb_grpc.WorldServiceStub, prompt: str = "a harbour at dusk", seed: int = 1, **frames
) -> str:
    sid = stub.CreateSession(pb.CreateSessionRequest(width=64, height=64), metadata=AUTH).session_id
    stub.Reset(
        pb.ResetRequest(
            session_id=sid, prompt=prompt, seed=seed, frames=pb.FrameOptions(**frames) if frames else None
        ),
        metadata=AUTH,
    )
    return sid
