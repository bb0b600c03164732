"""`helios serve`: the grpc.aio front with health, reflection, token auth and metrics.

    async with serve(ServerSettings(port=0)) as server:   # also the test fixture
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")

The front starts the engine workers (one process per device, or with `settings.ray` one Ray Serve
replica per slot on a Ray cluster: `ray_pool.py`), reports NOT_SERVING on the standard health
service until every worker has warmed up, then SERVING. SIGTERM / SIGINT drain: health goes
NOT_SERVING, new calls get UNAVAILABLE, streams end with a CLOSED event, then the workers stop.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from ..protocol.client import EngineClient
from .service import WorldService, add_to_server
from .settings import ServerSettings
from .zmq_pool import WorkerPool

if TYPE_CHECKING:
    from .web import WebGateway

log = logging.getLogger("helios.front")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["WorldService"].full_name


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
    pool = make_pool(settings)
    service = WorldService(settings, pool)
    limits = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    interceptors = [TokenAuth(settings.token)] if settings.token else []
    server = grpc.aio.server(interceptors=interceptors, options=limits)
    add_to_server(service, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, "grpc.health.v1.Health", reflection.SERVICE_NAME), server
    )
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
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
        if settings.web_port is not None:  # aiohttp is imported only for the gateway
            from .web import start_web

            web = await start_web(settings, service)
        yield RunningServer(port, settings, service, pool, health, server, web)
    finally:
        for name in ("", SERVICE_NAME):
            await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await service.drain()
        await server.stop(settings.drain_seconds)
        if web is not None:
            await web.close(settings.drain_seconds)
        for task in background:
            task.cancel()
        await pool.close()


def make_pool(settings: ServerSettings) -> EngineClient:
    """Local worker processes, one per device; or Ray Serve replicas when `settings.ray` is set."""
    if settings.ray is None:
        return WorkerPool(
            settings.model,
            list(settings.devices),
            settings.max_sessions,
            settings.warm_up,
            json_logs=settings.json_logs,
        )
    from .ray_pool import RayWorkerPool

    return RayWorkerPool(
        settings.model,
        settings.replicas,
        settings.max_sessions,
        settings.warm_up,
        json_logs=settings.json_logs,
        address=settings.ray,
        gpus=settings.replica_gpus,
        cpus=settings.replica_cpus,
        app=settings.ray_app,
    )


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
