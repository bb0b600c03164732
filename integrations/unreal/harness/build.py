"""Build a scenario harness of the one C++ client core (the Unreal plugin's HeliosWorldCore) with
Debian's grpc++, and print the binary's path:

- `unreal`: helios_world_harness, on the core's WorldClient (tests/integrations,
  bench/client_latency.py);
- `interop`: helios_interop, on the core's Connection (tests/interop/cpp, tests/interop).

    python integrations/unreal/harness/build.py                      # build (or reuse) the unreal one
    python integrations/unreal/harness/build.py --harness interop --install  # apt-get what is missing

The binary is cached in ~/.cache/helios-world/, keyed by a hash of the core's sources, the
harness's, the CMakeLists.txt files, world.proto and the toolchain's versions, so a second build
costs nothing. Exit codes: 0 built, 1 a build step failed (its output is printed), 3 tools are
missing and were not installed (the missing ones are named on stderr).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

UNREAL = Path(__file__).resolve().parents[1]
ROOT = UNREAL.parents[1]
PROTO = ROOT / "proto" / "helios" / "v1" / "world.proto"
CORE = UNREAL / "HeliosWorld" / "Source" / "ThirdParty" / "HeliosWorldCore"
CACHE = Path.home() / ".cache" / "helios-world"
INTEROP = ROOT / "tests" / "interop" / "cpp"
# name: (its CMake folder, its binary, its own source files)
HARNESSES = {
    "unreal": (UNREAL, "helios_world_harness", sorted((UNREAL / "harness").glob("*.cpp"))),
    "interop": (INTEROP, "helios_interop", [INTEROP / "CMakeLists.txt", *sorted(INTEROP.glob("*.cc"))]),
}

# Debian 12 packages: grpc++ and its code generators, the JPEG and H.264 decoders, the toolchain.
APT = [
    "libgrpc++-dev",
    "libprotobuf-dev",
    "protobuf-compiler",
    "protobuf-compiler-grpc",
    "libturbojpeg0-dev",
    "libavcodec-dev",
    "libswscale-dev",
    "cmake",
    "g++",
    "pkg-config",
]
TOOLS = ["cmake", "g++", "protoc", "grpc_cpp_plugin", "pkg-config"]
PKG_CONFIG = ["grpc++", "protobuf", "libturbojpeg", "libavcodec", "libswscale", "libavutil"]


def missing() -> list[str]:
    """Tools and pkg-config modules the build needs that this machine lacks."""
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if "pkg-config" not in absent:
        for module in PKG_CONFIG:
            if subprocess.run(["pkg-config", "--exists", module]).returncode != 0:
                absent.append(f"{module}.pc")
    return absent


def apt_install() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *APT]):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if out.returncode != 0:
            sys.exit(f"`{' '.join(cmd)}` exited {out.returncode}\n{out.stdout[-3000:]}{out.stderr[-3000:]}")


def sources(harness: str) -> list[Path]:
    files = [UNREAL / "CMakeLists.txt", PROTO, *HARNESSES[harness][2]]
    files += sorted((UNREAL / "harness").glob("*.h"))
    files += sorted(p for p in CORE.rglob("*") if p.suffix in {".h", ".cpp"})
    return files


def build_key(harness: str) -> str:
    digest = hashlib.sha256(harness.encode())
    for path in sources(harness):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    versions = [["protoc", "--version"], ["g++", "--version"], ["pkg-config", "--modversion", *PKG_CONFIG]]
    for cmd in versions:
        digest.update(subprocess.run(cmd, capture_output=True, text=True).stdout.encode())
    return digest.hexdigest()[:16]


def build(harness: str) -> Path:
    folder, name, _ = HARNESSES[harness]
    key = build_key(harness)
    binary = CACHE / f"{name}-{key}"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"build-{key}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        steps = [
            ["cmake", "-S", str(folder), "-B", str(work), "-DCMAKE_BUILD_TYPE=Release"],
            ["cmake", "--build", str(work), f"-j{os.cpu_count() or 2}"],
        ]
        for cmd in steps:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
            if out.returncode != 0:
                print(f"`{' '.join(cmd)}` exited {out.returncode}", file=sys.stderr)
                print(out.stdout[-6000:], out.stderr[-6000:], sep="\n", file=sys.stderr)
                sys.exit(1)
        for old in CACHE.glob(f"{name}-*"):
            old.unlink(missing_ok=True)
        os.replace(work / name, binary)  # atomic for a concurrent reader
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return binary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--harness", choices=sorted(HARNESSES), default="unreal", help="which one (default unreal)"
    )
    parser.add_argument("--install", action="store_true", help="apt-get install what is missing (root)")
    args = parser.parse_args()
    absent = missing()
    if absent and args.install:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            print(f"missing {', '.join(absent)}; installing needs root and apt-get", file=sys.stderr)
            print(f"apt-get install {' '.join(APT)}", file=sys.stderr)
            return 3
        apt_install()
        absent = missing()
    if absent:
        print(f"missing {', '.join(absent)}: apt-get install {' '.join(APT)}", file=sys.stderr)
        return 3
    print(build(args.harness))
    return 0


if __name__ == "__main__":
    sys.exit(main())
