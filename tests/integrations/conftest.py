"""Fixtures of the game-engine client tests: the C++ harness built by the Unreal plugin's own build
script, and a live `helios serve` subprocess (tests/interop's Server: started with the CLI, read
for its `listening on` line), checked SERVING through the standard grpc health service."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.interop.test_interop import Run, Server, build_harness

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "integrations-token"
# --model tiny explicitly (the default model may change); 64x64 sessions skip the warm-up chunk.
SERVE_FLAGS = ["--model", "tiny", "--host", "127.0.0.1", "--token", TOKEN, "--device", "cpu", "--no-warm-up"]
CLIENT_TIMEOUT = 300.0


def wait_serving(target: str, timeout: float = 60.0) -> None:
    """grpc.health.v1 Check of the whole server until SERVING (no token: health is exempt)."""
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as exc:
            last = exc.code().name
        time.sleep(0.2)
    pytest.fail(f"{target} not SERVING after {timeout:.0f} s (last: {last})")


def start_server(port: int, log: Path) -> Server:
    server = Server.start(SERVE_FLAGS, port, log)
    wait_serving(server.target)
    return server


@pytest.fixture(scope="session")
def harness() -> Path:
    """helios_world_harness, built (or reused from the cache) with the Unreal plugin's build script."""
    return build_harness("unreal")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(0, tmp_path_factory.mktemp("server") / "serve.log")
    yield running
    running.terminate()


def run_harness(harness: Path, target: str, scenario: str, *options: str, token: str = TOKEN) -> Run:
    argv = [str(harness), "--target", target, "--token", token, "--scenario", scenario, *options]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    return Run(argv, out.returncode, out.stdout + out.stderr)
