"""The `helios` command line, run as a user runs it (a subprocess of the installed entry point)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def helios(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "helios_sdk.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_commands():
    out = helios("--help")
    assert out.returncode == 0
    assert "forward" in out.stdout and "info" in out.stdout


def test_forward_on_the_embedded_default(tmp_path):
    out = helios("forward", "--repeat", "1", "--save", str(tmp_path / "tiny"))
    assert out.returncode == 0, out.stderr
    assert "sequence: long 24 | mid 15 | short 120 | noisy 540" in out.stdout
    assert "finite True" in out.stdout
    # The saved folder loads back through the same command.
    again = helios(
        "forward", "--model", str(tmp_path / "tiny"), "--repeat", "1", "--height", "96", "--width", "160"
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == out.stdout.splitlines()[-1]  # same weights, same inputs


def test_rollout_writes_an_mp4(tmp_path):
    from helios_sdk.video import read_frames

    out = tmp_path / "world.mp4"
    args = (
        "rollout",
        "--chunks",
        "2",
        "--height",
        "64",
        "--width",
        "64",
        "--switch",
        "1=a desert at noon",
        "--out",
        str(out),
    )
    done = helios(*args)
    assert done.returncode == 0, done.stderr
    assert "chunk 2/2" in done.stderr and "wrote 66 frames" in done.stdout
    frames = read_frames(out)
    assert frames.shape == (66, 64, 64, 3)
    assert frames.std() > 1  # not a blank video


def test_info_of_the_released_config():
    out = helios("info", "--model", "14b")
    assert out.returncode == 0
    assert "14,312,427,584 parameters" in out.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (("forward", "--model", "/no/such/folder"), "neither a preset"),
        (("forward", "--height", "100"), "multiples of 16"),
        (("forward", "--batch", "0"), "at least 1"),
        (("info", "--model", "/no/such/folder"), "does not exist"),
        (("rollout", "--chunks", "2", "--switch", "5=x"), "outside 1..1"),
        (("rollout", "--switch", "x"), "CHUNK=PROMPT"),
        (("rollout", "--height", "100"), "multiple of 16"),
        (("rollout", "--image", "/no/such.png"), "no such file"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, message):
    out = helios(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_light_client_does_not_import_torch():
    code = (
        "import sys, helios_sdk, helios_sdk.cli; helios_sdk.cli.build_parser(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"
