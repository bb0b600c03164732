"""The `helios` command line, run as a user runs it (a subprocess of the installed entry point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def helios(*args: str, timeout: float = 300, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "helios_sdk.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
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


def test_forward_toy_is_the_shipped_world_as_everywhere():
    """`toy` names the trained world in every command: `helios forward --model toy` runs the shipped
    transformer (not the toy preset's random weights) at the toy world's 96x160."""
    from helios_runtime.engine.world_model import TOY_FOLDER

    out = helios("forward", "--model", "toy", "--repeat", "1")
    assert out.returncode == 0, out.stderr
    assert "the shipped world's trained transformer" in out.stdout and "at 96×160" in out.stdout
    folder = helios(
        "forward",
        "--model",
        str(TOY_FOLDER / "transformer"),
        "--repeat",
        "1",
        "--height",
        "96",
        "--width",
        "160",
    )
    assert folder.returncode == 0, folder.stderr
    assert out.stdout.splitlines()[-1] == folder.stdout.splitlines()[-1]  # the same weights


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
    done = helios(*args, "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert "chunk 2/2" in done.stderr and "wrote 66 frames" in done.stdout
    # The progress: a line while the first chunk is generated, then the last chunk's rate and the mean.
    assert "generating chunk 1/2" in done.stderr and "fps now (mean" in done.stderr
    assert "1 CPU thread (--threads" in done.stderr, "the start-up line shows the threads"
    frames = read_frames(out)
    assert frames.shape == (66, 64, 64, 3)
    assert frames.std() > 1  # not a blank video

    # The mp4 exists now: another rollout refuses to overwrite it, before loading anything.
    again = helios(*args)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr, again.stderr
    assert "loading" not in again.stderr and read_frames(out).shape == (66, 64, 64, 3)
    forced = helios(*args[:2], "1", *args[3:7], "--out", str(out), "--force", env={"HELIOS_THREADS": "1"})
    assert forced.returncode == 0, forced.stderr
    assert "1 CPU thread ($HELIOS_THREADS" in forced.stderr and read_frames(out).shape[0] == 33


def test_rollout_refuses_prompts_the_toy_world_does_not_know(tmp_path):
    """Checked before the first frame: the --prompt and every --switch."""
    for flags, what in (
        (("--prompt", "a harbour at dusk"), "--prompt 'a harbour at dusk'"),
        (("--chunks", "2", "--switch", "1=the storm clears"), "--switch 1 'the storm clears'"),
    ):
        out = helios("rollout", *flags, "--out", str(tmp_path / "w.mp4"))
        assert out.returncode == 2, out.stderr
        assert what in out.stderr and "knows only prompts of its grammar" in out.stderr
        assert "a BIOME at TIME [in WEATHER] [with OBJECTS]" in out.stderr
        assert not (tmp_path / "w.mp4").exists()


def test_eval_drift_writes_under_the_current_folder(tmp_path):
    out = helios("eval", "drift", "--predictor", "copy-last", "--seeds", "1", "--chunks", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    written = tmp_path / "helios-eval" / "drift_copy-last.json"
    assert f"wrote {os.path.join('helios-eval', 'drift_copy-last.json')}" in out.stdout
    assert json.loads(written.read_text())["settings"]["threads"] >= 1
    assert not (tmp_path / "bench").exists()


def test_info_of_the_released_config():
    out = helios("info", "--model", "14b")
    assert out.returncode == 0
    assert "14,312,427,584 parameters" in out.stdout
    # The world presets `helios serve --model` takes name the same architectures.
    random = helios("info", "--model", "random-14b")
    assert random.returncode == 0, random.stderr
    assert "14,312,427,584 parameters" in random.stdout
    toy = helios("info", "--model", "toy")
    assert toy.returncode == 0 and "the shipped world" in toy.stdout, toy.stderr


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
        (("rollout", "--threads", "0"), "--threads must be a positive number of threads"),
        (("serve", "--threads", "0"), "--threads must be a positive number of threads"),
        (("serve", "--seam-blend", "33"), "--seam-blend must be an int in [0, 32]"),
        (("serve", "--seam-blend", "-1"), "--seam-blend must be an int in [0, 32]"),
        (("rollout", "--out", "."), "is a folder"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, message, tmp_path):
    out = helios(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_light_client_does_not_import_torch():
    code = (
        "import sys, helios_sdk, helios_sdk.cli; helios_sdk.cli.build_parser(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"
