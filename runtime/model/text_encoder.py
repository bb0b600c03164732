"""Text encoders: prompts in, padded embedding rows out (spec 7), plus the prompt cache and the
prompt maths of interactive mode (spec 5.11).

Every encoder honours one contract: `encode(prompts)` returns (B, N, D) where N = `max_tokens`; row i
of prompt b holds the feature of its i-th token for i < L_b (L_b = real tokens, end-of-sequence
included) and is exactly zero for i >= L_b. The transformer sees the zero rows like real tokens (no
mask anywhere, spec 11.8), so the zeros are part of the function, not padding to be ignored.

- `UMT5TextEncoder`: the umT5-XXL encoder of the released checkpoints, reproducing the reference
  prompt path (cleaning, 512 tokens, mask, zeroed rows). Needs the `[hf]` extra.
- `BuiltinTextEncoder`: a small seeded byte-level transformer for the `tiny` / `toy` models; torch
  and safetensors only, nothing to download.
- `PromptCache`: LRU of per-prompt embeddings keyed by (encoder name, prompt).
- `interpolate` / `blend`: elementwise mixes of padded embeddings.

Letters: B prompts, N tokens (`max_tokens`), D feature width, K embeddings in a blend.
"""

from __future__ import annotations

import functools
import hashlib
import html
import importlib.util
import json
import logging
import math
import re
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, load_weights, read_config, resolve_device, save_weights, write_config

logger = logging.getLogger(__name__)

HF_EXTRA_HINT = "pip install 'helios-world-sdk[hf]'"
UMT5_MAX_TOKENS = 512  # the pipelines' max_sequence_length (the helper's own default of 226 is never used)


# ---------------------------------------------------------------------------------------------------
# Prompt cleaning (spec 7: ftfy, HTML-unescape twice, collapse whitespace, strip)
# ---------------------------------------------------------------------------------------------------

# The reference collapses `\s+` with the `regex` package, whose `\s` is Unicode White_Space. That is
# not the stdlib's `\s` (which also matches U+001C..U+001F), so the class is spelled out here; a test
# checks it against `regex` on every code point.
_WHITESPACE_RUN = re.compile("[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


@functools.lru_cache(maxsize=1)
def _ftfy_module() -> ModuleType | None:
    try:
        import ftfy
    except ImportError:
        return None
    return ftfy


def ftfy_available() -> bool:
    return _ftfy_module() is not None


def clean_prompt(text: str, *, use_ftfy: bool = True) -> str:
    """The reference prompt cleaning: `ftfy.fix_text`, `html.unescape` twice, strip, collapse
    whitespace runs to one space, strip.

    With `use_ftfy=False`, or when ftfy is not installed, the ftfy step is skipped. Plain prompts are
    unaffected; prompts with curly quotes, ligatures, full-width letters, non-NFC text, control or
    terminal-escape characters, mojibake, or HTML entities escaped more than twice are then cleaned
    differently from the reference (which fails outright without ftfy).
    """
    ftfy = _ftfy_module() if use_ftfy else None
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE_RUN.sub(" ", text).strip()


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """A list of str, or TypeError saying which item is wrong. A bare str is refused: iterating it
    would encode one prompt per character."""
    if isinstance(prompts, (str, bytes)):
        raise TypeError(
            f"prompts must be a list of str, got a single {type(prompts).__name__}; pass [prompt]"
        )
    if not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of str, got {type(prompts).__name__}")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{i}] must be a str, got {type(prompt).__name__}")
    return list(prompts)


# ---------------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextEncoding:
    """What one `encode_detailed` call produced."""

    embeddings: torch.Tensor  # (B, N, D); rows >= lengths[b] exactly zero
    lengths: list[int]  # real tokens per prompt, end-of-sequence included, 1..N
    truncated: list[bool]  # the prompt had more than N tokens and lost its tail


