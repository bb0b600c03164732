"""The server's settings: one frozen dataclass, filled from `helios serve` flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from ... import __version__

API_VERSION = "1.0"
SERVER_VERSION = __version__


@dataclass(frozen=True)
class ServerSettings:
    model: str = "toy"  # a preset (toy: the shipped toy world) or a Helios pipeline folder
    devices: tuple[str | None, ...] = (None,)  # one engine worker per entry; None = cuda if present
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    token: str | None = None  # required bearer token; None disables auth (HELIOS_TOKEN sets it)
    max_sessions: int = 16
    idle_timeout_s: float = 300.0
    # Largest message sent or accepted: a unary chunk of 33 raw RGB24 frames is 6 MB at the tiny
    # model's 192×320 and 24 MB at 384×640, so gRPC's 4 MiB default would refuse the default use.
    # Clients set the same receive limit (the SDK does; GetServerInfo advertises it).
    max_message_bytes: int = 64 * 1024 * 1024
    max_width: int = 1280
    max_height: int = 1280
    snapshot_store_bytes: int = 1 << 30
    stream_buffer_frames: int = 66  # frames a stream may hold for a slow consumer before dropping (2 chunks)
    metrics_port: int | None = None  # Prometheus /metrics on this port when set
    warm_up: bool = True  # run the exact chunk path once before reporting SERVING
    json_logs: bool = False  # front and workers log one JSON object per line
    drain_seconds: float = 10.0
    worker_start_timeout_s: float = 600.0
    # Scale-out on a Ray cluster (ray_pool.py): engine workers are Ray Serve replicas instead of
    # local processes, and `devices` is unused.
    ray: str | None = None  # cluster address: "auto", "local" (start one here), "HEAD_IP:6379"
    replicas: int = 1  # engine replicas, one Serve deployment each
    replica_gpus: float | None = None  # GPUs per replica; None: 1 when the cluster has GPUs, else 0
    replica_cpus: float = 1.0  # CPUs Ray reserves per replica
    ray_app: str = "helios"  # the Serve application's name: one per front sharing a cluster
    extra: dict = field(default_factory=dict, compare=False)
