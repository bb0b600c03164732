"""`helios serve` as a user runs it: a subprocess that prints its address, serves, and drains on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import grpc
import pytest

from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk._proto.helios.v1 import world_pb2_grpc as pb_grpc


def test_serve_prints_its_address_and_drains_on_sigterm():
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "helios_sdk.cli", "serve", "--port", "0"),
            *("--token", "tok", "--json-logs", "--threads", "1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on 127.0.0.1:"), line
        target = line.removeprefix("listening on ")
        stub = pb_grpc.WorldServiceStub(grpc.insecure_channel(target))
        info = stub.GetServerInfo(
            pb.GetServerInfoRequest(), metadata=(("authorization", "Bearer tok"),), timeout=30
        )
        assert info.model.name == "toy", "the embedded default model"
        assert (info.default_height, info.default_width) == (96, 160)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        lines = proc.stderr.read().splitlines()
        logs = [json.loads(x) for x in lines]  # every line, the worker's too, is one JSON object
        assert any(entry["msg"].startswith("serving toy") for entry in logs)
        # --token works, with a warning that it shows in the process list.
        assert any(e["level"] == "warning" and "process list" in e["msg"] for e in logs), logs
        assert any(entry["logger"] == "helios.worker" for entry in logs)
        # --threads reaches the worker process, and both say so.
        assert any(e["msg"].startswith("1 engine worker, each with 1 CPU thread (--threads") for e in logs)
        assert any(e["msg"].startswith("ready: toy on cpu, 1 CPU thread (") for e in logs), logs
        assert all({"ts", "level", "logger", "msg"} <= entry.keys() for entry in logs)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_help_explains_the_flags():
    out = subprocess.run(
        [sys.executable, "-m", "helios_sdk.cli", "serve", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for flag in (
        "--model",
        "--device",
        "--port",
        "--token",
        "--max-sessions",
        "--threads",
        "--idle-timeout",
        "--watchdog",
        "--metrics-port",
        "--ray",
        "--replicas",
        "--replica-gpus",
    ):
        assert flag in out.stdout
    assert "ray start --head" in out.stdout  # the Ray group says how to start a fleet


def test_ray_flags_are_checked_before_anything_starts(capsys):
    from helios_sdk.cli import main

    for flags, message in (
        (["--replicas", "2"], "--replicas and --replica-gpus need --ray"),
        (["--ray", "local", "--device", "cpu"], "with --ray, Ray gives each replica its GPU"),
        (["--ray", "local", "--replica-gpus", "2"], "--replica-gpus must be between 0 and 1"),
    ):
        assert main(["serve", "--port", "0", *flags]) == 2
        assert message in capsys.readouterr().err


def test_workers_exit_when_the_front_is_killed():
    psutil = pytest.importorskip("psutil")
    proc = subprocess.Popen(
        [sys.executable, "-m", "helios_sdk.cli", "serve", "--port", "0", "--no-warm-up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout.readline().startswith("listening on")
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers
        proc.kill()  # no chance to clean up: the workers must notice on their own
        proc.wait(10)
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, [p.pid for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_on_a_local_ray_cluster_drains_and_leaves_nothing_behind():
    pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    flags = ["--ray", "local", "--replicas", "1", "--replica-cpus", "0.5", "--no-warm-up"]
    # As a user's shell has it: without the setting the front makes for itself (an earlier test
    # that ran the Ray pool in this process left it in our environment).
    env = {k: v for k, v in os.environ.items() if k != "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "helios_sdk.cli", "serve", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on"), line
        stub = pb_grpc.WorldServiceStub(grpc.insecure_channel(line.removeprefix("listening on ")))
        (replica,) = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).workers
        assert replica.name == "engine-0" and replica.ready and replica.host
        cluster = psutil.Process(proc.pid).children(recursive=True)  # raylet, replicas, agents
        assert cluster
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0  # a clean drain, not Ray's crash handler aborting on SIGTERM
        _, alive = psutil.wait_procs(cluster, timeout=20)
        assert not alive, [p.name() for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_flag_defaults_are_the_server_settings_defaults():
    """`helios serve` (in the light client, which cannot import the runtime) repeats the defaults of
    ServerSettings; they must not drift apart (the message limit once did)."""
    from helios_runtime.server.front.settings import ServerSettings
    from helios_sdk.cli import build_parser

    args = build_parser().parse_args(["serve"])
    want = ServerSettings()
    assert args.max_message_bytes == want.max_message_bytes
    assert args.max_sessions == want.max_sessions
    assert args.idle_timeout == want.idle_timeout_s
    assert (args.host, args.port, args.model) == (want.host, want.port, want.model)


def test_token_file_and_tls_keep_the_secret_off_the_command_line(tmp_path):
    """`helios serve --token-file PATH --tls-cert ... --tls-key ...` as a user runs it: neither the
    front's command line nor its workers' holds the token; a TLS client with the token works, one
    without it gets UNAUTHENTICATED, one without TLS gets UNAVAILABLE."""
    psutil = pytest.importorskip("psutil")
    from helios_sdk import errors
    from helios_sdk.client import HeliosClient, Retry
    from tests.tls_files import make_pki

    pki = make_pki(tmp_path / "pki")
    token = "file-token-" + os.urandom(8).hex()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    flags = ["--model", "tiny", "--device", "cpu", "--no-warm-up", "--token-file", str(token_file)]
    flags += ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    env = {k: v for k, v in os.environ.items() if k != "HELIOS_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "helios_sdk.cli", "serve", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on 127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        target = line.removeprefix("listening on ")
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(family) >= 2  # the front and its engine worker
        for p in family:
            cmdline = open(f"/proc/{p.pid}/cmdline", "rb").read().decode(errors="replace")
            assert token not in cmdline, cmdline
        fast = Retry(initial_s=0.01, max_s=0.05)
        with HeliosClient(target, token, root_certificates=pki.ca) as client:
            assert client.server_info().auth_required
        with pytest.raises(errors.Unauthenticated):
            HeliosClient(target, "", root_certificates=pki.ca)
        with pytest.raises(errors.Unavailable):
            HeliosClient(target, token, retry=fast)  # plaintext
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert "process list" not in proc.stderr.read()  # no --token, no warning
    finally:
        if proc.poll() is None:
            proc.kill()


def test_token_flags_are_checked_before_anything_starts(tmp_path, capsys):
    from helios_sdk.cli import main

    empty = tmp_path / "empty"
    empty.write_text("\n")
    for flags, message in (
        (["--token", "a", "--token-file", str(empty)], "--token or --token-file, not both"),
        (["--token-file", str(empty)], "is empty"),
        (["--token-file", str(tmp_path / "missing")], "cannot read the token file"),
        (["--tls-cert", str(empty)], "needs both --tls-cert and --tls-key"),
        (["--tls-client-ca", str(empty)], "--tls-client-ca needs --tls-cert"),
    ):
        assert main(["serve", "--port", "0", "--no-warm-up", *flags]) == 2
        assert message in capsys.readouterr().err
