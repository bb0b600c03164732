"""Real C++ (grpc++) and Node (@grpc/grpc-js) clients against a live `helios serve` (issue 5).

The C++ harness is built on the one C++ client core (integrations/unreal's HeliosWorldCore, whose
lower layer `helios_world::Connection` it calls) and links Debian's grpc++, the library and API an
Unreal plugin links; the Node client loads world.proto at run time. Both run the same scenarios
(stream, unauthenticated, errors) against one tiny-model server on CPU and print `WORD key=value`
lines that the tests below check; the C++ client also survives a server restart on the same port.
Missing toolchains are installed (apt as root, npm into tests/interop/node); the C++ build
(integrations/unreal/harness/build.py) is cached in ~/.cache/helios-world, keyed by a hash of its
sources, the core's, the proto and the toolchain. docs/interop.md says how to run the clients by
hand.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Covers a cold machine: apt install (~7 s), the C++ build (~20 s on 2 cores), npm ci, a server.
pytestmark = pytest.mark.timeout(900)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NODE_DIR = HERE / "node"
BUILD = ROOT / "integrations" / "unreal" / "harness" / "build.py"

APT_NODE = ["nodejs", "npm"]

TOKEN = f"interop-{secrets.token_hex(8)}"
LISTENING = re.compile(r"^listening on (\S+):(\d+)$")
SERVER_READY_TIMEOUT = 300.0  # model build + warm-up on a busy 2-core machine
CLIENT_TIMEOUT = 300.0
FRAMES_PER_CHUNK = 33


# ---------------------------------------------------------------------------------------------------
# Toolchains
# ---------------------------------------------------------------------------------------------------


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """Runs a setup command; a failure fails the test with the command's output."""
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if out.returncode != 0:
        pytest.fail(
            f"{what}: `{' '.join(cmd)}` exited {out.returncode}\n{out.stdout[-4000:]}{out.stderr[-4000:]}"
        )
    return out


def _apt_install(packages: list[str], missing: list[str]) -> None:
    """Installs Debian packages, or skips when that is impossible (not root, no apt-get)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            f"{', '.join(missing)} missing and cannot be installed here (needs root and apt-get): "
            f"apt-get install {' '.join(packages)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update"], "apt-get update", env=env, timeout=600)
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    _run(install, "apt-get install", env=env, timeout=900)


def build_harness(name: str) -> Path:
    """A C++ scenario harness of the one client core (`unreal` or `interop`), built or reused from
    the cache by integrations/unreal/harness/build.py, which apt-installs the toolchain when it is
    missing and this is root."""
    out = subprocess.run(
        [sys.executable, str(BUILD), "--harness", name, "--install"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode == 3:
        pytest.skip(out.stderr.strip())
    assert out.returncode == 0, f"building the {name} harness failed:\n{out.stdout}\n{out.stderr}"
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cpp_harness() -> Path:
    """The helios_interop binary, built once per source hash with the system grpc++."""
    return build_harness("interop")


def _node_modules_current() -> bool:
    """Every pinned dependency is installed at its pinned version."""
    pins = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    for name, version in pins.items():
        manifest = NODE_DIR / "node_modules" / name / "package.json"
        if not manifest.exists() or json.loads(manifest.read_text())["version"] != version:
            return False
    return True


@pytest.fixture(scope="module")
def node_client() -> list[str]:
    """`node client.js` with @grpc/grpc-js and @grpc/proto-loader installed from the lock file."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        _apt_install(APT_NODE, missing)
    if not _node_modules_current():
        _run(["npm", "ci", "--no-audit", "--no-fund"], "npm ci", cwd=NODE_DIR, timeout=600)
    return [shutil.which("node") or "node", str(NODE_DIR / "client.js")]


# ---------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------


def _serve_flags() -> list[str]:
    """Flags every server of this module gets. Warm-up runs a chunk at the default size (about 15 s
    on CPU) and buys nothing for 64x64 sessions, so it is skipped where the server offers that."""
    flags = ["--model", "tiny", "--host", "127.0.0.1", "--token", TOKEN, "--device", "cpu"]
    usage = subprocess.run(
        [sys.executable, "-m", "helios_sdk.cli", "serve", "--help"], capture_output=True, text=True
    )
    if "--no-warm-up" in usage.stdout:
        flags.append("--no-warm-up")
    return flags


