"""The `helios` command line.

Parsing lives here and imports nothing heavy, so `helios --help` works with the light client alone;
commands that need the model import the runtime when they run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from helios_runtime import DEFAULT_MODEL
from helios_runtime.chunk import FPS
from helios_runtime.server.front.settings import FLAGS, RAY_FLAGS, add_flags
from helios_runtime.sim.procedural import PAN_PROBABILITY

RUNTIME_HINT = (
    "this command needs the runtime: pip install 'helios-world-sdk[runtime]' "
    "(on a CPU-only machine: pip install torch==2.13.0 first)"
)

MODEL_HELP = (
    "toy (the shipped world's trained transformer, as `helios serve` names it), a preset with random "
    "weights (tiny, 1.3b, 14b; random-1.3b / random-14b name the same), or a diffusers-format Helios "
    "transformer folder (e.g. Helios-Distilled/transformer). Default: tiny"
)
INFO_MODEL_HELP = (
    "a preset (tiny, 1.3b, 14b, or random-1.3b / random-14b as `helios serve` names them), toy (the "
    "shipped world's transformer), a transformer folder or a pipeline folder. Default: tiny"
)
WORLD_MODEL_HELP = FLAGS["model"][1]
DEFAULT_PROMPT = "a meadow at noon with trees and sheep"
PROMPT_HELP = (
    "the scene prompt (default: %(default)r); the toy world knows only sentences of its grammar, "
    "'a BIOME at TIME [in WEATHER] [with OBJECTS]' (docs/eval.md), and refuses others"
)


def add_precision(parser: argparse.ArgumentParser) -> None:
    """--precision: the transformer's GEMM precision on a GPU (the fast path; ignored on the CPU)."""
    parser.add_argument(
        "--precision",
        choices=["bf16", "fp8"],
        default=None,
        help="bf16 (default) or fp8: float8 GEMMs in the transformer blocks on a GPU, 1.31x the bf16 "
        "FPS on an H200 at ~0.04 relative L2 (docs/performance.md); on a CPU serve ignores it, "
        "rollout and eval drift emulate it (accuracy, not speed); default $HELIOS_PRECISION or bf16",
    )


