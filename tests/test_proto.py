"""The helios.v1 contract: buf STANDARD lint, no constructs engine plugins cannot read, current stubs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto" / "helios" / "v1" / "world.proto"
BUF_VERSION = "1.75.0"


def buf() -> str:
    """The buf binary, installed from the npm registry when missing (as CI machines lack it)."""
    found = shutil.which("buf")
    if found:
        return found
    prefix = Path.home() / ".cache" / "helios-buf"
    binary = prefix / "node_modules" / ".bin" / "buf"
    if not binary.exists():
        if shutil.which("npm") is None:
            pytest.skip("buf is not installed and npm is not available to install it")
        subprocess.run(
            ["npm", "install", "--prefix", str(prefix), f"@bufbuild/buf@{BUF_VERSION}"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    return str(binary)


def test_buf_standard_lint_is_clean():
    out = subprocess.run([buf(), "lint"], cwd=ROOT / "proto", capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_optional_and_no_any():
    """TurboLink (Unreal) cannot consume proto3 `optional` or `google.protobuf.Any`."""
    code = [line.split("//")[0] for line in PROTO.read_text().splitlines()]
    assert not any(line.strip().startswith("optional ") for line in code)
    assert not any("google.protobuf.Any" in line or "any.proto" in line for line in code)


def test_committed_stubs_match_the_proto():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_stubs_import_without_the_helios_top_level_package():
    from helios_sdk._proto.helios.v1 import world_pb2, world_pb2_grpc

    assert world_pb2.DESCRIPTOR.package == "helios.v1"
    assert hasattr(world_pb2_grpc, "WorldServiceStub")
    assert "helios" not in sys.modules  # the rewritten imports never touch PyPI's `helios`
