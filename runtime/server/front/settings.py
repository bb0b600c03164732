"""The server's settings: one frozen dataclass, and the `helios serve` flags derived from it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ... import DEFAULT_MODEL, __version__
from ... import threads as _threads
from ...engine.fastpath import PRECISIONS

API_VERSION = "1.2"  # helios.v1 "MAJOR.MINOR"; 1.1 added ModelInfo.actions and MoveAction, 1.2
# ModelInfo.seam_blend_frames
SERVER_VERSION = __version__


@dataclass(frozen=True)
class ServerSettings:
    model: str = DEFAULT_MODEL  # a preset (toy: the shipped toy world) or a Helios pipeline folder
    devices: tuple[str | None, ...] = (None,)  # one engine worker per entry; None = cuda if present
    # CPU threads of each engine worker; None: $HELIOS_THREADS, else the cores available shared out
    # among the workers, at most 4 each (threads.py). Never more, in all, than the cores available.
    threads: int | None = None
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    token: str | None = None  # required bearer token; None disables auth (HELIOS_TOKEN sets it)
    token_file: str | None = None  # or the token in this file's first line: no secret in `ps`
    # TLS: a PEM certificate chain and its key serve TLS instead of plaintext; a PEM CA bundle in
    # tls_client_ca also requires every client to present a certificate it signed (mutual TLS).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    max_sessions: int = 16
    idle_timeout_s: float = 300.0
    # Largest message sent or accepted: a unary chunk of 33 raw RGB24 frames is 6 MB at the tiny
    # model's 192×320 and 24 MB at 384×640, so gRPC's 4 MiB default would refuse the default use.
    # Clients set the same receive limit (the SDK does; GetServerInfo advertises it).
    max_message_bytes: int = 64 * 1024 * 1024
    max_width: int = 1280
    max_height: int = 1280
    snapshot_store_bytes: int = 1 << 30
    # The key that signs snapshots, as hex in a file; None: $HELIOS_SNAPSHOT_KEY, else a random key
    # per server start (engine/snapshot_key.py). Servers sharing a key restore each other's snapshots.
    snapshot_key_file: str | None = None
    stream_buffer_frames: int = 66  # frames a stream may hold for a slow consumer before dropping (2 chunks)
    metrics_port: int | None = None  # Prometheus /metrics on this port when set
    web_port: int | None = None  # the browser gateway and page (web.py) on this port when set; 0 picks one
    web_origins: str = ""  # comma-separated origins allowed to open sockets besides the page's own; *: any
    warm_up: bool = True  # run the exact chunk path once before reporting SERVING
    json_logs: bool = False  # front and workers log one JSON object per line
    # The transformer's GEMMs on a GPU: None = $HELIOS_PRECISION or bf16; "fp8" = float8 linears.
    precision: str | None = None
    # Frames eased at each chunk boundary from the last frame shown (engine/seam.py); None: the
    # model's own setting (model_index.json "seam_blend_frames": 0 for Helios, 2 for the toy world).
    seam_blend: int | None = None
    drain_seconds: float = 10.0
    worker_start_timeout_s: float = 600.0
    # A worker whose engine loop makes no progress (no forward, decoded frame or message) for this
    # long is killed and restarted, failing only its sessions; at least 3x its warm-up, since a new
    # frame size can compile as long. A CPU chunk of the toy world takes well under a second.
    watchdog_s: float = 120.0
    worker_call_timeout_s: float = 60.0  # fork / snapshot / restore / close wait this long at most
    # Scale-out on a Ray cluster (ray_pool.py): engine workers are Ray Serve replicas instead of
    # local processes, and `devices` is unused.
    ray: str | None = None  # cluster address: "auto", "local" (start one here), "HEAD_IP:6379"
    replicas: int = 1  # engine replicas, one Serve deployment each
    replica_gpus: float | None = None  # GPUs per replica; None: 1 when the cluster has GPUs, else 0
    replica_cpus: float = 1.0  # CPUs Ray reserves per replica
    ray_app: str = "helios"  # the Serve application's name: one per front sharing a cluster
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Checked here, where every front (the CLI, `helios play`, Python callers) builds its
        # settings, so no worker or replica is started with a value its engine would refuse.
        if self.seam_blend is not None:
            from ...engine.seam import check_frames  # torch: only once settings are built, not for --help

            check_frames(self.seam_blend, "--seam-blend")

    def worker_threads(self) -> _threads.Threads:
        """The CPU threads each local engine worker runs with (a ValueError for a bad setting)."""
        return _threads.resolve(self.threads, workers=len(self.devices))


# ---------------------------------------------------------------------------------------------------
# `helios serve` flags
# ---------------------------------------------------------------------------------------------------

# The settings that are flags: each one's flag and help; its type and default are the field's own,
# so a new setting becomes a flag by one line here. A bool that defaults to True is a "--no-" flag.
# (Not flags: `devices`, built from --device and --context-parallel, and the limits below `max_*`.)
FLAGS: dict[str, tuple[str, str]] = {
    "model": (
        "--model",
        "toy (the default: the trained toy world shipped with the package, CPU real time), tiny (random "
        "weights), random-1.3b / random-14b (real architectures, random weights), or a pipeline folder "
        "(a downloaded Helios-Distilled / -Mid / -Base, or `helios train export` output)",
    ),
    "threads": (
        "--threads",
        "CPU threads of each engine worker (default: $HELIOS_THREADS, else the physical cores available "
        "to this process shared among the workers, at most 4 each; never more than the cores)",
    ),
    "host": ("--host", "address to listen on (default %(default)s; 0.0.0.0 for all)"),
    "port": ("--port", "port (default %(default)s; 0 picks a free one)"),
    "token": (
        "--token",
        "require 'authorization: Bearer TOKEN' (visible in the process list: prefer --token-file or "
        "$HELIOS_TOKEN; no auth when none is set)",
    ),
    "token_file": ("--token-file", "require the bearer token held in this file (its first line)"),
    "tls_cert": ("--tls-cert", "serve TLS with this PEM certificate chain (needs --tls-key)"),
    "tls_key": ("--tls-key", "the PEM private key of --tls-cert"),
    "tls_client_ca": (
        "--tls-client-ca",
        "mutual TLS: refuse clients without a certificate signed by this PEM CA bundle",
    ),
    "max_sessions": ("--max-sessions", "open sessions at most (default %(default)s)"),
    "snapshot_key_file": (
        "--snapshot-key-file",
        "a file holding the key that signs session snapshots, as hex, 32 bytes or more (`openssl rand "
        "-hex 32`); servers sharing a key restore each other's snapshots (default: $HELIOS_SNAPSHOT_KEY, "
        "else a random key per server start: its snapshots restore only on it)",
    ),
    "idle_timeout_s": ("--idle-timeout", "close sessions idle this many seconds (%(default)s)"),
    "metrics_port": ("--metrics-port", "serve Prometheus /metrics on this port"),
    "web_port": (
        "--web-port",
        "serve the browser page and its WebSocket gateway (/v1/realtime/world, docs/web.md) on this port "
        "(0 picks one); off by default",
    ),
    "web_origins": (
        "--web-origin",
        "comma-separated origins (https://game.example.com) whose pages may open gateway sockets besides "
        "the server's own page (the default: same-origin only); * allows any",
    ),
    "max_message_bytes": (
        "--max-message-bytes",
        "largest gRPC message (default 64 MiB: a unary chunk of raw 384×640 frames is 24 MB)",
    ),
    "warm_up": ("--no-warm-up", "report SERVING without running a warm-up chunk"),
    "watchdog_s": (
        "--watchdog",
        "restart an engine worker whose loop made no progress for this many seconds, failing only "
        "its sessions (default %(default)g; at least 3x the worker's warm-up; 0: never)",
    ),
    "json_logs": ("--json-logs", "structured logs: one JSON object per line on stderr"),
    "precision": (
        "--precision",
        "bf16 (default) or fp8: float8 GEMMs in the transformer blocks on a GPU, 1.31x the bf16 "
        "FPS on an H200 at ~0.04 relative L2 (docs/performance.md); on a CPU serve ignores it, "
        "rollout and eval drift emulate it (accuracy, not speed); default $HELIOS_PRECISION or bf16",
    ),
    "seam_blend": (
        "--seam-blend",
        "ease the step a decoder leaves at each chunk boundary over the chunk's first N frames, from "
        "the last frame shown (0: off, the frames exactly as the reference pipeline decodes them; "
        "default: the model's own setting, off for Helios checkpoints and 2 for the toy world)",
    ),
    "ray": (
        "--ray",
        "run the engine workers on Ray: 'auto' (the cluster this node belongs to), 'local' (start a "
        "one-node cluster here), or the head's HOST:6379. Replaces --device",
    ),
    "replicas": ("--replicas", "engine replicas, one per GPU (default %(default)s)"),
    "replica_gpus": (
        "--replica-gpus",
        "GPUs per replica, at most 1 (0.5: two share one); default 1 if the cluster has GPUs, else 0",
    ),
    "replica_cpus": ("--replica-cpus", "CPUs Ray reserves per replica (default %(default)g)"),
    "ray_app": (
        "--ray-app",
        "Serve application name (default %(default)s); fronts sharing one cluster need different names",
    ),
}
RAY_FLAGS = ("ray", "replicas", "replica_gpus", "replica_cpus", "ray_app")
PATHS = ("token_file", "tls_cert", "tls_key", "tls_client_ca")  # settings whose flag names a file
CHOICES = {"precision": PRECISIONS}  # settings whose flag takes one of a few values
_TYPES = {"str": str, "int": int, "float": float}


def _dest(flag: str) -> str:
    """argparse's own name for a flag's value: --idle-timeout -> idle_timeout."""
    return flag.removeprefix("--").replace("-", "_")


def add_flags(parser: Any, names: Iterable[str]) -> None:
    """Add the flags of the settings `names` to an argparse parser (or argument group)."""
    fields = {f.name: f for f in dataclasses.fields(ServerSettings)}
    for name in names:
        flag, help_text = FLAGS[name]
        f = fields[name]
        if f.type == "bool":  # a switch: --json-logs sets a False default, --no-warm-up clears a True one
            parser.add_argument(flag, action="store_true", help=help_text)
            continue
        kind = _TYPES[str(f.type).split(" | ")[0]]
        metavar = "ADDRESS" if name == "ray" else "PATH" if name in PATHS else _dest(flag).upper()
        if name in CHOICES:
            parser.add_argument(flag, choices=CHOICES[name], default=f.default, help=help_text)
            continue
        parser.add_argument(flag, type=kind, default=f.default, metavar=metavar, help=help_text)


def from_flags(args: Any, **given: Any) -> ServerSettings:
    """The settings from parsed flags (`add_flags`), plus those `given` (e.g. `devices`)."""
    values = {}
    for name, (flag, _) in FLAGS.items():
        if hasattr(args, _dest(flag)):
            value = getattr(args, _dest(flag))
            values[name] = not value if flag.startswith("--no-") else value
    return ServerSettings(**{**values, **given})
