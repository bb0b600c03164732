"""Training the toy world end to end (issue 8): data, VAE, transformer + text encoder, export.

The same model, VAE, text-encoder and sampler code as the 14B; only the configs differ (the `toy`
presets). Three runs, each resumable and at most `--minutes` long (`helios train --help`):

1. `train_vae`: the toy Wan VAE on 33-frame chunks of the procedural world (L1 + MSE + a small KL),
   then its latent statistics (per-channel mean and std of the posterior means), so that the
   transformer sees unit-scale latents as it does with the released VAE.
2. `train_world`: the transformer (stage-1 recipe of spec 10: multi-term memory, history dropout,
   Frame-Aware Corrupt, first-frame anchor; `stage1.py`) with the learned move + pan action and
   the byte-level text encoder trained jointly. Training samples come from a latent dataset: every
   clip's chunks encoded once by the trained VAE, plus its first frame alone (the image-to-video
   anchor) and the first frame's still clip (the fake newest history frame), as the engine builds
   them at reset. Half the samples are image-to-video, half text-to-video.
3. `export_world`: the pipeline folder the runtime loads (`WorldModel.load`): transformer/, vae/,
   text_encoder/ (float16 safetensors, ~18 MB), scheduler/ (the few-step sampler) and a
   model_index.json naming the action space.

Ablations for the drift benchmark: `anchor=False` (the anchor is always zero, in training and at
inference) and `corrupt=False` (no Frame-Aware Corrupt).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..chunk import FRAMES_PER_CHUNK
from ..engine.actions import MovePanActions
from ..engine.memory import HISTORY_FRAMES
from ..engine.seam import check_frames
from ..model.text_encoder import BuiltinTextEncoder, _zero_past_lengths
from ..model.transformer import HeliosTransformer
from ..model.vae import WanVAE
from ..sim import agent_mask
from ..sim.procedural import PAN_PROBABILITY
from .data import sim_episode
from .stage1 import WINDOW_LATENTS, Sample, Stage1Recipe, stage1_loss
from .trainer import Trainer
from .vae import vae_loss

log = logging.getLogger("helios.train")

HEIGHT, WIDTH = 96, 160
ACTION_SPACE = "move-pan"  # model_index.json's "action_space": MovePanActions
# The few-step sampler the toy world ships with: one stage of UniPC, flow shift 3, 6 steps.
TOY_SCHEDULER = {
    "_class_name": "HeliosScheduler",
    "stages": 1,
    "stage_range": [0.0, 1.0],
    "shift": 3.0,
    "use_dynamic_shifting": False,
    "scheduler_type": "unipc",
}
TOY_STEPS = 6


# ---------------------------------------------------------------------------------------------------
# Data: episodes of the procedural world
# ---------------------------------------------------------------------------------------------------


@dataclass
class Episodes:
    """N rendered episodes of K chunks: prompts, first frames, chunk frames and action ids."""

    prompts: list[str]
    first: np.ndarray  # (N, H, W, 3) uint8: the frame reset() shows
    frames: np.ndarray  # (N, K, 33, H, W, 3) uint8
    actions: np.ndarray  # (N, K, 2) int64: MovePanActions ids of each chunk

    def __len__(self) -> int:
        return len(self.prompts)


def _render(
    args: tuple[int, int, int, int, int, float, int, float],
) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    index, seed, chunks, height, width, free, day_shift, pans = args
    prompt, first, frames, actions = sim_episode(
        index,
        seed=seed,
        chunks=chunks,
        height=height,
        width=width,
        free=free,
        day_shift=day_shift,
        pan_probability=pans,
    )
    vocab = MovePanActions()
    ids = np.array([vocab.ids({"move": a.move, "pan": a.pan}) for a in actions], dtype=np.int64)
    return prompt, first, frames, ids


def render_episodes(
    count: int,
    chunks: int,
    *,
    seed: int = 0,
    start: int = 0,
    height: int = HEIGHT,
    width: int = WIDTH,
    free: float = 0.5,
    workers: int | None = None,
    day_shift: int = 0,
    pan_probability: float = PAN_PROBABILITY,
) -> Episodes:
    """Episodes start..start+count of training set `seed`, rendered in `workers` processes (default:
    the CPU count). `free`: the share of chunks whose move ignores the dead zone (view scrolls).
    `day_shift`: each episode's day starts up to that many frames before or after the prompt's time
    (`sim_episode`). `pan_probability`: the share of chunks with a camera pan (the benchmark's
    `PAN_PROBABILITY`)."""
    if not 0.0 <= pan_probability <= 1.0:
        raise ValueError(f"pan_probability must be in [0, 1], got {pan_probability}")
    workers = workers or max(1, min(os.cpu_count() or 1, 16))
    jobs = [(start + i, seed, chunks, height, width, free, day_shift, pan_probability) for i in range(count)]
    t0 = time.monotonic()
    if workers == 1 or count < 8:
        out = [_render(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            out = list(pool.map(_render, jobs, chunksize=max(1, count // (4 * workers))))
    log.info("rendered %d episodes × %d chunks in %.1f s", count, chunks, time.monotonic() - t0)
    return Episodes(
        prompts=[o[0] for o in out],
        first=np.stack([o[1] for o in out]),
        frames=np.stack([o[2] for o in out]),
        actions=np.stack([o[3] for o in out]),
    )


def agent_weight(frames: torch.Tensor, weight: float) -> torch.Tensor | None:
    """(B, T, H, W, 3) uint8 -> (B, 1, T, H, W) float: `weight` on the agent's pixels, 1 elsewhere;
    None when `weight` is 1."""
    if weight == 1.0:
        return None
    return (1.0 + (weight - 1.0) * agent_mask(frames).float())[:, None]


def _video(frames: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float32 in [-1, 1] on the same device."""
    return frames.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)