@dataclass
class Server:
    """One `helios serve` process group (the front and its engine workers)."""

    proc: subprocess.Popen[str]
    log: Path
    host: str = ""
    port: int = 0
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @classmethod
    def start(cls, flags: list[str], port: int, log: Path) -> Server:
        cmd = [sys.executable, "-m", "helios_sdk.cli", "serve", *flags, "--port", str(port)]
        with log.open("w") as err:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True, cwd=ROOT
            )
        server = cls(proc=proc, log=log)
        threading.Thread(target=server._drain, daemon=True).start()
        server._wait_listening()
        return server

    def _drain(self) -> None:
        """Reads stdout for the whole life of the process, so the server never blocks on a full pipe."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + SERVER_READY_TIMEOUT
        seen: list[str] = []
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                pytest.fail(f"no 'listening on' line after {SERVER_READY_TIMEOUT:.0f} s{self.tail(seen)}")
            if line is None:
                self.proc.wait()
                pytest.fail(f"the server exited {self.proc.returncode} before listening{self.tail(seen)}")
            match = LISTENING.match(line)
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                return
            seen.append(line)

    def tail(self, stdout: list[str] | None = None) -> str:
        err = self.log.read_text(errors="replace").splitlines()[-40:] if self.log.exists() else []
        return "\nstdout:\n" + "\n".join(stdout or []) + "\nstderr (last 40 lines):\n" + "\n".join(err)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def kill(self) -> None:
        """SIGKILL to the whole group, as in a crash: no drain, workers die too."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> int | None:
        """SIGTERM to the front (it drains and stops its workers); the exit code, or None if it hung."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.kill()  # leftovers of the group, if any


@pytest.fixture(scope="module")
def serve_flags() -> list[str]:
    return _serve_flags()


@pytest.fixture(scope="module")
def server(serve_flags: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server.start(serve_flags, 0, tmp_path_factory.mktemp("server") / "serve.log")
    yield running
    running.terminate()


# ---------------------------------------------------------------------------------------------------
# Client runs
# ---------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One client process and the `WORD key=value` lines it printed."""

    argv: list[str]
    returncode: int
    output: str

    def facts(self, word: str) -> list[dict[str, str]]:
        found = []
        for line in self.output.splitlines():
            parts = line.split()
            if parts and parts[0] == word:
                found.append(dict(p.split("=", 1) for p in parts[1:] if "=" in p))
        return found

    def fact(self, word: str) -> dict[str, str]:
        found = self.facts(word)
        assert len(found) == 1, f"expected one {word} line\n{self}"
        return found[0]

    def __str__(self) -> str:
        return f"$ {' '.join(self.argv)}\n(exit {self.returncode})\n{self.output}"


def run_client(command: list[str], target: str, scenario: str, *extra: str, token: str = TOKEN) -> Run:
    argv = [*command, "--target", target, "--token", token, "--scenario", scenario, *extra]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    return Run(argv, out.returncode, out.stdout + out.stderr)


@pytest.fixture(scope="module", params=["cpp", "node"])
def client(request: pytest.FixtureRequest) -> tuple[str, list[str]]:
    """(name, command) of each client; a client whose toolchain cannot be installed is skipped."""
    if request.param == "cpp":
        return "cpp", [str(request.getfixturevalue("cpp_harness"))]
    return "node", request.getfixturevalue("node_client")


@pytest.fixture(scope="module")
def stream_runs() -> dict[str, Run]:
    """Each client's `stream` run, kept for the cross-client comparison."""
    return {}


def _stream_run(name: str, command: list[str], server: Server, runs: dict[str, Run]) -> Run:
    if name not in runs:
        runs[name] = run_client(command, server.target, "stream")
    return runs[name]


# ---------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------


