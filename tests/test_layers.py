"""The import graph has layers (docs/architecture.md): every import points down, none sideways.

Reads every module of helios_sdk, helios_runtime and helios_kernels with `ast` (nothing is imported),
counts every import, the lazy ones inside functions included, and checks each against `LAYERS`.
A module belongs to the component whose prefix names it most closely; an import may go to its own
component or to a component of a lower layer. Components of one layer are independent of each other
(the model and the samplers, the worker and training, ...).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    "helios_sdk": ROOT / "helios_sdk",
    "helios_runtime": ROOT / "runtime",
    "helios_kernels": ROOT / "kernels",
}

# Bottom first. Each component: the module prefixes it holds ("=name": that module alone).
LAYERS: list[dict[str, tuple[str, ...]]] = [
    {
        # The vocabulary every side shares, torch-free: the wire contract, actions, error classes,
        # reading credential files (TLS, tokens).
        "contract": (
            "helios_sdk._proto",
            "helios_sdk.actions",
            "helios_sdk.errors",
            "helios_sdk.credentials",
        ),
        "kernels": ("helios_kernels",),
        "runtime-root": ("=helios_runtime",),
        "chunk": ("helios_runtime.chunk",),
        "logs": ("helios_runtime.logs",),
        "configfile": ("helios_runtime.configfile",),
        "moves": ("helios_runtime.moves",),
        "threads": ("helios_runtime.threads",),  # the CPU-thread setting (torch-free)
    },
    {
        "model": ("helios_runtime.model",),
        "sampling": ("helios_runtime.sampling",),
        "sim": ("helios_runtime.sim",),
        "protocol": ("helios_runtime.server.protocol",),
    },
    {"engine": ("helios_runtime.engine",)},
    {
        "worker": ("helios_runtime.server.worker",),
        "train": ("helios_runtime.train",),
        "eval": ("helios_runtime.eval",),
    },
    {"front": ("helios_runtime.server.front", "=helios_runtime.server")},
    {"sdk": ("helios_sdk",)},  # the client: HeliosClient, env, backends, recordings
    {"apps": ("helios_runtime.commands", "helios_sdk.cli", "helios_sdk.record_command")},  # `helios` commands
]


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ours that `name` imports (a `from package import module` names the module)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # a name inside a module -> the module
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def component(name: str) -> tuple[int, str]:
    best: tuple[int, int, str] | None = None  # (prefix length, layer, component)
    for layer, comps in enumerate(LAYERS):
        for comp, prefixes in comps.items():
            for prefix in prefixes:
                exact = prefix.startswith("=")
                prefix = prefix.removeprefix("=")
                if name == prefix or (not exact and name.startswith(prefix + ".")):
                    if best is None or len(prefix) > best[0]:
                        best = (len(prefix), layer, comp)
    assert best is not None, f"{name} is in no layer: add it to LAYERS in {__file__}"
    return best[1], best[2]


def test_every_import_points_down():
    known = modules()
    wrong = []
    for name, path in sorted(known.items()):
        layer, comp = component(name)
        for target in sorted(imports(name, path, known)):
            to_layer, to_comp = component(target)
            if to_comp != comp and to_layer >= layer:
                wrong.append(f"{name} ({comp}, layer {layer}) imports {target} ({to_comp}, layer {to_layer})")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_no_package_import_cycle():
    """Sub-packages (helios_runtime.engine, helios_runtime.server.front, ...) form no cycle; a
    top-level module (helios_runtime.commands, helios_sdk.client, ...) counts as a node of its own."""
    known = modules()
    folders = {n for n, p in known.items() if p.name == "__init__.py" and "." in n}

    def folder(name: str) -> str:
        parent = name.rpartition(".")[0]
        return name if name in folders or parent not in folders else parent

    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        for target in imports(name, path, known):
            a, b = folder(name), folder(target)
            if a != b and not a.startswith(b + ".") and not b.startswith(a + "."):  # not a parent's init
                graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, "package import cycle: " + " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_check_sees_an_upward_import(tmp_path):
    """The checker itself: an engine module importing the front is reported."""
    path = tmp_path / "probe.py"
    path.write_text("from ..server.front import service\n")
    known = {**modules(), "helios_runtime.engine.probe": path}
    found = imports("helios_runtime.engine.probe", path, known)
    assert found == {"helios_runtime.server.front.service"}
    assert component("helios_runtime.server.front.service")[0] > component("helios_runtime.engine.probe")[0]
