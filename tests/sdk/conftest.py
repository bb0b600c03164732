"""Fixtures of the SDK tests: one real server for the package (the grpc.aio front in a thread, a real
worker process with the tiny model, as tests/server does) and the in-process engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.server.conftest import Handle, start_server

TOKEN = "sdk-test-token"
SIZE = {"width": 64, "height": 64}  # the tiny model's default 192×320 is slow on a CPU


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