class TextEncoder(ABC):
    """Prompts to (B, max_tokens, dim) embeddings with the zero-row contract of the module docstring.

    `name` identifies the function the encoder computes (weights, dtype, length, cleaning), so equal
    names mean interchangeable embeddings; `PromptCache` keys on it.
    """

    name: str
    dim: int
    max_tokens: int

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, max_tokens, dim) embeddings of `prompts`; see `encode_detailed` for lengths and truncation."""
        return self.encode_detailed(prompts).embeddings

    @torch.no_grad()
    def encode_detailed(self, prompts: Sequence[str]) -> TextEncoding:
        """Embeddings plus each prompt's token count and whether it was truncated (also logged)."""
        prompts = check_prompts(prompts)
        if not prompts:
            empty = torch.zeros(0, self.max_tokens, self.dim, device=self.device, dtype=self.dtype)
            return TextEncoding(empty, [], [])
        result = self._encode(prompts)
        for prompt, cut in zip(prompts, result.truncated, strict=True):
            if cut:
                logger.warning(
                    "%s: prompt longer than %d tokens, its tail is dropped: %.60r…",
                    self.name,
                    self.max_tokens,
                    prompt,
                )
        return result

    @abstractmethod
    def _encode(self, prompts: list[str]) -> TextEncoding:
        """Encode a non-empty list of validated prompts."""


def _zero_past_lengths(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """hidden (B, N, D), lengths (B,) -> rows n >= lengths[b] set to +0.0 (not multiplied: -0.0/NaN)."""
    positions = torch.arange(hidden.shape[1], device=hidden.device)  # (N,)
    past = positions[None, :] >= lengths.to(hidden.device)[:, None]  # (B, N)
    return hidden.masked_fill(past[:, :, None], 0.0)


# ---------------------------------------------------------------------------------------------------
# umT5 (the released checkpoints)
# ---------------------------------------------------------------------------------------------------


def _import_transformers() -> ModuleType:
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"UMT5TextEncoder needs transformers, sentencepiece and tokenizers: {HF_EXTRA_HINT}"
        ) from exc
    return transformers


def _resolve_umt5_folders(path: str | Path, tokenizer_folder: str | Path | None) -> tuple[Path, Path]:
    """(text encoder folder, tokenizer folder) from a pipeline root or a text encoder folder."""
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is a file, not a folder"
        raise CheckpointError(f"text encoder folder {str(path)!r} {what}")
    if (path / "text_encoder").is_dir():  # a pipeline root: text_encoder/ and tokenizer/ side by side
        encoder_folder = path / "text_encoder"
        tokenizer_default = path / "tokenizer"
    else:
        encoder_folder = path
        tokenizer_default = path.parent / "tokenizer" if (path.parent / "tokenizer").is_dir() else path
    tok = Path(tokenizer_folder) if tokenizer_folder is not None else tokenizer_default
    if not tok.is_dir():
        raise CheckpointError(f"tokenizer folder {str(tok)!r} does not exist; pass tokenizer_folder=")

    config_path = encoder_folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{str(encoder_folder)!r} is not a text encoder checkpoint: it has no config.json "
            "(pass a pipeline folder holding text_encoder/ and tokenizer/, or the text_encoder/ folder)"
        )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{str(config_path)!r} is not valid JSON: {exc}") from exc
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "umt5":
        raise CheckpointError(
            f"{str(encoder_folder)!r} is not a umT5 encoder: config.json has model_type={model_type!r}, "
            "expected 'umt5'"
        )
    tokenizer_files = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
    if not any((tok / f).is_file() for f in tokenizer_files):
        raise CheckpointError(f"{str(tok)!r} holds no tokenizer (expected one of {list(tokenizer_files)})")
    return encoder_folder, tok


