"""`helios serve`: the grpc.aio front with health, reflection, token auth, TLS and metrics.

    async with serve(ServerSettings(port=0)) as server:   # also the test fixture
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")

The front starts the engine workers (one process per device, or with `settings.ray` one Ray Serve
replica per slot on a Ray cluster: `ray_pool.py`), reports NOT_SERVING on the standard health
service until every worker has warmed up, then SERVING; afterwards NOT_SERVING whenever no worker is
ready (restarting, wedged, cut off) and SERVING again once one is. SIGTERM / SIGINT drain: health
goes NOT_SERVING, new calls get UNAVAILABLE, streams end with a CLOSED event, then the workers stop.
With `tls_cert` / `tls_key` the one port speaks TLS only (`tls_client_ca`: mutual TLS); the token
may come from `token_file`, so that no secret has to appear on the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk.credentials import read_pem, read_token_file

from ...engine.snapshot_key import load_key
from ..protocol.client import EngineClient
from .service import WorldService, add_to_server
from .settings import ServerSettings
from .zmq_pool import WorkerPool

if TYPE_CHECKING:
    from .web import WebGateway

log = logging.getLogger("helios.front")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["WorldService"].full_name
MIN_CLIENT_PING_INTERVAL_MS = 10_000  # well under the clients' 30 s keepalive


class TokenAuth(grpc.aio.ServerInterceptor):
    """`authorization: Bearer <token>` on every WorldService call (constant-time compare);
    health checks and reflection are exempt so probes and grpcurl work without a token."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        if not details.method.startswith(f"/{SERVICE_NAME}/"):
            return await continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode() if isinstance(given, str) else given, self.expected):
            return await continuation(details)
        return _deny(details)


def _deny(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    async def stream(request_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    if details.method.endswith("/Stream"):
        return grpc.stream_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)


@dataclass
class RunningServer:
    port: int
    settings: ServerSettings
    service: WorldService
    pool: EngineClient
    health: health_aio.HealthServicer
    grpc_server: grpc.aio.Server
    web: WebGateway | None = None  # the browser gateway, with --web-port


@contextlib.asynccontextmanager
async def serve(settings: ServerSettings) -> AsyncIterator[RunningServer]:
    """Start workers and the gRPC front; yield once every worker is ready (health SERVING)."""
    credentials = server_credentials(settings)  # a bad TLS or token file fails before anything starts
    snapshot_key, origin = load_key(settings.snapshot_key_file)  # before anything starts
    log.info("snapshot key: %s", origin)
    # The service sees the token itself (GetServerInfo's auth_required), wherever it came from.
    token = bearer_token(settings)
    settings = dataclasses.replace(settings, token=token, token_file=None)
    pool = make_pool(settings, snapshot_key)
    service = WorldService(settings, pool)
    limits = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Clients ping every 30 s even when idle (helios_sdk.client.KEEPALIVE_TIME_MS, the same in
        # the C++ and C# clients); pings closer than this are strikes, and two strikes close the
        # connection with GOAWAY "too_many_pings". gRPC's default here is 5 minutes.
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
    ]
    interceptors = [TokenAuth(token)] if token else []
    server = grpc.aio.server(interceptors=interceptors, options=limits)
    add_to_server(service, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, "grpc.health.v1.Health", reflection.SERVICE_NAME), server
    )
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    address = f"{settings.host}:{settings.port}"
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {settings.host}:{settings.port}")
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        from .metrics import REGISTRY

        start_http_server(settings.metrics_port, addr=settings.host, registry=REGISTRY)
    await pool.start()
    await server.start()
    background = []
    web = None
    try:
        await pool.wait_ready(settings.worker_start_timeout_s)
        for name in ("", SERVICE_NAME):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        background.append(asyncio.create_task(_expire_loop(service)))
        background.append(asyncio.create_task(_health_loop(service, health)))
        if settings.web_port is not None:  # aiohttp is imported only for the gateway
            from .web import start_web

            web = await start_web(settings, service)
        yield RunningServer(port, settings, service, pool, health, server, web)
    finally:
        for task in background:
            task.cancel()
        for name in ("", SERVICE_NAME):
            await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await service.drain()
        await server.stop(settings.drain_seconds)
        if web is not None:
            await web.close(settings.drain_seconds)
        await pool.close()