def add_threads(parser: argparse.ArgumentParser, whose: str = "the engine's") -> None:
    """--threads: one setting, as `helios serve`'s (helios_runtime/threads.py)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help=f"{whose} CPU threads (default: $HELIOS_THREADS, else the physical cores available to "
        "this process, at most 4; never more than the cores)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helios",
        description="Helios world-simulation SDK: run the Helios video world model and inspect checkpoints.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"helios-world-sdk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _add_forward,
        _add_rollout,
        _add_serve,
        _add_play,
        _add_record,
        _add_eval,
        _add_train,
        _add_info,
    ):
        add(sub)
    return parser


def _add_forward(sub: Any) -> None:
    """`helios forward`: one transformer forward on a chunk with its full memory."""
    fwd = sub.add_parser(
        "forward",
        help="denoise one chunk with its full multi-term memory (one transformer forward) and report it",
        description=(
            "Run one Helios transformer forward on a chunk of 9 noisy latent frames (33 video frames) "
            "with the full multi-term memory (first-frame anchor + long 16 / mid 2 / short 1 history "
            "latents), print the token layout, timing and output statistics."
        ),
    )
    fwd.add_argument("--model", default="tiny", help=MODEL_HELP)
    fwd.add_argument(
        "--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if present)"
    )
    fwd.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default: bfloat16 on GPU, float32 on CPU",
    )
    fwd.add_argument(
        "--height",
        type=int,
        default=None,
        help="video height in pixels, a multiple of 16 (default: 96 for tiny, 384 otherwise)",
    )
    fwd.add_argument(
        "--width",
        type=int,
        default=None,
        help="video width in pixels, a multiple of 16 (default: 160 for tiny, 640 otherwise)",
    )
    fwd.add_argument("--batch", type=int, default=1, help="sessions in the batch (default 1)")
    fwd.add_argument(
        "--timestep", type=float, default=999.0, help="diffusion timestep in [0, 1000] (default 999)"
    )
    fwd.add_argument("--seed", type=int, default=0, help="seed of the random inputs and random weights")
    fwd.add_argument("--repeat", type=int, default=3, help="timed forwards after one warm-up (default 3)")
    fwd.add_argument(
        "--save", default=None, metavar="FOLDER", help="also write the model as a diffusers-format folder"
    )


def _add_rollout(sub: Any) -> None:
    """`helios rollout`: a world generated chunk by chunk into an mp4."""
    roll = sub.add_parser(
        "rollout",
        help="generate a world chunk by chunk with the stepwise engine and write it to an mp4",
        description=(
            "Reset a world from a prompt (optionally an image or a video), step it chunk by chunk "
            "(33 frames each), and write every frame to an mp4 as it is decoded. Prompt changes "
            "blend in over 3 chunks, as in Helios' interactive mode."
        ),
    )
    roll.add_argument("--model", default=DEFAULT_MODEL, help=WORLD_MODEL_HELP)
    roll.add_argument("--prompt", default=DEFAULT_PROMPT, help=PROMPT_HELP)
    roll.add_argument(
        "--switch",
        action="append",
        default=[],
        metavar="CHUNK=PROMPT",
        help="change the prompt at chunk CHUNK (repeatable), e.g. --switch '4=a desert at night with rocks'",
    )
    roll.add_argument("--image", default=None, help="start from this image (image-to-video)")
    roll.add_argument(
        "--video", default=None, help="continue this video (video-to-video; at least 33 frames)"
    )
    roll.add_argument("--chunks", type=int, default=4, help="chunks to generate, 33 frames each (default 4)")
    roll.add_argument("--seed", type=int, default=0, help="world seed (same seed and actions, same video)")
    roll.add_argument("--height", type=int, default=None, help="pixels (default: the model's; toy 96)")
    roll.add_argument("--width", type=int, default=None, help="pixels (default: the model's; toy 160)")
    roll.add_argument(
        "--fps", type=int, default=FPS, help="frame rate of the mp4 (default %(default)s, Wan's)"
    )
    roll.add_argument("--out", default="world.mp4", help="output mp4 (default world.mp4)")
    roll.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    roll.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    add_threads(roll)
    add_precision(roll)


def _add_serve(sub: Any) -> None:
    """`helios serve`: the gRPC server; its flags come from `ServerSettings` (settings.py `FLAGS`)."""
    srv = sub.add_parser(
        "serve",
        help="run the gRPC world server (helios.v1.WorldService) with engine worker processes",
        description=(
            "Serve worlds over gRPC: a grpc.aio front (auth, validation, sessions, frame encoding) and one "
            "engine worker process per --device, talking over ZeroMQ. Prints 'listening on HOST:PORT' once "
            "every worker has warmed up and health reports SERVING. SIGTERM drains and exits."
        ),
    )
    add_flags(srv, ["model"])
    srv.add_argument(
        "--device",
        action="append",
        default=None,
        help="one engine worker per --device (--device cuda:0 --device cuda:1); default one, cuda if present",
    )
    srv.add_argument(
        "--context-parallel",
        type=int,
        default=1,
        metavar="N",
        help=(
            "split each session's transformer over N GPUs (Ulysses sequence parallelism): each engine "
            "worker takes N consecutive --device entries (default: all visible GPUs in groups of N)"
        ),
    )
    add_flags(srv, [name for name in FLAGS if name != "model" and name not in RAY_FLAGS])
    fleet = srv.add_argument_group(
        "scale-out on a Ray cluster (needs: pip install 'helios-world-sdk[ray]')",
        "Engine workers become Ray Serve replicas spread over the cluster's GPUs; this process stays "
        "the only gRPC endpoint and keeps each session on the replica that holds it. If a replica "
        "dies, only its sessions fail (UNAVAILABLE) and Serve starts a new one. "
        "Example: ray start --head (and ray start --address HEAD:6379 on each GPU node), then "
        "helios serve --ray auto --replicas 8 --host 0.0.0.0",
    )
    add_flags(fleet, RAY_FLAGS)


def _add_play(sub: Any) -> None:
    """`helios play`: a local server with the browser page, for a person at a keyboard."""
    play = sub.add_parser(
        "play",
        help="play a world in your browser: starts a local server with the web page and prints its URL",
        description=(
            "Start a local helios server with the embedded default world (the toy world: a small trained "
            "model that runs in real time on a CPU) and its browser gateway, then print the page's URL "
            "(--open opens it). In the page: W A S D or the arrows move the agent, J L I K turn the "
            "camera, the prompt box changes the scene (e.g. 'a desert at dusk with rocks'). The model "
            "loads and warms up first (seconds on a CPU for the toy world); Ctrl-C stops the server. "
            "The page speaks the WebSocket protocol of docs/web.md; `helios serve --web-port` serves the "
            "same page beside gRPC."
        ),
    )
    add_flags(play, ["model", "threads"])
    play.add_argument(
        "--web-port", type=int, default=8000, help="the page's port (default %(default)s; 0 picks a free one)"
    )
    play.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)"
    )
    play.add_argument(
        "--grpc-port", type=int, default=0, help="the gRPC port beside the page (default 0: a free one)"
    )
    play.add_argument("--device", default=None, help="torch device of the engine (default: cuda if present)")
    play.add_argument(
        "--token",
        default=None,
        help="require this token (typed into the page); default $HELIOS_TOKEN, else none on this machine",
    )
    play.add_argument("--open", action="store_true", help="open the page in the default web browser")


def _add_record(sub: Any) -> None:
    """`helios record`: a server's world streamed into an mp4."""
    rec = sub.add_parser(
        "record",
        help="stream a world from a helios server (gRPC) into an mp4; --serve starts a local server",
        description=(
            "Connect to a helios server (or start one with --serve), create a session, reset it with the "
            "prompt and stream chunks in lockstep into an mp4, frame by frame as the server decodes them."
        ),
    )
    rec.add_argument(
        "--server", default="127.0.0.1:50051", help="HOST:PORT of a running server (default 127.0.0.1:50051)"
    )
    rec.add_argument(
        "--serve", action="store_true", help="start a local `helios serve` on a free port for this run"
    )
    rec.add_argument("--model", default=DEFAULT_MODEL, help="model for --serve: " + WORLD_MODEL_HELP)
    add_threads(rec, "with --serve: the local server's")
    rec.add_argument(
        "--token",
        default=None,
        help="bearer token (visible in the process list: prefer --token-file or $HELIOS_TOKEN)",
    )
    rec.add_argument("--token-file", default=None, metavar="PATH", help="read the bearer token from a file")
    rec.add_argument("--tls", action="store_true", help="connect over TLS, verified by the system's roots")
    rec.add_argument("--tls-ca", default=None, metavar="PATH", help="verify the server with this PEM CA")
    rec.add_argument(
        "--tls-cert", default=None, metavar="PATH", help="this client's PEM certificate, for mutual TLS"
    )
    rec.add_argument("--tls-key", default=None, metavar="PATH", help="the PEM private key of --tls-cert")
    rec.add_argument("--prompt", default=DEFAULT_PROMPT, help=PROMPT_HELP)
    rec.add_argument(
        "--keys",
        default="d,d,s,s,a,a,w,w",
        metavar="K1,K2,...",
        help="the keys held in each chunk after the first, repeating, '+' between keys of one chunk, "
        "'-' for none (default d,d,s,s,a,a,w,w: a walk round a square; w/a/s/d move the toy world's "
        "agent, other models get them as motion phrases); --keys - sends no keys",
    )
    rec.add_argument(
        "--switch", action="append", default=[], metavar="CHUNK=PROMPT", help="change the prompt at CHUNK"
    )
    rec.add_argument("--chunks", type=int, default=9, help="chunks to record, 33 frames each (default 9)")
    rec.add_argument("--seed", type=int, default=0, help="world seed")
    rec.add_argument(
        "--start",
        choices=["auto", "text", "world"],
        default="auto",
        help="how the first chunk starts: text (the prompt alone), world (image-to-video from the "
        "procedural world's first frame for the prompt and --seed; the prompt must be a sentence of "
        "its grammar), auto (world on the shipped toy model, else text; the default)",
    )
    rec.add_argument("--image", default=None, metavar="PATH", help="start from this PNG / JPEG instead")
    rec.add_argument("--width", type=int, default=None, help="pixels (default: the server's)")
    rec.add_argument("--height", type=int, default=None, help="pixels (default: the server's)")
    rec.add_argument("--out", default="world.mp4", help="output mp4 (default world.mp4)")
    rec.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def _add_eval(sub: Any) -> None:
    """`helios eval drift`: a predictor rolled beside the procedural simulator."""
    ev = sub.add_parser(
        "eval", help="benchmarks of a world model against a procedural simulator with known ground truth"
    )
    ev_sub = ev.add_subparsers(dest="eval_command", metavar="BENCHMARK", required=True)
    drift = ev_sub.add_parser(
        "drift",
        help="roll a predictor beside the procedural simulator and report drift per chunk",
        description=(
            "Roll a predictor (the model through the engine, or the copy-last-frame baseline) beside the "
            "procedural top-down simulator (helios_runtime.sim) from the same first frame, prompt and "
            "seeded action sequence, over several held-out seeds. Per chunk of 33 frames it reports, "
            "averaged over seeds: PSNR and SSIM against the simulator's frames, the colour-histogram "
            "distance, the agent's position error (the agent has a unique colour) and whether the "
            "generated agent moved the commanded way, and the jump across each chunk boundary beside "
            "the change inside a chunk; the copy-last-frame and blurred-still baselines always run "
            "too. The summary checks issue 20's targets: direction agreement >= 0.95, histogram "
            "distance at 60 s <= 1.25x its value at 6 s, boundary jump <= 2x the within-chunk p95, "
            "PSNR over the first 10 s >= 1 dB above the better baseline and above both at 60 s, the "
            "agent visible in >= 99% of frames. Test seeds start at 100000; choices are made on the "
            "validation seeds 90000-90019 (docs/eval.md). Progress goes to stderr, the results to a "
            "JSON file."
        ),
    )
    drift.add_argument(
        "--predictor",
        choices=["copy-last", "engine", "vae-roundtrip"],
        default="engine",
        help="engine: the model via WorldEngine (image-to-video from the first frame); copy-last: only "
        "the baseline; vae-roundtrip: the simulator's own chunks through the model's VAE, the ceiling "
        "a perfect transformer would reach (default engine)",
    )
    drift.add_argument("--model", default=DEFAULT_MODEL, help=WORLD_MODEL_HELP)
    drift.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    add_threads(drift)
    add_precision(drift)
    drift.add_argument("--seeds", type=int, default=20, help="held-out worlds (default 20)")
    drift.add_argument(
        "--first-seed", type=int, default=100_000, help="seed of the first world (default 100000)"
    )
    drift.add_argument(
        "--chunks", type=int, default=29, help="chunks per world, 33 frames each (default 29: 60 s at 16 fps)"
    )
    drift.add_argument("--height", type=int, default=96, help="simulator pixels (default 96)")
    drift.add_argument("--width", type=int, default=160, help="simulator pixels (default 160)")
    drift.add_argument(
        "--model-height", type=int, default=None, help="pixels the model runs at (default: the model's)"
    )
    drift.add_argument(
        "--model-width", type=int, default=None, help="pixels the model runs at (default: the model's)"
    )
    drift.add_argument(
        "--out",
        default=None,
        help="results JSON (default helios-eval/drift_<predictor>.json under the current folder)",
    )
    drift.add_argument(
        "--plot", default=None, metavar="PATH", help="also plot per-chunk metrics (matplotlib)"
    )
    drift.add_argument(
        "--seam-blend",
        type=int,
        default=None,
        metavar="N",
        help="blend each chunk's first N frames from the last frame shown, for the model and its VAE "
        "round trip (docs/engine.md; default: the model's own setting, 2 for the toy, 0 for Helios)",
    )
    drift.add_argument(
        "--frozen-daylight",
        action="store_true",
        help="diagnostic: hold the simulator's daylight at the prompt's time of day, separating a "
        "model's own colour drift from the day advancing (the issue's targets are defined with it moving)",
    )
    drift.set_defaults(handler="eval_drift")