class UMT5TextEncoder(TextEncoder):
    """The umT5 encoder stack of the released Helios checkpoints (spec 7), computing what the diffusers
    Helios pipelines compute for `max_sequence_length=512`: clean each prompt, tokenize with padding to
    512 and truncation (the end-of-sequence token is kept), run the encoder with the attention mask,
    cast to the encoder's dtype, zero the rows past each prompt's token count.

    Without ftfy installed the cleaning skips `ftfy.fix_text` (see `clean_prompt`); a warning says so
    once per encoder, `uses_ftfy` is False and the name ends in `:noftfy`.
    """

    def __init__(
        self, model: Any, tokenizer: Any, *, max_tokens: int = UMT5_MAX_TOKENS, name: str | None = None
    ):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.dim = int(model.config.d_model)
        self.max_tokens = int(max_tokens)
        self.uses_ftfy = ftfy_available()
        if not self.uses_ftfy:
            logger.warning(
                "ftfy is not installed: prompts are cleaned without ftfy.fix_text, so prompts with curly "
                "quotes, ligatures, full-width or non-NFC text or mojibake differ from the reference; "
                "`pip install ftfy` for exact parity"
            )
        self.name = name if name is not None else self._default_name()

    def _default_name(self) -> str:
        # A folder-loaded model is named by its folder, so the name is stable across processes; an
        # in-memory model is unique to this process.
        source = getattr(self.model.config, "_name_or_path", "") or f"in-memory-{id(self.model):x}"
        source = str(Path(source).resolve()) if Path(source).exists() else source
        dtype = str(self.dtype).removeprefix("torch.")
        return f"umt5:{source}:{dtype}:{self.max_tokens}" + ("" if self.uses_ftfy else ":noftfy")

    @classmethod
    def from_pretrained(
        cls,
        text_encoder_folder: str | Path,
        tokenizer_folder: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.bfloat16,
        max_tokens: int = UMT5_MAX_TOKENS,
        name: str | None = None,
    ) -> UMT5TextEncoder:
        """Load from local folders only (never the Hub).

        `text_encoder_folder` is either a pipeline root holding `text_encoder/` and `tokenizer/`, or
        the `text_encoder/` folder itself, whose tokenizer is then `tokenizer_folder`, else a sibling
        `tokenizer/`, else the same folder. `dtype` defaults to bfloat16, the reference's; `device`
        None means the first GPU when there is one.
        """
        transformers = _import_transformers()
        encoder_folder, tok_folder = _resolve_umt5_folders(text_encoder_folder, tokenizer_folder)
        target = resolve_device(device)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(tok_folder), local_files_only=True)
        placement = {}
        if target.type != "cpu" and importlib.util.find_spec("accelerate") is not None:
            # Straight onto the GPU, never whole on the CPU; transformers needs accelerate for this.
            placement["device_map"] = str(target)
        model = transformers.UMT5EncoderModel.from_pretrained(
            str(encoder_folder), local_files_only=True, dtype=dtype, **placement
        )
        return cls(model.to(target), tokenizer, max_tokens=max_tokens, name=name)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def _encode(self, prompts: list[str]) -> TextEncoding:
        cleaned = [clean_prompt(p, use_ftfy=self.uses_ftfy) for p in prompts]
        tokens = self.tokenizer(
            cleaned,
            padding="max_length",
            max_length=self.max_tokens,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = tokens.input_ids, tokens.attention_mask  # (B, N) each
        lengths = mask.gt(0).sum(dim=1)  # (B,)
        # One token over the limit is enough to tell a truncated prompt from one of exactly N tokens.
        probe = self.tokenizer(
            cleaned, max_length=self.max_tokens + 1, truncation=True, add_special_tokens=True
        )
        truncated = [len(x) > self.max_tokens for x in probe.input_ids]

        device = self.device
        hidden = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        hidden = hidden.to(self.dtype)  # (B, N, D)
        return TextEncoding(_zero_past_lengths(hidden, lengths), lengths.tolist(), truncated)


# ---------------------------------------------------------------------------------------------------
# Built-in byte-level encoder (tiny / toy models)
# ---------------------------------------------------------------------------------------------------

BUILTIN_CLASS_NAME = "BuiltinTextEncoder"
BUILTIN_WEIGHTS_STEM = "model"
_PAD, _EOS, _BYTE0 = 0, 1, 2  # token ids: padding, end of sequence, then the 256 byte values
BUILTIN_VOCAB = _BYTE0 + 256


@dataclass(frozen=True)
class BuiltinTextEncoderConfig:
    dim: int = 32  # the `tiny` transformer's text_dim
    max_tokens: int = 64  # bytes + EOS; a short scene prompt fits, the tiny model's cross-attn stays small
    num_layers: int = 1
    num_heads: int = 2
    mlp_ratio: int = 4
    seed: int = 0  # the random init; a trained encoder keeps it only as a record

    def __post_init__(self) -> None:
        for field_name in ("dim", "max_tokens", "num_layers", "num_heads", "mlp_ratio"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"BuiltinTextEncoderConfig.{field_name} must be a positive int, got {value!r}"
                )
        if self.max_tokens < 2:
            raise ValueError(
                f"max_tokens must be >= 2 (one byte plus end-of-sequence), got {self.max_tokens}"
            )
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")


BUILTIN_PRESETS: dict[str, BuiltinTextEncoderConfig] = {
    "tiny": BuiltinTextEncoderConfig(),
    # The toy world's encoder, trained with its transformer: the grammar's longest prompt fits.
    "toy": BuiltinTextEncoderConfig(dim=64, max_tokens=64, num_layers=2, num_heads=4),
}


class _Block(nn.Module):
    """Pre-norm self-attention + GELU MLP over (B, N, D)."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.RMSNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.norm2 = nn.RMSNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, N, 3, self.heads, D // self.heads).unbind(2)  # (B, N, h, d)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, h, N, d)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])  # (B, h, N, d)
        x = x + self.proj(attn.transpose(1, 2).reshape(B, N, D))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class _ByteTransformer(nn.Module):
    def __init__(self, config: BuiltinTextEncoderConfig):
        super().__init__()
        D = config.dim
        self.token_embedding = nn.Embedding(BUILTIN_VOCAB, D)
        self.position_embedding = nn.Parameter(torch.empty(config.max_tokens, D))
        self.blocks = nn.ModuleList(
            _Block(D, config.num_heads, config.mlp_ratio * D) for _ in range(config.num_layers)
        )
        self.norm_out = nn.RMSNorm(D, eps=1e-6)

    def forward(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """ids (B, N) int64, keep (B, N) bool (True for real tokens) -> (B, N, D)."""
        x = self.token_embedding(ids) + self.position_embedding[None]  # (B, N, D)
        for block in self.blocks:
            x = block(x, keep)
        return self.norm_out(x)


def _seeded_init(net: _ByteTransformer, config: BuiltinTextEncoderConfig) -> None:
    """Fill every parameter from one CPU generator, in declaration order, so a seed is a model."""
    gen = torch.Generator().manual_seed(config.seed)
    depth_scale = 1.0 / math.sqrt(2 * config.num_layers)  # residual branches add up over the layers
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm_out.weight":
                param.fill_(1.0)
                continue
            if name == "token_embedding.weight":
                std = 1.0
            elif name == "position_embedding":
                std = 0.5
            else:  # a Linear: unit-variance outputs; the residual outputs scaled down by depth
                std = 1.0 / math.sqrt(param.shape[1])
                if name.endswith("proj.weight") or name.endswith("fc2.weight"):
                    std *= depth_scale
            param.copy_(torch.randn(param.shape, generator=gen) * std)


class BuiltinTextEncoder(TextEncoder):
    """A small byte-level transformer with seeded weights, for the `tiny` and `toy` models.

    Tokens are the UTF-8 bytes of the prompt after whitespace/HTML cleaning (`clean_prompt` without
    ftfy, so the result does not depend on what is installed), cut to `max_tokens - 1` bytes, then an
    end-of-sequence token. Same prompt and weights, same embedding; prompts that differ after cleaning
    within their first `max_tokens - 1` bytes give different embeddings. Save it with
    `save_pretrained` so a trained toy model ships its encoder.
    """

    def __init__(
        self,
        config: BuiltinTextEncoderConfig | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        _net: _ByteTransformer | None = None,
    ):
        self.config = config if config is not None else BuiltinTextEncoderConfig()
        if _net is None:
            _net = _ByteTransformer(self.config)  # built on the CPU so the seeded init is device-independent
            _seeded_init(_net, self.config)
        self.net = _net.to(device=resolve_device(device), dtype=dtype).eval()
        self.dim = self.config.dim
        self.max_tokens = self.config.max_tokens
        dtype_name = str(dtype).removeprefix("torch.")
        self.name = f"builtin-bytes-d{self.dim}-n{self.max_tokens}-{self._digest()}-{dtype_name}"

    @classmethod
    def preset(cls, name: str, **kwargs: Any) -> BuiltinTextEncoder:
        try:
            config = BUILTIN_PRESETS[name]
        except KeyError:
            raise ValueError(
                f"unknown builtin text encoder preset {name!r}; known: {sorted(BUILTIN_PRESETS)}"
            ) from None
        return cls(config, **kwargs)

    def _digest(self) -> str:
        """12 hex digits of sha256 over the config and every weight (as float32): the weights' identity."""
        h = hashlib.sha256(json.dumps(asdict(self.config), sort_keys=True).encode())
        for key, tensor in sorted(self.net.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:12]

    @property
    def device(self) -> torch.device:
        return self.net.position_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.net.position_embedding.dtype

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
        """ids (B, N) int64 on the CPU, lengths (B,) with EOS included, and which prompts were cut."""
        prompts = check_prompts(prompts)
        N = self.max_tokens
        ids = torch.full((len(prompts), N), _PAD, dtype=torch.int64)  # (B, N)
        lengths, truncated = [], []
        for b, prompt in enumerate(prompts):
            data = clean_prompt(prompt, use_ftfy=False).encode("utf-8")
            truncated.append(len(data) > N - 1)
            data = data[: N - 1]
            if data:
                ids[b, : len(data)] = (
                    torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64) + _BYTE0
                )
            ids[b, len(data)] = _EOS
            lengths.append(len(data) + 1)
        return ids, torch.tensor(lengths, dtype=torch.int64), truncated

    def _encode(self, prompts: list[str]) -> TextEncoding:
        ids, lengths, truncated = self.tokenize(prompts)
        ids, lengths = ids.to(self.device), lengths.to(self.device)
        keep = torch.arange(self.max_tokens, device=self.device)[None, :] < lengths[:, None]  # (B, N)
        # One prompt per forward: GPU kernels tile by batch size, so a batched forward would make a
        # prompt's embedding depend, in the last bits, on its batch-mates. The model is tiny.
        rows = [self.net(ids[b : b + 1], keep[b : b + 1]) for b in range(len(prompts))]  # B x (1, N, D)
        hidden = torch.cat(rows)  # (B, N, D)
        return TextEncoding(_zero_past_lengths(hidden, lengths), lengths.tolist(), truncated)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write `config.json` and `model.safetensors` (weights in their current dtype)."""
        write_config(folder, {"_class_name": BUILTIN_CLASS_NAME, **asdict(self.config)})
        save_weights(self.net.state_dict(), folder, stem=BUILTIN_WEIGHTS_STEM, max_shard_bytes=None)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> BuiltinTextEncoder:
        raw = read_config(folder, [BUILTIN_CLASS_NAME], "builtin text encoder")
        fields = {k: v for k, v in raw.items() if not k.startswith("_")}
        try:
            config = BuiltinTextEncoderConfig(**fields)
        except TypeError as exc:
            raise CheckpointError(
                f"{str(folder)!r}: config.json does not describe a builtin encoder: {exc}"
            ) from exc
        with torch.device("meta"):
            net = _ByteTransformer(config)
        load_weights(net, folder, device=resolve_device(device), dtype=dtype, stem=BUILTIN_WEIGHTS_STEM)
        return cls(config, device=device, dtype=dtype, _net=net)


# ---------------------------------------------------------------------------------------------------
# Prompt cache
# ---------------------------------------------------------------------------------------------------


class PromptCache:
    """LRU cache of per-prompt embeddings (N, D), keyed by (encoder.name, prompt), thread-safe.

    Bounded by `max_entries` and, optionally, `max_bytes` (an embedding larger than `max_bytes` is
    returned but not kept). `get` encodes the distinct misses of a request in one call, or in calls of
    at most `max_batch` prompts. `hits` counts prompts served from the cache, `misses` counts prompts
    encoded (a prompt repeated within one request is encoded once: one miss, then hits).

    On a GPU a batched umT5 forward can differ in the last bits from an unbatched one, so a cached
    embedding can depend on the batch that first produced it; `max_batch=1` makes every embedding
    the batch-of-one result (what the reference computes for a single prompt and its negative).
    """

    def __init__(self, max_entries: int = 64, max_bytes: int | None = None, max_batch: int | None = None):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1 or None, got {max_bytes}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_batch = max_batch
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def get(self, encoder: TextEncoder, prompts: Sequence[str]) -> torch.Tensor:
        """(B, max_tokens, dim) embeddings of `prompts`, from the cache where possible."""
        prompts = check_prompts(prompts)
        found: dict[str, torch.Tensor] = {}
        with self._lock:
            for prompt in prompts:
                if prompt in found:
                    continue
                row = self._entries.get((encoder.name, prompt))
                if row is not None:
                    self._entries.move_to_end((encoder.name, prompt))
                    found[prompt] = row
        missing = list(dict.fromkeys(p for p in prompts if p not in found))  # distinct, in order
        if missing:
            step = self.max_batch or len(missing)
            fresh: dict[str, torch.Tensor] = {}
            for start in range(0, len(missing), step):  # the encoder runs outside the lock
                chunk = missing[start : start + step]
                encoded = encoder.encode(chunk)  # (M, N, D)
                fresh.update((p, encoded[i].clone()) for i, p in enumerate(chunk))  # clone: drop the batch
            with self._lock:
                for prompt, row in fresh.items():
                    self._insert((encoder.name, prompt), row)
            found.update(fresh)
        with self._lock:
            self.misses += len(missing)
            self.hits += len(prompts) - len(missing)
        if not prompts:
            return torch.zeros(0, encoder.max_tokens, encoder.dim, device=encoder.device, dtype=encoder.dtype)
        return torch.stack([found[p] for p in prompts])  # (B, N, D), a copy: callers cannot touch the cache

    def _insert(self, key: tuple[str, str], row: torch.Tensor) -> None:
        size = row.numel() * row.element_size()
        if self.max_bytes is not None and size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.numel() * old.element_size()
        self._entries[key] = row
        self._bytes += size
        while len(self._entries) > self.max_entries or (
            self.max_bytes is not None and self._bytes > self.max_bytes
        ):
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.numel() * evicted.element_size()


# ---------------------------------------------------------------------------------------------------
# Prompt maths (spec 5.11)
# ---------------------------------------------------------------------------------------------------


def _check_weight(w: Any, what: str) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise TypeError(f"{what} must be a real number, got {type(w).__name__}")
    w = float(w)
    if not math.isfinite(w):
        raise ValueError(f"{what} must be finite, got {w}")
    return w


def _check_same(tensors: Sequence[torch.Tensor], what: str) -> None:
    first = tensors[0]
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{what}[{i}] must be a floating tensor, got {t.dtype}")
        if (t.shape, t.dtype, t.device) != (first.shape, first.dtype, first.device):
            raise ValueError(
                f"{what}[{i}] is {tuple(t.shape)} {t.dtype} on {t.device}; "
                f"{what}[0] is {tuple(first.shape)} {first.dtype} on {first.device}: they must match"
            )


def interpolation_weights(steps: int) -> list[float]:
    """The reference's weights over an `steps`-chunk prompt transition: linspace(0, 1, steps), so
    (0, 0.5, 1.0) for the scripts' 3."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(0, 1, steps).tolist()


