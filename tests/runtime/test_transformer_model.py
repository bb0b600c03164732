"""Presets, construction, loading errors and input validation of our HeliosTransformer."""

from __future__ import annotations

import json

import pytest
import torch

from helios_runtime.model.checkpoint import CheckpointError
from helios_runtime.model.config import PRESETS, HeliosConfig, preset
from helios_runtime.model.transformer import HeliosTransformer

from .test_transformer_parity import make_inputs

diffusers = pytest.importorskip("diffusers")
from diffusers import HeliosTransformer3DModel  # noqa: E402

# ---------------------------------------------------------------------------------------------------
# Presets against the oracle, on the meta device
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,count",
    [("14b", 14_312_427_584), ("1.3b", 1_426_177_600)],
)
def test_preset_keys_shapes_and_count_equal_diffusers(name, count):
    cfg = preset(name)
    with torch.device("meta"):
        ours = HeliosTransformer(cfg)
        ref = HeliosTransformer3DModel(**{k: v for k, v in cfg.to_dict().items() if not k.startswith("_")})
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours_shapes == ref_shapes
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters()) == count
    if name == "14b":
        assert len(ours_shapes) == 1101  # spec 4: 21 global + 40 × 27 per block


def test_tiny_preset_is_small_and_complete():
    model = HeliosTransformer.from_config("tiny", device="cpu")
    assert model.num_parameters() < 250_000
    assert {"patch_short.weight", "patch_mid.weight", "patch_long.weight"} <= set(model.state_dict())
    assert set(PRESETS) == {"tiny", "toy", "1.3b", "14b"}
    with torch.device("meta"):
        assert HeliosTransformer(PRESETS["toy"]).num_parameters() < 6_000_000


def test_from_config_is_seeded_and_not_degenerate():
    a = HeliosTransformer.from_config("tiny", device="cpu", seed=1)
    b = HeliosTransformer.from_config("tiny", device="cpu", seed=1)
    c = HeliosTransformer.from_config("tiny", device="cpu", seed=2)
    inputs = make_inputs(1, 2, (4, 4), history=True)
    with torch.no_grad():
        ya, yb, yc = a(**inputs), b(**inputs), c(**inputs)
    assert torch.equal(ya, yb)
    assert not torch.allclose(ya, yc)
    assert ya.std() > 1e-3  # a random model's output depends on its input, not a constant head
    # The history patches start as the base embedding of mean-pooled latents (spec 3.11).
    x = torch.randn(1, 16, 4, 8, 8)
    with torch.no_grad():
        base = a.patch_embedding
        assert torch.equal(a.patch_short(x), base(x))
        assert torch.allclose(a.patch_mid(x), base(torch.nn.functional.avg_pool3d(x, 2)), atol=1e-5)
        assert torch.allclose(a.patch_long(x), base(torch.nn.functional.avg_pool3d(x, 4)), atol=1e-5)


def test_from_config_keeps_fp32_tensors_in_bf16_model():
    model = HeliosTransformer.from_config("tiny", device="cpu", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model.blocks[0].scale_shift_table.dtype == torch.float32
    assert model.norm_out.scale_shift_table.dtype == torch.float32
    assert model.blocks[0].norm2.weight.dtype == torch.float32
    assert model.blocks[0].attn1.norm_q.weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = model(**make_inputs(1, 2, (4, 4), history=True))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_config_round_trip_keeps_unknown_fields():
    cfg = HeliosConfig.from_dict({**preset("tiny").to_dict(), "image_dim": None, "restrict_lora_rank": 128})
    assert cfg == preset("tiny")
    assert cfg.to_dict()["restrict_lora_rank"] == 128


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(rope_dim=(4, 6, 4)), "rope_dim"),
        (dict(rope_dim=(5, 5, 6)), "rope_dim"),
        (dict(history_scale_mode="both"), "history_scale_mode"),
        (dict(out_channels=8), "out_channels"),
        (dict(patch_size=(1, 2)), "patch_size"),
        (dict(freq_dim=33), "freq_dim"),
    ],
)
def test_bad_config_is_a_clear_error(changes, match):
    with pytest.raises(ValueError, match=match):
        preset("tiny").replace(**changes)


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown Helios preset 'huge'.*14b"):
        HeliosTransformer.from_config("huge")


