"""The package as users get it: a wheel built from this tree, installed without `-e`.

The folders runtime/ and kernels/ are remapped to helios_runtime / helios_kernels by pyproject's
package-dir; an editable install would hide a broken mapping, so this builds and installs a wheel
into a fresh virtual environment and loads a saved tiny checkpoint through it.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path_factory.mktemp("src") / "tree"
    skip = shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, src, ignore=skip)
    pip_wheel = ["pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)]
    subprocess.run([sys.executable, "-m", *pip_wheel], check=True, timeout=300)
    (path,) = out.glob("helios_world_sdk-*.whl")
    return path


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "helios_sdk/__init__.py",
        "helios_sdk/py.typed",
        "helios_sdk/retry_policy.json",  # the clients' retry policy, read at import
        "helios_runtime/__init__.py",
        "helios_runtime/py.typed",
        "helios_runtime/model/transformer.py",
        "helios_kernels/__init__.py",
        # The embedded default model (the `toy` preset) ships inside the package.
        "helios_runtime/assets/toy/model_index.json",
        "helios_runtime/assets/toy/scheduler/scheduler_config.json",
        "helios_runtime/assets/toy/transformer/diffusion_pytorch_model.safetensors",
        "helios_runtime/assets/toy/vae/diffusion_pytorch_model.safetensors",
        "helios_runtime/assets/toy/text_encoder/model.safetensors",
        # The play page the web gateway serves (`helios play`, `helios serve --web-port`).
        "helios_runtime/server/front/static/index.html",
        "helios_runtime/server/front/static/page.js",
        "helios_runtime/server/front/static/helios.js",
        "helios_runtime/server/front/static/style.css",
    ):
        assert required in names
    assert not any(n.startswith(("runtime/", "kernels/", "tests/")) for n in names)


def test_triton_comes_only_with_the_gpu_and_dev_extras(wheel):
    """`pip install '.[runtime]'` on a CPU-only machine must not download Triton (~286 MB)."""
    (metadata,) = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA")]
    requires = [
        line.removeprefix("Requires-Dist: ")
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist: ")
    ]
    extras = {req.split('extra == "')[1].rstrip('"') for req in requires if req.startswith("triton")}
    assert extras == {"gpu", "dev"}, requires
    runtime = [req for req in requires if 'extra == "runtime"' in req]
    assert any(req.startswith("torch") for req in runtime) and not any("triton" in req for req in runtime)


def test_the_runtime_runs_without_triton(tmp_path):
    """With Triton absent the runtime imports, takes the torch path and steps a world (the CPU case)."""
    code = (
        "import sys\n"
        "sys.modules['triton'] = None  # import triton -> ImportError, find_spec -> None\n"
        "import helios_kernels, helios_runtime.commands, helios_runtime.server.worker.main\n"
        "from helios_runtime.engine.engine import WorldEngine\n"
        "from helios_runtime.engine.world_model import WorldModel\n"
        "assert not helios_kernels.available()\n"
        "model = WorldModel.load('tiny', device='cpu').fast_path()\n"
        "print(WorldEngine(model).reset('x', seed=1, height=64, width=64).frames.shape[0])\n"
    )
    run = [sys.executable, "-c", code]
    out = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["33"]


def test_every_package_folder_is_shipped(wheel):
    """A new sub-package must be added to pyproject's package list; this catches forgetting it."""
    names = zipfile.ZipFile(wheel).namelist()
    for folder, package in (
        ("helios_sdk", "helios_sdk"),
        ("runtime", "helios_runtime"),
        ("kernels", "helios_kernels"),
    ):
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.relative_to(ROOT / folder).as_posix()
            assert f"{package}/{rel}" in names, f"{folder}/{rel} is not packaged: add it to pyproject.toml"


def test_non_editable_install_loads_a_checkpoint(wheel, tmp_path):
    env = tmp_path / "venv"
    # The new venv sees the packages of the environment running the tests (torch, numpy, ...): in a
    # user's virtual environment those are not the base interpreter's, which is all that
    # system_site_packages would show. Their folders go on its path through a .pth file, which adds
    # them after its own site-packages and runs no .pth inside them (so no editable install of this
    # project from outside leaks in).
    outer = [p for p in (*site.getsitepackages(), site.getusersitepackages()) if Path(p).is_dir()]
    venv.create(env, system_site_packages=False, with_pip=True)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "outer_environment.pth").write_text("\n".join(outer) + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    code = (
        "import sys, torch, helios_runtime\n"
        "from helios_runtime.model.transformer import HeliosTransformer\n"
        f"assert helios_runtime.__file__.startswith({str(env)!r}), helios_runtime.__file__\n"
        "m = HeliosTransformer.from_config('tiny', device='cpu', seed=1)\n"
        f"m.save_pretrained({str(tmp_path / 'ckpt')!r})\n"
        f"m = HeliosTransformer.from_pretrained({str(tmp_path / 'ckpt')!r}, device='cpu')\n"
        "x = m(torch.randn(1, 16, 1, 4, 4), torch.tensor([500.0]), torch.randn(1, 3, 32))\n"
        "print(tuple(x.shape))\n"
        "from helios_runtime.engine.world_model import WorldModel\n"
        "print(WorldModel.load('toy', device='cpu').name)\n"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(1,", "16,", "1,", "4,", "4)", "toy"]
    cli = subprocess.run(
        [str(env / "bin" / "helios"), "info"], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert cli.returncode == 0, cli.stderr
    assert "parameters" in cli.stdout
