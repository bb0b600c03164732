"""`helios play` as a newcomer runs it: a local server on the embedded default world whose page is
served at the URL it prints, with progress while the model warms up; Ctrl-C stops it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import aiohttp

PLAY = [sys.executable, "-m", "helios_sdk.cli", "play"]


def test_play_serves_the_default_world_at_the_url_it_prints(tmp_path):
    # --open goes through Python's webbrowser, which runs $BROWSER first: a script that notes the URL.
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.py"
    browser.write_text(
        f"#!{sys.executable}\nimport pathlib, sys\npathlib.Path({str(opened)!r}).write_text(sys.argv[1])\n"
    )
    browser.chmod(0o755)
    proc = subprocess.Popen(
        [*PLAY, "--web-port", "0", "--device", "cpu", "--open"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "BROWSER": str(browser)},
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("play at http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = line.removeprefix("play at ")

        async def visit() -> tuple[str, dict]:
            async with aiohttp.ClientSession() as http:
                async with http.get(url) as page:
                    html = await page.text()
                async with http.ws_connect(url + "v1/realtime/world", protocols=["helios.v1"]) as ws:
                    await ws.send_str(json.dumps({"type": "server.info"}))
                    return html, json.loads((await ws.receive(timeout=60)).data)

        html, info = asyncio.run(visit())
        for _ in range(100):  # the page is opened from a thread, after the URL is printed
            if opened.exists():
                break
            time.sleep(0.1)
        assert opened.read_text() == url
        assert "/static/page.js" in html
        assert info["model"]["name"] == "toy" and info["auth_required"] is False
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        err = proc.stderr.read()
        assert "loading the toy world" in err and "ready in" in err and "W A S D" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_play_help_says_what_it_does():
    out = subprocess.run([*PLAY, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for expected in ("--web-port", "--open", "--token", "--model", "W A S D", "docs/web.md", "Ctrl-C"):
        assert expected in text, expected
    bad = subprocess.run([*PLAY, "--web-port", "70000"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--web-port must be a port number" in bad.stderr