# ---------------------------------------------------------------------------------------------------
# Folders that are not Helios checkpoints
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    HeliosTransformer.from_config("tiny", device="cpu").save_pretrained(tmp_path / "ok")
    return tmp_path / "ok"


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        HeliosTransformer.from_pretrained(tmp_path / "nope")


def test_file_instead_of_folder(tmp_path):
    (tmp_path / "f.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="must be a folder"):
        HeliosTransformer.from_pretrained(tmp_path / "f.safetensors")


def test_pipeline_root_gets_a_hint(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="transformer/ or vae/"):
        HeliosTransformer.from_pretrained(tmp_path)


def test_wrong_class(tmp_path, saved):
    cfg = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**cfg, "_class_name": "WanTransformer3DModel"}))
    with pytest.raises(CheckpointError, match=r"not a Helios transformer checkpoint.*WanTransformer3DModel"):
        HeliosTransformer.from_pretrained(saved)


def test_broken_json(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        HeliosTransformer.from_pretrained(saved)


def test_no_weights(saved):
    (saved / "diffusion_pytorch_model.safetensors").unlink()
    (saved / "diffusion_pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"only safetensors are supported"):
        HeliosTransformer.from_pretrained(saved)


def test_config_weights_mismatch_names_the_keys(saved):
    cfg = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**cfg, "num_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.2\."):
        HeliosTransformer.from_pretrained(saved)
    (saved / "config.json").write_text(json.dumps({**cfg, "num_layers": 1}))
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks\.1\."):
        HeliosTransformer.from_pretrained(saved)
    (saved / "config.json").write_text(json.dumps({**cfg, "ffn_dim": 32}))
    with pytest.raises(CheckpointError, match=r"ffn\.net\.0\.proj\.weight' has shape \(64, 32\).*\(32, 32\)"):
        HeliosTransformer.from_pretrained(saved)


def test_missing_shard_is_named(tmp_path):
    model = HeliosTransformer.from_config("tiny", device="cpu")
    model.save_pretrained(tmp_path, max_shard_bytes=30_000)
    shard = sorted(tmp_path.glob("*-of-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        HeliosTransformer.from_pretrained(tmp_path)


def test_restrict_self_attn_is_refused(saved):
    cfg = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**cfg, "restrict_self_attn": True}))
    with pytest.raises(CheckpointError, match="restrict_self_attn"):
        HeliosTransformer.from_pretrained(saved)


def test_legacy_and_unused_keys_are_tolerated(tmp_path):
    """Old official checkpoints call norm_out's table `scale_shift_table`; Wan image keys are unused."""
    from safetensors.torch import load_file, save_file

    model = HeliosTransformer.from_config("tiny", device="cpu", seed=3)
    model.save_pretrained(tmp_path)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state["scale_shift_table"] = state.pop("norm_out.scale_shift_table")
    state["blocks.0.attn2.norm_added_q.weight"] = torch.ones(32)
    save_file(state, path)
    again = HeliosTransformer.from_pretrained(tmp_path, device="cpu")
    assert torch.equal(again.norm_out.scale_shift_table, model.norm_out.scale_shift_table)


# ---------------------------------------------------------------------------------------------------
# Bad inputs to forward
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return HeliosTransformer.from_config("tiny", device="cpu")


def _call(model, **changes):
    inputs = make_inputs(2, 3, (4, 6), history=True)
    inputs.update(changes)
    inputs = {k: v for k, v in inputs.items() if v is not None or k not in changes}
    with torch.no_grad():
        return model(**inputs)


