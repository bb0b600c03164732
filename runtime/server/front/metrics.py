"""Prometheus metrics of the front (served on --metrics-port when given)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

CHUNK_SECONDS = Histogram(
    "helios_chunk_seconds",
    "Wall time of a chunk as the front sees it (request to last frame)",
    ["rpc"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 60),
    registry=REGISTRY,
)
FIRST_FRAME_SECONDS = Histogram(
    "helios_time_to_first_frame_seconds",
    "From a step or reset request to its first decoded frame",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13),
    registry=REGISTRY,
)
FRAMES_SENT = Counter("helios_frames_sent_total", "Frames sent to clients", ["encoding"], registry=REGISTRY)
FRAMES_DROPPED = Counter(
    "helios_frames_dropped_total",
    "Stream frames dropped for slow consumers (latest frame wins)",
    registry=REGISTRY,
)
ERRORS = Counter(
    "helios_errors_total", "Requests answered with an error, by gRPC status code", ["code"], registry=REGISTRY
)
SESSIONS = Gauge("helios_sessions", "Open sessions", registry=REGISTRY)
STREAMS = Gauge("helios_streams", "Attached streams", registry=REGISTRY)
QUEUE_DEPTH = Gauge(
    "helios_worker_requests_in_flight", "Requests sent to workers and not yet answered", registry=REGISTRY
)
WORKER_RESTARTS = Counter(
    "helios_worker_restarts_total", "Engine workers restarted after a crash", registry=REGISTRY
)
