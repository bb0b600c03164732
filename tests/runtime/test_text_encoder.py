"""Text encoders (runtime/model/text_encoder.py, spec 7 and 5.11).

The umT5 parity oracle is diffusers' HeliosPipeline.encode_prompt, run on a randomly initialised tiny
UMT5EncoderModel and a sentencepiece tokenizer trained here from a few sentences: nothing is
downloaded. The reference raises NameError when ftfy is missing; the tests then give it the identity
`fix_text`, which is what our encoder documents doing without ftfy.
"""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helios_runtime.model import text_encoder as te
from helios_runtime.model.checkpoint import CheckpointError
from helios_runtime.model.text_encoder import (
    BuiltinTextEncoder,
    BuiltinTextEncoderConfig,
    PromptCache,
    TextEncoder,
    TextEncoding,
    UMT5TextEncoder,
    blend,
    clean_prompt,
    interpolate,
    interpolation_weights,
)

N_UMT5 = 512
SENTENCES = [
    "A cat and a dog baking a cake together in a kitchen.",
    "The cat is carefully measuring flour, while the dog is stirring the batter with a wooden spoon.",
    "The kitchen is cozy, with sunlight streaming through the window.",
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images.",
    "A red car drives along a coastal road at sunset, waves crash on the rocks below.",
    "Ein Hund läuft über die Wiese. Un chat dort sur le canapé. 猫が寝ている。",
]
LONG_PROMPT = " ".join(SENTENCES * 12)  # far beyond 512 tokens
PROMPTS = [
    "A cat and a dog baking a cake.",
    "",
    "  The kitchen &amp;amp; the\n\t window   ",
    "Ein Hund läuft über die Wiese 猫",
    "“Curly” quotes and a ﬁne ligature",  # changed by ftfy.fix_text when it is installed
    LONG_PROMPT,
]


