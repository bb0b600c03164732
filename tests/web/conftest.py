"""Fixtures of the browser tests: Debian's chromium driven through chromium-driver (installed with
apt when missing, as root, as tests/interop installs its toolchains), and a live `helios serve
--web-port` subprocess on the toy world (the embedded default model) with a token.

The browser is headless, with timers unthrottled in background tabs (the page plays out on a
timer). `HELIOS_SCREENSHOT=docs/web-page.png` makes the page test save its screenshot there."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk._proto.helios.v1 import world_pb2_grpc as pb_grpc

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
APT_PACKAGES = ["chromium", "chromium-driver"]
TOKEN = "browser-token"
SERVER_READY_TIMEOUT = 300.0  # the toy world's load and warm-up chunk on a busy 2-core machine
LISTENING = re.compile(r"^listening on (\S+):(\d+)$")
WEB = re.compile(r"^web page at (http://\S+)$")


def install_chromium() -> None:
    """chromium + chromium-driver from Debian, or a skip where that is impossible (not root)."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            f"chromium missing, not installable here (needs root): apt-get install {' '.join(APT_PACKAGES)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES],
    ):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if out.returncode != 0:
            pytest.fail(
                f"`{' '.join(cmd)}` exited {out.returncode}\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
            )


@pytest.fixture(scope="session")
def browser():
    install_chromium()
    if os.environ.get("CI"):  # CI installs the dev extra: a missing selenium is a failure there
        import selenium  # noqa: F401
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1100,780",
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
        "--no-first-run",
    ):
        options.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not try to download anything
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


@dataclass
class Served:
    proc: subprocess.Popen
    target: str  # gRPC HOST:PORT
    url: str  # the page
    log: Path

    def active_sessions(self) -> int:
        stub = pb_grpc.WorldServiceStub(grpc.insecure_channel(self.target))
        info = stub.GetServerInfo(
            pb.GetServerInfoRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30
        )
        return info.active_sessions

    def wait_sessions(self, count: int, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while (now := self.active_sessions()) != count and time.monotonic() < deadline:
            time.sleep(0.2)
        return now


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`helios serve --web-port 0` on the default (toy) world, as a user starts it."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cmd = [
        sys.executable,
        "-m",
        "helios_sdk.cli",
        "serve",
        "--port",
        "0",
        "--web-port",
        "0",
        "--token",
        TOKEN,
    ]
    cmd += ["--device", "cpu", "--max-sessions", "4"]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        target = url = None
        deadline = time.monotonic() + SERVER_READY_TIMEOUT
        while (target is None or url is None) and time.monotonic() < deadline:
            line = proc.stdout.readline().strip() if proc.stdout else ""
            if not line and proc.poll() is not None:
                break
            if m := LISTENING.match(line):
                target = f"{m.group(1)}:{m.group(2)}"
            elif m := WEB.match(line):
                url = m.group(1)
        assert target and url, f"helios serve did not start:\n{log.read_text()[-4000:]}"
        yield Served(proc, target, url, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