def test_stream(client: tuple[str, list[str]], server: Server, stream_runs: dict[str, Run]):
    """Handshake, Reset, Step with a prompt, then 3 lockstep chunks (the 3rd after a prompt switch)."""
    name, command = client
    run = _stream_run(name, command, server, stream_runs)
    assert run.returncode == 0, str(run)
    info = run.fact("INFO")
    assert info["api_version"].split(".")[0] == "1", str(run)
    assert info["frames_per_chunk"] == str(FRAMES_PER_CHUNK), str(run)
    assert "RGB24" in info["encodings"].split(","), str(run)
    if name == "cpp":  # the C++ core reads the model's action space (tiny: prompt phrases, no moves)
        actions = run.fact("ACTIONS")
        assert actions["described"] == "true" and actions["moves"] == "-", str(run)
        assert set(actions["keys"].split(",")) == {"w", "a", "s", "d", "space", "shift"}, str(run)
        assert "camera_zoom" in actions["axes"].split(",") and actions["seam_blend_frames"] == "0", str(run)
        assert (actions["knows_W"], actions["knows_arrowup"]) == ("true", "false"), str(run)
    assert run.fact("SESSION")["width"] == "64" and run.fact("SESSION")["height"] == "64", str(run)
    assert run.fact("RESET")["bytes"] == str(64 * 64 * 3), str(run)
    assert run.fact("STEP")["action_seq"] == "1", str(run)
    chunks = [(c["index"], c["frames"], c["action_seq"]) for c in run.facts("CHUNK")]
    assert chunks == [(str(i), str(FRAMES_PER_CHUNK), str(i)) for i in (2, 3, 4)], str(run)
    assert run.fact("LOCKSTEP") == {"frames": "66", "chunks": "2"}, str(run)
    assert run.fact("PROMPT_SWITCH")["chunk"] == "4", str(run)
    assert run.fact("STREAM_END")["status"] == "OK", str(run)
    assert run.fact("OK") == {"scenario": "stream", "frames": "99", "chunks": "3"}, str(run)


def test_same_world_in_both_clients(
    cpp_harness: Path, node_client: list[str], server: Server, stream_runs: dict[str, Run]
):
    """The same seed and actions give the same frames, whichever client asks (checksums of the
    Reset and Step frames and of each streamed chunk's last frame)."""
    cpp = _stream_run("cpp", [str(cpp_harness)], server, stream_runs)
    node = _stream_run("node", node_client, server, stream_runs)
    assert cpp.returncode == 0 and node.returncode == 0, f"{cpp}\n{node}"
    assert cpp.fact("RESET")["crc32"] == node.fact("RESET")["crc32"], f"{cpp}\n{node}"
    assert cpp.fact("STEP")["crc32"] == node.fact("STEP")["crc32"], f"{cpp}\n{node}"
    cpp_chunks = [c["last_crc32"] for c in cpp.facts("CHUNK")]
    node_chunks = [c["last_crc32"] for c in node.facts("CHUNK")]
    assert cpp_chunks == node_chunks, f"{cpp}\n{node}"


def test_unauthenticated(client: tuple[str, list[str]], server: Server):
    """A wrong or missing token is refused with UNAUTHENTICATED on unary calls and on the stream;
    health answers without one (checked by the C++ client, which has the health stubs)."""
    name, command = client
    run = run_client(command, server.target, "unauthenticated")
    assert run.returncode == 0, str(run)
    checks = {c["name"]: c["got"] for c in run.facts("CHECK")}
    want = {
        "wrong_token_info": "UNAUTHENTICATED",
        "wrong_token_create": "UNAUTHENTICATED",
        "wrong_token_stream": "UNAUTHENTICATED",
        "missing_token_info": "UNAUTHENTICATED",
    }
    if name == "cpp":
        want["missing_token_health"] = "SERVING"
    assert checks == want, str(run)
    assert run.fact("OK")["scenario"] == "unauthenticated", str(run)


def test_errors(client: tuple[str, list[str]], server: Server):
    """Unknown sessions, bad sizes and actions, and closed sessions map to their status codes."""
    _, command = client
    run = run_client(command, server.target, "errors")
    assert run.returncode == 0, str(run)
    checks = {c["name"]: c["got"] for c in run.facts("CHECK")}
    assert checks == {
        "step_unknown_session": "NOT_FOUND",
        "reset_unknown_session": "NOT_FOUND",
        "create_bad_size": "INVALID_ARGUMENT",
        "step_bad_action": "INVALID_ARGUMENT",
        "step_move_without_moves": "INVALID_ARGUMENT",
        "step_after_close": "FAILED_PRECONDITION",
        "close_twice": "OK",
    }, str(run)
    assert run.fact("OK")["scenario"] == "errors", str(run)