def _add_train(sub: Any) -> None:
    """`helios train vae | latents | world | export`: the toy world's training steps."""
    tr = sub.add_parser(
        "train",
        help="train the toy world (VAE, transformer + text encoder) on the procedural simulator",
        description=(
            "Train the Helios architecture at toy scale on the procedural world (helios_runtime.sim), "
            "in resumable runs of at most --minutes each: `vae`, then `latents` (encode a dataset with "
            "the trained VAE), then `world` (the transformer with the stage-1 recipe and the learned "
            "move/pan action, and the text encoder), then `export` (the float16 pipeline folder that "
            "`helios serve --model FOLDER` and the default model load). Re-running a step with the same "
            "--out resumes it. See docs/training.md."
        ),
    )
    tr_sub = tr.add_subparsers(dest="train_command", metavar="STEP", required=True)
    for add in (_add_train_vae, _add_train_latents, _add_train_world, _add_train_export):
        add(tr_sub).set_defaults(handler="train")


def _device_and_seed(step: argparse.ArgumentParser) -> None:
    step.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    step.add_argument("--seed", type=int, default=0, help="training set and initialisation seed (default 0)")


def _add_train_vae(sub: Any) -> argparse.ArgumentParser:
    t_vae = sub.add_parser("vae", help="train (or resume) the toy VAE, then measure its latent statistics")
    t_vae.add_argument("--out", required=True, help="checkpoint folder (resumed when it has a state)")
    t_vae.add_argument("--episodes", type=int, default=600, help="simulated episodes (default 600)")
    t_vae.add_argument("--chunks", type=int, default=4, help="chunks per episode (default 4)")
    t_vae.add_argument("--batch", type=int, default=32, help="clips per step (default 32)")
    t_vae.add_argument(
        "--clip-frames", type=int, default=9, help="frames per clip, 1 + 4k, at most 33 (default 9)"
    )
    t_vae.add_argument("--init", default=None, help="start from this trained VAE folder's weights")
    t_vae.add_argument(
        "--decoder-only",
        action="store_true",
        help="with --init: freeze the encoder (latents encoded before stay valid), train the decoder",
    )
    t_vae.add_argument(
        "--agent-weight", type=float, default=20.0, help="loss weight of the agent's pixels (default 20)"
    )
    t_vae.add_argument(
        "--first-weight",
        type=float,
        default=1.0,
        help="loss weight of a clip's first frame, the chunk's single-frame decode path (default 1; "
        "the shipped decoder: 8)",
    )
    t_vae.add_argument(
        "--entry-weight",
        type=float,
        default=1.0,
        help="loss weight of a clip's frames 1-4, the temporal upsamplers' first run (default 1; the "
        "shipped decoder: 2)",
    )
    t_vae.add_argument("--steps", type=int, default=20000, help="total optimizer steps (default 20000)")
    t_vae.add_argument(
        "--minutes", type=float, default=10.0, help="wall-clock limit of this run (default 10)"
    )
    t_vae.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate (default 5e-4)")
    _device_and_seed(t_vae)
    return t_vae


