"""Implementations of the `helios` commands that run the model (parsing is in helios_sdk.cli)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from . import threads as _threads
from .model.checkpoint import resolve_device
from .model.config import PRESETS
from .model.transformer import HeliosTransformer, forward_flops

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Frame indices of one chunk with the default memory (spec 3.5): anchor 0, long 1..16, mid 17-18,
# newest history frame 19, noisy 20..28; the same for every chunk.
HISTORY_SPLIT = (1, 16, 2, 1, 9)


def chunk_inputs(
    model: HeliosTransformer, batch: int, lat_h: int, lat_w: int, timestep: float, seed: int
) -> dict:
    """Random inputs of one chunk: 9 noisy latent frames and a full multi-term memory."""
    cfg, device = model.config, model.device
    g = torch.Generator(device=device).manual_seed(seed)
    C = cfg.in_channels

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device)

    idx = torch.arange(sum(HISTORY_SPLIT), device=device).expand(batch, -1)
    anchor, long_, mid, newest, noisy = idx.split(HISTORY_SPLIT, dim=1)
    return dict(
        hidden_states=randn(batch, C, 9, lat_h, lat_w),
        timestep=torch.full((batch,), timestep, device=device),
        encoder_hidden_states=randn(batch, 512 if cfg.text_dim >= 1024 else 16, cfg.text_dim),
        indices_hidden_states=noisy,
        indices_latents_history_short=torch.cat([anchor, newest], dim=1),
        indices_latents_history_mid=mid,
        indices_latents_history_long=long_,
        latents_history_short=randn(batch, C, 2, lat_h, lat_w),
        latents_history_mid=randn(batch, C, 2, lat_h, lat_w),
        latents_history_long=randn(batch, C, 16, lat_h, lat_w),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def transformer_spec(model: str) -> str | Path:
    """What `helios forward` / `info --model` name -> a preset name (random weights) or a transformer
    folder. `toy` is the shipped world's trained transformer, as in every command; random-1.3b /
    random-14b are the presets, as `helios serve` names them; a pipeline folder means its transformer."""
    from .engine.world_model import TOY_FOLDER

    preset = model.removeprefix("random-")
    if model != "toy" and preset in PRESETS:
        return preset
    folder = TOY_FOLDER if model == "toy" else Path(model)
    if (folder / "model_index.json").is_file():
        folder = folder / "transformer"
    if not folder.exists():
        raise ValueError(
            f"--model {model!r} is neither a preset ({', '.join(sorted(PRESETS))}, random-1.3b, random-14b, "
            "toy) nor a folder: it does not exist"
        )
    return folder


def forward(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else None
    small = args.model in ("tiny", "toy")
    height = args.height or (96 if small else 384)
    width = args.width or (160 if small else 640)
    if height % 16 or width % 16 or height <= 0 or width <= 0:
        raise ValueError(
            f"--height and --width must be positive multiples of 16 (VAE ×8, patch ×2), got {height}×{width}"
        )
    if args.batch < 1 or args.repeat < 1:
        raise ValueError(f"--batch and --repeat must be at least 1, got {args.batch} and {args.repeat}")

    shipped = " (the shipped world's trained transformer)" if args.model == "toy" else ""
    print(f"loading {args.model}{shipped} on {device} ...", flush=True)
    t0 = time.perf_counter()
    model = HeliosTransformer.load(transformer_spec(args.model), device=device, dtype=dtype, seed=args.seed)
    model = model.eval()
    _sync(device)
    print(
        f"  {model.num_parameters():,} parameters, {model.dtype}, ready in {time.perf_counter() - t0:.2f} s"
    )
    if args.save:
        model.save_pretrained(args.save)
        print(f"  saved to {args.save}")

    lat_h, lat_w = height // 8, width // 8
    inputs = chunk_inputs(model, args.batch, lat_h, lat_w, args.timestep, args.seed)
    ph, pw = model.config.patch_size[1:]
    n = 9 * (lat_h // ph) * (lat_w // pw)
    with torch.inference_mode():
        out = model(**inputs)  # warm-up; also gives the token layout below
        _sync(device)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            out = model(**inputs)
            _sync(device)
            times.append(time.perf_counter() - start)

    hist = _history_tokens(model, lat_h, lat_w)
    K = inputs["encoder_hidden_states"].shape[1]
    best = min(times)
    flops = forward_flops(model.config, n, sum(hist.values()), K) * args.batch
    print(
        f"chunk: {args.batch} × 33 frames at {height}×{width} (latent 9×{lat_h}×{lat_w}), t={args.timestep:g}"
    )
    print("sequence: " + " | ".join(f"{k} {v}" for k, v in hist.items()) + f" | noisy {n}  (tokens)")
    print(f"forward: {best * 1e3:.1f} ms best of {args.repeat} ({flops / best / 1e12:.2f} TFLOP/s)")
    o = out.float()
    print(
        f"output: {tuple(out.shape)} {out.dtype}, mean {o.mean().item():+.4f}, std {o.std().item():.4f}, "
        f"finite {bool(torch.isfinite(o).all())}"
    )
    return 0


def _history_tokens(model: HeliosTransformer, lat_h: int, lat_w: int) -> dict[str, int]:
    """Token count of each memory term (spec 3.3): convs (1,2,2), (2,4,4), (4,8,8) with replicate padding."""
    _, ph, pw = model.config.patch_size

    def count(frames: int, k: int) -> int:
        return -(-frames // k) * -(-lat_h // (ph * k)) * -(-lat_w // (pw * k))

    return {"long": count(16, 4), "mid": count(2, 2), "short": count(2, 1)}


def info(args: argparse.Namespace) -> int:
    """A transformer's config and size: a preset, a world model's name (`toy`: the shipped world's
    weights; `random-14b`: the 14b preset), a transformer folder or a pipeline folder."""
    from .model.checkpoint import read_config
    from .model.config import CLASS_NAME, HeliosConfig

    spec = transformer_spec(args.model)
    if isinstance(spec, str):
        cfg = PRESETS[spec]
        source = f"preset {spec!r}" + (f" ({args.model}: random weights)" if spec != args.model else "")
    else:
        cfg = HeliosConfig.from_dict(read_config(spec, [CLASS_NAME], "Helios transformer"))
        source = "toy (the shipped world)" if args.model == "toy" else args.model
    with torch.device("meta"):
        count = HeliosTransformer(cfg).num_parameters()
    print(f"{source}: {count:,} parameters ({count * 2 / 1e9:.2f} GB in bfloat16)")
    for key, value in cfg.to_dict().items():
        if not key.startswith("_"):
            print(f"  {key}: {value}")
    return 0


# ---------------------------------------------------------------------------------------------------
# helios rollout
# ---------------------------------------------------------------------------------------------------


def rollout(args: argparse.Namespace) -> int:
    from helios_sdk.progress import Progress
    from helios_sdk.record_command import check_out, parse_switches
    from helios_sdk.video import Mp4Writer, read_frames

    from .engine.actions import Transition
    from .engine.engine import WorldEngine
    from .engine.world_model import WorldModel

    if args.chunks < 1:
        raise ValueError(f"--chunks must be at least 1, got {args.chunks}")
    if args.image and args.video:
        raise ValueError("give --image or --video, not both")
    switches = parse_switches(args.switch, args.chunks)
    check_out(args.out, args.force)
    image = read_frames(args.image, max_frames=1)[0] if args.image else None
    video = read_frames(args.video) if args.video else None
    threads = _threads.resolve(args.threads)
    _threads.apply(threads)

    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    model = WorldModel.load(args.model, device=args.device, seed=args.seed, fast=fast_path_choice(args))
    model.check_prompt(args.prompt, "--prompt")  # every prompt before the first frame
    for k, text in switches.items():
        model.check_prompt(text, f"--switch {k}")
    engine = WorldEngine(model)
    height = args.height or model.default_size[0]
    width = args.width or model.default_size[1]
    print(
        f"world: {args.prompt!r}, seed {args.seed}, {args.chunks} chunks of 33 frames at {height}×{width} "
        f"on {model.device}, {threads.describe()}",
        file=sys.stderr,
    )
    with Progress(args.chunks) as progress, Mp4Writer(args.out, fps=args.fps) as writer:

        def on_frame(_: int, frame: torch.Tensor) -> None:
            writer.write(frame.numpy())

        first = engine.reset(
            args.prompt,
            image=image,
            video=video,
            seed=args.seed,
            height=height,
            width=width,
            on_frame=on_frame,
        )
        progress.update(1, writer.frames_written)
        for k in range(1, args.chunks):
            action = Transition(switches[k], 3) if k in switches else None
            engine.step(first.session_id, action, on_frame=on_frame)
            progress.update(k + 1, writer.frames_written)
    print(f"wrote {writer.frames_written} frames to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------------
# helios serve
# ---------------------------------------------------------------------------------------------------


def fast_path_choice(args: argparse.Namespace):
    """The fast-path switches of this process's environment, with --precision on top when given."""
    import dataclasses

    from .engine.fastpath import FastPathChoice

    choice = FastPathChoice.from_env()
    precision = getattr(args, "precision", None)
    return dataclasses.replace(choice, precision=precision) if precision else choice


def serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import os

    from helios_sdk.credentials import TOKEN_ON_COMMAND_LINE

    from .logs import configure_logging
    from .server.front.server import run
    from .server.front.settings import from_flags
    from .server.worker.context_parallel.launch import group_devices

    if args.max_sessions < 1:
        raise ValueError(f"--max-sessions must be at least 1, got {args.max_sessions}")
    if args.idle_timeout <= 0:
        raise ValueError(f"--idle-timeout must be positive, got {args.idle_timeout}")
    if not args.watchdog >= 0:
        raise ValueError(f"--watchdog must be 0 (off) or a number of seconds, got {args.watchdog}")
    _check_ray_flags(args)
    if args.token and args.token_file:
        raise ValueError("give --token or --token-file, not both")
    settings = from_flags(
        args,
        devices=group_devices(args.device, args.context_parallel),
        # --token, else --token-file (read by the front), else $HELIOS_TOKEN
        token=args.token or (None if args.token_file else os.environ.get("HELIOS_TOKEN")) or None,
    )
    if settings.precision:
        # Workers (and, for Ray replicas, the front's FastPathChoice) read it from the environment.
        os.environ["HELIOS_PRECISION"] = settings.precision
    threads = settings.worker_threads()  # a bad --threads / $HELIOS_THREADS fails before anything starts
    configure_logging(args.json_logs)
    if settings.ray is None:
        workers = len(settings.devices)
        logging.getLogger("helios.front").info(
            "%d engine worker%s, each with %s", workers, "s" if workers > 1 else "", threads.describe()
        )
    if args.token:
        logging.getLogger("helios.front").warning(TOKEN_ON_COMMAND_LINE)
    asyncio.run(run(settings))
    return 0


