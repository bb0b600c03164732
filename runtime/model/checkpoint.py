"""Reading and writing diffusers-format model folders (config.json + safetensors).

One loader for every model of the runtime (transformer, VAE, ...). The module is built on the meta
device, then each tensor is read from its safetensors file straight onto the target device and
assigned in place, so a 14B checkpoint never exists twice, and never as a whole on the CPU when the
target is a GPU. A folder holds either one `<stem>.safetensors` or shards
`<stem>-0000i-of-0000n.safetensors` with `<stem>.safetensors.index.json` (the diffusers layout).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..configfile import CheckpointError, read_json_object

WEIGHTS_STEM = "diffusion_pytorch_model"


def read_config(folder: str | Path, expected_classes: Iterable[str], what: str) -> dict:
    """Read `folder/config.json` and check its `_class_name` is one of `expected_classes`."""
    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(f"{what} folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise CheckpointError(
            f"{what} checkpoint must be a folder (diffusers format), got the file {str(folder)!r}"
        )
    path = folder / "config.json"
    if not path.is_file():
        hint = ""
        if (folder / "model_index.json").is_file():
            hint = " (this looks like a whole pipeline folder: point at its transformer/ or vae/ sub-folder)"
        raise CheckpointError(f"{str(folder)!r} is not a {what} checkpoint: it has no config.json{hint}")
    config = read_json_object(path)
    expected = list(expected_classes)
    found = config.get("_class_name")
    if found not in expected:
        raise CheckpointError(
            f"{str(folder)!r} is not a {what} checkpoint: config.json has _class_name={found!r}, "
            f"expected one of {expected}"
        )
    return config


def write_config(folder: str | Path, config: Mapping) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------


def weight_files(folder: str | Path, stem: str = WEIGHTS_STEM) -> dict[str, Path]:
    """Map every tensor name of the checkpoint to the safetensors file that holds it."""
    from safetensors import safe_open

    folder = Path(folder)
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{str(index)!r} is not a safetensors index (no weight_map): {exc}"
            ) from exc
        files = {name: folder / shard for name, shard in weight_map.items()}
        missing = sorted({str(p.name) for p in files.values() if not p.is_file()})
        if missing:
            raise CheckpointError(f"{str(index)!r} names shard files that are not in the folder: {missing}")
        return files
    if single.is_file():
        with safe_open(str(single), framework="pt") as f:
            return dict.fromkeys(f.keys(), single)
    others = sorted(p.name for p in folder.glob(f"{stem}*"))
    raise CheckpointError(
        f"{str(folder)!r} has no {stem}.safetensors and no {stem}.safetensors.index.json"
        + (f" (found {others}; only safetensors are supported)" if others else "")
    )


def _summarise(names: Iterable[str], limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


_ALIGN = 64  # bytes: the alignment of torch's CPU allocations


def load_weights(
    module: nn.Module,
    folder: str | Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    keep_fp32: Callable[[str], bool] = lambda name: False,
    rename: Callable[[str], str | None] = lambda name: name,
    stem: str = WEIGHTS_STEM,
) -> None:
    """Fill a meta-device `module` with the folder's tensors, each read directly onto `device`.

    Floating tensors are cast to `dtype`, or to float32 where `keep_fp32(name)`; `rename` maps a
    stored name to the module's name, or to None to skip a tensor the model does not use. Any key the
    module expects but the folder lacks, any unused key and any shape mismatch is a CheckpointError.
    """
    from safetensors import safe_open

    files = weight_files(folder, stem)
    expected = dict(module.state_dict(keep_vars=True))
    by_file: dict[Path, list[tuple[str, str]]] = {}
    unexpected = []
    for stored, path in files.items():
        name = rename(stored)
        if name is None:
            continue
        if name not in expected:
            unexpected.append(stored)
            continue
        by_file.setdefault(path, []).append((stored, name))
    loaded = {name for pairs in by_file.values() for _, name in pairs}
    missing = set(expected) - loaded
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_summarise(unexpected)}")
        raise CheckpointError(f"{str(folder)!r} does not match the model config: " + "; ".join(parts))

    # Check every shape from the file headers before reading a byte of tensor data.
    wrong = []
    for path, pairs in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            for stored, name in pairs:
                have, want = tuple(f.get_slice(stored).get_shape()), tuple(expected[name].shape)
                if have != want:
                    wrong.append(f"{stored!r} has shape {have}, the model config expects {want}")
    if wrong:
        raise CheckpointError(
            f"{str(folder)!r} does not match the model config: " + "; ".join(sorted(wrong)[:8])
        )

    state: dict[str, torch.Tensor] = {}
    # safetensors wants a plain device string such as "cpu" or "cuda:0".
    target = str(device) if device.type != "cuda" or device.index is not None else "cuda:0"
    for path, pairs in by_file.items():
        with safe_open(str(path), framework="pt", device=target) as f:
            for stored, name in pairs:
                tensor = f.get_tensor(stored)
                if tensor.is_floating_point():
                    tensor = tensor.to(torch.float32 if keep_fp32(name) else dtype)
                if tensor.device.type == "cpu" and tensor.data_ptr() % _ALIGN:
                    # Read at the file's offsets: the CPU math libraries may take another (equally
                    # right, not bit-identical) path on unaligned memory; torch's allocator aligns.
                    tensor = tensor.clone()
                state[name] = tensor
    module.load_state_dict(state, strict=True, assign=True)


def save_weights(
    state: Mapping[str, torch.Tensor],
    folder: str | Path,
    *,
    stem: str = WEIGHTS_STEM,
    max_shard_bytes: int | None = 10 * 1024**3,
) -> list[Path]:
    """Write tensors as one safetensors file, or as diffusers-style shards plus an index json."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    sizes = {k: v.numel() * v.element_size() for k, v in tensors.items()}
    total = sum(sizes.values())
    shards: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    for name, tensor in tensors.items():
        if max_shard_bytes is not None and shards[-1] and used + sizes[name] > max_shard_bytes:
            shards.append({})
            used = 0
        shards[-1][name] = tensor
        used += sizes[name]
    for stale in folder.glob(f"{stem}*.safetensors*"):
        stale.unlink()
    if len(shards) == 1:
        path = folder / f"{stem}.safetensors"
        save_file(tensors, str(path), metadata={"format": "pt"})
        return [path]
    n = len(shards)
    digits = max(5, int(math.log10(n)) + 1)
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        path = folder / f"{stem}-{i:0{digits}d}-of-{n:0{digits}d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, path.name))
        paths.append(path)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return paths


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None means the first GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
