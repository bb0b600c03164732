"""Soak: many sessions for minutes against a real `helios serve`, with faults injected on a schedule.

Healthy clients step their worlds the whole time — lockstep streams, free-run streams and unary
steppers (idempotent `action_seq`) — while an injector, every `--fault-every` seconds, in turn:
SIGKILLs an engine worker, disconnects a stream mid-chunk, cancels a Step, lets a deadline land
mid-step, and sends bad inputs (undeserialisable bytes, a decompression-bomb PNG, a huge blend, a
1 MB session id, a bad action in a stream). Faults hit victim sessions of their own; a worker kill
also loses the healthy sessions that lived on that worker — those get ABORTED ("lost with its
engine worker"), which is expected only right after a kill; they then start a new session.

Reported (JSON in --out): frames lost / duplicated / reordered per healthy client (must be 0: a
gap must be covered by a FRAMES_DROPPED count), bystander failures (must be 0: any error on a
healthy client that is not an expected loss to a kill), RSS of the front and the workers over time,
and p50 / p99 chunk latency.

    python bench/soak.py --minutes 10 --out bench/results        # the committed run
    python bench/soak.py --minutes 1 --sessions 2                  # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
from _common import cpu_name, percentile

from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk._proto.helios.v1 import world_pb2_grpc as pb_grpc

TOKEN = "soak-" + os.urandom(8).hex()
AUTH = (("authorization", f"Bearer {TOKEN}"),)
ALL = pb.FrameOptions(encoding=pb.FRAME_ENCODING_JPEG, selection=pb.FRAME_SELECTION_ALL)
LOST_GRACE_S = 30.0  # a loss within this long after a worker kill is the kill's, not a bystander's
FRAMES = 33


# ---------------------------------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------------------------------


class Server:
    def __init__(self, model: str, workers: int, max_sessions: int):
        cmd = [sys.executable, "-m", "helios_sdk.cli", "serve", "--model", model, "--port", "0"]
        cmd += ["--max-sessions", str(max_sessions)]
        for _ in range(workers):
            cmd += ["--device", "cpu"]
        env = {**os.environ, "HELIOS_TOKEN": TOKEN}  # never on the command line
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        for line in self.proc.stdout:
            if line.startswith("listening on "):
                self.target = line.split()[-1]
                break
        else:
            raise SystemExit(f"the server exited with {self.proc.wait()} before listening")
        self.ready_s = time.monotonic() - t0
        self.ps = psutil.Process(self.proc.pid)

    def workers(self) -> list[psutil.Process]:
        found = []
        for c in self.ps.children(recursive=True):
            try:  # a killed worker is a zombie until the front reaps it
                if "helios_runtime.server.worker.main" in " ".join(c.cmdline()):
                    found.append(c)
            except psutil.Error:
                pass
        return found

    def rss(self) -> tuple[float, float]:
        """(front, all workers) resident memory in MiB."""
        front = self.ps.memory_info().rss / 2**20
        workers = 0.0
        for w in self.workers():
            try:
                workers += w.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                pass
        return front, workers

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])


# ---------------------------------------------------------------------------------------------------
# Healthy clients
# ---------------------------------------------------------------------------------------------------


@dataclass
class Record:
    name: str
    kind: str
    frames: int = 0
    chunks: int = 0
    dropped_reported: int = 0
    lost: int = 0  # frames missing and not reported dropped
    duplicated: int = 0
    reordered: int = 0
    losses_to_kills: int = 0  # sessions lost with a killed worker (expected)
    bystander_failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # s per chunk


class Soak:
    def __init__(self, server: Server, deadline: float, seed: int):
        self.server = server
        self.deadline = deadline
        self.kills: list[float] = []
        self.faults: dict[str, int] = {}
        self.fault_errors: list[str] = []
        self.rng = random.Random(seed)
        self.stop = threading.Event()

    def running(self) -> bool:
        return time.monotonic() < self.deadline and not self.stop.is_set()

    def expected_loss(self, exc: BaseException | str) -> bool:
        text = exc if isinstance(exc, str) else f"{getattr(exc, 'details', lambda: '')()}"
        recent = any(time.monotonic() - k < LOST_GRACE_S for k in self.kills)
        return recent and "lost with its engine worker" in text

    def new_world(self, stub, seed: int) -> str:
        """A session, retried while the server is busy restarting a worker."""
        give_up = time.monotonic() + 300
        while True:
            try:
                sid = stub.CreateSession(
                    pb.CreateSessionRequest(width=64, height=64), metadata=AUTH
                ).session_id
                stub.Reset(
                    pb.ResetRequest(session_id=sid, prompt="a meadow", seed=seed, frames=pb.FrameOptions()),
                    metadata=AUTH,
                    timeout=300,
                )
                return sid
            except grpc.RpcError as exc:
                # Only "the workers are starting" (UNAVAILABLE) or a loss right after a kill.
                if exc.code() != grpc.StatusCode.UNAVAILABLE and not self.expected_loss(exc):
                    raise
                if time.monotonic() > give_up:
                    raise
                time.sleep(0.5)

    # --- unary stepper ------------------------------------------------------------------------------

    def unary(self, rec: Record, seed: int) -> None:
        stub = pb_grpc.WorldServiceStub(channel(self.server.target))
        sid, chunk, seq = self.new_world(stub, seed), 0, 0
        while self.running():
            seq += 1
            t0 = time.monotonic()
            try:
                reply = self.step_with_retry(stub, sid, seq)
            except grpc.RpcError as exc:
                if self.expected_loss(exc):
                    rec.losses_to_kills += 1
                    sid, chunk, seq = self.new_world(stub, seed), 0, 0
                    continue
                rec.bystander_failures.append(f"{exc.code().name}: {exc.details()}")
                return
            rec.latencies.append(time.monotonic() - t0)
            got = reply.chunk.chunk_index
            if got == chunk + 1:
                rec.chunks += 1
                rec.frames += len(reply.chunk.frames)
            elif got <= chunk:
                rec.duplicated += 1
            else:
                rec.lost += (got - chunk - 1) * FRAMES
            chunk = got

    @staticmethod
    def step_with_retry(stub, sid: str, seq: int) -> pb.StepResponse:
        """Step with an action_seq; UNAVAILABLE (a broken connection) is retried with the same seq,
        which the server answers with the chunk it already made rather than a second one."""
        for attempt in itertools.count():
            try:
                return stub.Step(
                    pb.StepRequest(session_id=sid, action_seq=seq, frames=ALL), metadata=AUTH, timeout=300
                )
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt >= 5:
                    raise
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    # --- streams ------------------------------------------------------------------------------------

    def stream(self, rec: Record, seed: int, free_run: bool) -> None:
        stub = pb_grpc.WorldServiceStub(channel(self.server.target))
        while self.running():
            sid = self.new_world(stub, seed)
            outcome = self.one_stream(stub, sid, rec, free_run)
            if outcome == "lost":
                rec.losses_to_kills += 1
                continue
            if outcome != "ok":
                rec.bystander_failures.append(outcome)
                return
            if not self.running():  # the soak is over: the server may be stopping already
                return
            try:
                stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)
            except grpc.RpcError as exc:
                if not self.expected_loss(exc):
                    rec.bystander_failures.append(f"close: {exc.code().name}: {exc.details()}")
                    return

    def one_stream(self, stub, sid: str, rec: Record, free_run: bool) -> str:
        """Run a stream until the soak ends; 'ok', 'lost' (an expected loss) or what went wrong."""
        mode = pb.STREAM_MODE_FREE_RUN if free_run else pb.STREAM_MODE_LOCKSTEP
        sent: list[float] = []
        done = threading.Event()

        def requests():
            yield pb.StreamRequest(start=pb.StreamStart(session_id=sid, mode=mode, frames=ALL))
            seq = 0
            while self.running() and not done.is_set():
                seq += 1
                sent.append(time.monotonic())
                yield pb.StreamRequest(action=pb.StreamAction(seq=seq))
                if free_run:
                    time.sleep(1.0)  # a new action now and then; the world runs on regardless
                else:
                    while len(sent) > rec_chunks[0] + 2 and self.running():  # two in flight at most
                        time.sleep(0.01)

        rec_chunks = [0]
        last_index = -1
        last_chunk_at = time.monotonic()
        try:
            for msg in stub.Stream(requests(), metadata=AUTH):
                if msg.WhichOneof("kind") == "frame":
                    f = msg.frame.frame_index
                    if last_index >= 0 and f <= last_index:
                        if f == last_index:
                            rec.duplicated += 1
                        else:
                            rec.reordered += 1
                        continue
                    gap = (
                        f - last_index - 1 if last_index >= 0 else f - FRAMES
                    )  # the stream starts at chunk 1
                    rec.lost += max(0, gap)
                    last_index = f
                    rec.frames += 1
                    continue
                event = msg.event
                if event.type == pb.SESSION_EVENT_TYPE_FRAMES_DROPPED:
                    rec.dropped_reported += event.dropped_frames
                    rec.lost -= event.dropped_frames  # a reported drop is not a loss
                elif event.type == pb.SESSION_EVENT_TYPE_CHUNK_DONE:
                    rec.chunks += 1
                    rec_chunks[0] += 1
                    now = time.monotonic()
                    rec.latencies.append(now - last_chunk_at)
                    last_chunk_at = now
                elif event.type == pb.SESSION_EVENT_TYPE_CLOSED:
                    if self.expected_loss(event.message):
                        return "lost"
                    if self.running():
                        return f"stream closed: {event.message}"
                elif event.type == pb.SESSION_EVENT_TYPE_ACTION_REJECTED:
                    return f"action rejected: {event.message}"
        except grpc.RpcError as exc:
            if self.expected_loss(exc):
                return "lost"
            return f"stream: {exc.code().name}: {exc.details()}"
        finally:
            done.set()
        return "ok"

    # --- faults -------------------------------------------------------------------------------------

    def inject(self, every: float) -> None:
        kinds = ["kill", "disconnect", "cancel", "deadline", "bad_inputs"]
        stub = pb_grpc.WorldServiceStub(channel(self.server.target))
        for kind in itertools.cycle(kinds):
            if self.stop.wait(every) or not self.running():
                return
            try:
                getattr(self, f"fault_{kind}")(stub)
                self.faults[kind] = self.faults.get(kind, 0) + 1
            except Exception as exc:  # a fault that could not be injected is reported, not fatal
                self.fault_errors.append(f"{kind}: {type(exc).__name__}: {exc}")

    def fault_kill(self, stub) -> None:
        workers = self.server.workers()
        if not workers:
            raise RuntimeError("no worker to kill")
        self.kills.append(time.monotonic())
        self.rng.choice(workers).send_signal(signal.SIGKILL)

    def fault_disconnect(self, stub) -> None:
        ch = channel(self.server.target)
        victim = pb_grpc.WorldServiceStub(ch)
        sid = self.new_world(victim, 7)
        reqs = [pb.StreamRequest(start=pb.StreamStart(session_id=sid, frames=ALL))]
        reqs += [pb.StreamRequest(action=pb.StreamAction(seq=i + 1)) for i in range(3)]
        call = victim.Stream(iter(reqs), metadata=AUTH)
        for i, _ in enumerate(call):
            if i == 10:  # mid-chunk
                break
        ch.close()  # the client vanishes

    def fault_cancel(self, stub) -> None:
        sid = self.new_world(stub, 8)
        future = stub.Step.future(pb.StepRequest(session_id=sid, frames=ALL), metadata=AUTH)
        time.sleep(self.rng.uniform(0.01, 0.3))
        future.cancel()
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)

    def fault_deadline(self, stub) -> None:
        sid = self.new_world(stub, 9)
        try:
            stub.Step(
                pb.StepRequest(session_id=sid, action_seq=1),
                metadata=AUTH,
                timeout=self.rng.uniform(0.02, 0.4),
            )
        except grpc.RpcError:
            pass
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)

    def fault_bad_inputs(self, stub) -> None:
        ch = channel(self.server.target)
        raw = ch.unary_unary(
            "/helios.v1.WorldService/Step", request_serializer=None, response_deserializer=None
        )
        for data in (b"\xc1\xff\xff\xff", b"\x0a\x02\xff\xfe"):
            expect(lambda: raw(data, metadata=AUTH, timeout=30), grpc.StatusCode.INVALID_ARGUMENT)  # noqa: B023
        sid = self.new_world(stub, 10)
        bomb = pb.ResetRequest(session_id=sid, prompt="x", image=pb.Image(data=png_bomb()))
        expect(lambda: stub.Reset(bomb, metadata=AUTH, timeout=60), grpc.StatusCode.INVALID_ARGUMENT)
        blend = pb.Action(blend=pb.BlendAction(prompts=[pb.WeightedPrompt(text="p", weight=1.0)] * 2000))
        expect(
            lambda: stub.Step(pb.StepRequest(session_id=sid, action=blend), metadata=AUTH, timeout=60),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        expect(
            lambda: stub.Step(pb.StepRequest(session_id="x" * (1 << 20)), metadata=AUTH, timeout=60),
            grpc.StatusCode.NOT_FOUND,
        )
        bad = pb.Action(blend=pb.BlendAction(prompts=[pb.WeightedPrompt(text="x", weight=-1.0)]))
        reqs = [pb.StreamRequest(start=pb.StreamStart(session_id=sid))]
        reqs += [pb.StreamRequest(action=pb.StreamAction(seq=i + 1, action=bad)) for i in range(50)]
        events = [m.event.type for m in stub.Stream(iter(reqs), metadata=AUTH, timeout=120)]
        if events.count(pb.SESSION_EVENT_TYPE_ACTION_REJECTED) != 50:
            raise AssertionError(
                f"50 bad stream actions gave {events.count(pb.SESSION_EVENT_TYPE_ACTION_REJECTED)} rejections"
            )
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)
        ch.close()


def expect(call, code: grpc.StatusCode) -> None:
    try:
        call()
    except grpc.RpcError as exc:
        if exc.code() != code:
            raise AssertionError(f"expected {code.name}, got {exc.code().name}: {exc.details()}") from None
        return
    raise AssertionError(f"expected {code.name}, the call succeeded")


def png_bomb(side: int = 8000) -> bytes:
    """A valid black PNG of side×side pixels: ~190 KB that would decode to side²·3 bytes."""
    row = b"\0" * (1 + side * 3)
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--sessions", type=int, default=6, help="healthy sessions (lockstep, free-run, unary in turn)"
    )
    parser.add_argument("--workers", type=int, default=2, help="CPU engine workers")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--fault-every", type=float, default=20.0, help="seconds between injected faults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for soak_<model>.json")
    args = parser.parse_args()

    load_before = os.getloadavg()
    server = Server(args.model, args.workers, max_sessions=args.sessions + 8)
    print(f"SERVING after {server.ready_s:.1f} s at {server.target}", flush=True)
    soak = Soak(server, time.monotonic() + args.minutes * 60, args.seed)
    records, threads = [], []
    for i in range(args.sessions):
        kind = ("lockstep", "free_run", "unary")[i % 3]
        rec = Record(f"{kind}-{i}", kind)
        records.append(rec)
        target = soak.unary if kind == "unary" else soak.stream
        extra = () if kind == "unary" else (kind == "free_run",)
        threads.append(threading.Thread(target=target, args=(rec, 1000 + i, *extra), daemon=True))
    threads.append(threading.Thread(target=soak.inject, args=(args.fault_every,), daemon=True))
    memory: list[dict] = []
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        while soak.running():
            front, workers = server.rss()
            memory.append(
                {"t_s": round(time.monotonic() - started, 1), "front_mib": front, "workers_mib": workers}
            )
            done = sum(r.chunks for r in records)
            print(
                f"\r{memory[-1]['t_s']:7.0f} s  chunks {done}  faults {sum(soak.faults.values())}",
                end="",
                flush=True,
            )
            time.sleep(5)
    finally:
        soak.stop.set()
        for t in threads:  # each finishes the chunk it is in (slow on a loaded machine)
            t.join(300)
        print()
        code = server.stop()

    latencies = [x for r in records for x in r.latencies]
    n = len(memory)
    head, tail = memory[: max(1, n // 5)], memory[-max(1, n // 5) :]
    front_growth = statistics.median(m["front_mib"] for m in tail) - statistics.median(
        m["front_mib"] for m in head
    )
    result = {
        "benchmark": "soak",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "load_average_before": load_before,
        "versions": {"python": platform.python_version(), "grpcio": grpc.__version__},
        "settings": vars(args),
        "server_ready_s": server.ready_s,
        "server_exit_code": code,
        "faults_injected": soak.faults,
        "fault_injection_errors": soak.fault_errors,
        "worker_kills": len(soak.kills),
        "totals": {
            "chunks": sum(r.chunks for r in records),
            "frames": sum(r.frames for r in records),
            "frames_lost": sum(max(0, r.lost) for r in records),
            "frames_duplicated": sum(r.duplicated for r in records),
            "frames_reordered": sum(r.reordered for r in records),
            "frames_dropped_reported": sum(r.dropped_reported for r in records),
            "bystander_failures": sum(len(r.bystander_failures) for r in records),
            "sessions_lost_to_kills": sum(r.losses_to_kills for r in records),
        },
        "chunk_latency_s": {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)},
        "memory": {
            "front_mib_first": memory[0]["front_mib"] if memory else None,
            "front_mib_last": memory[-1]["front_mib"] if memory else None,
            "front_mib_max": max((m["front_mib"] for m in memory), default=None),
            "front_growth_mib_last_fifth_vs_first_fifth": front_growth if memory else None,
            "workers_mib_max": max((m["workers_mib"] for m in memory), default=None),
            "samples": memory,
        },
        "clients": [
            {k: v for k, v in vars(r).items() if k != "latencies"}
            | {"chunk_p99_s": percentile(r.latencies, 0.99)}
            for r in records
        ],
    }
    t = result["totals"]
    result["healthy"] = (
        t["frames_lost"] == 0
        and t["frames_duplicated"] == 0
        and t["frames_reordered"] == 0
        and t["bystander_failures"] == 0
        and not soak.fault_errors
    )
    print(
        json.dumps(
            {k: result[k] for k in ("totals", "chunk_latency_s", "faults_injected", "healthy")}, indent=1
        )
    )
    if args.out:
        out = Path(args.out) / f"soak_{args.model}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    sys.exit(0 if result["healthy"] else 1)


if __name__ == "__main__":
    main()
