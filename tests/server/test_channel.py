"""The worker channel: only the workers a server started get through (CURVE + ZAP), and the front's
reply loop survives anything that does (malformed, misdirected or out-of-turn messages)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import zmq
import zmq.asyncio

from helios_runtime.server.front.zmq_pool import WorkerPool
from helios_runtime.server.protocol.channel import WorkerKeys
from helios_runtime.server.protocol.client import WorkerError
from helios_runtime.server.protocol.messages import (
    Cancel,
    Close,
    Error,
    Fork,
    Heartbeat,
    Ready,
    Result,
    Snapshot,
    Step,
    decode,
    encode,
)
from helios_sdk._proto.helios.v1 import world_pb2 as pb

from .conftest import AUTH, new_world

ALL = pb.FrameOptions(selection=pb.FRAME_SELECTION_ALL)  # unary defaults send the last frame only

GARBAGE = [[b"\xc1\xc1\xc1"], [b"\x92\x63\x01"], [b""], [b"\x91\xa1x", b"blob"]]


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def dealer(context: zmq.Context, endpoint: str, identity: bytes, keys: WorkerKeys | None = None):
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.IDENTITY, identity)
    if keys is not None:
        keys.apply(socket)
    socket.connect(endpoint)
    return socket


def forged(rids) -> list[list[bytes]]:
    """Garbage, a fake Ready, and fake replies (a result and an error) to the given requests."""
    fakes = [*GARBAGE, encode(Ready({"name": "impostor", "pid": 1}))]
    for rid in rids:
        fakes += [encode(Result(rid, chunk_index=99)), encode(Error(rid, "INTERNAL", "forged"))]
    return fakes


def send_all(peer: zmq.Socket, messages: list[list[bytes]]) -> None:
    """Queue each message, as far as the peer's socket lets us: it queues them while the handshake
    runs and refuses them (Again) once the handshake failed and the connection is gone."""
    for message in messages:
        try:
            peer.send_multipart(message, flags=zmq.NOBLOCK)
        except zmq.Again:
            return


def pending_ids(pool: WorkerPool) -> list[int]:
    while True:  # the front's thread may change the table while we read it
        try:
            return list(pool.pending)
        except RuntimeError:
            continue


def test_an_unauthenticated_peer_gets_nothing_through(running):
    """Raw bytes on a TCP connection, a plain DEALER claiming the worker's name, and a CURVE DEALER
    that knows the server's public key but has no worker's key: none reaches the reply loop, and a
    bystander keeps stepping."""
    pool = running.server.pool
    stub = running.stub()
    sid = new_world(stub, seed=11)
    dropped = getattr(pool, "dropped", 0)
    host, port = pool.endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"\xc1" * 4096 + b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f" + b"\x00" * 64)
    context = zmq.Context()
    try:
        plain = dealer(context, pool.endpoint, b"w0")
        send_all(plain, forged(range(1, 30)))
        chunk = stub.Step(pb.StepRequest(session_id=sid, frames=ALL), metadata=AUTH, timeout=60).chunk
        assert chunk.chunk_index == 1 and len(chunk.frames) == 33

        denied = pool.denied
        stranger = dealer(context, pool.endpoint, b"w7", WorkerKeys.new(pool.server_public))
        send_all(stranger, forged(range(1, 30)))
        wait_for(lambda: pool.denied > denied, "the ZAP handler to refuse the stranger's key")
        chunk = stub.Step(pb.StepRequest(session_id=sid, frames=ALL), metadata=AUTH, timeout=60).chunk
        assert chunk.chunk_index == 2 and len(chunk.frames) == 33
        assert pool.dropped == dropped, "nothing from an unauthenticated peer may reach the reply loop"
        assert not plain.poll(200) and not stranger.poll(200), "and nothing comes back to it"
        assert all(w.ready.is_set() for w in pool.workers)
    finally:
        context.destroy(linger=0)
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


def test_a_peer_with_a_stolen_worker_key_is_dropped_and_the_bystander_steps(running):
    """A peer with the worker's own keys but another routing name sends garbage, a fake Ready and
    forged replies to the requests in flight while a bystander steps: every message is dropped, the
    bystander gets its own chunk, the worker is untouched."""
    pool = running.server.pool
    stub = running.stub()
    sid = new_world(stub, seed=12)
    worker_info = dict(pool.workers[0].info)
    dropped = pool.dropped
    context = zmq.Context()
    try:
        rogue = dealer(context, pool.endpoint, b"rogue", pool.keys[0])
        step = stub.Step.future(pb.StepRequest(session_id=sid, frames=ALL), metadata=AUTH, timeout=60)
        wait_for(lambda: pending_ids(pool) or step.done(), "the bystander's step to reach the worker")
        messages = forged(pending_ids(pool))
        for message in messages:
            rogue.send_multipart(message)
        chunk = step.result().chunk
        assert chunk.chunk_index == 1 and len(chunk.frames) == 33
        wait_for(lambda: pool.dropped >= dropped + len(messages), "the rogue's messages to be dropped")
        assert pool.dropped == dropped + len(messages)
        assert pool.workers[0].info == worker_info and pool.workers[0].ready.is_set()
        assert (
            stub.Step(pb.StepRequest(session_id=sid, frames=ALL), metadata=AUTH, timeout=60).chunk.chunk_index
            == 2
        )
    finally:
        context.destroy(linger=0)
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=AUTH)


# ---------------------------------------------------------------------------------------------------
# The reply loop against scripted workers (no worker processes)
# ---------------------------------------------------------------------------------------------------


async def _scripted_workers() -> None:
    pool = WorkerPool("tiny", [None, None], max_sessions=2)
    w0, w1 = pool.workers
    context = zmq.asyncio.Context()
    fake0 = dealer(context, pool.endpoint, w0.identity, pool._new_keys(w0))
    fake1 = dealer(context, pool.endpoint, w1.identity, pool._new_keys(w1))
    pool._listen()

    async def settle(condition, what: str) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    async def receive(fake):
        return decode(await asyncio.wait_for(fake.recv_multipart(), 60))

    try:
        # A starting worker's Ready is taken; its heartbeat is heard.
        await fake0.send_multipart(encode(Heartbeat(0.0)))
        await fake0.send_multipart(encode(Ready({"name": "fake", "warm_up_seconds": 50.0})))
        await fake1.send_multipart(encode(Ready({"name": "fake-1"})))
        await settle(lambda: w0.ready.is_set() and w1.ready.is_set(), "both Readys")
        assert pool.live[0].bound_s == 150.0  # three times its warm-up, over the 120-s default
        # Then what does not fit its state or the protocol is dropped, one by one.
        out_of_turn = [
            *GARBAGE,
            encode(Ready({"name": "again"})),  # not starting any more
            encode(Step("s")),  # a request: only the front sends those
            encode(Heartbeat(-1.0)),
            encode(Heartbeat("soon")),  # type: ignore[arg-type]
        ]
        for message in out_of_turn:
            await fake0.send_multipart(message)
        await settle(lambda: pool.dropped == len(out_of_turn), "the out-of-turn messages to be dropped")
        assert w0.info["name"] == "fake"

        # A real round trip still works; a reply from the worker that does not hold the request is
        # dropped, and a reply to a request nobody waits for any more is ignored quietly.
        call = asyncio.create_task(pool.call(w0, Snapshot("s")))
        request = await receive(fake0)
        await fake1.send_multipart(encode(Error(request.id, "INTERNAL", "forged by the other worker")))
        await fake0.send_multipart(encode(Result(request.id + 1000)))
        await settle(lambda: pool.dropped == len(out_of_turn) + 1, "the misdirected reply to be dropped")
        assert not call.done()
        await fake0.send_multipart(encode(Result(request.id, data=b"snap")))
        assert (await asyncio.wait_for(call, 60)).data == b"snap"

        # Cheap calls are bounded in time: a Fork nobody answers times out and is cancelled; a Close
        # times out too but is left to run (closing frees memory).
        with pytest.raises(WorkerError) as info:
            await pool.call(w0, Fork("s"), timeout=0.3)
        assert info.value.code == "DEADLINE_EXCEEDED"
        fork = await receive(fake0)
        assert isinstance(fork, Fork) and (await receive(fake0)) == Cancel(fork.id)
        with pytest.raises(WorkerError):
            await pool.call(w0, Close("s"), timeout=0.3)
        assert isinstance(await receive(fake0), Close)
        assert not await fake0.poll(500), "a timed-out Close is not cancelled"
        assert not any(t.done() for t in pool.tasks), "the pool's loops are all still running"
    finally:
        fake0.close()
        fake1.close()
        context.term()
        await pool.close()


def test_the_reply_loop_drops_what_does_not_fit_and_goes_on():
    asyncio.run(asyncio.wait_for(_scripted_workers(), 300))