# ---------------------------------------------------------------------------------------------------
# Fixtures: a tiny umT5 pipeline folder built locally, and the diffusers reference on it
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def umt5_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline-shaped folder: text_encoder/ (random tiny UMT5EncoderModel) and tokenizer/."""
    transformers = pytest.importorskip("transformers")
    spm = pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp("umt5")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20),
        model_writer=proto,
        vocab_size=100,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    transformers.T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(root / "tokenizer")
    config = transformers.UMT5Config(
        vocab_size=256,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    torch.manual_seed(0)
    transformers.UMT5EncoderModel(config).save_pretrained(root / "text_encoder")
    return root


@pytest.fixture
def reference_module(monkeypatch: pytest.MonkeyPatch):
    module = pytest.importorskip("diffusers.pipelines.helios.pipeline_helios")
    if not te.ftfy_available():
        monkeypatch.setattr(module, "ftfy", SimpleNamespace(fix_text=lambda s: s), raising=False)
    return module


def reference_pipeline(module, tokenizer, model):
    """The diffusers Helios pipeline with only the text components: encode_prompt needs no more."""
    return module.HeliosPipeline(
        tokenizer=tokenizer, text_encoder=model, vae=None, scheduler=None, transformer=None
    )


def reference_encode(pipe, prompts: list[str], **kwargs) -> torch.Tensor:
    """Prompt embeddings as HeliosPipeline.__call__ computes them (under no_grad, where the CPU kernels
    differ from grad mode in the last bits)."""
    kwargs.setdefault("do_classifier_free_guidance", False)
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(
            prompts, max_sequence_length=N_UMT5, device=torch.device("cpu"), **kwargs
        )
    return negative if kwargs["do_classifier_free_guidance"] else embeds


@pytest.fixture
def umt5(umt5_root: Path) -> UMT5TextEncoder:
    return UMT5TextEncoder.from_pretrained(umt5_root, device="cpu", dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------
# umT5: parity with the reference
# ---------------------------------------------------------------------------------------------------


def test_umt5_matches_reference_loaded_independently(umt5, umt5_root, reference_module):
    from transformers import AutoTokenizer, UMT5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(str(umt5_root / "tokenizer"), local_files_only=True)
    model = UMT5EncoderModel.from_pretrained(
        str(umt5_root / "text_encoder"), local_files_only=True, dtype=torch.float32
    ).eval()
    expected = reference_encode(reference_pipeline(reference_module, tokenizer, model), PROMPTS)
    got = umt5.encode(PROMPTS)
    assert got.shape == (len(PROMPTS), N_UMT5, 32) and got.dtype == torch.float32
    assert torch.equal(got, expected), (got - expected).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_umt5_matches_reference_on_the_same_objects(umt5_root, reference_module, dtype):
    ours = UMT5TextEncoder.from_pretrained(umt5_root, device="cpu", dtype=dtype)
    expected = reference_encode(reference_pipeline(reference_module, ours.tokenizer, ours.model), PROMPTS)
    got = ours.encode(PROMPTS)
    assert got.dtype == dtype == expected.dtype
    assert torch.equal(got, expected)


def test_umt5_negative_prompt_is_the_encoded_empty_string(umt5, reference_module):
    pipe = reference_pipeline(reference_module, umt5.tokenizer, umt5.model)
    negative = reference_encode(pipe, ["a cat"], do_classifier_free_guidance=True)
    empty = umt5.encode_detailed([""])
    assert torch.equal(empty.embeddings, negative)
    assert empty.lengths == [1]  # "" is encoded as the end-of-sequence token alone, as in the reference


def test_umt5_rows_past_the_tokens_are_exactly_zero(umt5):
    out = umt5.encode_detailed(PROMPTS)
    expected_lengths = [
        min(len(umt5.tokenizer(clean_prompt(p, use_ftfy=umt5.uses_ftfy)).input_ids), N_UMT5) for p in PROMPTS
    ]
    assert out.lengths == expected_lengths
    for row, length in zip(out.embeddings, out.lengths, strict=True):
        assert (row[:length].abs().sum(-1) > 0).all()
        tail = row[length:]
        assert torch.equal(tail, torch.zeros_like(tail))
        assert not torch.signbit(tail).any()  # +0.0, not -0.0 from a multiplication by the mask


def test_umt5_truncates_at_512_tokens_and_says_so(umt5, reference_module, caplog):
    counts = {k: len(umt5.tokenizer(" ".join(["a"] * k)).input_ids) for k in (509, 510, 511, 512, 700)}
    assert N_UMT5 in counts.values(), counts  # the boundary itself is exercised
    prompts = [" ".join(["a"] * k) for k in counts]
    with caplog.at_level(logging.WARNING, logger=te.__name__):
        out = umt5.encode_detailed(prompts)
    assert out.truncated == [n > N_UMT5 for n in counts.values()]
    assert out.lengths == [min(n, N_UMT5) for n in counts.values()]
    assert sum("tail is dropped" in r.getMessage() for r in caplog.records) == sum(out.truncated)
    pipe = reference_pipeline(reference_module, umt5.tokenizer, umt5.model)
    assert torch.equal(out.embeddings, reference_encode(pipe, prompts))


def test_umt5_without_ftfy_warns_and_is_named_apart(umt5, reference_module, monkeypatch, caplog):
    monkeypatch.setattr(te, "_ftfy_module", lambda: None)
    monkeypatch.setattr(reference_module, "ftfy", SimpleNamespace(fix_text=lambda s: s), raising=False)
    with caplog.at_level(logging.WARNING, logger=te.__name__):
        plain = UMT5TextEncoder(umt5.model, umt5.tokenizer)
    assert any("ftfy is not installed" in r.getMessage() for r in caplog.records)
    assert not plain.uses_ftfy and plain.name.endswith(":noftfy")
    pipe = reference_pipeline(reference_module, umt5.tokenizer, umt5.model)
    assert torch.equal(plain.encode(PROMPTS[:3]), reference_encode(pipe, PROMPTS[:3]))


def test_clean_prompt_matches_reference(reference_module):
    texts = [
        "  plain   prompt ",
        "&amp;amp;lt;b&amp;gt; tags &quot;quoted&quot;",
        "tabs\tand\nnew\r\nlines\u2028and\u3000ideographic\xa0spaces",
        "\x1cfile separators\x1f are not regex whitespace\x1d",
        "“curly” ﬁne ＡＢＣ cafÃ©",
        "",
        " \n\t ",
    ]
    use_ftfy = te.ftfy_available()
    assert [clean_prompt(t, use_ftfy=use_ftfy) for t in texts] == [
        reference_module.prompt_clean(t) for t in texts
    ]


def test_whitespace_class_is_regex_backslash_s():
    regex = pytest.importorskip("regex")
    everything = "".join(map(chr, range(sys.maxunicode + 1)))
    ours = te.re.compile(te._WHITESPACE_RUN.pattern.removesuffix("+"))
    assert [m.start() for m in ours.finditer(everything)] == [
        m.start() for m in regex.finditer(r"\s", everything)
    ]


def test_umt5_cached_embeddings_equal_direct_ones(umt5):
    cache = PromptCache(max_entries=8)
    prompts = [PROMPTS[0], "", PROMPTS[0]]
    first = cache.get(umt5, prompts)
    again = cache.get(umt5, prompts[:2])
    assert torch.equal(first, umt5.encode(prompts)) and torch.equal(again, first[:2])
    assert (cache.misses, cache.hits) == (2, 3)


# ---------------------------------------------------------------------------------------------------
# umT5: loading
# ---------------------------------------------------------------------------------------------------


def test_umt5_loads_from_root_encoder_folder_or_explicit_tokenizer(umt5, umt5_root):
    by_folder = UMT5TextEncoder.from_pretrained(umt5_root / "text_encoder", device="cpu", dtype=torch.float32)
    explicit = UMT5TextEncoder.from_pretrained(
        str(umt5_root / "text_encoder"), str(umt5_root / "tokenizer"), device="cpu", dtype=torch.float32
    )
    assert umt5.name == by_folder.name == explicit.name
    assert str((umt5_root / "text_encoder").resolve()) in umt5.name and ":float32:512" in umt5.name
    assert (umt5.dim, umt5.max_tokens, umt5.dtype) == (32, 512, torch.float32)
    assert umt5.device == torch.device("cpu")
    assert torch.equal(by_folder.encode(PROMPTS[:2]), explicit.encode(PROMPTS[:2]))


def test_umt5_dtype_is_part_of_the_name_and_of_the_output(umt5_root, umt5):
    half = UMT5TextEncoder.from_pretrained(umt5_root, device="cpu", dtype=torch.bfloat16)
    out = half.encode(PROMPTS[:2])
    assert out.dtype == torch.bfloat16 and half.name != umt5.name
    assert torch.allclose(out.float(), umt5.encode(PROMPTS[:2]), atol=0.1)


def test_umt5_bad_folders_say_what_is_wrong(umt5_root, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        UMT5TextEncoder.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        UMT5TextEncoder.from_pretrained(tmp_path / "empty", tmp_path / "empty")
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text('{"model_type": "t5"}')
    with pytest.raises(CheckpointError, match="model_type='t5'"):
        UMT5TextEncoder.from_pretrained(t5, umt5_root / "tokenizer")
    lonely = tmp_path / "lonely" / "text_encoder"
    lonely.mkdir(parents=True)
    (lonely / "config.json").write_text('{"model_type": "umt5"}')
    with pytest.raises(CheckpointError, match="holds no tokenizer"):
        UMT5TextEncoder.from_pretrained(lonely)


def test_umt5_without_transformers_names_the_extra(umt5_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"helios-world-sdk\[hf\]"):
        UMT5TextEncoder.from_pretrained(umt5_root)


# ---------------------------------------------------------------------------------------------------
# Input checking (shared by every encoder)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def builtin() -> BuiltinTextEncoder:
    return BuiltinTextEncoder(device="cpu")


@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        ("a cat", "single str"),
        ([None], r"prompts\[0\] must be a str, got NoneType"),
        (["ok", 3], r"prompts\[1\] must be a str, got int"),
        ([b"bytes"], "got bytes"),
        (None, "got NoneType"),
    ],
)
def test_bad_prompts_are_type_errors(builtin, prompts, match):
    with pytest.raises(TypeError, match=match):
        builtin.encode(prompts)
    with pytest.raises(TypeError, match=match):
        PromptCache().get(builtin, prompts)


def test_no_prompts_give_an_empty_batch(builtin):
    assert builtin.encode([]).shape == (0, builtin.max_tokens, builtin.dim)
    assert PromptCache().get(builtin, []).shape == (0, builtin.max_tokens, builtin.dim)


# ---------------------------------------------------------------------------------------------------
# Built-in encoder
# ---------------------------------------------------------------------------------------------------


def test_builtin_is_deterministic_and_batch_independent(builtin):
    other = BuiltinTextEncoder(BuiltinTextEncoderConfig(), device="cpu")
    prompts = ["a cat", "a dog", "", "a cat"]
    out = builtin.encode(prompts)
    assert other.name == builtin.name
    assert torch.equal(out, other.encode(prompts))
    assert torch.equal(out[0], out[3])
    assert torch.equal(builtin.encode(["a cat"])[0], out[0])
    assert not torch.equal(out[0], out[1]) and (out[0] - out[1]).abs().max() > 1e-2


def test_builtin_contract(builtin):
    assert isinstance(builtin, TextEncoder)
    assert (builtin.dim, builtin.max_tokens) == (32, 64)
    n = builtin.max_tokens
    prompts = ["", "  a   cat ", "é" * 40, "x" * (n - 1), "x" * n]
    out = builtin.encode_detailed(prompts)
    assert isinstance(out, TextEncoding) and out.embeddings.shape == (5, n, 32)
    assert out.lengths == [1, 6, n, n, n]  # "a cat" + EOS; é is two UTF-8 bytes
    assert out.truncated == [False, False, True, False, True]
    for row, length in zip(out.embeddings, out.lengths, strict=True):
        assert (row[:length].abs().sum(-1) > 0).all()
        assert torch.equal(row[length:], torch.zeros_like(row[length:]))
    assert torch.equal(builtin.encode(["a cat"]), out.embeddings[1:2])  # whitespace is cleaned


def test_builtin_seed_and_dim_change_the_encoder():
    base = BuiltinTextEncoder(device="cpu")
    reseeded = BuiltinTextEncoder(BuiltinTextEncoderConfig(seed=1), device="cpu")
    wide = BuiltinTextEncoder(BuiltinTextEncoderConfig(dim=48, num_heads=4, max_tokens=16), device="cpu")
    assert len({base.name, reseeded.name, wide.name}) == 3
    assert not torch.equal(base.encode(["a cat"]), reseeded.encode(["a cat"]))
    assert wide.encode(["a cat"]).shape == (1, 16, 48)


def test_builtin_save_load_round_trip(builtin, tmp_path):
    builtin.save_pretrained(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["config.json", "model.safetensors"]
    loaded = BuiltinTextEncoder.from_pretrained(tmp_path / "enc", device="cpu")
    assert loaded.config == builtin.config and loaded.name == builtin.name
    prompts = ["a cat", "", "Ein Hund 猫"]
    assert torch.equal(loaded.encode(prompts), builtin.encode(prompts))
    # Trained weights are a different function: the name follows the weights, not the config.
    with torch.no_grad():
        loaded.net.norm_out.weight.mul_(2)
    loaded.save_pretrained(tmp_path / "trained")
    trained = BuiltinTextEncoder.from_pretrained(tmp_path / "trained", device="cpu")
    assert trained.name != builtin.name
    half = BuiltinTextEncoder.from_pretrained(tmp_path / "enc", device="cpu", dtype=torch.bfloat16)
    assert half.encode(prompts).dtype == torch.bfloat16 and half.name != builtin.name


def test_builtin_bad_config_and_folder(tmp_path):
    with pytest.raises(ValueError, match="not divisible"):
        BuiltinTextEncoderConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="max_tokens"):
        BuiltinTextEncoderConfig(max_tokens=1)
    with pytest.raises(ValueError, match="unknown builtin"):
        BuiltinTextEncoder.preset("huge")
    assert BuiltinTextEncoder.preset("tiny", device="cpu").dim == 32
    (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderKLWan"}')
    with pytest.raises(CheckpointError, match="_class_name"):
        BuiltinTextEncoder.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------
# Prompt cache
# ---------------------------------------------------------------------------------------------------


class CountingEncoder(TextEncoder):
    """Embeds each prompt as a constant row derived from its hash and the encoder's offset."""

    def __init__(self, name: str, offset: float = 0.0):
        self.name, self.dim, self.max_tokens, self.offset = name, 4, 3, offset
        self.calls: list[list[str]] = []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def _encode(self, prompts: list[str]) -> TextEncoding:
        self.calls.append(prompts)
        values = torch.tensor([hash(p) % 1000 + self.offset for p in prompts], dtype=torch.float32)
        return TextEncoding(
            values[:, None, None].expand(-1, 3, 4).clone(), [3] * len(prompts), [False] * len(prompts)
        )


