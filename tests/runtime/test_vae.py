"""Our Wan 2.1 VAE against diffusers' AutoencoderKLWan (the parity oracle), on CPU in float32.

Spec: shared/spec/helios-model.md section 6. Each parity config is a diffusers model with seeded
random weights (norm gammas included), saved with diffusers' own save_pretrained and loaded with ours.
"""

from __future__ import annotations

import json

import pytest
import torch

from helios_runtime.model.checkpoint import CheckpointError
from helios_runtime.model.vae import VAE_PRESETS, WanVAE, WanVAEConfig, vae_preset

diffusers = pytest.importorskip("diffusers")
AutoencoderKLWan = diffusers.AutoencoderKLWan

TOL = 1e-5

# Varied widths, depths, latent width and attention placement; all keep the real 4×/8× geometry.
PARITY_CONFIGS = {
    "tiny": dict(base_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
    "wide-z4": dict(
        base_dim=12,
        decoder_base_dim=16,
        z_dim=4,
        dim_mult=[1, 1, 2, 3],
        num_res_blocks=2,
        latents_mean=[0.1, -0.2, 0.3, -0.4],
        latents_std=[1.5, 0.5, 2.0, 1.0],
    ),
}
# diffusers 0.42.1 builds encoder attention for non-empty attn_scales but its encode() then fails
# (the attention block is called with cache arguments it does not take), so this config is checked
# for keys and decode only.
ATTN_CONFIG = dict(base_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[0.5, 0.25])


pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Seeded weights of a realistic scale; gammas away from 1 so a wrong norm would show."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=gen)
        if name.endswith("gamma"):
            param.copy_(1.0 + 0.3 * noise)
        elif param.dim() > 1:
            param.copy_(noise / param[0].numel() ** 0.5)
        else:
            param.copy_(0.05 * noise)


@pytest.fixture(scope="module", params=sorted(PARITY_CONFIGS))
def pair(request, tmp_path_factory):
    """(diffusers model, our model loaded from diffusers' save_pretrained folder, kwargs)."""
    kwargs = PARITY_CONFIGS[request.param]
    torch.manual_seed(0)
    ref = AutoencoderKLWan(**kwargs).eval()
    randomize(ref, seed=1)
    folder = tmp_path_factory.mktemp(f"vae-{request.param}")
    ref.save_pretrained(folder)
    ours = WanVAE.from_pretrained(folder, device="cpu")
    return ref, ours, kwargs


# ---------------------------------------------------------------------------------------------------
# Parity with diffusers
# ---------------------------------------------------------------------------------------------------


def test_encode_mean_and_sample_match_diffusers(pair):
    ref, ours, _ = pair
    video = torch.rand(2, 3, 9, 32, 24, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        dist = ref.encode(video).latent_dist
        want_sample = dist.sample(generator=torch.Generator().manual_seed(7))
    mean = ours.encode(video)
    assert mean.shape == (2, ours.config.z_dim, 3, 4, 3)
    assert rel_err(mean, dist.mean) < TOL
    sample = ours.encode(video, sample=True, generator=torch.Generator().manual_seed(7))
    assert rel_err(sample, want_sample) < TOL
    assert not torch.equal(sample, mean)


def test_single_frame_encode_matches_diffusers(pair):
    ref, ours, _ = pair
    image = torch.rand(1, 3, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        want = ref.encode(image).latent_dist.mean
    assert rel_err(ours.encode(image), want) < TOL


def decode_inputs(z_dim: int, frames: int = 6) -> torch.Tensor:
    return torch.randn(1, z_dim, frames, 3, 4, generator=torch.Generator().manual_seed(4))


def test_decode_matches_diffusers(pair):
    ref, ours, _ = pair
    z = decode_inputs(ours.config.z_dim)
    with torch.no_grad():
        want = ref.decode(z).sample
    got = ours.decode(z)
    assert got.shape == want.shape == (1, 3, 1 + 4 * 5, 24, 32)
    assert rel_err(got, want) < TOL
    # Most values must lie inside the clamp, or the comparison would prove little.
    assert (want.abs() < 1).float().mean() > 0.5
    assert got.min() >= -1 and got.max() <= 1


@pytest.mark.parametrize("groups", [[1] * 6, [1, 3, 2], [4, 2], [6]])
def test_stream_equals_whole_decode_bit_for_bit(pair, groups):
    ref, ours, _ = pair
    z = decode_inputs(ours.config.z_dim)
    whole = ours.decode(z)
    stream = ours.stream_decoder()
    pieces, start = [], 0
    for n in groups:
        out = stream.push(z[:, :, start : start + n])
        # The first latent gives one frame, every later one four, as soon as it is pushed.
        assert out.shape[2] == (1 + 4 * (n - 1) if start == 0 else 4 * n)
        pieces.append(out)
        start += n
    streamed = torch.cat(pieces, dim=2)
    assert torch.equal(streamed, whole)
    with torch.no_grad():
        want = ref.decode(z).sample
    assert rel_err(streamed, want) < TOL
    assert stream.latents_seen == 6 and stream.frames_emitted == 21


def test_diffusers_loads_our_save(pair, tmp_path):
    _, ours, _ = pair
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKLWan"
    back = AutoencoderKLWan.from_pretrained(tmp_path)
    theirs = back.state_dict()
    assert theirs.keys() == ours.state_dict().keys()
    assert all(torch.equal(theirs[k], v) for k, v in ours.state_dict().items())
    assert dict(back.config)["dim_mult"] == list(ours.config.dim_mult)


def test_attn_scales_keys_and_decode_match_diffusers(tmp_path):
    torch.manual_seed(0)
    ref = AutoencoderKLWan(**ATTN_CONFIG).eval()
    randomize(ref, seed=5)
    ref.save_pretrained(tmp_path)
    ours = WanVAE.from_pretrained(tmp_path, device="cpu")
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert sum(k.startswith("encoder.down_blocks.") and k.endswith(".to_qkv.weight") for k in got) == 2
    z = decode_inputs(16, frames=3)
    with torch.no_grad():
        want = ref.decode(z).sample
    assert rel_err(ours.decode(z), want) < TOL
    latents = ours.encode(torch.zeros(1, 3, 5, 16, 16))
    assert latents.shape == (1, 16, 2, 2, 2) and torch.isfinite(latents).all()


def test_wan21_keys_shapes_and_parameter_count_match_diffusers():
    with torch.device("meta"):
        ref = AutoencoderKLWan()
        ours = WanVAE(vae_preset("wan2.1"))
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == want
    assert len(got) == 194
    assert ours.num_parameters() == 126_892_531
    assert WanVAEConfig.from_dict(dict(ref.config)) == vae_preset("wan2.1")


# ---------------------------------------------------------------------------------------------------
# Streaming state
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> WanVAE:
    return WanVAE.from_config("tiny", device="cpu", seed=0)


def test_long_stream_keeps_memory_flat(tiny):
    z = torch.randn(1, 16, 200, 2, 2, generator=torch.Generator().manual_seed(6))
    stream = tiny.stream_decoder()
    for i in range(20):
        stream.push(z[:, :, i : i + 1])
    bytes_20 = stream.cache_nbytes()
    ptrs_20 = [t.data_ptr() for t in stream.cache_tensors()]
    for i in range(20, 200):
        frames = stream.push(z[:, :, i : i + 1])
        assert frames.shape == (1, 3, 4, 16, 16)
    assert bytes_20 > 0
    assert stream.cache_nbytes() == bytes_20
    # The same buffers, updated in place: nothing was reallocated along the way.
    assert [t.data_ptr() for t in stream.cache_tensors()] == ptrs_20
    assert stream.frames_emitted == 1 + 4 * 199


def test_reset_restarts_the_stream(tiny):
    z = torch.randn(1, 16, 3, 2, 3, generator=torch.Generator().manual_seed(8))
    stream = tiny.stream_decoder()
    first = stream.push(z)
    stream.push(torch.randn(1, 16, 2, 2, 3))
    stream.reset()
    assert stream.latents_seen == 0
    assert torch.equal(stream.push(z), first)
    assert torch.equal(first, tiny.decode(z))


def test_stream_rejects_geometry_change_until_reset(tiny):
    stream = tiny.stream_decoder()
    stream.push(torch.zeros(1, 16, 1, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, h, w\) = \(1, 2, 2\).*got \(1, 3, 2\).*reset\(\)"):
        stream.push(torch.zeros(1, 16, 1, 3, 2))
    stream.reset()
    assert stream.push(torch.zeros(2, 16, 1, 3, 2)).shape == (2, 3, 1, 24, 16)


# ---------------------------------------------------------------------------------------------------
# Latent scale, config, construction
# ---------------------------------------------------------------------------------------------------


def test_normalize_denormalize(tiny):
    z = torch.randn(2, 16, 3, 4, 5, generator=torch.Generator().manual_seed(9)) * 3
    cfg = tiny.config
    mean = torch.tensor(cfg.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, 16, 1, 1, 1)
    normed = tiny.normalize(z)
    # The reference pipeline's arithmetic, bit for bit: (z − mean)·(1/std) and z/(1/std) + mean.
    assert torch.equal(normed, (z - mean) * (1.0 / std))
    assert torch.allclose(normed, (z - mean) / std, rtol=1e-6, atol=1e-6)
    assert torch.equal(tiny.denormalize(normed), normed / (1.0 / std) + mean)
    assert torch.allclose(tiny.denormalize(normed), z, rtol=1e-6, atol=1e-5)
    assert tiny.normalize(z.double()).dtype == torch.float64


def test_config_from_dict_and_presets():
    raw = {**vae_preset("tiny").to_dict(), "_name_or_path": "x", "some_future_field": 1}
    raw["decoder_base_dim"] = None
    raw["scale_factor_spatial"] = None
    cfg = WanVAEConfig.from_dict(raw)
    assert cfg == vae_preset("tiny") and cfg.decoder_base_dim == 8
    assert set(VAE_PRESETS) == {"wan2.1", "tiny", "toy"}
    assert cfg.latent_frames(33) == 9 and cfg.pixel_frames(9) == 33
    with pytest.raises(ValueError, match="unknown VAE preset 'huge'"):
        vae_preset("huge")
    with pytest.raises(ValueError, match=r"is_residual=true is the Wan 2\.2 VAE"):
        WanVAEConfig.from_dict({"is_residual": True})
    with pytest.raises(ValueError, match=r"patch_size=2 .* not supported"):
        WanVAEConfig(patch_size=2)
    with pytest.raises(ValueError, match="latents_mean must have z_dim=4 entries, got 16"):
        WanVAEConfig(z_dim=4)
    with pytest.raises(ValueError, match=r"spatial ×4, temporal ×4, but scale_factor_spatial=8"):
        WanVAEConfig(dim_mult=(1, 2, 2), temperal_downsample=(True, True))


def test_from_config_is_deterministic():
    a = WanVAE.from_config("tiny", device="cpu", seed=3)
    b = WanVAE.from_config("tiny", device="cpu", seed=3)
    c = WanVAE.from_config("tiny", device="cpu", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["decoder.conv_in.weight"], sc["decoder.conv_in.weight"])
    assert all(v.device.type == "cpu" for v in sa.values())


def test_bfloat16_round_trip_runs():
    vae = WanVAE.from_config("tiny", device="cpu", dtype=torch.bfloat16)
    video = torch.zeros(1, 3, 5, 16, 16, dtype=torch.bfloat16)
    z = vae.encode(video)
    assert z.dtype == torch.bfloat16 and z.shape == (1, 16, 2, 2, 2)
    out = vae.decode(z)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 3, 5, 16, 16) and torch.isfinite(out).all()


def test_load_takes_a_preset_or_a_folder(tmp_path):
    vae = WanVAE.load("tiny", device="cpu", seed=2)
    vae.save_pretrained(tmp_path)
    back = WanVAE.load(tmp_path, device="cpu")
    assert back.config == vae.config
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in vae.state_dict().items())
    with pytest.raises(CheckpointError, match=r"'nope' is neither a preset \(tiny, toy, wan2\.1\) nor"):
        WanVAE.load("nope")


def test_from_pretrained_rejects_other_models(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "HeliosTransformer3DModel"}))
    with pytest.raises(CheckpointError, match="_class_name='HeliosTransformer3DModel'"):
        WanVAE.from_pretrained(tmp_path, device="cpu")