def _add_train_latents(sub: Any) -> argparse.ArgumentParser:
    t_lat = sub.add_parser("latents", help="render episodes and encode them with a trained VAE")
    t_lat.add_argument("--vae", required=True, help="the trained VAE folder (helios train vae --out)")
    t_lat.add_argument("--out", required=True, help="the latent dataset file (.pt)")
    t_lat.add_argument("--episodes", type=int, default=3000, help="simulated episodes (default 3000)")
    t_lat.add_argument("--chunks", type=int, default=6, help="chunks per episode (default 6)")
    t_lat.add_argument(
        "--day-shift",
        type=int,
        default=0,
        help="start each episode's day up to this many frames (16 a second) before or after the "
        "prompt's time of day, so the light moves as the world runs (default 0)",
    )
    t_lat.add_argument(
        "--pan-probability",
        type=float,
        default=PAN_PROBABILITY,
        help="the share of chunks with a camera pan (default %(default)g, as in the drift benchmark)",
    )
    _device_and_seed(t_lat)
    return t_lat


def _add_train_world(sub: Any) -> argparse.ArgumentParser:
    t_world = sub.add_parser("world", help="train (or resume) the transformer and text encoder")
    t_world.add_argument("--latents", required=True, help="the latent dataset (helios train latents --out)")
    t_world.add_argument("--out", required=True, help="checkpoint folder (resumed when it has a state)")
    t_world.add_argument("--batch", type=int, default=32, help="samples per step (default 32)")
    t_world.add_argument("--steps", type=int, default=100000, help="total optimizer steps (default 100000)")
    t_world.add_argument(
        "--minutes", type=float, default=10.0, help="wall-clock limit of this run (default 10)"
    )
    t_world.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    t_world.add_argument("--no-anchor", action="store_true", help="ablation: no first-frame anchor")
    t_world.add_argument("--no-corrupt", action="store_true", help="ablation: no Frame-Aware Corrupt")
    t_world.add_argument(
        "--agent-weight", type=float, default=1.0, help="loss weight of latents showing the agent (default 1)"
    )
    t_world.add_argument("--init", default=None, help="start a fresh run from this world folder's weights")
    t_world.add_argument(
        "--drop-all",
        type=float,
        default=0.4,
        help="share of text-to-video rows (history and anchor dropped; default 0.4, spec 10's stage 1)",
    )
    t_world.add_argument(
        "--decay-steps",
        type=int,
        default=0,
        help="decay the learning rate linearly to a tenth over the last N steps before --steps (default 0)",
    )
    t_world.add_argument(
        "--compile", action="store_true", help="run the transformer through torch.compile (GPU speed)"
    )
    t_world.add_argument(
        "--action-dropout",
        type=float,
        default=0.0,
        help="share of rows trained without an action, for action guidance at export (default 0)",
    )
    _device_and_seed(t_world)
    return t_world