def test_cache_batches_misses_and_counts():
    enc = CountingEncoder("a")
    cache = PromptCache(max_entries=10)
    out = cache.get(enc, ["x", "y", "x", "z"])
    assert enc.calls == [["x", "y", "z"]]
    assert (cache.misses, cache.hits, len(cache)) == (3, 1, 3)
    assert torch.equal(out, enc.encode(["x", "y", "x", "z"]))
    cache.get(enc, ["z", "w", "x"])
    assert enc.calls[-1] == ["w"]
    assert (cache.misses, cache.hits) == (4, 3)
    out[:] = -1  # the result is a copy
    assert torch.equal(cache.get(enc, ["x"]), enc.encode(["x"]))


def test_cache_max_batch_splits_the_misses():
    enc = CountingEncoder("a")
    cache = PromptCache(max_batch=2)
    out = cache.get(enc, ["p1", "p2", "p1", "p3", "p4", "p5"])
    assert enc.calls == [["p1", "p2"], ["p3", "p4"], ["p5"]]
    assert torch.equal(out, enc.encode(["p1", "p2", "p1", "p3", "p4", "p5"]))
    with pytest.raises(ValueError, match="max_batch"):
        PromptCache(max_batch=0)


def test_cache_evicts_least_recently_used():
    enc = CountingEncoder("a")
    cache = PromptCache(max_entries=2)
    cache.get(enc, ["p1"])
    cache.get(enc, ["p2"])
    cache.get(enc, ["p1"])  # p1 becomes the most recent
    cache.get(enc, ["p3"])  # evicts p2
    assert ("a", "p1") in cache and ("a", "p3") in cache and ("a", "p2") not in cache
    # A request with more misses than room still returns all of them, and keeps the last ones.
    out = cache.get(enc, ["q1", "q2", "q3"])
    assert out.shape == (3, 3, 4) and len(cache) == 2 and ("a", "q3") in cache