def play(args: argparse.Namespace) -> int:
    """`helios play`: `helios serve` with the web page, for a person; progress while it warms up."""
    import asyncio
    import os

    from .logs import configure_logging
    from .server.front.settings import ServerSettings

    for flag, port in (("--web-port", args.web_port), ("--grpc-port", args.grpc_port)):
        if not 0 <= port <= 65535:
            raise ValueError(f"{flag} must be a port number (0 picks a free one), got {port}")
    settings = ServerSettings(
        model=args.model,
        devices=(args.device,),
        threads=args.threads,
        host=args.host,
        port=args.grpc_port,
        web_port=args.web_port,
        token=args.token or os.environ.get("HELIOS_TOKEN") or None,
        max_sessions=4,
    )
    threads = settings.worker_threads()
    configure_logging(False)
    logging.getLogger("helios").setLevel(logging.WARNING)  # the progress lines below say enough
    asyncio.run(_play(settings, threads, args.open))
    return 0


async def _play(settings, threads, open_browser: bool) -> None:
    import asyncio
    import signal
    import threading

    from .server.front.server import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = time.perf_counter()
    where = settings.devices[0] or "the default device (cuda if present)"
    print(
        f"helios play: loading the {settings.model} world on {where} ({threads.describe()}) and warming "
        "it up ...",
        file=sys.stderr,
    )

    async def progress() -> None:
        while True:
            await asyncio.sleep(5)
            print(f"  still warming up ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    ticker = asyncio.create_task(progress())
    try:
        async with serve(settings) as server:
            ticker.cancel()
            host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
            url = f"{server.web.scheme}://{host}:{server.web.port}/"
            print(f"ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            print(f"play at {url}", flush=True)
            print(
                "  W A S D / arrows move, J L I K turn the camera, the prompt box changes the scene; "
                f"gRPC on {settings.host}:{server.port}; Ctrl-C stops",
                file=sys.stderr,
                flush=True,
            )
            if open_browser:
                # A browser named by $BROWSER is waited for until it exits: never on the event loop.
                threading.Thread(target=_open_page, args=(url,), name="helios-open", daemon=True).start()
            await stop.wait()
            print("stopping ...", file=sys.stderr, flush=True)
    finally:
        ticker.cancel()


def _open_page(url: str) -> None:
    import webbrowser

    if not webbrowser.open(url):
        print("  (no browser could be opened here: open the URL yourself)", file=sys.stderr, flush=True)


def _check_ray_flags(args: argparse.Namespace) -> None:
    """The Ray flags make sense together and Ray is installed (before anything starts)."""
    if args.ray is None:
        if args.replicas != 1 or args.replica_gpus is not None:
            raise ValueError(
                "--replicas and --replica-gpus need --ray (without Ray: one --device per worker)"
            )
        return
    if args.device:
        raise ValueError("--device picks local devices; with --ray, Ray gives each replica its GPU")
    if getattr(args, "context_parallel", 1) != 1:
        raise ValueError("--context-parallel does not work with --ray yet")
    if args.replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {args.replicas}")
    if args.replica_gpus is not None and not 0 <= args.replica_gpus <= 1:
        raise ValueError(f"--replica-gpus must be between 0 and 1, got {args.replica_gpus}")
    if args.replica_cpus < 0:
        raise ValueError(f"--replica-cpus must not be negative, got {args.replica_cpus}")
    from .server.worker.replica import import_ray

    import_ray()  # ImportError with the install hint


# ---------------------------------------------------------------------------------------------------
# helios eval drift
# ---------------------------------------------------------------------------------------------------


def _device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name (/proc/cpuinfo) where there is one."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def eval_drift(args: argparse.Namespace) -> int:
    import importlib.util
    import json
    import os
    import platform

    import numpy as np

    from .eval.drift import CopyLastFrame, EnginePredictor, VaeRoundTrip, run_drift, seed_role

    if args.seeds < 1 or args.chunks < 1:
        raise ValueError(f"--seeds and --chunks must be at least 1, got {args.seeds} and {args.chunks}")
    if args.first_seed < 0:
        raise ValueError(f"--first-seed must not be negative, got {args.first_seed}")
    threads = _threads.resolve(args.threads)
    _threads.apply(threads)
    predictors: list = [CopyLastFrame()]
    device, precision, seam_blend = "cpu", None, None
    if args.predictor in ("engine", "vae-roundtrip"):
        from .engine.engine import WorldEngine
        from .engine.world_model import WorldModel

        print(f"loading {args.model} ({threads.describe()}) ...", file=sys.stderr, flush=True)
        model = WorldModel.load(args.model, device=args.device, seed=0, fast=fast_path_choice(args))
        device = str(model.device)
        precision = model.transformer.precision
        height = args.model_height or model.default_size[0]
        width = args.model_width or model.default_size[1]
        # The VAE's round trip runs beside the model: its ceiling, and the seams the VAE alone makes.
        seam_blend = model.seam_blend if args.seam_blend is None else args.seam_blend
        predictors.insert(
            0,
            VaeRoundTrip(
                model.vae,
                height=height,
                width=width,
                name=f"vae-roundtrip:{model.name}",
                seam_blend=seam_blend,
            ),
        )
        if args.predictor == "engine":
            engine = WorldEngine(model, max_sessions=2, seam_blend=seam_blend)
            predictor = EnginePredictor(engine, height=args.model_height, width=args.model_width, seed=0)
            predictors.insert(0, predictor)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    role = seed_role(seeds)
    if role != "test":
        print(
            f"note: seeds {seeds[0]}-{seeds[-1]} are {role} seeds, not the held-out test seeds "
            "(>= 100000): fine for choosing, not for reporting",
            file=sys.stderr,
        )

    plot_ok = args.plot is None or importlib.util.find_spec("matplotlib") is not None
    if not plot_ok:
        print("--plot needs matplotlib (pip install matplotlib); no plot will be written", file=sys.stderr)
    tty = sys.stderr.isatty()

    def progress(line: str) -> None:
        print("\r" + line if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    result = run_drift(
        predictors,
        seeds,
        args.chunks,
        height=args.height,
        width=args.width,
        progress=progress,
        frozen_daylight=args.frozen_daylight,
    )
    if tty:
        print(file=sys.stderr)
    result["settings"].update(
        predictor=args.predictor,
        model=args.model if args.predictor != "copy-last" else None,
        model_size=[args.model_height, args.model_width],
        seam_blend=seam_blend,
        device=device,
        device_name=_device_name(device),
        threads=torch.get_num_threads(),  # what --threads / $HELIOS_THREADS resolved to, in effect
        precision=precision,
        versions={"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__},
    )
    out = args.out or os.path.join("helios-eval", f"drift_{args.predictor}.json")  # under the current folder
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)

    print(f"{'predictor':<24} {'target':<40} {'value':>26}  pass")
    for name, summary in result["summary"].items():
        agree, hist, seam = summary["direction_agreement"], summary["hist_drift"], summary["seam"]
        early, last = summary["psnr_vs_baselines"], summary["psnr_last_chunk"]
        best = max(early["baselines_db"].values())
        rows = [
            ("direction agreement >= 0.95", f"{agree['value']:.3f}", agree["pass"]),
            (
                f"hist {hist['late_chunk_end_s']:.0f} s <= 1.25 × {hist['early_chunk_end_s']:.0f} s",
                f"{hist['late']:.4f} vs {hist['early']:.4f}",
                hist["pass"],
            ),
            (
                "boundary jump <= 2 × within p95",
                f"{seam['boundary_jump'] or 0:.2f} vs {seam['within_p95'] or 0:.2f}",
                seam["pass"],
            ),
            (
                f"PSNR to {early['window_end_s']:.0f} s >= best baseline + 1 dB",
                f"{early['value_db']:.2f} vs {best:.2f} dB",
                early["pass"],
            ),
            (
                f"PSNR at {last['chunk_end_s']:.0f} s > both baselines",
                f"{last['value_db']:.2f} vs {max(last['baselines_db'].values()):.2f} dB",
                last["pass"],
            ),
            (
                "agent visible >= 0.99",
                f"{summary['agent_visible']['value']:.3f}",
                summary["agent_visible"]["pass"],
            ),
        ]
        for target, value, ok in rows:
            print(f"{name:<24} {target:<40} {value:>26}  {'yes' if ok else 'no'}")
    print(f"wrote {out}")
    if args.plot and plot_ok:
        from .eval.drift import plot

        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


# ---------------------------------------------------------------------------------------------------
# helios train
# ---------------------------------------------------------------------------------------------------


def train(args: argparse.Namespace) -> int:
    import logging

    from .model.checkpoint import resolve_device
    from .train import toy_world as world

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    step = args.train_command
    if step == "export":
        out = world.export_world(
            args.world,
            args.vae,
            args.out,
            anchor=not args.no_anchor,
            action_guidance=args.action_guidance,
            seam_blend=args.seam_blend,
        )
        print(f"wrote {out} ({world.folder_megabytes(out):.1f} MB)")
        return 0
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    if step == "vae":
        world.train_vae(
            args.out,
            episodes=args.episodes,
            chunks=args.chunks,
            batch=args.batch,
            clip_frames=args.clip_frames,
            max_steps=args.steps,
            minutes=args.minutes,
            lr=args.lr,
            device=device,
            seed=args.seed,
            init=args.init,
            decoder_only=args.decoder_only,
            agent=args.agent_weight,
            first_weight=args.first_weight,
            entry_weight=args.entry_weight,
        )
    elif step == "latents":
        from .model.text_encoder import BuiltinTextEncoder
        from .model.vae import WanVAE

        vae = WanVAE.from_pretrained(args.vae, device=device)
        episodes = world.render_episodes(
            args.episodes,
            args.chunks,
            seed=args.seed,
            day_shift=args.day_shift,
            pan_probability=args.pan_probability,
        )
        data = world.encode_episodes(vae, episodes, BuiltinTextEncoder.preset("toy", device="cpu"))
        data.save(args.out)
        print(f"wrote {args.out}: {tuple(data.latents.shape)} latents")
    elif step == "world":
        data = world.LatentSet.load(args.latents, device)
        world.train_world(
            args.out,
            data,
            batch=args.batch,
            max_steps=args.steps,
            minutes=args.minutes,
            lr=args.lr,
            anchor=not args.no_anchor,
            corrupt=not args.no_corrupt,
            agent=args.agent_weight,
            device=device,
            seed=args.seed,
            init=args.init,
            drop_all=args.drop_all,
            decay_steps=args.decay_steps,
            compile=args.compile,
            action_dropout=args.action_dropout,
        )
    return 0
