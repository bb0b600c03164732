"""Fixtures of the SDK tests: real servers for the package (the grpc.aio front in a thread, a real
worker process, as tests/server does) on the tiny model and on the default one (the toy world), and
the in-process engine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from unittest import mock

import pytest

from tests.server.conftest import Handle, start_server

TOKEN = "sdk-test-token"
SIZE = {"width": 64, "height": 64}  # the tiny model's default 192×320 is slow on a CPU
TOY_SIZE = {"width": 32, "height": 32}  # a toy chunk: 0.2 s (1.3 s at its 96×160) on one CPU thread


@pytest.fixture(scope="package")
def server() -> Iterator[Handle]:
    from helios_runtime.server.front.settings import ServerSettings

    yield from start_server(ServerSettings(model="tiny", port=0, token=TOKEN, max_sessions=12, warm_up=False))


@pytest.fixture(scope="package")
def address(server: Handle) -> str:
    return server.target


@pytest.fixture()
def client(address: str):
    from helios_sdk.client import HeliosClient

    with HeliosClient(address, TOKEN) as c:
        yield c


@pytest.fixture(scope="package")
def toy_address() -> Iterator[str]:
    """A server on the default model, the toy world, as `helios serve` starts it (no model named).
    Its worker runs one torch thread: on a busy 2-core machine two threads made a 32×32 chunk take
    2-7 s instead of 0.25 s (the worker inherits the environment when the server starts it)."""
    from helios_runtime.server.front.settings import ServerSettings

    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1"}):
        server = start_server(ServerSettings(port=0, token=TOKEN, max_sessions=4, warm_up=False))
        handle = next(server)
    yield handle.target
    next(server, None)  # stops it