def _autocast(device: torch.device):
    return (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )


# ---------------------------------------------------------------------------------------------------
# 1. The VAE
# ---------------------------------------------------------------------------------------------------


def train_vae(
    out: str | Path,
    *,
    episodes: int = 600,
    chunks: int = 4,
    batch: int = 32,
    clip_frames: int = 9,
    max_steps: int = 20000,
    minutes: float = 10.0,
    lr: float = 5e-4,
    device: str | torch.device = "cpu",
    seed: int = 0,
    workers: int | None = None,
    init: str | Path | None = None,
    decoder_only: bool = False,
    agent: float = 20.0,
    first_weight: float = 1.0,
    entry_weight: float = 1.0,
) -> WanVAE:
    """Train (or resume) the toy VAE in `out`; measure its latent statistics; return it.

    Each sample is `clip_frames` (1 + 4k) consecutive frames of a chunk from a random start: the
    causal VAE treats the first frame alone and every later 4 frames as one latent, whatever the
    clip's length, and its per-latent loop makes a step's cost grow with the clip, so short clips in
    big batches train fastest. `init`: start from a trained VAE folder's weights (a fresh run only).
    `decoder_only`: freeze the encoder (and keep `init`'s latent statistics), so that latents encoded
    before stay valid: the decoder can be fine-tuned on whole chunks while a transformer trains.
    `agent`: the reconstruction weight of the agent's pixels (pure magenta, ~0.2% of a frame): a
    plain loss lets an 8×-compressing VAE blur the one object that actions move into the ground.
    `first_weight` / `entry_weight`: the reconstruction weight of a clip's first frame (decoded alone,
    with no temporal context) and of the 4 frames of its second latent (the temporal upsamplers' first
    run, from zero history). Every chunk the engine shows starts on those paths (the reference decodes
    each chunk from an empty cache, spec 5.12), so with a plain loss, where they are 1 and 4 frames of
    33, the first frames come out washed out and each chunk boundary flashes (issue 20).
    """
    device = torch.device(device)
    out = Path(out)
    deadline = time.monotonic() + 60.0 * minutes
    data = render_episodes(episodes, chunks, seed=seed, workers=workers)
    pool = torch.from_numpy(data.frames.reshape(-1, *data.frames.shape[2:])).to(device)  # (M, 33, H, W, 3)
    if (clip_frames - 1) % 4 or not 1 <= clip_frames <= FRAMES_PER_CHUNK:
        raise ValueError(f"clip_frames must be 1 + 4k and at most {FRAMES_PER_CHUNK}, got {clip_frames}")
    if init is not None:
        vae = WanVAE.from_pretrained(init, device=device).requires_grad_(True).train()
    else:
        vae = WanVAE.from_config("toy", device=device, seed=seed).requires_grad_(True)
    if decoder_only:
        if init is None:
            raise ValueError("decoder_only fine-tunes a trained VAE: pass init")
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    offsets = torch.arange(clip_frames, device=device)
    frame_weight = torch.ones(clip_frames, device=device)  # (T,)
    frame_weight[0] = first_weight
    frame_weight[1:5] = entry_weight
    frame_weight = frame_weight.view(1, 1, -1, 1, 1)  # broadcast over (B, 1, T, H, W)

    def loss_fn(model: WanVAE, step: int, gen: torch.Generator) -> torch.Tensor:
        pick = torch.randint(0, pool.shape[0], (batch,), generator=gen, device=gen.device).to(device)
        start = torch.randint(
            0, FRAMES_PER_CHUNK - clip_frames + 1, (batch,), generator=gen, device=gen.device
        )
        frames = pool[pick[:, None], start.to(device)[:, None] + offsets]  # (B, clip, H, W, 3)
        weight = agent_weight(frames, agent)
        if first_weight != 1.0 or entry_weight != 1.0:
            weight = frame_weight if weight is None else weight * frame_weight
        with _autocast(device):
            loss, _ = vae_loss(model, _video(frames), gen, pixel_weight=weight)
        return loss

    trainer = Trainer(vae, loss_fn, out, lr=lr, seed=seed, save_every=500, warmup=200)
    remaining = max(0.5, (deadline - time.monotonic()) / 60.0 - 0.5)  # leave time for the statistics
    trainer.run(max_steps=max_steps, max_minutes=remaining, log_every=100)
    vae.requires_grad_(False).eval()
    if decoder_only:
        mean, std = list(vae.config.latents_mean), list(vae.config.latents_std)
    else:
        mean, std = latent_statistics(vae, pool)
        vae.config = vae.config.replace(latents_mean=tuple(mean), latents_std=tuple(std))
        vae._stats.clear()
    vae.save_pretrained(out)
    parts = reconstruction_psnr_parts(vae, pool[-16:])
    psnr = parts.pop("all")
    report = {"step": trainer.step, "psnr_db": psnr, "psnr_parts_db": parts}
    report.update(first_weight=first_weight, entry_weight=entry_weight, latents_mean=mean, latents_std=std)
    (out / "vae_report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"vae: step {trainer.step}, reconstruction PSNR {psnr:.2f} dB {parts}", file=sys.stderr)
    return vae


@torch.no_grad()
def latent_statistics(vae: WanVAE, pool: torch.Tensor, count: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means of up to `count` chunks."""
    step = max(1, pool.shape[0] // count)
    zs = [
        vae.encode(_video(pool[i : i + 8 * step : step]))
        for i in range(0, min(pool.shape[0], count * step), 8 * step)
    ]
    z = torch.cat(zs).float().transpose(0, 1).flatten(1)  # (C, N)
    return z.mean(1).tolist(), z.std(1).clamp_min(1e-3).tolist()


@torch.no_grad()
def reconstruction_psnr(vae: WanVAE, frames: torch.Tensor) -> float:
    """Mean PSNR (dB, pixels in [0, 255]) of encode -> decode over chunks (B, 33, H, W, 3) uint8."""
    x = _video(frames)
    y = vae.decode(vae.encode(x)).float().clamp(-1, 1)
    mse = ((x - y) * 127.5).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(255.0**2 / mse.clamp_min(1e-6))).mean())


@torch.no_grad()
def reconstruction_psnr_parts(vae: WanVAE, frames: torch.Tensor) -> dict[str, float]:
    """Encode -> decode PSNR (dB) of chunks (B, 33, H, W, 3) uint8 by position in the chunk: the first
    frame (decoded alone), frames 1-4 (the second latent), the rest and all; and the mean absolute change
    (grey levels) from each chunk's first frame to its second, reconstructed and true (a seam's exit)."""
    x = _video(frames)  # (B, 3, 33, H, W)
    y = vae.decode(vae.encode(x)).float().clamp(-1, 1)

    def db(a: torch.Tensor, b: torch.Tensor) -> float:
        mse = ((a - b) * 127.5).pow(2).flatten(1).mean(1)
        return float((10 * torch.log10(255.0**2 / mse.clamp_min(1e-6))).mean())

    return {
        "all": db(x, y),  # reconstruction_psnr's number, from the same decode
        "first": db(x[:, :, :1], y[:, :, :1]),
        "entry": db(x[:, :, 1:5], y[:, :, 1:5]),
        "rest": db(x[:, :, 5:], y[:, :, 5:]),
        "exit_jump": float(((y[:, :, 1] - y[:, :, 0]).abs() * 127.5).mean()),
        "exit_jump_true": float(((x[:, :, 1] - x[:, :, 0]).abs() * 127.5).mean()),
    }


# ---------------------------------------------------------------------------------------------------
# 2. The latent dataset and the transformer
# ---------------------------------------------------------------------------------------------------


@dataclass
class LatentSet:
    """Episodes in the VAE's normalised latent space, on one device.

    latents (N, C, 9K, h, w) float16: the K chunks, each encoded alone; image (N, C, 1, h, w): the
    first frame alone; still (N, C, 1, h, w): the last latent of the first frame's 33-frame still
    clip; ids/keep (N, L): the prompts' tokens; actions (N, K, 2).
    """

    latents: torch.Tensor
    image: torch.Tensor
    still: torch.Tensor
    ids: torch.Tensor
    keep: torch.Tensor
    actions: torch.Tensor
    agent: torch.Tensor | None = None  # (N, 9K, h, w) bool: latents whose pixels show the agent

    @property
    def chunks(self) -> int:
        return self.latents.shape[2] // WINDOW_LATENTS

    def save(self, path: str | Path) -> None:
        torch.save({k: v.cpu() for k, v in self.__dict__.items() if v is not None}, path)

    @classmethod
    def cat(cls, sets: list[LatentSet]) -> LatentSet:
        """One set of the episodes of `sets` (the same chunks per episode), in order: e.g. episodes
        rendered with and without a day shift, trained on together."""
        if not sets or len({s.chunks for s in sets}) != 1:
            raise ValueError("LatentSet.cat needs one or more sets with the same chunks per episode")
        fields = [f for f, v in sets[0].__dict__.items() if v is not None]
        if any(getattr(s, f) is None for s in sets for f in fields):
            raise ValueError("LatentSet.cat needs sets with the same fields")
        return cls(**{f: torch.cat([getattr(s, f) for s in sets]) for f in fields})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device) -> LatentSet:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return cls(**{k: v.to(device) for k, v in data.items()})


@torch.no_grad()
def encode_episodes(vae: WanVAE, data: Episodes, text: BuiltinTextEncoder, batch: int = 16) -> LatentSet:
    """Encode every chunk, first frame and still clip with `vae` (posterior means, normalised)."""
    device = vae.device
    N, K = data.frames.shape[:2]

    def enc(x: torch.Tensor) -> torch.Tensor:
        with _autocast(device):
            return vae.normalize(vae.encode(x).float()).half()

    chunks, images, stills, agents = [], [], [], []
    for s in range(0, N, batch):
        frames = torch.from_numpy(data.frames[s : s + batch]).to(device)  # (b, K, 33, H, W, 3)
        b = frames.shape[0]
        agents.append(_agent_latents(frames))
        z = enc(_video(frames.flatten(0, 1)))  # (b·K, C, 9, h, w)
        chunks.append(z.unflatten(0, (b, K)).permute(0, 2, 1, 3, 4, 5).flatten(2, 3))  # (b, C, 9K, h, w)
        first = _video(torch.from_numpy(data.first[s : s + batch]).to(device)[:, None])  # (b, 3, 1, H, W)
        images.append(enc(first))
        stills.append(enc(first.expand(-1, -1, FRAMES_PER_CHUNK, -1, -1))[:, :, -1:])
    ids, lengths, _ = text.tokenize(data.prompts)
    keep = torch.arange(text.max_tokens)[None] < lengths[:, None]
    return LatentSet(
        latents=torch.cat(chunks),
        image=torch.cat(images),
        still=torch.cat(stills),
        ids=ids.to(device),
        keep=keep.to(device),
        actions=torch.from_numpy(data.actions).to(device),
        agent=torch.cat(agents),
    )


def _agent_latents(frames: torch.Tensor) -> torch.Tensor:
    """(b, K, 33, H, W, 3) uint8 -> (b, 9K, H/8, W/8) bool: the latents whose frames (the first
    alone, then groups of 4) and 8×8 pixels hold any of the agent's pixels."""
    mask = agent_mask(frames.flatten(0, 1))  # (bK, 33, H, W)
    first = mask[:, :1]
    rest = mask[:, 1:].unflatten(1, (-1, 4)).any(2)  # (bK, 8, H, W)
    grid = torch.cat([first, rest], 1).float()  # (bK, 9, H, W)
    pooled = F.max_pool2d(grid, 8) > 0  # (bK, 9, H/8, W/8)
    b, K = frames.shape[:2]
    return pooled.unflatten(0, (b, K)).flatten(1, 2)


class ToyWorld(torch.nn.Module):
    """The trained pair: transformer and text encoder (saved side by side as a pipeline's folders)."""

    def __init__(self, transformer: HeliosTransformer, text: BuiltinTextEncoder):
        super().__init__()
        self.transformer = transformer
        self.text_net = text.net
        self._text = text

    def embed(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The text encoder's forward with gradients: ids/keep (B, L) -> (B, L, D), zero past EOS."""
        return _zero_past_lengths(self.text_net(ids, keep), keep.sum(1))

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.transformer.save_pretrained(folder / "transformer")
        self._text.save_pretrained(folder / "text_encoder")


def world_sample(
    data: LatentSet, batch: int, gen: torch.Generator, *, i2v: float = 0.5
) -> tuple[Sample, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random batch of (sample, episode index, agent map of the target or None, action ids).

    Text-to-video rows: the history is the latents before the window (zero-padded) and the anchor the
    episode's first latent (zeros for window 0), as `MultiTermMemory` holds them. Image-to-video rows
    (share `i2v`): the anchor is the first frame's latent and, in window 0, the newest history frame
    is the still clip's latent, as `WorldEngine.reset(image=...)` sets them.
    """
    device = data.latents.device
    g = gen.device
    N = data.latents.shape[0]
    n = torch.randint(0, N, (batch,), generator=gen, device=g).to(device)
    k = torch.randint(0, data.chunks, (batch,), generator=gen, device=g).to(device)
    image_rows = (torch.rand(batch, generator=gen, device=g) < i2v).to(device)
    start = k * WINDOW_LATENTS  # (B,)
    target_t = start[:, None] + torch.arange(WINDOW_LATENTS, device=device)  # (B, 9)
    past_t = start[:, None] - HISTORY_FRAMES + torch.arange(HISTORY_FRAMES, device=device)  # (B, 19)
    lat = data.latents  # float16; only the picked latents become float32
    target = lat[n[:, None], :, target_t].permute(0, 2, 1, 3, 4).float()  # (B, C, 9, h, w)
    history = lat[n[:, None], :, past_t.clamp_min(0)].permute(0, 2, 1, 3, 4).float()  # (B, C, 19, h, w)
    history = history * (past_t >= 0)[:, None, :, None, None]
    first = (k == 0)[:, None, None, None, None]
    episode_first = lat[n, :, :1].float()
    anchor = torch.where(first, torch.zeros_like(episode_first), episode_first)
    image = image_rows[:, None, None, None, None]
    anchor = torch.where(image, data.image[n].float(), anchor)
    newest = torch.where(image & first, data.still[n].float(), history[:, :, -1:])
    history = torch.cat([history[:, :, :-1], newest], dim=2)
    sample = Sample(target.contiguous(), history.contiguous(), anchor.contiguous())
    agent = data.agent[n[:, None], target_t][:, None] if data.agent is not None else None  # (B, 1, 9, h, w)
    return sample, n, agent, data.actions[n, k]


def train_world(
    out: str | Path,
    data: LatentSet,
    *,
    batch: int = 32,
    max_steps: int = 100_000,
    minutes: float = 10.0,
    lr: float = 3e-4,
    anchor: bool = True,
    corrupt: bool = True,
    agent: float = 1.0,
    device: str | torch.device = "cpu",
    seed: int = 0,
    init: str | Path | None = None,
    drop_all: float = Stage1Recipe.drop_all,
    decay_steps: int = 0,
    compile: bool = False,
    action_dropout: float = 0.0,
) -> ToyWorld:
    """Train (or resume) the toy transformer and its text encoder in `out`.

    `agent`: the loss weight of the target latents that show the agent (1: a plain loss). `init`: a
    `train_world` folder whose weights a fresh run starts from. `drop_all`: the history dropout's
    share of text-to-video rows (no history, no anchor; spec 10's 0.4). `decay_steps`: decay the
    learning rate linearly to a tenth over the last that many steps before `max_steps`.
    `compile`: run the transformer through `torch.compile` (same numbers; fewer, fused kernels).
    `action_dropout`: the share of rows trained without an action (ids -1), so the sampler can
    guide on the action (`export_world(action_guidance=...)`).
    """
    device = torch.device(device)
    if init is not None:
        init = Path(init)
        transformer = HeliosTransformer.from_pretrained(
            init / "transformer", device=device, dtype=torch.float32
        )
        text = BuiltinTextEncoder.from_pretrained(init / "text_encoder", device=device)
    else:
        transformer = HeliosTransformer.from_config("toy", device=device, dtype=torch.float32, seed=seed)
        text = BuiltinTextEncoder.preset("toy", device=device)
    model = ToyWorld(transformer, text).train().requires_grad_(True)
    recipe = Stage1Recipe(drop_all=drop_all, keep_clean=Stage1Recipe.keep_clean if corrupt else 1.0)
    # Compiled or not, the module (and so the checkpoint) is the same; only the call differs.
    run_transformer = torch.compile(transformer) if compile else transformer

    def loss_fn(m: ToyWorld, step: int, gen: torch.Generator) -> torch.Tensor:
        sample, n, where, actions = world_sample(data, batch, gen)
        if action_dropout:
            dropped = torch.rand(batch, generator=gen, device=gen.device).to(actions.device) < action_dropout
            actions = torch.where(dropped[:, None], torch.full_like(actions, -1), actions)
        if not anchor:
            sample = replace(sample, anchor=torch.zeros_like(sample.anchor))
        weight = 1.0 + (agent - 1.0) * where.float() if agent != 1.0 and where is not None else None
        with _autocast(device):
            context = m.embed(data.ids[n], data.keep[n])
            forward = functools.partial(run_transformer, action=actions)  # called as forward(x, t, text, ...)
            return stage1_loss(forward, sample, context, recipe, gen, weight)

    trainer = Trainer(
        model, loss_fn, out, lr=lr, seed=seed, save_every=1000, warmup=200, decay_steps=decay_steps
    )
    trainer.run(max_steps=max_steps, max_minutes=minutes, log_every=200)
    report = {"step": trainer.step, "anchor": anchor, "corrupt": corrupt, "batch": batch, "agent": agent}
    report.update(drop_all=drop_all, lr=lr, decay_steps=decay_steps, action_dropout=action_dropout)
    (Path(out) / "world_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return model


# ---------------------------------------------------------------------------------------------------
# 3. Export
# ---------------------------------------------------------------------------------------------------


def export_world(
    world_dir: str | Path,
    vae_dir: str | Path,
    out: str | Path,
    *,
    anchor: bool = True,
    name: str | None = None,
    action_guidance: float = 1.0,
    seam_blend: int = 0,
) -> Path:
    """Write the pipeline folder `WorldModel.load` reads, weights in float16 (~18 MB).

    `action_guidance` > 1: the sampler guides on the action (for a world trained with action
    dropout): v = v(no action) + scale · (v(action) − v(no action)), two forwards per step.
    `seam_blend` > 0: the engine blends each chunk's first frames from the last frame shown over that
    many frames (model_index.json "seam_blend_frames", engine/seam.py)."""
    check_frames(seam_blend, "seam_blend")
    if not math.isfinite(action_guidance) or action_guidance < 1.0:
        raise ValueError(f"action_guidance must be a finite scale >= 1 (1: none), got {action_guidance}")
    world_dir, vae_dir, out = Path(world_dir), Path(vae_dir), Path(out)
    transformer = HeliosTransformer.from_pretrained(
        world_dir / "transformer", device="cpu", dtype=torch.float32
    )
    text = BuiltinTextEncoder.from_pretrained(world_dir / "text_encoder", device="cpu")
    vae = WanVAE.from_pretrained(vae_dir, device="cpu")
    transformer.to(torch.float16).save_pretrained(out / "transformer")
    BuiltinTextEncoder(text.config, _net=text.net.to(torch.float16), dtype=torch.float16).save_pretrained(
        out / "text_encoder"
    )
    vae.to(torch.float16).save_pretrained(out / "vae")
    scheduler = out / "scheduler"
    scheduler.mkdir(parents=True, exist_ok=True)
    (scheduler / "scheduler_config.json").write_text(json.dumps(TOY_SCHEDULER, indent=1) + "\n")
    index = {
        "_class_name": "HeliosPipeline",
        "name": name or out.name,
        "text_encoder": "builtin",
        "action_space": ACTION_SPACE,
        "anchor": anchor,
        "steps": [TOY_STEPS],
        "guidance_scale": float(action_guidance),
        "default_size": [HEIGHT, WIDTH],
    }
    if action_guidance > 1.0:
        index["guidance"] = "action"
    if seam_blend:
        index["seam_blend_frames"] = seam_blend
    (out / "model_index.json").write_text(json.dumps(index, indent=1) + "\n")
    return out


def folder_megabytes(folder: str | Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6


__all__ = [
    "ACTION_SPACE",
    "Episodes",
    "LatentSet",
    "ToyWorld",
    "encode_episodes",
    "export_world",
    "folder_megabytes",
    "latent_statistics",
    "reconstruction_psnr",
    "reconstruction_psnr_parts",
    "render_episodes",
    "train_vae",
    "train_world",
    "world_sample",
]