def test_cache_key_includes_the_encoder_name():
    first, second = CountingEncoder("a"), CountingEncoder("b", offset=0.5)
    cache = PromptCache()
    a = cache.get(first, ["same"])
    b = cache.get(second, ["same"])
    assert cache.misses == 2 and len(cache) == 2 and not torch.equal(a, b)
    assert torch.equal(cache.get(first, ["same"]), a) and cache.hits == 1


def test_cache_byte_bound():
    enc = CountingEncoder("a")
    row_bytes = 3 * 4 * 4
    cache = PromptCache(max_entries=100, max_bytes=2 * row_bytes)
    cache.get(enc, ["p1", "p2", "p3"])
    assert len(cache) == 2 and cache.nbytes == 2 * row_bytes
    tiny = PromptCache(max_bytes=row_bytes - 1)  # nothing fits: served, never stored
    assert tiny.get(enc, ["p1"]).shape == (1, 3, 4) and len(tiny) == 0
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0
    with pytest.raises(ValueError, match="max_entries"):
        PromptCache(max_entries=0)


# ---------------------------------------------------------------------------------------------------
# Interpolation and blending (spec 5.11)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interpolate_is_the_reference_lerp(builtin, dtype):
    a, b = builtin.encode(["a cat", "a dog on a long walk"]).to(dtype).split(1)  # (1, N, D) each
    # The reference: torch.lerp with linspace(0, 1, steps) weights cast to the embeddings' dtype.
    steps = 3
    ref = torch.lerp(a, b, torch.linspace(0, 1, steps=steps)[:, None, None].to(a)).chunk(steps)
    weights = interpolation_weights(steps)
    assert weights == [0.0, 0.5, 1.0]
    for w, expected in zip(weights, ref, strict=True):
        assert torch.equal(interpolate(a, b, w), expected)
    assert torch.equal(interpolate(a, b, 0), a) and torch.equal(interpolate(a, b, 1.0), b)
    mid = interpolate(a, b, 0.5)
    # Rows past the longer prompt stay zero; rows between the two lengths hold half of the longer one.
    assert torch.equal(mid[0, 21:], torch.zeros_like(mid[0, 21:]))
    assert torch.allclose(mid[0, 6:21], b[0, 6:21] / 2)


