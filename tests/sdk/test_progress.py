"""The progress line: the last chunk's rate beside the mean, and a sign of life during a long chunk."""

from __future__ import annotations

import io
import time

from helios_sdk.progress import Progress, StatusLine, waiting


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_is_the_last_chunks_and_the_mean_since_the_start():
    out, clock = io.StringIO(), Clock()
    progress = Progress(3, out, tty=False, tick_s=0, clock=clock)
    with progress:
        clock.now += 30.0  # a slow first chunk (start-up, a loaded machine)
        progress.update(1, 33)
        clock.now += 1.5
        progress.update(2, 66)
    lines = out.getvalue().splitlines()
    assert lines[0] == "generating chunk 1/3 … 0 s"
    assert lines[1].startswith("chunk 1/3 [#####...........]") and "1.1 fps now (mean 1.1)" in lines[1]
    assert "66 frames, 22.0 fps now (mean 2.1)" in lines[2], lines[2]


def test_a_long_chunk_shows_its_seconds():
    out, clock = io.StringIO(), Clock()
    progress = Progress(3, out, tty=False, tick_s=0, clock=clock)
    with progress:
        clock.now += 12.0
        progress.tick()  # the ticker, every second; off a terminal a line at most every 10 s
        clock.now += 3.0
        progress.tick()
        progress.update(1, 33)
        clock.now += 1.0
        progress.tick()  # a short wait shows nothing
        clock.now += 25.0
        progress.tick()
        progress.update(3, 99)
        progress.tick()  # done: nothing
    lines = out.getvalue().splitlines()
    assert lines[1] == "generating chunk 1/3 … 12 s"
    assert lines[3].startswith("chunk 1/3") and lines[3].endswith(" · chunk 2 … 26 s"), lines
    assert len(lines) == 5 and lines[-1].startswith("chunk 3/3")


def test_on_a_terminal_the_line_is_redrawn_in_place():
    out = io.StringIO()
    line = StatusLine(out, tty=True)
    line.show("generating chunk 1/9 … 3 s")
    line.show("chunk 1/9")
    line.end()
    assert out.getvalue() == "\rgenerating chunk 1/9 … 3 s" + "\rchunk 1/9" + " " * 17 + "\n"


def test_the_ticker_runs_while_waiting():
    out = io.StringIO()
    with waiting("starting a local helios server (toy)", StatusLine(out, tty=True), every_s=0.05):
        time.sleep(0.3)
    shown = out.getvalue()
    assert shown.startswith("\rstarting a local helios server (toy) … 0 s") and shown.endswith("\n")
    assert shown.count("\r") >= 3, "redrawn while the block ran"
