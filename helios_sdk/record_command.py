"""`helios record`: stream a world from a helios server into an mp4 (the light client; no torch).

Connects (or, with `--serve`, starts a local `helios serve` on a free port first), checks the API
version, creates a session, resets it with the prompt, then streams chunks in lockstep — one action
per chunk, `--switch CHUNK=PROMPT` changing the prompt — writing each frame to the mp4 as it arrives.

The first chunk starts from the prompt alone (text-to-video), from an image (`--image`), or — the
default for the shipped toy world, `--start auto` — from the procedural world's own first frame for
the prompt and seed (image-to-video, as the drift benchmark starts it: the toy model keeps one agent
and the scene's look far better from an image than from text).
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

import grpc
import numpy as np

from ._proto.helios.v1 import world_pb2 as pb
from ._proto.helios.v1 import world_pb2_grpc as pb_grpc
from .client import channel_options
from .credentials import channel_credentials, token_from_flags
from .messages import image_proto
from .video import Mp4Writer

API_MAJOR = "1"


@contextlib.contextmanager
def local_server(model: str, token: str, timeout: float = 300.0) -> Iterator[str]:
    """Run `helios serve` on a free port; yield its address once it prints 'listening on'."""
    cmd = [sys.executable, "-m", "helios_sdk.cli", "serve", "--port", "0", "--model", model]
    # The token travels in the environment, not on the command line that `ps` shows to everyone.
    env = {**os.environ, "HELIOS_TOKEN": token}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        start = time.monotonic()
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
    """'d,d,w+d,-' -> [['d'], ['d'], ['w', 'd'], []]; '-' or '' alone -> [] (no keys at all)."""
    spec = spec.strip()
    if spec in ("", "-"):
        return []
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"--keys has an empty entry in {spec!r}; use '-' for a chunk without keys")
        out.append([] if part == "-" else [k.strip() for k in part.split("+") if k.strip()])
    return out


def record(args: argparse.Namespace) -> int:
    if args.chunks < 1:
        raise ValueError(f"--chunks must be at least 1, got {args.chunks}")
    switches = parse_switches(args.switch, args.chunks)
    keys = parse_keys(args.keys)  # a bad --keys fails before any server starts
    if args.image and not os.path.isfile(args.image):  # and so does a missing --image
        raise OSError(f"--image {args.image!r}: no such file")
    token = token_from_flags(args.token, args.token_file, _warn)
    tls = args.tls or args.tls_ca or args.tls_cert or args.tls_key
    if args.serve and tls:
        raise ValueError("--serve starts a plaintext local server; the --tls flags are for --server")
    if args.serve:
        token = token or "local-" + os.urandom(8).hex()
        with local_server(args.model, token) as address:
            return _record(address, token, args, switches, keys)
    return _record(args.server, token, args, switches, keys)


def _record(
    address: str, token: str, args: argparse.Namespace, switches: dict[int, str], keys: list[list[str]]
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
    session = stub.CreateSession(
        pb.CreateSessionRequest(width=args.width or 0, height=args.height or 0), metadata=metadata, timeout=60
    )
    print(
        f"{info.model.name} ({info.model.sampler}) at {session.width}×{session.height}, {args.chunks} chunks",
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
        start = time.monotonic()
        first = stub.Reset(reset, metadata=metadata, timeout=600).chunk

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

        with Mp4Writer(args.out, fps=info.fps or 16) as writer:
            for frame in first.frames:
                writer.write(np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width, 3))
            _progress(1, args.chunks, writer.frames_written, start)
            for msg in stub.Stream(requests(), metadata=metadata):
                if msg.WhichOneof("kind") == "frame":
                    f = msg.frame
                    writer.write(np.frombuffer(f.data, np.uint8).reshape(f.height, f.width, 3))
                elif msg.event.type == pb.SESSION_EVENT_TYPE_CHUNK_DONE:
                    _progress(msg.event.chunk_index + 1, args.chunks, writer.frames_written, start)
                elif msg.event.type in (pb.SESSION_EVENT_TYPE_ACTION_REJECTED, pb.SESSION_EVENT_TYPE_CLOSED):
                    print(f"\nserver: {msg.event.message}", file=sys.stderr)
    except BaseException:
        with contextlib.suppress(grpc.RpcError):  # the original error is the one to report
            close()
        raise
    close()
    print(f"\nwrote {writer.frames_written} frames to {args.out}")
    return 0


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
            raise ValueError("--start world needs the runtime (pip install 'helios-sdk[runtime]')") from exc
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


def _progress(done: int, total: int, frames: int, start: float) -> None:
    elapsed = time.monotonic() - start
    bar = "#" * round(24 * done / total) + "." * (24 - round(24 * done / total))
    sys.stderr.write(
        f"\rchunk {done}/{total} [{bar}] {elapsed:6.1f} s, {frames} frames, {frames / elapsed:5.1f} fps"
    )
    sys.stderr.flush()
