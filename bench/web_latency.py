"""Latency budget of the browser page, per frame: server encode, transport, browser decode, at
96×160 and 384×640, JPEG and raw RGB24 (issue 21) — beside the gRPC C++ client's numbers
(bench/client_latency.py, docs/clients.md).

The client is the play page itself (runtime/server/front/static/page.js) in Debian's headless
chromium, driven through chromium-driver, against `helios serve --model tiny --web-port` on
loopback: a lockstep session per size and encoding, one action per chunk, the next sent when the
chunk is done. Per frame:

- server encode: the stream's `chunk.done` encode seconds over its 33 frames (a per-chunk mean,
  as the server reports encode time per chunk; the same definition as the C++ bench);
- transport: the page's receive time (the socket's message event; `performance.timeOrigin +
  performance.now()`) minus the frame header's timestamp, which the server takes after encoding,
  before the write (same machine, same wall clock): the gateway's header, the WebSocket write,
  loopback, Chromium's network process and the renderer's event dispatch;
- browser decode: wire bytes to an ImageBitmap in the page (JPEG: `createImageBitmap` of the
  file; RGB24: adding alpha in JavaScript, then `createImageBitmap`).

Chunk 0 (the Reset's) is left out: its frames are sent after the whole chunk was made.

    python bench/web_latency.py --out bench/results      # a few minutes on 2 CPU cores

The served world is the toy world (the default model, whose sizes are multiples of 16: 96×160 is
its own; the tiny model of the C++ bench takes multiples of 64 only). Its frames are smooth, so its
JPEGs are far smaller than the tiny model's noise-like ones in the C++ bench. The machine's load
is recorded: numbers from a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import latency_summary, percentile

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SIZES = ((96, 160), (384, 640))
ENCODINGS = ("jpeg", "rgb24")
WAIT = 900.0


def cpu() -> dict[str, object]:
    """The CPU as /proc/cpuinfo names it, and the load when measured (others may share it)."""
    info: dict[str, str] = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "stepping", "cpu MHz") and key not in info:
                info[key] = value.strip()
    return {"cpuinfo": info, "cores": os.cpu_count(), "loadavg_1_5_15": list(os.getloadavg())}


def start_server(model: str, token: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "helios_sdk.cli", "serve", "--model", model, "--device", "cpu"]
    cmd += ["--port", "0", "--web-port", "0", "--token", token]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stdout.readline().strip() if proc.stdout else ""
        if m := re.match(r"^web page at (http://\S+)$", line):
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("helios serve --web-port did not start")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def wait_for(driver, script: str, what: str):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        errors = driver.execute_script("return window.helios ? helios.errors : [];")
        if errors:
            raise SystemExit(f"the page reports {errors} while waiting for {what}")
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}: {driver.execute_script('return helios.errors;')}")


def measure(driver, height: int, width: int, encoding: str, chunks: int) -> dict:
    driver.execute_script(
        "helios.start({width: arguments[0], height: arguments[1], encoding: arguments[2]});",
        width,
        height,
        encoding,
    )
    wait_for(driver, "helios.chunks.length >= 1", "chunk 0")
    t0 = time.perf_counter()
    for k in range(1, chunks + 1):
        driver.execute_script("helios.act({});")
        wait_for(driver, f"helios.chunks.length >= {k + 1}", f"chunk {k}")
    wait_for(
        driver, f"helios.frames.filter((f) => f.decodeMs !== null).length >= {33 * (chunks + 1)}", "decoding"
    )
    wall = time.perf_counter() - t0
    frames = [f for f in driver.execute_script("return helios.frames;") if f["chunk"] >= 1]
    done = {c["chunk_index"]: c for c in driver.execute_script("return helios.chunks;")}
    driver.execute_script("helios.stop();")
    wait_for(driver, "helios.done !== null", "session.done")
    per_frame = {k: 1e3 * c["timings"]["encode_s"] / 33 for k, c in done.items() if k >= 1}
    encode = [per_frame[f["chunk"]] for f in frames]
    transport = [f["transportMs"] for f in frames]
    decode = [f["decodeMs"] for f in frames]
    return {
        "size": [height, width],
        "encoding": encoding,
        "frames": len(frames),
        "chunks": len(per_frame),
        "wire_bytes_per_frame": statistics.fmean(f["bytes"] for f in frames),
        "server_encode_ms": latency_summary(encode),
        "server_encode_ms_per_chunk": [per_frame[k] for k in sorted(per_frame)],
        "transport_ms": latency_summary(transport),
        "browser_decode_ms": latency_summary(decode),
        "total_ms_p50": percentile(encode, 0.5) + percentile(transport, 0.5) + percentile(decode, 0.5),
        "wall_s": wall,
    }


def versions(driver) -> dict[str, str]:
    import aiohttp
    import selenium

    caps = driver.capabilities
    return {
        "python": platform.python_version(),
        "chromium": caps.get("browserVersion", ""),
        "chromedriver": caps.get("chrome", {}).get("chromedriverVersion", "").split(" ")[0],
        "aiohttp (server)": aiohttp.__version__,
        "selenium": selenium.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=3, help="lockstep chunks per size and encoding")
    parser.add_argument("--model", default="toy", help="the served world (default toy: sizes multiple of 16)")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--note", default="", help="a sentence on the machine's state, kept in the JSON")
    args = parser.parse_args()

    token = secrets.token_hex(8)
    proc, url = start_server(args.model, token)
    before = cpu()
    driver = browser()
    rows = []
    try:
        driver.get(url + "?connect=0&autostart=0&pace=0")
        wait_for(driver, "window.helios", "the page")
        driver.execute_script(
            "document.getElementById('token').value = arguments[0]; helios.connect();", token
        )
        wait_for(driver, "helios.info", "server.info")
        for height, width in SIZES:
            for encoding in ENCODINGS:
                print(f"{encoding} at {height}×{width}: {args.chunks} chunks ...", flush=True)
                rows.append(measure(driver, height, width, encoding, args.chunks))
        found = versions(driver)
    finally:
        driver.quit()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    after = cpu()

    cxx_path = ROOT / "bench" / "results" / "client_latency_cpu.json"
    cxx = json.loads(cxx_path.read_text()) if cxx_path.exists() else None
    result = {
        "benchmark": "web_latency",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": "cpu",
        "versions": found,
        "cpu": {"model_name": before["cpuinfo"].get("model name"), **before},
        "loadavg_after": after["loadavg_1_5_15"],
        "machine": "a 2-core CPU machine (KVM), no GPU, shared with other agents' builds and tests while "
        "measured (see the load averages): the model, the server (front + worker) and headless "
        "chromium run on the same two cores over loopback. " + args.note,
        "settings": {
            "model": args.model,
            "chunks_per_case": args.chunks,
            "mode": "lockstep, one action per chunk, sent after the previous chunk.done",
            "client": "the play page (page.js) in headless chromium via chromium-driver",
            "jpeg_quality": "server default (90)",
        },
        "definitions": {
            "server_encode_ms": "chunk.done timings.encode_s / 33 (per-chunk mean)",
            "transport_ms": "page receive (message event, performance.timeOrigin + now()) minus the frame "
            "header's server timestamp, taken after encoding, before the write",
            "browser_decode_ms": "wire bytes to an ImageBitmap in the page",
        },
        "results": rows,
        "grpc_cxx_reference": (
            {"file": str(cxx_path.relative_to(ROOT)), "date": cxx["date"], "results": cxx["results"]}
            if cxx
            else None
        ),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "web_latency_cpu.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}\n")
    name, cores, load = before["cpuinfo"].get("model name"), before["cores"], before["loadavg_1_5_15"]
    print(f"CPU: {name}, {cores} cores, load average {load} before, {after['loadavg_1_5_15']} after")
    print("per frame, ms (p50 / p95); browser page over WebSocket, loopback")
    print("| size | encoding | bytes/frame | server encode | transport | browser decode | sum of p50 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cells = [
            f"{r[k]['p50']:.2f} / {r[k]['p95']:.2f}"
            for k in ("server_encode_ms", "transport_ms", "browser_decode_ms")
        ]
        size = f"{r['size'][0]}×{r['size'][1]}"
        print(
            f"| {size} | {r['encoding']} | {r['wire_bytes_per_frame']:,.0f} | {' | '.join(cells)} | "
            f"{r['total_ms_p50']:.2f} |"
        )
    if cxx:
        print(f"\ngRPC C++ client at 384×640 ({cxx['date'][:10]}, bench/client_latency.py):")
        for r in cxx["results"]:
            cells = [
                f"{r[k]['p50']:.2f} / {r[k]['p95']:.2f}"
                for k in ("server_encode_ms", "transport_ms", "client_decode_ms")
            ]
            size = f"{r['wire_bytes_per_frame']:,.0f}"
            print(f"| 384×640 | {r['encoding']} | {size} | {' | '.join(cells)} | {r['total_ms_p50']:.2f} |")


if __name__ == "__main__":
    main()
