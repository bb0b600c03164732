"""The progress line of `helios record` and `helios rollout` (torch-free).

What a person watching a world being generated needs: which chunk, how fast the world runs now (the
last chunk's rate, beside the mean since the start, which the first chunk's start-up drags down), and,
during a long wait — the first chunk under load can take a minute — that something is happening:

    generating chunk 1/9 … 14 s
    chunk 3/9 [#####...........]   12.4 s, 99 frames, 21.3 fps now (mean 8.0)
    chunk 3/9 [#####...........]   12.4 s, 99 frames, 21.3 fps now (mean 8.0) · chunk 4 … 3 s

"now" is the last chunk's rate. On a terminal the line is redrawn in place every second; elsewhere
(a pipe, a log file) each chunk is one line and a long wait adds a line every 10 s.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO


class StatusLine:
    """One status line on a stream: redrawn in place on a terminal, else written as new lines (at
    most one every `quiet_s` for repeats of the same kind, so logs stay short). Thread-safe."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, quiet_s: float = 10.0):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet_s = quiet_s
        self._lock = threading.Lock()
        self._width = 0  # characters of the line on screen (tty), to blank a shorter redraw's tail
        self._last_tick = -float("inf")  # when a line was last written (off a terminal)

    def show(self, text: str, *, tick: bool = False, now: float | None = None) -> None:
        """Draw `text`; a `tick` (a repeat while waiting) is dropped off a terminal unless `quiet_s`
        passed since the last line written."""
        with self._lock:
            if self.tty:
                text = text[: shutil.get_terminal_size().columns - 1]  # a wrapped line cannot be redrawn
                pad = " " * max(0, self._width - len(text))
                self.stream.write("\r" + text + pad)
                self._width = len(text)
            else:
                now = time.monotonic() if now is None else now
                if tick and now - self._last_tick < self.quiet_s:
                    return
                self._last_tick = now
                self.stream.write(text + "\n")
            self.stream.flush()

    def end(self) -> None:
        """Leave the line as it is and move below it (on a terminal)."""
        with self._lock:
            if self.tty and self._width:
                self.stream.write("\n")
                self.stream.flush()
            self._width = 0


@contextlib.contextmanager
def ticking(draw: Callable[[], None], every_s: float = 1.0) -> Iterator[None]:
    """Call `draw()` every `every_s` seconds in a daemon thread while the block runs."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every_s):
            draw()

    thread = threading.Thread(target=run, name="helios-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def waiting(label: str, line: StatusLine | None = None, every_s: float = 1.0) -> Iterator[StatusLine]:
    """'LABEL … N s' while the block runs (e.g. a local server starting)."""
    line = line or StatusLine()
    start = time.monotonic()

    def draw(tick: bool = True) -> None:
        line.show(f"{label} … {time.monotonic() - start:.0f} s", tick=tick)

    draw(tick=False)
    try:
        with ticking(draw, every_s):
            yield line
    finally:
        line.end()


class Progress:
    """Chunks of a world as they are generated. Use as a context manager (which runs the ticker), call
    `update(done, frames)` after each chunk; `slow_s`: a wait shorter than this shows nothing extra.
    `clock`, `tick_s=0` (no ticker thread) and `tty` are for tests."""

    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        *,
        width: int = 16,
        tick_s: float = 1.0,
        slow_s: float = 2.0,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.width, self.tick_s, self.slow_s, self.clock = total, width, tick_s, slow_s, clock
        self.line = StatusLine(stream, tty=tty)
        self.start = clock()
        self.done, self.frames = 0, 0
        self.chunk_started = self.start  # when the chunk being generated now started
        self.last = ""  # the latest chunk line
        self.last_fps: float | None = None

    def __enter__(self) -> Progress:
        self.tick(force=True)
        self._ticker = ticking(self.tick, self.tick_s) if self.tick_s > 0 else contextlib.nullcontext()
        self._ticker.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ticker.__exit__(*exc)
        self.line.end()

    def update(self, done: int, frames: int) -> None:
        """Chunk `done` (1-based) is complete and `frames` frames are out in all."""
        now = self.clock()
        if now > self.chunk_started and frames > self.frames:
            self.last_fps = (frames - self.frames) / (now - self.chunk_started)
        self.done, self.frames, self.chunk_started = done, frames, now
        elapsed = now - self.start
        filled = round(self.width * done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        mean = frames / elapsed if elapsed > 0 else 0.0
        now_fps = self.last_fps if self.last_fps is not None else mean
        self.last = (
            f"chunk {done}/{self.total} [{bar}] {elapsed:6.1f} s, {frames} frames, "
            f"{now_fps:.1f} fps now (mean {mean:.1f})"
        )
        self.line.show(self.last, now=now)

    def tick(self, force: bool = False) -> None:
        """Redraw with the current chunk's seconds so far (the ticker calls this every `tick_s`)."""
        if self.done >= self.total:
            return
        now = self.clock()
        waited = now - self.chunk_started
        if not self.last:
            self.line.show(f"generating chunk 1/{self.total} … {waited:.0f} s", tick=not force, now=now)
        elif waited >= self.slow_s:
            self.line.show(f"{self.last} · chunk {self.done + 1} … {waited:.0f} s", tick=True, now=now)
