"""TLS between the Python clients and a real server (the front in a thread, a worker process, the tiny
model), with a CA and certificates made for the test (tests/tls_files.py): the sync and async
clients step a world over TLS; a plaintext client, or one that trusts another CA, fails with a typed
error instead of hanging; with mutual TLS a client without a certificate is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from helios_runtime.server.front.settings import ServerSettings
from helios_sdk import errors
from helios_sdk.aio import AsyncHeliosClient
from helios_sdk.client import HeliosClient, Retry
from tests.server.conftest import Handle, start_server
from tests.tls_files import Pki, make_pki

from .conftest import SIZE, TOKEN

FAST = Retry(initial_s=0.01, max_s=0.05)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _server(pki: Pki, mutual: bool) -> Iterator[Handle]:
    settings = ServerSettings(
        model="tiny",
        port=0,
        token=TOKEN,
        max_sessions=4,
        warm_up=False,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca) if mutual else None,
    )
    yield from start_server(settings)


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[Handle]:
    yield from _server(pki, mutual=False)


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[Handle]:
    yield from _server(pki, mutual=True)


def test_sync_and_async_clients_step_a_world_over_tls(tls_server: Handle, pki: Pki):
    with HeliosClient(tls_server.target, TOKEN, root_certificates=pki.ca) as client:
        client.wait_ready(60)  # the health service answers over TLS too
        session = client.create_session(**SIZE)
        client.reset(session, "a harbour", seed=3, selection="none")
        sync_frame = client.step(session, "rain", selection="last").frames
        client.close_session(session)

    async def main():
        ca = pki.ca.read_bytes()  # PEM bytes work as well as a path
        async with AsyncHeliosClient(tls_server.target, TOKEN, root_certificates=ca) as client:
            await client.wait_ready(60)
            session = await client.create_session(**SIZE)
            await client.reset(session, "a harbour", seed=3, selection="none")
            chunk = await client.step(session, "rain", selection="last")
            await client.close_session(session)
            return chunk.frames

    assert sync_frame.shape == (1, 64, 64, 3)
    assert (asyncio.run(main()) == sync_frame).all()  # same seed and action, same world


def test_a_client_without_the_right_tls_fails_cleanly(tls_server: Handle, pki: Pki):
    with pytest.raises(errors.Unavailable, match="GetServerInfo"):
        HeliosClient(tls_server.target, TOKEN, retry=FAST)  # plaintext against TLS
    with pytest.raises(errors.Unavailable, match="GetServerInfo"):
        HeliosClient(tls_server.target, TOKEN, retry=FAST, root_certificates=pki.other_ca)

    async def plaintext():
        async with AsyncHeliosClient(tls_server.target, TOKEN, retry=FAST):
            pass

    with pytest.raises(errors.Unavailable):
        asyncio.run(plaintext())


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_server: Handle, pki: Pki):
    with pytest.raises(errors.Unavailable):
        HeliosClient(mtls_server.target, TOKEN, retry=FAST, root_certificates=pki.ca)
    with HeliosClient(
        mtls_server.target,
        TOKEN,
        root_certificates=pki.ca,
        certificate_chain=pki.client_cert,
        private_key=pki.client_key,
    ) as client:
        assert client.server_info().api_version.startswith("1.")
        session = client.create_session(**SIZE)
        assert client.reset(session, "a harbour", seed=3, selection="last").frames.shape == (1, 64, 64, 3)
        client.close_session(session)
    with pytest.raises(ValueError, match="both certificate_chain and private_key"):
        HeliosClient(mtls_server.target, TOKEN, root_certificates=pki.ca, certificate_chain=pki.client_cert)