@pytest.mark.parametrize(
    "changes,match",
    [
        (
            dict(hidden_states=torch.randn(2, 16, 4, 6)),
            r"hidden_states must be \(B, 16, T, H, W\), got \(2, 16, 4, 6\)",
        ),
        (dict(hidden_states=torch.randn(2, 8, 3, 4, 6)), r"hidden_states must be \(B, 16"),
        (dict(hidden_states=torch.randn(2, 16, 3, 5, 6)), "divisible by the patch size"),
        (dict(hidden_states=torch.zeros(2, 16, 3, 4, 6, dtype=torch.long)), "floating"),
        (dict(encoder_hidden_states=torch.randn(2, 7, 31)), r"encoder_hidden_states must be \(2, K, 32\)"),
        (dict(encoder_hidden_states=torch.randn(1, 7, 32)), r"encoder_hidden_states must be \(2, K, 32\)"),
        (dict(timestep=torch.rand(3)), r"timestep must be a scalar or have shape \(2,\)"),
        (dict(latents_history_mid=None), r"all-or-none.*latents_history_mid"),
        (dict(indices_latents_history_long=None), r"all-or-none.*indices_latents_history_long"),
        (dict(indices_hidden_states=None), "indices_hidden_states is required"),
        (
            dict(indices_hidden_states=torch.arange(4).expand(2, 4)),
            r"indices_hidden_states must have shape \(2, 3\)",
        ),
        (
            dict(indices_latents_history_mid=torch.arange(3).expand(2, 3)),
            r"indices_latents_history_mid.*\(2, 2\)",
        ),
        (
            dict(latents_history_long=torch.randn(2, 16, 16, 8, 10)),
            r"latents_history_long has \(H, W\) = \(8, 10\)",
        ),
        (dict(latents_history_short=torch.randn(2, 16, 2, 7, 12)), "divisible by the patch"),
        (dict(latents_history_short=torch.randn(1, 16, 2, 8, 12)), r"latents_history_short must be \(2, 16"),
    ],
)
def test_bad_forward_input_is_a_clear_error(tiny, changes, match):
    with pytest.raises(ValueError, match=match):
        _call(tiny, **changes)


def test_history_on_a_model_without_memory_patch():
    model = HeliosTransformer.from_config(
        preset("tiny").replace(has_multi_term_memory_patch=False), device="cpu"
    )
    with pytest.raises(ValueError, match="no multi-term memory patch"):
        _call(model)
    with torch.no_grad():
        out = model(**make_inputs(1, 2, (4, 4), history=False))
    assert out.shape == (1, 16, 2, 4, 4)


def test_to_dtype_equals_loading_in_that_dtype(tmp_path):
    model = HeliosTransformer.from_config("tiny", device="cpu", seed=4)
    model.save_pretrained(tmp_path)
    loaded = HeliosTransformer.from_pretrained(tmp_path, device="cpu", dtype=torch.bfloat16)
    model.to_dtype(torch.bfloat16)
    assert {k: v.dtype for k, v in model.state_dict().items()} == {
        k: v.dtype for k, v in loaded.state_dict().items()
    }
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


def test_action_embedding_starts_harmless_then_conditions(tmp_path):
    """num_actions > 0 adds a zero-initialised embedding: the same seed gives the action-free model's
    output until it is trained; then actions change the prediction. It round-trips through
    save_pretrained, and released-style configs (num_actions 0) never mention it."""
    cfg = preset("tiny")
    plain = HeliosTransformer.from_config(cfg, device="cpu", seed=4)
    acting = HeliosTransformer.from_config(cfg.replace(num_actions=9), device="cpu", seed=4)
    kw = make_inputs(batch=2, frames=2, size=(4, 4), history=True, seed=0)
    with torch.no_grad():
        want = plain(**kw)
        assert torch.equal(acting(**kw, action=torch.tensor([3, 8])), want)
        acting.action_embedder.weight.normal_(0.0, 1.0)
        moved = acting(**kw, action=torch.tensor([3, 8]))
        assert not torch.allclose(moved, want)
        assert not torch.allclose(acting(**kw, action=torch.tensor([4, 8]))[0], moved[0])
        assert torch.equal(acting(**kw, action=torch.tensor([4, 8]))[1], moved[1]), "per-row actions"
    with pytest.raises(ValueError, match="no action conditioning"):
        plain(**kw, action=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"in \[0, 9\)"):
        acting(**kw, action=torch.tensor([0, 9]))
    with pytest.raises(ValueError, match=r"or -1 \(no action\)"):
        acting(**kw, action=torch.tensor([0, -2]))
    # -1 is "no action": that row is the action-free model's, the other keeps its action.
    mixed = acting(**kw, action=torch.tensor([-1, 8]))
    assert torch.equal(mixed[0], want[0]) and torch.equal(mixed[1], moved[1])
    with pytest.raises(ValueError, match="integer tensor of shape"):
        acting(**kw, action=torch.tensor([0.0, 1.0]))
    assert "num_actions" not in plain.config.to_dict()
    acting.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["num_actions"] == 9
    loaded = HeliosTransformer.from_pretrained(tmp_path, device="cpu")
    assert torch.equal(loaded.action_embedder.weight, acting.action_embedder.weight)
