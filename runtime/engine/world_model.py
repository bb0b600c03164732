"""The models a world runs on, loaded together: transformer, VAE, text encoder, sampler settings.

`WorldModel.load(spec)` takes a preset name or a diffusers-format pipeline folder:

- `toy` (the default): the toy world trained on the procedural simulator (`helios train`), shipped
  in the package (`assets/toy`, float16): 96×160, a learned move + camera-pan action, 6-step UniPC;
  real time on a laptop CPU. It knows only prompts of the simulator's grammar and refuses others
  (`known_prompts.py`; model_index.json "prompt_grammar", default "procedural" for such folders).
- `tiny`: random weights everywhere (tiny transformer, tiny VAE, built-in byte-level text encoder),
  Distilled sampling; runs on a CPU in seconds (tests).
- a folder (Helios-Base / -Mid / -Distilled as downloaded): `transformer/`, `vae/`, `text_encoder/`
  + `tokenizer/` (umT5, the `[hf]` extra), `scheduler/scheduler_config.json` and `model_index.json`,
  whose `is_distilled` / `is_cfg_zero_star` flags pick the sampler (spec 5.2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import DEFAULT_MODEL
from ..model.checkpoint import CheckpointError, read_json_object, resolve_device
from ..model.text_encoder import BuiltinTextEncoder, TextEncoder
from ..model.transformer import HeliosTransformer
from ..model.vae import WanVAE
from ..sampling.denoise import SamplerSettings, sampler_preset
from ..sampling.schedule import SchedulerConfig
from ..sim.grammar import PromptGrammar, Scene
from .actions import MovePanActions
from .fastpath import PRECISIONS, FastPathChoice, use_compile_cache
from .known_prompts import GRAMMARS, check_prompt
from .seam import check_frames

log = logging.getLogger("helios.engine")

# Blocks at each end that FP8 keeps in bf16 (fast_path(precision="fp8")): chosen on bench/fp8.py's
# per-block sensitivity (docs/performance.md).
FP8_KEEP_BF16_BLOCKS = 1

# "toy": the trained toy world shipped in the package (the default). "tiny": random weights, for
# tests. "random-14b" / "random-1.3b": the real architectures with random weights (bf16 on a GPU),
# for load and speed tests of the whole stack (server included) without downloading a checkpoint.
PRESETS = ("toy", "tiny", "random-1.3b", "random-14b")
TOY_FOLDER = Path(__file__).resolve().parent.parent / "assets" / "toy"


@dataclass
class WorldModel:
    """Everything a WorldEngine needs that is shared by all its sessions (read-only at run time)."""

    name: str
    transformer: HeliosTransformer
    vae: WanVAE
    text_encoder: TextEncoder
    sampler: SamplerSettings
    negative_prompt: str = ""  # used only when the sampler guides (Base, Mid)
    default_size: tuple[int, int] = (384, 640)  # (height, width) in pixels
    # The learned action space of a transformer built with num_actions > 0 (the toy world's
    # MovePanActions); None: actions reach the model as prompts (PromptTemplateAdapter).
    actions: MovePanActions | None = None
    use_anchor: bool = True  # False: the anchor is always zero (a model trained without it)
    # True: the sampler's guidance (guidance_scale > 1) contrasts "with the action" against "without
    # an action" (ids -1, the action dropout's rows) under the same prompt, instead of the prompt
    # against the negative prompt. model_index.json: "guidance": "action".
    guide_action: bool = False
    # The prompts the model knows when it was trained on a grammar's sentences only (a `helios train
    # export` folder: the procedural world's); the engine refuses others (known_prompts.py). None:
    # any prompt.
    prompt_grammar: PromptGrammar | None = None
    # Frames over which the engine blends a chunk's first frames from the last frame shown (seam.py):
    # model_index.json "seam_blend_frames"; 0 (the released pipeline's behaviour) unless a model's
    # VAE needs it (the toy world: 2).
    seam_blend: int = 0

    def prompt_examples(self) -> list[str]:
        """Prompts of the only form this model knows, one for every biome and time of its grammar
        (with the weathers and objects in turn), for clients that sample prompts (the action space
        GetServerInfo reports); [] when it takes any prompt."""
        g = self.prompt_grammar
        if g is None:
            return []
        pairs = [(biome, time) for biome in g.biomes for time in g.times]
        return [
            g.format(Scene(b, t, g.weathers[i % len(g.weathers)], (g.objects[i % len(g.objects)],)))
            for i, (b, t) in enumerate(pairs)
        ]

    def check_prompt(self, prompt: str, what: str = "prompt") -> None:
        """InvalidInput for a prompt this model does not know (one outside its `prompt_grammar`)."""
        check_prompt(self.prompt_grammar, prompt, self.name, what)

    @property
    def forward(self):
        """The transformer's forward as the engine calls it: replayed from CUDA graphs for the small
        pyramid stage once `fast_path` turned them on (`graphs.GraphedForward`), else the module."""
        return getattr(self, "_graphed", None) or self.transformer

    def __post_init__(self) -> None:
        if self.guide_action and self.actions is None:
            raise ValueError("guide_action needs a learned action space (actions)")

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @classmethod
    def load(
        cls,
        spec: str | Path = DEFAULT_MODEL,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        seed: int = 0,
        fast: FastPathChoice | None = None,
    ) -> WorldModel:
        """A preset or a pipeline folder, with the fast path as `fast` chooses (default: as this
        process's environment says, `FastPathChoice.from_env`: on a GPU unless HELIOS_EAGER=1)."""
        if spec == "toy":
            model = cls.from_pretrained(TOY_FOLDER, device=device)
        elif isinstance(spec, str) and spec in PRESETS:
            model = cls.tiny(device=device, seed=seed) if spec == "tiny" else cls.random(spec, device=device)
        else:
            folder = Path(spec)
            if not folder.is_dir():
                raise CheckpointError(
                    f"model {str(spec)!r} is neither a preset ({', '.join(PRESETS)}) nor a pipeline folder"
                )
            model = cls.from_pretrained(folder, device=device, dtype=dtype)
        choice = fast if fast is not None else FastPathChoice.from_env()
        if choice.fast if choice.fast is not None else model.device.type == "cuda":
            model.fast_path(compile_vae=choice.compile_vae, precision=choice.precision)
        elif choice.precision == "fp8" and fast is not None:
            # Asked for by the caller off the fast path (the CPU): FP8's numerics emulated, for
            # accuracy studies (helios rollout / eval drift --precision fp8); slower, not faster.
            model.quantize_fp8()
        elif choice.precision == "fp8":
            log.warning("HELIOS_PRECISION=fp8 ignored: FP8 runs on the GPU fast path (here %s)", model.device)
        return model

    def quantize_fp8(self, keep_bf16_blocks: int | None = None) -> WorldModel:
        """The transformer's blocks in FP8 (`HeliosTransformer.quantize_fp8`) keeping the first and
        last `keep_bf16_blocks` (default `FP8_KEEP_BF16_BLOCKS`, at most half the blocks) as they are.
        On a GPU `fast_path(precision="fp8")` does this with the fused kernels; on the CPU the same
        quantised numbers run through float32 matmuls (an emulation: accuracy, not speed)."""
        keep = FP8_KEEP_BF16_BLOCKS if keep_bf16_blocks is None else keep_bf16_blocks
        keep = min(keep, len(self.transformer.blocks) // 2)
        self.transformer.quantize_fp8(keep_first=keep, keep_last=keep)
        return self

    def fast_path(
        self,
        transformer: str = "auto",
        compile_vae: bool = True,
        precision: str = "bf16",
        keep_bf16_blocks: int | None = None,
        cuda_graphs: bool = True,
    ) -> WorldModel:
        """The real-time configuration on a GPU (on the CPU it changes nothing). Returns self.

        - Transformer, `transformer=`: "kernels" runs every block's row operations (norms, modulation,
          RoPE, residuals) as fused Triton kernels (`HeliosTransformer.use_kernels`); "compile"
          torch.compiles the blocks instead (`compile_blocks`); "auto" takes the kernels where Triton
          runs, else compiles. On an H100 the kernels are ~4% faster than the compiled blocks and
          need no compile warm-up (bench/realtime.py). Attention picks its fastest kernel by itself
          (`attention.py`: cuDNN's on Hopper).
        - VAE: bfloat16 (the reference's float32 costs 1.5× the time for no visible difference),
          channels-last convolutions, and with `compile_vae` its per-frame decoder step compiled
          (`WanVAE.compile_decoder`: 0.49 -> 0.22-0.29 s per chunk, bench/vae_layout.py).
        - Precision, `precision=`: "bf16" (the default), or "fp8": every block's linears become
          float8 e4m3fn GEMMs (`HeliosTransformer.quantize_fp8`; weights per output channel, once,
          here; activations per token, quantised inside the fused norm / GELU kernels), except the
          first and last `keep_bf16_blocks` blocks (default `FP8_KEEP_BF16_BLOCKS`). One way: the
          quantised blocks' bf16 weights are freed. docs/performance.md has its speed and accuracy.
        - With `cuda_graphs` (the default) the small first pyramid stage is replayed from CUDA graphs
          (`graphs.GraphedForward`: its forward is short enough for launch time to show).
        - Compiled and autotuned artefacts persist in `compile_cache_dir()` ($HELIOS_CACHE_DIR), so a
          second process on the machine warms up from the cache (`use_compile_cache`).
        """
        if transformer not in ("auto", "kernels", "compile"):
            raise ValueError(f"transformer must be 'auto', 'kernels' or 'compile', got {transformer!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if self.device.type != "cuda":
            return self
        import helios_kernels

        use_compile_cache()
        if precision == "fp8":
            self.quantize_fp8(keep_bf16_blocks)

        self.vae.to(torch.bfloat16).set_memory_format(torch.channels_last_3d)
        # Every chunk has the same shapes: let cuDNN time its convolution algorithms once per shape.
        torch.backends.cudnn.benchmark = True
        if compile_vae:
            self.vae.compile_decoder()
        if transformer == "kernels" or (transformer == "auto" and helios_kernels.available(self.device)):
            self.transformer.use_kernels()
            if cuda_graphs:
                from .graphs import GraphedForward

                self._graphed = GraphedForward(self.transformer)
        elif not self.transformer.compiled:
            self.transformer.use_kernels(False).compile_blocks()
        return self

    @classmethod
    def tiny(cls, *, device: str | torch.device | None = None, seed: int = 0) -> WorldModel:
        """Random weights at toy scale, float32 (CPU-friendly): every mechanism, no meaning."""
        device = resolve_device(device)
        return cls(
            name="tiny",
            transformer=HeliosTransformer.from_config(
                "tiny", device=device, dtype=torch.float32, seed=seed
            ).eval(),
            vae=WanVAE.from_config("tiny", device=device, dtype=torch.float32, seed=seed).eval(),
            text_encoder=BuiltinTextEncoder.preset("tiny", device=device),
            sampler=sampler_preset("distilled"),
            default_size=(192, 320),
        )

    @classmethod
    def random(cls, name: str, *, device: str | torch.device | None = None, seed: int = 0) -> WorldModel:
        """`random-14b` or `random-1.3b`: the real transformer and Wan 2.1 VAE with random weights
        (bf16 on a GPU, float32 on the CPU), a random built-in text encoder of umT5's width standing
        in for umT5, Distilled sampling at 384×640. Frames are noise-like; speed and memory are real."""
        from ..model.text_encoder import BuiltinTextEncoderConfig

        size = name.removeprefix("random-")
        device = resolve_device(device)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        return cls(
            name=name,
            transformer=HeliosTransformer.from_config(size, device=device, dtype=dtype, seed=seed).eval(),
            vae=WanVAE.from_config("wan2.1", device=device, dtype=dtype, seed=seed).eval(),
            text_encoder=BuiltinTextEncoder(
                BuiltinTextEncoderConfig(dim=4096, max_tokens=512), device=device
            ),
            sampler=sampler_preset("distilled"),
        )

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> WorldModel:
        """Load a downloaded Helios pipeline folder (diffusers layout)."""
        from ..model.text_encoder import UMT5TextEncoder

        folder = Path(folder)
        index_path = folder / "model_index.json"
        if not index_path.is_file():
            raise CheckpointError(
                f"{str(folder)!r} is not a Helios pipeline folder: it has no model_index.json"
            )
        index = read_json_object(index_path)
        device = resolve_device(device)
        if index.get("text_encoder") == "builtin":
            return cls._from_toy_folder(folder, index, device)
        scheduler = SchedulerConfig.from_pretrained(folder)
        if index.get("is_distilled"):
            sampler = sampler_preset("distilled").replace(scheduler=scheduler)
        elif index.get("is_cfg_zero_star"):
            sampler = sampler_preset("mid").replace(scheduler=scheduler)
        elif scheduler.stages == 1:
            sampler = sampler_preset("base").replace(scheduler=scheduler)
        else:  # a pyramid UniPC without CFG-Zero*: Mid's steps with plain CFG
            sampler = sampler_preset("mid").replace(scheduler=scheduler, cfg_zero_star=False)
        text_dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        return cls(
            name=folder.name,
            transformer=HeliosTransformer.from_pretrained(
                folder / "transformer", device=device, dtype=dtype
            ).eval(),
            vae=WanVAE.from_pretrained(folder / "vae", device=device).eval(),
            text_encoder=UMT5TextEncoder.from_pretrained(folder, device=device, dtype=text_dtype),
            sampler=sampler,
            seam_blend=_seam_blend(folder, index),
        )

    def pyramid_multiple(self) -> int:
        """Pixel sizes must be multiples of this: VAE ×8 · patch ×2 · 2 per extra pyramid stage."""
        _, ph, _ = self.transformer.config.patch_size
        return 8 * ph * 2 ** (self.sampler.scheduler.stages - 1)

    @classmethod
    def _from_toy_folder(cls, folder: Path, index: dict, device: torch.device) -> WorldModel:
        """A pipeline written by `helios train export`: float32 on every device (the toy is small),
        the built-in text encoder, the few-step sampler of its scheduler config and model_index."""
        space = index.get("action_space")
        if space not in (None, "move-pan"):
            raise CheckpointError(f"{str(folder)!r}: unknown action_space {space!r} (known: 'move-pan')")
        transformer = HeliosTransformer.from_pretrained(
            folder / "transformer", device=device, dtype=torch.float32
        ).eval()
        actions = MovePanActions() if space == "move-pan" else None
        if actions is not None and transformer.config.num_actions < actions.num_ids:
            raise CheckpointError(
                f"{str(folder)!r}: the move-pan action space needs num_actions >= {actions.num_ids}, "
                f"the transformer has {transformer.config.num_actions}"
            )
        guidance = index.get("guidance", "prompt")
        if guidance not in ("prompt", "action") or (guidance == "action" and actions is None):
            raise CheckpointError(
                f"{str(folder)!r}: guidance {guidance!r} needs to be 'prompt' or, "
                "with an action_space, 'action'"
            )
        steps = index.get("steps", [6])
        sampler = SamplerSettings(
            SchedulerConfig.from_pretrained(folder),
            steps=tuple(int(n) for n in steps),
            guidance_scale=float(index.get("guidance_scale", 1.0)),
        )
        height, width = index.get("default_size", [96, 160])
        grammar = index.get("prompt_grammar", "procedural")
        if grammar is not None and grammar not in GRAMMARS:
            raise CheckpointError(
                f"{str(folder)!r}: unknown prompt_grammar {grammar!r} (known: {', '.join(GRAMMARS)}, or null)"
            )
        return cls(
            name=str(index.get("name") or folder.name),
            transformer=transformer,
            vae=WanVAE.from_pretrained(folder / "vae", device=device).eval(),
            text_encoder=BuiltinTextEncoder.from_pretrained(folder / "text_encoder", device=device),
            sampler=sampler,
            default_size=(int(height), int(width)),
            actions=actions,
            use_anchor=bool(index.get("anchor", True)),
            guide_action=guidance == "action",
            prompt_grammar=GRAMMARS[grammar]() if grammar is not None else None,
            seam_blend=_seam_blend(folder, index),
        )


def _seam_blend(folder: Path, index: dict) -> int:
    """model_index.json's "seam_blend_frames" (default 0), checked."""
    try:
        return check_frames(index.get("seam_blend_frames", 0), "seam_blend_frames")
    except ValueError as exc:
        raise CheckpointError(f"{str(folder)!r}: {exc}") from None
