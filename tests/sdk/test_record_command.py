"""`helios record`: the light gRPC client that streams a world into an mp4."""

from __future__ import annotations

import subprocess
import sys


def helios(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "helios_sdk.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_record_against_a_local_server(tmp_path):
    from helios_sdk.video import read_frames

    out = tmp_path / "w.mp4"
    size = ("--width", "64", "--height", "64")
    switch = ("--switch", "1=a forest at noon in light rain")
    done = helios("record", "--serve", "--chunks", "2", *size, *switch, "--threads", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "wrote 66 frames" in done.stdout and "chunk 2/2" in done.stderr
    assert "starting a local helios server (toy)" in done.stderr
    assert "1 CPU thread (--threads" in done.stderr, "the start-up line shows the server's threads"
    assert "generating chunk 1/2" in done.stderr and "fps now (mean" in done.stderr
    assert "not writable" not in done.stderr, "no warning from the server on the start image"
    assert read_frames(out).shape == (66, 64, 64, 3)


def test_record_errors_are_one_line():
    down = helios("record", "--server", "127.0.0.1:1", "--chunks", "1")
    assert down.returncode == 2 and "cannot reach a helios server" in down.stderr
    bad = helios("record", "--serve", "--chunks", "2", "--switch", "7=x")
    assert bad.returncode == 2 and "outside 1..1" in bad.stderr
    # A missing --image fails before any server starts.
    missing = helios("record", "--serve", "--image", "/nonexistent/start.png")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert "Traceback" not in down.stderr + bad.stderr + missing.stderr


def test_what_would_fail_fails_before_any_generation(tmp_path):
    """A key no world knows, a key or prompt the toy world does not know, an --out that exists, and
    --threads without --serve: exit 2 with a message naming the culprit, before a server starts."""
    existing = tmp_path / "old.mp4"
    existing.write_bytes(b"a recording worth keeping")
    out = ("--out", str(tmp_path / "w.mp4"))
    for args, message in (
        (("--keys", "d,x", *out), "unknown key 'x' (in 'x')"),
        (("--keys", "w+space", *out), "unknown key 'space' for the toy world"),
        (("--prompt", "a harbour at dusk", *out), "--prompt 'a harbour at dusk' is not one"),
        (("--chunks", "3", "--switch", "2=the storm clears", *out), "--switch 2 'the storm clears'"),
        (("--out", str(existing)), "exists; pass --force"),
    ):
        done = helios("record", "--serve", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, done.stderr
        assert "starting a local helios server" not in done.stderr and "Traceback" not in done.stderr
    assert existing.read_bytes() == b"a recording worth keeping"
    assert not (tmp_path / "w.mp4").exists()
    remote = helios("record", "--server", "127.0.0.1:1", "--threads", "2", *out)
    assert remote.returncode == 2 and "--threads sets the threads of the --serve server" in remote.stderr


def test_a_chunk_the_server_refuses_fails_the_recording(tmp_path, address):
    """The server has the last word on a model's keys (the tiny model has no arrows): its refusal
    ends the recording with exit 2 and its message, where it used to exit 0 with a third of the frames."""
    from helios_sdk.video import read_frames

    from .conftest import TOKEN

    out = tmp_path / "w.mp4"
    common = ("record", "--server", address, "--chunks", "3", "--width", "64", "--height", "64")
    done = helios(*common, "--keys", "up", "--token", TOKEN, "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert "refused the action of chunk 2: unknown key 'up'" in done.stderr, done.stderr
    assert f"{out} holds the 33 frames before it" in done.stderr
    assert "wrote" not in done.stdout
    assert read_frames(out).shape == (33, 64, 64, 3)


def test_record_at_the_servers_default_size(tmp_path):
    """No size given, so chunk 0 comes back raw at the model's default frame size: 6 MB for tiny's
    192×320, above gRPC's stock 4 MiB message limit."""
    from helios_sdk.video import read_frames

    out = tmp_path / "w.mp4"
    done = helios("record", "--serve", "--model", "tiny", "--chunks", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert read_frames(out).shape == (33, 192, 320, 3)


def test_the_readme_main_command_walks_the_toy_world(tmp_path):
    """The README's main command as it is (the default model, prompt and keys), a few chunks."""
    from helios_sdk.video import read_frames

    out = tmp_path / "w.mp4"
    done = helios("record", "--serve", "--chunks", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "toy" in done.stderr and "chunk 3/3" in done.stderr
    assert "starting from the procedural world's first frame" in done.stderr
    frames = read_frames(out)
    assert frames.shape == (99, 96, 160, 3)
    assert frames.std() > 5, "a scene, not a flat colour"
    bad = helios("record", "--serve", "--chunks", "2", "--keys", "space", "--out", str(tmp_path / "b.mp4"))
    assert bad.returncode == 2 and "unknown key 'space'" in bad.stderr, bad.stderr


def test_the_start_image(tmp_path):
    """--image sends the file; --start world (auto on the toy model) the procedural world's first
    frame for the prompt and seed; text, or auto on another model, none."""
    import argparse

    import numpy as np
    import pytest

    from helios_runtime.sim import ProceduralWorld
    from helios_sdk.record_command import start_image

    def args(**kw):
        base = {"image": None, "start": "auto", "prompt": "a desert at dusk with rocks", "seed": 4}
        return argparse.Namespace(**{**base, **kw})

    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG not really")
    assert start_image(args(image=str(png)), "toy", 96, 160) == png.read_bytes()
    frame = start_image(args(), "toy", 96, 160)
    assert np.array_equal(frame, ProceduralWorld("a desert at dusk with rocks", 4, 96, 160).frame())
    assert start_image(args(start="world"), "tiny", 64, 96).shape == (64, 96, 3)
    assert start_image(args(), "tiny", 96, 160) is None
    assert start_image(args(start="text"), "toy", 96, 160) is None
    assert start_image(args(prompt="a castle on the moon"), "toy", 96, 160) is None  # not the grammar
    with pytest.raises(ValueError, match="--start world"):
        start_image(args(prompt="a castle on the moon", start="world"), "toy", 96, 160)


def test_record_reads_its_token_from_a_file(tmp_path, address):
    """--token-file keeps the secret out of the process list; --token is taken, with a warning."""
    from .conftest import TOKEN

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    common = ("record", "--server", address, "--chunks", "1", "--width", "64", "--height", "64")
    done = helios(*common, "--token-file", str(token_file), "--out", str(tmp_path / "a.mp4"))
    assert done.returncode == 0, done.stderr
    assert "wrote 33 frames" in done.stdout and "warning" not in done.stderr
    refused = helios(*common, "--token", "wrong", "--out", str(tmp_path / "b.mp4"))
    assert refused.returncode == 2 and "UNAUTHENTICATED" in refused.stderr, refused.stderr
    assert "warning: --token puts the secret in the process list" in refused.stderr


def test_a_local_server_gets_its_token_through_the_environment():
    """`helios record --serve` starts `helios serve` with the token in its environment, not in its
    arguments, which every user of the machine can read."""
    import psutil

    from helios_sdk.record_command import local_server

    token = "local-secret-token"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with local_server("tiny", token) as address:
        started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        assert started and address.startswith("127.0.0.1:")
        for p in started:
            assert token not in " ".join(p.cmdline())
        assert any(p.environ().get("HELIOS_TOKEN") == token for p in started)