def _add_train_export(sub: Any) -> argparse.ArgumentParser:
    t_exp = sub.add_parser("export", help="write the float16 pipeline folder the runtime loads")
    t_exp.add_argument("--world", required=True, help="helios train world --out")
    t_exp.add_argument("--vae", required=True, help="helios train vae --out")
    t_exp.add_argument("--out", required=True, help="the pipeline folder to write")
    t_exp.add_argument("--no-anchor", action="store_true", help="the world was trained with --no-anchor")
    t_exp.add_argument(
        "--action-guidance",
        type=float,
        default=1.0,
        help="guide the sampler on the action with this scale (> 1, for a world trained with "
        "--action-dropout; default 1: no guidance)",
    )
    t_exp.add_argument(
        "--seam-blend",
        type=int,
        default=0,
        help="model_index.json's seam_blend_frames: the engine blends each chunk's first N frames "
        "from the last frame shown (docs/engine.md; default 0, the shipped toy: 2)",
    )
    return t_exp


def _add_info(sub: Any) -> None:
    """`helios info`: a model's config and parameter count."""
    info = sub.add_parser(
        "info", help="print a model's config and parameter count (built on the meta device)"
    )
    info.add_argument("--model", default="tiny", help=INFO_MODEL_HELP)


def grpc_error() -> type[Exception]:
    import grpc

    return grpc.RpcError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "record":
        from .record_command import record

        try:
            return record(args)
        except (ValueError, OSError, ImportError, RuntimeError) as exc:
            print(f"helios record: error: {exc}", file=sys.stderr)
            return 2
        except grpc_error() as exc:
            print(f"helios record: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 2
    try:
        from helios_runtime import commands
    except ImportError as exc:
        print(f"helios {args.command}: {RUNTIME_HINT} ({exc})", file=sys.stderr)
        return 2
    try:
        return getattr(commands, getattr(args, "handler", args.command))(args)
    except (ValueError, OSError, ImportError) as exc:  # CheckpointError, InvalidInput: ValueErrors
        print(f"helios {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