def interpolate(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """Elementwise lerp of two padded embeddings, `a` at w = 0 and `b` at w = 1 (both exact).

    As in the reference the weight is first rounded to the embeddings' dtype and torch.lerp is used,
    so the result is bitwise the reference's for its weights. w must lie in [0, 1].
    """
    _check_same([a, b], "embeddings")
    w = _check_weight(w, "w")
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"w must lie in [0, 1], got {w}")
    return torch.lerp(a, b, torch.tensor(w, dtype=a.dtype, device=a.device))


def blend(embeddings: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted mean of K same-shape padded embeddings; weights are normalized to sum to one.

    Weights must be finite and >= 0 with a positive sum. Accumulates in float32 (or wider) and returns
    the embeddings' dtype; a single weight of 1 returns that embedding exactly.
    """
    embeddings = list(embeddings)
    weights = list(weights)
    if not embeddings:
        raise ValueError("blend needs at least one embedding")
    if len(weights) != len(embeddings):
        raise ValueError(f"got {len(embeddings)} embeddings but {len(weights)} weights")
    _check_same(embeddings, "embeddings")
    ws = [_check_weight(w, f"weights[{i}]") for i, w in enumerate(weights)]
    negative = [i for i, w in enumerate(ws) if w < 0]
    if negative:
        raise ValueError(f"weights must be >= 0, got {[ws[i] for i in negative]} at {negative}")
    total = math.fsum(ws)
    if total <= 0:
        raise ValueError(f"weights must have a positive sum, got {ws}")
    acc_dtype = torch.promote_types(embeddings[0].dtype, torch.float32)
    out = torch.zeros(embeddings[0].shape, dtype=acc_dtype, device=embeddings[0].device)
    for e, w in zip(embeddings, ws, strict=True):
        if w:
            out.add_(e.to(acc_dtype), alpha=w / total)
    return out.to(embeddings[0].dtype)
