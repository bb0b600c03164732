"""`helios record`: stream a world from a helios server into an mp4 (the light client; no torch).

Connects (or, with `--serve`, starts a local `helios serve` on a free port first), checks the API
version, creates a session, resets it with the prompt, then streams chunks in lockstep — one action
per chunk, `--switch CHUNK=PROMPT` changing the prompt — writing each frame to the mp4 as it arrives.

The first chunk starts from the prompt alone (text-to-video), from an image (`--image`), or — the
default for the shipped toy world, `--start auto` — from the procedural world's own first frame for
the prompt and seed (image-to-video, as the drift benchmark starts it: the toy model keeps one agent
and the scene's look far better from an image than from text).

Everything that can be checked is checked before a frame is generated: the keys, the prompts (the toy
world knows only its grammar's), the output file (never overwritten without `--force`). A chunk the
server refuses, or a stream that ends early, fails the command (exit 2) with the server's words; the
mp4 then holds the frames before it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from helios_runtime import threads as _threads

from ._proto.helios.v1 import world_pb2 as pb
from ._proto.helios.v1 import world_pb2_grpc as pb_grpc
from .actions import KEYS
from .client import channel_options
from .credentials import channel_credentials, token_from_flags
from .messages import image_proto
from .progress import Progress, StatusLine, waiting
from .video import Mp4Writer

API_MAJOR = "1"
RUNTIME_HINT = "pip install 'helios-world-sdk[runtime]'"
# Every key some world knows: the prompt-template keys of models without a learned action space
# (helios_sdk.actions.KEYS) and the arrows ("ArrowUp" is "up"); a model's own set is narrower, so
# the server has the last word. The toy world (learned move/pan actions) knows w/a/s/d and the arrows.
KNOWN_KEYS = (*KEYS, "up", "down", "left", "right")
TOY_KEYS = ("w", "a", "s", "d", "up", "down", "left", "right")


@contextlib.contextmanager
def local_server(model: str, token: str, timeout: float = 300.0, threads: int | None = None) -> Iterator[str]:
    """Run `helios serve` on a free port (with `--threads` when given); yield its address once it
    prints 'listening on', showing the seconds while it loads and warms up."""
    cmd = [sys.executable, "-m", "helios_sdk.cli", "serve", "--port", "0", "--model", model]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    # The token travels in the environment, not on the command line that `ps` shows to everyone.
    env = {**os.environ, "HELIOS_TOKEN": token}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        start = time.monotonic()
        # Line by line even on a terminal: the server's own log lines arrive on the same stream.
        with waiting(f"starting a local helios server ({model})", StatusLine(tty=False)):
            line = proc.stdout.readline().strip() if proc.stdout else ""
        if not line.startswith("listening on "):
            raise RuntimeError(f"helios serve did not start (exit {proc.poll()}): {line!r}")
        print(f"started a local server in {time.monotonic() - start:.1f} s", file=sys.stderr)
        yield line.removeprefix("listening on ")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def parse_switches(specs: list[str], chunks: int) -> dict[int, str]:
    out = {}
    for spec in specs:
        index, sep, prompt = spec.partition("=")
        if not sep or not index.strip().isdigit():
            raise ValueError(f"--switch takes CHUNK=PROMPT (e.g. '3=a desert'), got {spec!r}")
        k = int(index)
        if not 1 <= k < chunks:
            raise ValueError(f"--switch chunk {k} is outside 1..{chunks - 1} (chunk 0 is the --prompt)")
        out[k] = prompt
    return out


def parse_keys(spec: str) -> list[list[str]]:
    """'d,d,w+d,-' -> [['d'], ['d'], ['w', 'd'], []]; '-' or '' alone -> [] (no keys at all).
    A key no world knows is a ValueError naming it."""
    spec = spec.strip()
    if spec in ("", "-"):
        return []
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"--keys has an empty entry in {spec!r}; use '-' for a chunk without keys")
        keys = [] if part == "-" else [k.strip() for k in part.split("+") if k.strip()]
        for key in keys:
            if _key_name(key) not in KNOWN_KEYS:
                raise ValueError(
                    f"--keys: unknown key {key!r} (in {part!r}); keys are {', '.join(KNOWN_KEYS)} "
                    "('+' joins the keys of one chunk, '-' is a chunk without keys)"
                )
        out.append(keys)
    return out


def _key_name(key: str) -> str:
    return key.lower().removeprefix("arrow")


def check_for_model(model: str, prompts: dict[str, str], keys: list[list[str]]) -> None:
    """What the model `model` is known to refuse, before anything is generated: the toy world takes
    only prompts of its grammar and moves its agent with w/a/s/d and the arrows. (Another model's
    server checks on its own, at the first chunk that needs it.)"""
    if model != "toy":
        return
    for key in (k for chunk in keys for k in chunk):
        if _key_name(key) not in TOY_KEYS:
            raise ValueError(
                f"--keys: unknown key {key!r} for the toy world; it knows {', '.join(TOY_KEYS)} "
                "(w/a/s/d or the arrows move its agent)"
            )
    try:
        from helios_runtime.engine.known_prompts import check_prompt
        from helios_runtime.sim.grammar import PromptGrammar
    except ImportError:  # without numpy's extras the server still refuses, at that chunk
        return
    for what, text in prompts.items():
        check_prompt(PromptGrammar(), text, model, what)


def check_out(path: str, force: bool) -> None:
    """Refuse an --out that exists (unless --force) or is a folder, before anything is generated."""
    out = Path(path)
    if out.is_dir():
        raise OSError(f"--out {path!r} is a folder; give a file, e.g. {str(out / 'world.mp4')!r}")
    if out.exists() and not force:
        raise OSError(f"--out {path!r} exists; pass --force to overwrite it, or another --out")


def record(args: argparse.Namespace) -> int:
    if args.chunks < 1:
        raise ValueError(f"--chunks must be at least 1, got {args.chunks}")
    switches = parse_switches(args.switch, args.chunks)
    keys = parse_keys(args.keys)  # a bad --keys fails before any server starts
    if args.image and not os.path.isfile(args.image):  # and so does a missing --image
        raise OSError(f"--image {args.image!r}: no such file")
    check_out(args.out, args.force)  # and an --out that would be overwritten
    token = token_from_flags(args.token, args.token_file, _warn)
    tls = args.tls or args.tls_ca or args.tls_cert or args.tls_key
    if args.serve and tls:
        raise ValueError("--serve starts a plaintext local server; the --tls flags are for --server")
    if args.threads is not None and not args.serve:
        raise ValueError("--threads sets the threads of the --serve server; a running server has its own")
    prompts = {"--prompt": args.prompt, **{f"--switch {k}": text for k, text in switches.items()}}
    if args.serve:
        check_for_model(args.model, prompts, keys)  # before the server starts
        threads = _threads.resolve(args.threads)
        token = token or "local-" + os.urandom(8).hex()
        with local_server(args.model, token, threads=args.threads) as address:
            return _record(address, token, args, switches, keys, prompts, f", {threads.describe()}")
    return _record(args.server, token, args, switches, keys, prompts)


def _record(
    address: str,
    token: str,
    args: argparse.Namespace,
    switches: dict[int, str],
    keys: list[list[str]],
    prompts: dict[str, str],
    note: str = "",
) -> int:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    credentials = channel_credentials(args.tls, args.tls_ca, args.tls_cert, args.tls_key)
    if credentials is None:
        channel = grpc.insecure_channel(address, options=channel_options(64 << 20))
    else:
        channel = grpc.secure_channel(address, credentials, options=channel_options(64 << 20))
    stub = pb_grpc.WorldServiceStub(channel)
    try:
        info = stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        raise OSError(
            f"cannot reach a helios server at {address}: {exc.code().name}: {exc.details()}"
        ) from exc
    if info.api_version.split(".")[0] != API_MAJOR:
        raise OSError(f"the server speaks helios API {info.api_version}; this client speaks {API_MAJOR}.x")
    check_for_model(info.model.name, prompts, keys)
    session = stub.CreateSession(
        pb.CreateSessionRequest(width=args.width or 0, height=args.height or 0), metadata=metadata, timeout=60
    )
    print(
        f"{info.model.name} ({info.model.sampler}) at {session.width}×{session.height}, "
        f"{args.chunks} chunks{note}",
        file=sys.stderr,
    )

    def close() -> None:
        stub.CloseSession(
            pb.CloseSessionRequest(session_id=session.session_id), metadata=metadata, timeout=30
        )

    try:  # whatever fails from here on, the session does not outlive this client
        options = pb.FrameOptions(encoding=pb.FRAME_ENCODING_RGB24, selection=pb.FRAME_SELECTION_ALL)
        reset = pb.ResetRequest(
            session_id=session.session_id, prompt=args.prompt, seed=args.seed, frames=options
        )
        image = start_image(args, info.model.name, session.height, session.width)
        if image is not None:
            reset.image.CopyFrom(image_proto(image))

        def requests():
            yield pb.StreamRequest(start=pb.StreamStart(session_id=session.session_id, frames=options))
            for k in range(1, args.chunks):
                if k in switches:
                    action = pb.Action(prompt=pb.PromptAction(text=switches[k]))
                elif keys and keys[(k - 1) % len(keys)]:
                    action = pb.Action(control=pb.ControlAction(keys=keys[(k - 1) % len(keys)]))
                else:
                    action = pb.Action()
                yield pb.StreamRequest(action=pb.StreamAction(seq=k, action=action))

        with Progress(args.chunks) as progress, Mp4Writer(args.out, fps=info.fps or 16) as writer:
            first = stub.Reset(reset, metadata=metadata, timeout=600).chunk
            for frame in first.frames:
                writer.write(np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width, 3))
            done = 1
            progress.update(done, writer.frames_written)
            if args.chunks > 1:
                done = _stream(stub.Stream(requests(), metadata=metadata), writer, progress, args)
        if done < args.chunks:
            raise RuntimeError(
                f"the stream ended after {done} of {args.chunks} chunks; {args.out} holds "
                f"{writer.frames_written} frames"
            )
    except BaseException:
        with contextlib.suppress(grpc.RpcError):  # the original error is the one to report
            close()
        raise
    close()
    print(f"wrote {writer.frames_written} frames to {args.out}")
    return 0


def _stream(call: Any, writer: Mp4Writer, progress: Progress, args: argparse.Namespace) -> int:
    """Write the stream's frames; return the chunks done (the first included). A refused action or
    the session's end raises, with the server's message."""
    done = 1
    try:
        for msg in call:
            if msg.WhichOneof("kind") == "frame":
                f = msg.frame
                writer.write(np.frombuffer(f.data, np.uint8).reshape(f.height, f.width, 3))
                continue
            event = msg.event
            if event.type == pb.SESSION_EVENT_TYPE_CHUNK_DONE:
                done = event.chunk_index + 1
                progress.update(done, writer.frames_written)
                if done >= args.chunks:
                    break
            elif event.type == pb.SESSION_EVENT_TYPE_ACTION_REJECTED:
                raise RuntimeError(
                    f"the server refused the action of chunk {event.action_seq + 1}: {event.message}; "
                    f"{args.out} holds the {writer.frames_written} frames before it"
                )
            elif event.type == pb.SESSION_EVENT_TYPE_CLOSED:
                raise RuntimeError(
                    f"the session ended after {done} of {args.chunks} chunks: {event.message}; "
                    f"{args.out} holds {writer.frames_written} frames"
                )
            elif event.type == pb.SESSION_EVENT_TYPE_FRAMES_DROPPED:
                _warn(f"the server dropped {event.dropped_frames} frames (this client read too slowly)")
    finally:
        call.cancel()  # nothing more is wanted (a no-op once the stream has ended)
    return done


def _warn(message: str) -> None:
    print(f"helios record: warning: {message}", file=sys.stderr)


def start_image(args: argparse.Namespace, model: str, height: int, width: int) -> bytes | np.ndarray | None:
    """The image the first chunk starts from: `--image` (file bytes, decoded by the server), the
    procedural world's first frame (`--start world`, or `auto` on the shipped toy world), or None
    (text-to-video)."""
    if args.image:
        with open(args.image, "rb") as f:
            return f.read()
    if args.start == "text" or (args.start == "auto" and model != "toy"):
        return None
    try:
        from helios_runtime.sim import ProceduralWorld
    except ImportError as exc:
        if args.start == "world":
            raise ValueError(f"--start world needs the runtime ({RUNTIME_HINT})") from exc
        return None
    try:
        world = ProceduralWorld(args.prompt, args.seed, height=height, width=width)
    except ValueError as exc:  # not a sentence of the world's grammar
        if args.start == "world":
            raise ValueError(f"--start world: {exc}") from exc
        print(f"starting from the prompt alone: {exc}", file=sys.stderr)
        return None
    print("starting from the procedural world's first frame (--start text: from the prompt)", file=sys.stderr)
    return world.frame()