def test_interpolate_rejects_bad_weights_and_shapes(builtin):
    a, b = builtin.encode(["a", "b"]).split(1)
    for w in (float("nan"), float("inf"), -0.1, 1.5):
        with pytest.raises(ValueError):
            interpolate(a, b, w)
    with pytest.raises(TypeError, match="real number"):
        interpolate(a, b, True)
    with pytest.raises(ValueError, match="must match"):
        interpolate(a, b[:, :10], 0.5)
    with pytest.raises(ValueError, match="must match"):
        interpolate(a, b.double(), 0.5)


def test_blend_normalizes_weights(builtin):
    a, b, c = builtin.encode(["a", "b", "c"]).split(1)
    assert torch.equal(blend([a, b, c], [0, 3, 0]), b)
    assert torch.allclose(blend([a, b], [2, 2]), (a + b) / 2, atol=1e-6)
    assert torch.allclose(blend([a, b, c], [1, 2, 1]), 0.25 * a + 0.5 * b + 0.25 * c, atol=1e-6)
    assert torch.allclose(blend([a, b], [0.75, 0.25]), interpolate(a, b, 0.25), atol=1e-6)
    half = blend([a.bfloat16(), b.bfloat16()], [1, 1])
    assert half.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([1.0, -0.5], "must be >= 0"),
        ([0.0, 0.0], "positive sum"),
        ([1.0], "2 embeddings but 1 weights"),
        ([1.0, float("nan")], "finite"),
        ([1.0, float("inf")], "finite"),
    ],
)
def test_blend_rejects_bad_weights(builtin, weights, match):
    a, b = builtin.encode(["a", "b"]).split(1)
    with pytest.raises(ValueError, match=match):
        blend([a, b], weights)


def test_blend_needs_embeddings():
    with pytest.raises(ValueError, match="at least one"):
        blend([], [])