# ---------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------


def video(t=5, h=16, w=16, c=3, dtype=torch.float32):
    return torch.zeros(1, c, t, h, w, dtype=dtype)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(3, 5, 16, 16), r"5-D video tensor \(B, C, T, H, W\), got 4-D shape \(3, 5, 16, 16\)"),
        (video(c=4), r"C=3 channels \(dim 1\), got shape \(1, 4, 5, 16, 16\)"),
        (video(h=20), r"H and W divisible by 8, got H=20, W=16"),
        (video(w=12), r"H and W divisible by 8, got H=16, W=12"),
        (video(t=6), r"1 \+ 4·k frames .* got T=6"),
        (video(dtype=torch.float64), r"dtype torch.float32, got torch.float64"),
        (video(dtype=torch.int64), r"floating tensor, got torch.int64"),
        (video().fill_(float("nan")), r"contain NaN values"),
        (video().fill_(float("inf")), r"contain inf values"),
        ([0.0], r"torch.Tensor .* got list"),
    ],
)
def test_encode_rejects_bad_input(tiny, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny.encode(bad)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(1, 16, 2, 2), r"5-D latents tensor"),
        (torch.zeros(1, 15, 2, 2, 2), r"C=16 channels \(dim 1\), got shape \(1, 15, 2, 2, 2\)"),
        (torch.zeros(1, 16, 0, 2, 2), r"must not be empty, got shape \(1, 16, 0, 2, 2\)"),
        (torch.full((1, 16, 2, 2, 2), float("-inf")), r"contain inf values"),
        (torch.zeros(1, 16, 1, 2, 2, dtype=torch.bfloat16), r"VAE's dtype torch.float32, got torch.bfloat16"),
    ],
)
def test_decode_and_push_reject_bad_input(tiny, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny.decode(bad)
    stream = tiny.stream_decoder()
    with pytest.raises(ValueError, match=message):
        stream.push(bad)
    assert stream.latents_seen == 0


def test_normalize_rejects_wrong_channels(tiny):
    with pytest.raises(ValueError, match=r"C=16 channels"):
        tiny.normalize(torch.zeros(1, 4, 1, 2, 2))


def test_compiled_norms_and_channels_last_decode_like_the_default(one_thread):
    """The fast path's VAE set-ups (compiled SiLU(norm), channels-last convs) change the layout and
    the fusion, not the numbers (CPU: aot_eager runs the same ops; float32 convs differ in rounding)."""
    vae = WanVAE.from_config("tiny", device="cpu", seed=0).eval()
    z = torch.randn(1, vae.config.z_dim, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = vae.decode(z)
        keys = list(vae.state_dict())
        vae.compile_norms(backend="aot_eager")
        assert torch.equal(vae.decode(z), want)
        vae.compile_decoder(backend="aot_eager")
        assert torch.equal(vae.decode(z), want)
        assert list(vae.state_dict()) == keys, "compiling must not change the checkpoint keys"
        vae.set_memory_format(torch.channels_last_3d)
        stream = vae.stream_decoder()
        got = torch.cat([stream.push(z[:, :, i : i + 1]) for i in range(3)], dim=2)
        vae.set_memory_format(torch.contiguous_format)
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="memory_format"):
        vae.set_memory_format(torch.channels_last)