def bearer_token(settings: ServerSettings) -> str | None:
    """The token the front requires: `token`, else the first line of `token_file`, else None."""
    if settings.token and settings.token_file:
        raise ValueError("give a token or a token file, not both")
    if settings.token_file:
        return read_token_file(settings.token_file)
    return settings.token or None


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' PEM files, or None (plaintext). With `tls_client_ca`,
    a client must present a certificate that CA signed (mutual TLS)."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (the server's own TLS)")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    client_ca = read_pem(settings.tls_client_ca)
    return grpc.ssl_server_credentials(
        [(read_pem(settings.tls_key), read_pem(settings.tls_cert))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def make_pool(settings: ServerSettings, snapshot_key: bytes) -> EngineClient:
    """Local worker processes, one per device; or Ray Serve replicas when `settings.ray` is set.
    Every worker signs and checks snapshots with `snapshot_key` and the server's size limits."""
    if settings.ray is None:
        pool = WorkerPool(
            settings.model,
            list(settings.devices),
            settings.max_sessions,
            settings.warm_up,
            json_logs=settings.json_logs,
            snapshot_key=snapshot_key,
            max_size=(settings.max_height, settings.max_width),
            watchdog_s=settings.watchdog_s,
            start_timeout_s=settings.worker_start_timeout_s,
            threads=settings.worker_threads().count,
            seam_blend=settings.seam_blend,
        )
        pool.call_timeout_s = settings.worker_call_timeout_s
        return pool
    from .ray_pool import RayWorkerPool

    pool = RayWorkerPool(
        settings.model,
        settings.replicas,
        settings.max_sessions,
        settings.warm_up,
        json_logs=settings.json_logs,
        snapshot_key=snapshot_key,
        max_size=(settings.max_height, settings.max_width),
        address=settings.ray,
        gpus=settings.replica_gpus,
        cpus=settings.replica_cpus,
        app=settings.ray_app,
        seam_blend=settings.seam_blend,
    )
    pool.call_timeout_s = settings.worker_call_timeout_s
    return pool


async def _health_loop(service: WorldService, health: health_aio.HealthServicer) -> None:
    """Health follows the workers: NOT_SERVING while none is ready, SERVING when one is."""
    Status = health_pb2.HealthCheckResponse
    serving = True
    while not service.draining:
        now = any(w.ready.is_set() for w in service.pool.workers)
        if now != serving:
            serving = now
            log.warning("health: %s", "SERVING" if now else "NOT_SERVING (no engine worker is ready)")
            for name in ("", SERVICE_NAME):
                await health.set(name, Status.SERVING if now else Status.NOT_SERVING)
        await asyncio.sleep(0.2)


async def _expire_loop(service: WorldService) -> None:
    period = min(5.0, max(0.2, service.settings.idle_timeout_s / 4))
    while True:
        await asyncio.sleep(period)
        try:
            await service.expire_idle()
        except Exception:  # keep expiring later even if one close failed
            log.exception("idle expiry failed")


async def run(settings: ServerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = time.perf_counter()
    async with serve(settings) as server:
        log.info(
            "serving %s on %s:%d (ready in %.1f s)",
            settings.model,
            settings.host,
            server.port,
            time.perf_counter() - started,
        )
        print(f"listening on {settings.host}:{server.port}", flush=True)
        if server.web is not None:
            print(f"web page at http://{settings.host}:{server.web.port}/", flush=True)
        await stop.wait()
        log.info("draining")
