"""The Unreal plugin's client core (integrations/unreal, plain C++17 over Debian's grpc++) against a
live `helios serve --model tiny`, through helios_world_harness.

What the plugin relies on: lockstep chunks and a prompt switch, free-run frames with no actions,
decoded pixels equal to what the server generated (RGB24, compared with the Python client's frames
of the same world) or close to it (JPEG, H.264), UNAUTHENTICATED ending the run with no retry, a
clean Stop() that closes the session, and recovery from a server killed and restarted on the same
port. docs/clients.md lists the checks.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
import zlib
from pathlib import Path

import grpc
import pytest

from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk._proto.helios.v1 import world_pb2_grpc as pb_grpc
from tests.interop.test_interop import Run, Server

from .conftest import CLIENT_TIMEOUT, TOKEN, run_harness, start_server

# A cold machine: apt install, the C++ build (~25 s on 2 cores), three server starts.
pytestmark = pytest.mark.timeout(1200)

AUTH = (("authorization", f"Bearer {TOKEN}"),)
FRAMES_PER_CHUNK = 33
# The harness's defaults (helios_world_harness.cpp, Args).
PROMPT = "a lighthouse on a cliff above a calm sea, golden hour"
SWITCH = "the same lighthouse in a night storm, lightning"
SEED = 7


def stub(server: Server) -> pb_grpc.WorldServiceStub:
    return pb_grpc.WorldServiceStub(grpc.insecure_channel(server.target))


def test_lockstep_stream_and_prompt_switch(harness: Path, server: Server):
    """Reset frame, 2 chunks for 2 empty actions, a 3rd after a prompt switch; every frame in order,
    decoded to RGBA with opaque alpha; the pixels are the ones the Python client gets for the same
    world; Stop() ends Run() with OK and closes the session on the server."""
    run = run_harness(harness, server.target, "stream")
    assert run.returncode == 0, str(run)
    assert run.fact("INFO")["max_message_bytes"] == str(64 * 1024 * 1024), str(run)
    assert run.fact("INFO")["seam_blend_frames"] == "0", str(run)  # tiny: frames as decoded
    chunks = [(c["index"], c["frames"], c["action_seq"]) for c in run.facts("CHUNK")]
    assert chunks == [(str(k), str(FRAMES_PER_CHUNK), str(k)) for k in (1, 2, 3)], str(run)
    ok = run.fact("OK")
    assert ok["frames"] == str(1 + 3 * FRAMES_PER_CHUNK), str(run)
    assert float(run.fact("STOP")["seconds"]) < 5.0, str(run)

    # The same seed and actions through the Python stubs give the same RGB bytes, frame for frame.
    world = stub(server)
    last = pb.FrameOptions(encoding=pb.FRAME_ENCODING_RGB24, selection=pb.FRAME_SELECTION_LAST)
    sid = world.CreateSession(pb.CreateSessionRequest(width=64, height=64), metadata=AUTH).session_id
    reset = world.Reset(pb.ResetRequest(session_id=sid, prompt=PROMPT, seed=SEED, frames=last), metadata=AUTH)
    assert f"{zlib.crc32(reset.chunk.frames[0].data):08x}" == run.fact("RESET_FRAME")["crc32"]
    actions = [pb.Action(), pb.Action(), pb.Action(prompt=pb.PromptAction(text=SWITCH))]
    for action, fact in zip(actions, run.facts("CHUNK"), strict=True):
        step = world.Step(pb.StepRequest(session_id=sid, action=action, frames=last), metadata=AUTH)
        assert f"{zlib.crc32(step.chunk.frames[0].data):08x}" == fact["last_crc32"], str(run)
    world.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)

    # Stop() closed the harness's session: a Step on it is refused as on any closed session.
    with pytest.raises(grpc.RpcError) as err:
        world.Step(pb.StepRequest(session_id=ok["session"]), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_free_run_streams_without_actions(harness: Path, server: Server):
    """Free-run (the games' mode): two chunks arrive with no action sent; a prompt sent mid-stream
    applies at a later chunk boundary and its seq shows in the frames; frame_index never skips or
    repeats; Stop() is prompt while frames flow."""
    run = run_harness(harness, server.target, "freerun", "--format", "bgra")
    assert run.returncode == 0, str(run)
    free = run.fact("FREERUN")
    assert int(free["applied_at_chunk"]) >= 3, str(run)  # chunks 1 and 2 came before the action
    assert float(run.fact("STOP")["seconds"]) < 5.0, str(run)


@pytest.mark.parametrize("encoding", ["jpeg", "h264"])
def test_lossy_frames_decode_to_the_generated_pixels(harness: Path, server: Server, encoding: str):
    """The same world as RGB24 and as JPEG / H.264: the decoded pixels are near the raw ones, and
    much nearer than with R and B swapped or the rows flipped (so neither mistake can hide)."""
    run = run_harness(harness, server.target, "decode", "--encoding", encoding)
    assert run.returncode == 0, str(run)
    d = run.fact("DECODE")
    assert d["frames"] == str(FRAMES_PER_CHUNK), str(run)
    err = float(d["mean_abs_diff"])
    # The tiny model's random weights make noise-like frames, JPEG's and x264's worst case: the
    # error is ~12 levels there (a real scene is far lower); a decoding mistake is ~25-30.
    assert err < 18.0, str(run)
    assert err < 0.6 * float(d["swapped_rb_mean_abs_diff"]), str(run)
    assert err < 0.6 * float(d["flipped_rows_mean_abs_diff"]), str(run)


def test_unauthenticated_is_fatal_and_clear(harness: Path, server: Server):
    """A wrong and a missing token: Run() returns UNAUTHENTICATED after one connect attempt, with a
    message that says what to do, and delivers no frame."""
    run = run_harness(harness, server.target, "unauthenticated")
    assert run.returncode == 0, str(run)
    checks = {c["name"]: c for c in run.facts("CHECK")}
    assert set(checks) == {"wrong_token", "missing_token"}, str(run)
    for check in checks.values():
        assert check["code"] == "UNAUTHENTICATED", str(run)
        assert check["attempts"] == "1" and check["fatal"] == "1" and check["frames"] == "0", str(run)
        assert float(check["seconds"]) < 10.0, str(run)
    assert "--token" in run.output, str(run)  # the advice names the server's flag


def test_latency_scenario_reports_server_encode_time(harness: Path, server: Server):
    """The latency scenario (bench/client_latency.py's source) prints a line per frame and, per
    chunk, the server's encode seconds for the stream's JPEG frames (non-zero)."""
    run = run_harness(harness, server.target, "latency", "--encoding", "jpeg", "--chunks", "1")
    assert run.returncode == 0, str(run)
    assert len(run.facts("FRAME")) == FRAMES_PER_CHUNK, str(run)
    for frame in run.facts("FRAME"):
        assert 0 < float(frame["transport_us"]) < 10e6 and float(frame["decode_us"]) > 0, str(run)
    chunk = run.fact("CHUNK")
    assert chunk["frames"] == str(FRAMES_PER_CHUNK) and float(chunk["encode_s"]) > 0, str(run)


def test_survives_server_restart(harness: Path, tmp_path: Path):
    """SIGKILL the server (front and workers) under a streaming client; start a new one on the same
    port. The client reports the lost session, reconnects on a new channel with backoff, starts a
    new session and streams a whole chunk of it."""
    first = start_server(0, tmp_path / "first.log")
    argv = [str(harness), "--target", first.target, "--token", TOKEN, "--scenario", "restart"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    second: Server | None = None
    try:
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"the harness exited before READY\n{''.join(output)}"
            if line.startswith("READY "):
                break
        first.kill()
        time.sleep(1.0)  # the client is now backing off against a closed port
        second = start_server(first.port, tmp_path / "second.log")
        proc.wait(timeout=CLIENT_TIMEOUT)
        time.sleep(0.2)
        run = Run(argv, proc.returncode, "".join(output))
        assert run.returncode == 0, str(run)
        ready = run.fact("READY")["session"]
        lost = run.fact("LOST")
        assert lost["session"] == ready and lost["code"] == "UNAVAILABLE", str(run)
        recovered = run.fact("RECOVERED")
        assert recovered["session"] != ready, str(run)
        assert int(recovered["attempts"]) >= 2, str(run)  # it backed off while the port was closed
        assert second.terminate() == 0, second.tail()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        first.kill()
        if second is not None:
            second.kill()


@pytest.mark.parametrize("encoding", [pb.FRAME_ENCODING_RGB24, pb.FRAME_ENCODING_JPEG])
def test_stream_chunk_done_carries_encode_seconds(server: Server, encoding: int):
    """The server side of the latency budget: a Stream's CHUNK_DONE event carries the seconds the
    front spent encoding that chunk's frames (JPEG: clearly above zero; RGB24 passes through)."""
    world = stub(server)
    sid = world.CreateSession(pb.CreateSessionRequest(width=64, height=64), metadata=AUTH).session_id
    none = pb.FrameOptions(selection=pb.FRAME_SELECTION_NONE)
    world.Reset(pb.ResetRequest(session_id=sid, prompt=PROMPT, seed=SEED, frames=none), metadata=AUTH)
    start = pb.StreamStart(session_id=sid, frames=pb.FrameOptions(encoding=encoding))
    requests = [pb.StreamRequest(start=start), pb.StreamRequest(action=pb.StreamAction(seq=1))]
    replies = list(world.Stream(iter(requests), metadata=AUTH, timeout=120))
    frames = [r.frame for r in replies if r.WhichOneof("kind") == "frame"]
    done = [r.event for r in replies if r.event.type == pb.SESSION_EVENT_TYPE_CHUNK_DONE]
    assert len(frames) == FRAMES_PER_CHUNK and len(done) == 1
    encode = done[0].timings.encode_seconds
    if encoding == pb.FRAME_ENCODING_JPEG:
        assert encode > 0.001 * FRAMES_PER_CHUNK * 0.1, encode  # 33 JPEG encodes take real time
    else:
        assert 0.0 <= encode < 0.5, encode
    world.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


def test_stream_over_mutual_tls(harness: Path, tmp_path: Path):
    """The plugin's core against `helios serve --tls-cert --tls-key --tls-client-ca` with a CA made
    for the test: with the CA and a client certificate the lockstep scenario runs as over plaintext."""
    from tests.tls_files import make_pki

    from .conftest import SERVE_FLAGS

    pki = make_pki(tmp_path / "pki")
    tls = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    tls += ["--tls-client-ca", str(pki.ca)]
    server = Server.start([*SERVE_FLAGS, *tls], 0, tmp_path / "tls.log")  # listening: workers ready
    try:
        client_tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert)]
        run = run_harness(harness, server.target, "stream", *client_tls, "--tls-key", str(pki.client_key))
        assert run.returncode == 0, str(run)
        assert run.fact("OK")["frames"] == str(1 + 3 * FRAMES_PER_CHUNK), str(run)
    finally:
        server.terminate()