def test_cpp_client_survives_server_restart(cpp_harness: Path, serve_flags: list[str], tmp_path: Path):
    """The server dies (SIGKILL, no drain) under a connected C++ client; a new one starts on the
    same port; the client probes health on the same channel with backoff until it is SERVING, then
    streams again. The new server then stops on SIGTERM with exit code 0."""
    first = Server.start(serve_flags, 0, tmp_path / "first.log")
    argv = [str(cpp_harness), "--target", first.target, "--token", TOKEN, "--scenario", "restart"]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    second: Server | None = None
    try:
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no READY line after {CLIENT_TIMEOUT:.0f} s\n{''.join(output)}")
            assert line is not None, f"the client exited before READY\n{''.join(output)}"
            if line.startswith("READY "):
                break
        first.kill()
        assert proc.stdin is not None
        proc.stdin.write("go\n")  # the client calls into the outage, then retries
        proc.stdin.flush()
        second = Server.start(serve_flags, first.port, tmp_path / "second.log")
        proc.wait(timeout=CLIENT_TIMEOUT)
        reader.join(timeout=10)
        run = Run(argv, proc.returncode, "".join(output))
        assert run.returncode == 0, str(run)
        # UNAVAILABLE when the shared retry policy's attempts ran out during the outage; NOT_FOUND
        # when a retry already reached the new server, which does not know the old session.
        assert run.fact("OUTAGE")["status"] in ("UNAVAILABLE", "NOT_FOUND"), str(run)
        assert int(run.fact("RECOVERED")["attempts"]) >= 2, str(run)  # it had to retry
        assert run.fact("OLD_SESSION")["status"] == "NOT_FOUND", str(run)
        assert run.fact("OK") == {
            "scenario": "restart",
            "attempts": run.fact("RECOVERED")["attempts"],
            "frames": str(FRAMES_PER_CHUNK),
            "chunks": "1",
        }, str(run)
        code = second.terminate()
        assert code == 0, f"SIGTERM: expected exit code 0, got {code}{second.tail()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        first.kill()
        if second is not None:
            second.kill()


def test_cpp_client_retries_what_the_shared_policy_allows(cpp_harness: Path):
    """The C++ core against a server that fails on a script (tests/scripted_world.py): grpc retries
    UNAVAILABLE on GetServerInfo and Step, every attempt of a Step with the same action_seq and the
    next Step with the next one; ABORTED (a lost session) and a CreateSession are tried once."""
    import grpc

    from tests.scripted_world import ScriptedWorld

    unavailable, aborted, ok = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.OK
    with ScriptedWorld() as world:
        world.fail("GetServerInfo", unavailable, times=2)
        for code in (unavailable, unavailable, ok, aborted):
            world.fail("Step", code)
        world.fail("CreateSession", unavailable)
        run = run_client([str(cpp_harness)], world.target, "retry")
    assert run.returncode == 0, str(run)
    assert run.fact("STEP")["chunk"] == "1", str(run)
    assert run.fact("LOST")["status"] == "ABORTED", str(run)
    assert run.fact("CREATE")["status"] == "UNAVAILABLE", str(run)
    assert world.attempts("GetServerInfo") == 3, str(run)
    assert [r.action_seq for r in world.calls["Step"]] == [1, 1, 1, 2], str(run)
    assert world.attempts("CreateSession") == 1, str(run)


def test_cpp_client_over_mutual_tls(cpp_harness: Path, serve_flags: list[str], tmp_path: Path):
    """The C++ core against `helios serve --tls-cert --tls-key --tls-client-ca`: with the CA and a
    client certificate it runs the whole stream scenario; without the certificate, or without TLS,
    the handshake fails with UNAVAILABLE (and does not hang)."""
    from tests.tls_files import make_pki

    pki = make_pki(tmp_path / "pki")
    tls = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    server = Server.start([*serve_flags, *tls, "--tls-client-ca", str(pki.ca)], 0, tmp_path / "tls.log")
    try:
        harness = [str(cpp_harness)]
        mutual = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert)]
        mutual += ["--tls-key", str(pki.client_key)]
        run = run_client(harness, server.target, "stream", *mutual)
        assert run.returncode == 0 and run.fact("OK")["frames"] == "99", str(run)
        no_cert = run_client(harness, server.target, "handshake", "--tls-ca", str(pki.ca))
        assert no_cert.fact("HANDSHAKE")["status"] == "UNAVAILABLE", str(no_cert)
        plaintext = run_client(harness, server.target, "handshake")
        assert plaintext.fact("HANDSHAKE")["status"] == "UNAVAILABLE", str(plaintext)
    finally:
        server.terminate()
