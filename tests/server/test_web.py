"""The WebSocket gateway driven directly (issue 21): a real server (front thread, worker process,
tiny model) with `web_port=0`, and aiohttp clients speaking docs/web.md's protocol.

Sessions, streams and status codes are WorldService's own, so these tests check the adaptation:
frames in order with their header, lockstep / free-run, stop, snapshot / restore, the session freed
with its socket, and each bad input answered with its code while another session goes on.
The page itself, in a real Chromium: tests/web/test_browser.py.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import make_mocked_request

from helios_runtime.server.front import web_messages as wm
from helios_runtime.server.front.encoding import decode_image
from helios_runtime.server.front.settings import ServerSettings
from helios_runtime.server.front.web import WebGateway, WebLimits
from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk.actions import PROMPT_TEMPLATE_SPACE
from tests.tls_files import make_pki

from .conftest import Handle, start_server

TOKEN = "web-token"
SIZE = {"width": 64, "height": 64}
TIMEOUT = 300  # a chunk of the tiny model takes a few seconds on a loaded 2-core machine


@pytest.fixture(scope="module")
def gateway() -> Iterator[Handle]:
    settings = ServerSettings(model="tiny", port=0, web_port=0, token=TOKEN, max_sessions=3, warm_up=False)
    yield from start_server(settings)


def run(coro) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT * 2))


class Client:
    """One socket: send messages, read JSON messages and frames (header, payload)."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self.http, self.ws = http, ws
        self.frames: list[tuple[dict, bytes]] = []
        self.messages: list[dict] = []

    @classmethod
    async def open(cls, handle: Handle, token: str | None = TOKEN, **kwargs) -> Client:
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(url(handle), protocols=kwargs.pop("protocols", ["helios.v1"]), **kwargs)
        client = cls(http, ws)
        if token is not None:
            await client.send("server.info", token=token)
            model = (await client.expect("server.info"))["model"]
            assert model["name"] == "tiny" and model["actions"] == PROMPT_TEMPLATE_SPACE.to_dict()
        return client

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()

    async def send(self, kind: str, **fields) -> None:
        await self.ws.send_str(json.dumps({"type": kind, **fields}))

    async def next(self) -> dict | None:
        """The next JSON message (frames are collected on the way); None when the socket closed."""
        while True:
            msg = await self.ws.receive(timeout=TIMEOUT)
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.frames.append(wm.read_frame(msg.data))
            elif msg.type == aiohttp.WSMsgType.TEXT:
                message = json.loads(msg.data)
                self.messages.append(message)
                return message
            else:
                return None

    async def expect(self, kind: str) -> dict:
        message = await self.next()
        assert message is not None and message["type"] == kind, f"expected {kind}, got {message}"
        return message

    async def until(self, kind: str) -> dict:
        """Skip messages until one of `kind` (an error on the way fails the test)."""
        while True:
            message = await self.next()
            assert message is not None, f"the socket closed before {kind}"
            assert message["type"] != "error" or kind == "error", message
            if message["type"] == kind:
                return message

    async def start(self, **fields) -> dict:
        await self.send("session.start", prompt="a harbour at dusk", seed=1, **SIZE, **fields)
        started = await self.expect("video.start")
        await self.until("chunk.done")
        return started


def url(handle: Handle, path: str = "/v1/realtime/world") -> str:
    return f"http://127.0.0.1:{handle.server.web.port}{path}"


def open_sessions(handle: Handle) -> int:
    """The server's open sessions, counted on its own event loop (its table changes under it)."""
    counted: concurrent.futures.Future[int] = concurrent.futures.Future()
    handle.loop.call_soon_threadsafe(lambda: counted.set_result(handle.server.service._open_count()))
    return counted.result(30)


async def settled(handle: Handle) -> None:
    """Wait until the sessions of earlier tests' sockets are closed (a socket's session is closed
    after the socket, asynchronously), so a test can count sessions."""
    deadline = time.monotonic() + 60
    while open_sessions(handle) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert open_sessions(handle) == 0


# ---------------------------------------------------------------------------------------------------
# A session's life
# ---------------------------------------------------------------------------------------------------


def test_lockstep_frames_arrive_in_order_with_their_header(gateway):
    async def body():
        c = await Client.open(gateway)
        started = await c.start()
        assert started["mode"] == "lockstep" and started["encoding"] == "jpeg"
        assert (started["width"], started["height"], started["fps"]) == (64, 64, 16)
        sid = started["session_id"]
        assert sid in gateway.server.service.sessions
        await c.send("session.action", seq=7, keys=["w"])
        done = await c.until("chunk.done")
        assert (done["chunk_index"], done["action_seq"]) == (1, 7)
        assert done["timings"]["encode_s"] > 0
        await c.send("session.action", mouse={"dx": 12})  # numbered by the gateway: 8
        assert (await c.until("chunk.done"))["action_seq"] == 8
        await c.send("session.stop")
        finished = await c.until("session.done")
        assert (finished["reason"], finished["chunks"]) == ("stopped", 3)
        assert sid not in gateway.server.service.sessions, "a stopped session is closed"
        await c.close()
        return c.frames

    frames = run(body())
    assert [h["frame_index"] for h, _ in frames] == list(range(99))
    for h, _ in frames:
        assert h["chunk_index"] * 33 + h["index_in_chunk"] == h["frame_index"]
        assert h["action_seq"] == {0: 0, 1: 7, 2: 8}[h["chunk_index"]]
        assert (h["encoding"], h["keyframe"], h["width"], h["height"]) == ("jpeg", True, 64, 64)
        assert abs(h["timestamp_ms"] - time.time() * 1000) < 600_000
    assert decode_image(frames[-1][1]).shape == (64, 64, 3)


def test_free_run_keeps_going_and_applies_the_newest_action(gateway):
    async def body():
        c = await Client.open(gateway)
        await c.start(mode="free_run", encoding="rgb24")
        await c.until("chunk.done")  # chunk 1, with no action
        await c.send("session.action", seq=5, keys=["d"])
        while (await c.until("chunk.done"))["action_seq"] != 5:
            pass
        await c.send("session.stop")
        await c.until("session.done")
        await c.close()
        dropped = sum(m["count"] for m in c.messages if m["type"] == "frames.dropped")
        return c.frames, dropped

    frames, dropped = run(body())
    indices = [h["frame_index"] for h, _ in frames]
    assert indices == sorted(set(indices)), "no frame repeated or reordered"
    assert len(indices) + dropped == indices[-1] + 1, "every frame made was sent or reported dropped"
    assert indices[-1] >= 98 and all(len(p) == 64 * 64 * 3 for _, p in frames)
    assert {h["action_seq"] for h, _ in frames} <= {0, 5}


def test_snapshot_then_restore_continues_the_world(gateway):
    async def body():
        c = await Client.open(gateway)
        await c.start(encoding="rgb24")
        await c.send("session.action", seq=1)
        await c.until("chunk.done")
        await c.send("session.snapshot")
        snap = await c.until("session.snapshot")
        assert snap["size_bytes"] > 0 and len(snap["sha256"]) == 64
        await c.send("session.action", seq=2)
        await c.until("chunk.done")
        expected = c.frames[-33:]  # chunk 2, made from the snapshot's state
        await c.send("session.stop")
        await c.until("session.done")
        await c.send("session.start", restore=snap["snapshot_id"], encoding="rgb24")
        restored = await c.expect("video.start")
        assert (restored["chunk_index"], restored["started_from"]) == (2, "snapshot")
        await c.send("session.action", seq=2)
        await c.until("chunk.done")
        again = c.frames[-33:]
        await c.close()
        return expected, again

    expected, again = run(body())
    assert [h["frame_index"] for h, _ in again] == [h["frame_index"] for h, _ in expected]
    assert [p for _, p in again] == [p for _, p in expected], "the restored world makes the same chunk"


def test_closing_the_socket_frees_its_session(gateway):
    async def body():
        await settled(gateway)
        c = await Client.open(gateway)
        started = await c.start()
        assert open_sessions(gateway) == 1
        await c.send("session.action", seq=1)  # a chunk in flight when the socket goes
        await c.close()
        deadline = time.monotonic() + 60
        while started["session_id"] in gateway.server.service.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert started["session_id"] not in gateway.server.service.sessions
        assert open_sessions(gateway) == 0

    run(body())


# ---------------------------------------------------------------------------------------------------
# Bad input, each with its code, while another session goes on
# ---------------------------------------------------------------------------------------------------


def test_each_bad_input_gets_its_code_while_another_session_goes_on(gateway):
    async def body():
        bystander = await Client.open(gateway)
        await bystander.start()
        c = await Client.open(gateway)

        async def refused(text: str | bytes, code: str, contains: str = "") -> dict:
            await (c.ws.send_bytes(text) if isinstance(text, bytes) else c.ws.send_str(text))
            error = await c.expect("error")
            assert error["code"] == code, error
            assert contains in error["message"], error
            return error

        await refused("{not json", "INVALID_ARGUMENT", "not valid JSON")
        await refused("[1, 2]", "INVALID_ARGUMENT", "JSON object")
        await refused('{"type": "session.explode"}', "INVALID_ARGUMENT", "unknown message type")
        await refused('{"no": "type"}', "INVALID_ARGUMENT", "unknown message type")
        await refused('{"type": "session.action", "keyz": ["w"]}', "INVALID_ARGUMENT", "unknown fields")
        await refused(
            '{"type": "session.action", "keys": ["w"]}', "FAILED_PRECONDITION", "before session.start"
        )
        await refused('{"type": "session.stop"}', "FAILED_PRECONDITION", "before session.start")
        await refused('{"type": "session.snapshot"}', "FAILED_PRECONDITION", "before session.start")
        await refused(b"\x00\x01", "INVALID_ARGUMENT", "binary")
        big = json.dumps({"type": "session.action", "keys": ["w"] * 20_000})  # ~100 KB, over 64 KiB
        await refused(big, "RESOURCE_EXHAUSTED", "limited to")
        await refused('{"type": "session.start", "seed": -1}', "INVALID_ARGUMENT", "seed")
        await refused('{"type": "session.start", "mode": "warp"}', "INVALID_ARGUMENT", "mode")
        await refused('{"type": "session.start", "image": "!!"}', "INVALID_ARGUMENT", "base64")
        # Refused by the gRPC service's own checks, with its codes:
        error = await refused('{"type": "session.start", "width": 65, "height": 64}', "INVALID_ARGUMENT")
        assert error["request"] == "session.start" and "multiple of 64" in error["message"]
        long_prompt = json.dumps({"type": "session.start", "prompt": "x" * 4001, **SIZE})
        await refused(long_prompt, "INVALID_ARGUMENT", "4000")
        not_an_image = base64.b64encode(b"GIF89a-no").decode()
        await refused(
            json.dumps({"type": "session.start", "image": not_an_image, **SIZE}), "INVALID_ARGUMENT"
        )
        await refused(json.dumps({"type": "session.start", "restore": "nope"}), "NOT_FOUND", "snapshot")
        # With a session: bad actions are refused and the stream goes on.
        await c.start()
        await refused('{"type": "session.start"}', "FAILED_PRECONDITION", "already drives")
        await refused(
            '{"type": "session.action", "mouse": {"dx": NaN}}', "INVALID_ARGUMENT", "not valid JSON"
        )
        await refused('{"type": "session.action", "mouse": {"dx": 1e400}}', "INVALID_ARGUMENT")
        await refused('{"type": "session.action", "keys": "w"}', "INVALID_ARGUMENT", "list")
        await refused('{"type": "session.action", "move": "up"}', "INVALID_ARGUMENT", "move")
        await refused('{"type": "session.action", "seq": 0}', "INVALID_ARGUMENT", "seq")
        await refused('{"type": "session.prompt_update"}', "INVALID_ARGUMENT", "needs a prompt")
        # The engine's adapter refuses an unknown key: the stream's ACTION_REJECTED, with its seq.
        await c.send("session.action", seq=3, keys=["q"])
        rejected = await c.until("error")
        assert (rejected["code"], rejected["seq"]) == ("INVALID_ARGUMENT", 3), rejected
        await c.send("session.prompt_update", seq=4, prompt="a storm", transition_duration_chunks=0)
        assert (await c.until("session.prompt_update.accepted"))["seq"] == 4
        assert (await c.until("chunk.done"))["action_seq"] == 4, "the stream went on after the rejection"
        # The bystander never noticed.
        await bystander.send("session.action", seq=1, keys=["s"])
        assert (await bystander.until("chunk.done"))["action_seq"] == 1
        await bystander.send("session.stop")
        assert (await bystander.until("session.done"))["reason"] == "stopped"
        await c.send("session.stop")
        await c.until("session.done")
        for client in (c, bystander):
            await client.close()

    run(body())


def test_lockstep_queue_session_limit_and_rate_are_resource_exhausted(gateway):
    async def body():
        await settled(gateway)
        c = await Client.open(gateway)
        await c.start()
        for seq in range(1, 21):  # 16 may wait (one more may run); the rest are refused with their seq
            await c.send("session.action", seq=seq)
        await c.send("session.stop")  # drops what waits: the chunk being made is the last
        refused = []
        while (message := await c.next())["type"] != "session.done":
            if message["type"] == "error":
                assert message["code"] == "RESOURCE_EXHAUSTED" and "waiting" in message["message"]
                refused.append(message["seq"])
        done = message
        assert refused == list(range(refused[0], 21)) and 17 <= refused[0] <= 18, refused
        assert done["chunks"] <= 3

        # max_sessions is 3: two sockets hold a session beside c's next one, the fourth is refused.
        others = [await Client.open(gateway) for _ in range(3)]
        for other in others[:2]:
            await other.start()
        await c.start()
        await others[2].send("session.start", **SIZE)
        error = await others[2].expect("error")
        assert (error["code"], error["request"]) == ("RESOURCE_EXHAUSTED", "session.start")
        for client in (c, *others):
            await client.close()

        flood = await Client.open(gateway)
        for _ in range(WebLimits().burst + 20):
            await flood.send("session.stop")
        codes = []
        while "RESOURCE_EXHAUSTED" not in codes:
            message = await flood.expect("error")
            codes.append(message["code"])
            if message["code"] == "RESOURCE_EXHAUSTED":
                assert "rate limit" in message["message"]
        assert set(codes[:-1]) == {"FAILED_PRECONDITION"}, "within the burst, each message is answered"
        await flood.close()

    run(body())


def test_a_message_over_the_read_limit_closes_the_socket_with_1009(gateway, caplog):
    async def body():
        c = await Client.open(gateway)
        with contextlib.suppress(ConnectionError):  # the server stops reading at the frame's header
            await c.ws.send_str(
                json.dumps({"type": "session.start", "prompt": "x" * WebLimits().read_limit_bytes})
            )
        assert await c.next() is None
        assert c.ws.close_code in (aiohttp.WSCloseCode.MESSAGE_TOO_BIG, aiohttp.WSCloseCode.ABNORMAL_CLOSURE)
        await c.close()
        again = await Client.open(gateway)  # the gateway goes on
        await again.close()

    with caplog.at_level(logging.INFO, logger="helios.web"):
        run(body())
    assert any("1009" in r.getMessage() or "exceeds limit" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


def test_a_draining_server_ends_the_socket_session_with_session_done():
    settings = ServerSettings(model="tiny", port=0, web_port=0, warm_up=False, drain_seconds=5)
    server = start_server(settings)
    handle = next(server)

    async def body():
        c = await Client.open(handle, token=None)
        await c.send("server.info")  # no token on this server: none needed
        assert (await c.expect("server.info"))["auth_required"] is False
        await c.start()
        stopper = threading.Thread(target=next, args=(server, None))  # SIGTERM's path: drain, stop
        stopper.start()
        done = await c.until("session.done")
        assert done["reason"] == "closed" and "shutting down" in done["message"], done
        assert await c.next() is None
        assert c.ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
        await c.close()
        await asyncio.to_thread(stopper.join, 60)

    run(body())


# ---------------------------------------------------------------------------------------------------
# Auth and origins
# ---------------------------------------------------------------------------------------------------


def test_token_in_the_first_message_or_a_subprotocol_never_the_url(gateway):
    async def refused(**kwargs) -> tuple[dict, int]:
        message = kwargs.pop("message", {"type": "server.info"})
        path = kwargs.pop("path", "/v1/realtime/world")
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url(gateway, path), **kwargs) as ws:
                await ws.send_str(json.dumps(message))
                reply = await ws.receive(timeout=60)
                closed = await ws.receive(timeout=60)
                assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                return json.loads(reply.data), ws.close_code

    async def body():
        await settled(gateway)
        for kwargs, why in (
            ({}, "needs a token"),
            ({"message": {"type": "session.start", "token": "wrong", **SIZE}}, "wrong token"),
            ({"message": {"type": "server.info", "token": 42}}, "needs a token"),
            ({"protocols": ["helios.v1", "helios.bearer.d3Jvbmc"]}, "wrong token"),  # "wrong"
            ({"path": f"/v1/realtime/world?token={TOKEN}"}, "in the URL"),
        ):
            error, code = await refused(**kwargs)
            assert error["code"] == "UNAUTHENTICATED" and why in error["message"], error
            assert code == aiohttp.WSCloseCode.POLICY_VIOLATION
        assert open_sessions(gateway) == 0, "no session was made for a refused socket"
        async with aiohttp.ClientSession() as http:  # silent: closed after WebLimits.auth_timeout_s
            async with http.ws_connect(url(gateway), protocols=["helios.v1"]) as ws:
                error = json.loads((await ws.receive(timeout=60)).data)
                assert error["code"] == "UNAUTHENTICATED" and "no token within" in error["message"]
                assert (await ws.receive(timeout=60)).type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                )
        bearer = "helios.bearer." + base64.urlsafe_b64encode(TOKEN.encode()).decode().rstrip("=")
        c = await Client.open(gateway, token=None, protocols=["helios.v1", bearer])
        assert c.ws.protocol == "helios.v1", "the token is never echoed back"
        await c.send("server.info")
        assert (await c.expect("server.info"))["auth_required"] is True
        await c.close()

    run(body())


def test_sockets_from_other_origins_are_refused(gateway):
    async def status(origin: str | None) -> int:
        headers = {"Origin": origin} if origin else {}
        async with aiohttp.ClientSession() as http:
            try:
                async with http.ws_connect(url(gateway), headers=headers, protocols=["helios.v1"]):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    async def body():
        port = gateway.server.web.port
        assert await status(f"http://127.0.0.1:{port}") == 101  # the page's own
        assert await status(None) == 101  # not a browser: the token guards it
        assert await status("http://evil.example") == 403
        assert await status(f"http://127.0.0.1:{port + 1}") == 403

    run(body())
    allowed = WebGateway(ServerSettings(web_origins="https://game.example.com, http://localhost:3000/"), None)
    request = make_mocked_request("GET", "/v1/realtime/world", headers={"Host": "127.0.0.1:8000"})
    assert allowed.origin_ok("https://game.example.com", request)
    assert allowed.origin_ok("http://localhost:3000", request)
    assert allowed.origin_ok("http://127.0.0.1:8000", request)
    assert not allowed.origin_ok("https://game.example.com.evil.example", request)
    assert WebGateway(ServerSettings(web_origins="*"), None).origin_ok("https://any.example", request)


def test_one_address_cannot_take_every_socket(gateway):
    """Sockets past WebLimits.max_sockets_per_address from one address get HTTP 429; one more is
    accepted as soon as one of them closes."""
    cap = WebLimits().max_sockets_per_address

    async def body():
        async with aiohttp.ClientSession() as http:
            held = [await http.ws_connect(url(gateway), protocols=["helios.v1"]) for _ in range(cap)]
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url(gateway), protocols=["helios.v1"])
            assert refused.value.status == 429
            await held.pop().close()
            for _ in range(100):  # the server counts the close when its handler returns
                try:
                    held.append(await http.ws_connect(url(gateway), protocols=["helios.v1"]))
                    break
                except aiohttp.WSServerHandshakeError:
                    await asyncio.sleep(0.05)
            assert len(held) == cap
            for ws in held:
                await ws.close()

    run(body())


def test_the_page_and_its_files_are_served(gateway):
    async def body():
        async with aiohttp.ClientSession() as http:
            async with http.get(url(gateway, "/")) as page:
                assert page.status == 200 and page.content_type == "text/html"
                assert "default-src 'self'" in page.headers["Content-Security-Policy"]
                assert 'src="/static/page.js"' in await page.text()
            for name, kind in (
                ("page.js", "javascript"),
                ("helios.js", "javascript"),
                ("style.css", "text/css"),
            ):
                async with http.get(url(gateway, f"/static/{name}")) as f:
                    assert f.status == 200 and kind in f.content_type, (name, f.content_type)
            for path in ("/static/..%2Fweb.py", "/static/.hidden", "/static/nope.js"):
                async with http.get(url(gateway, path)) as f:
                    assert f.status == 404, path
            async with http.get(url(gateway)) as plain:  # the socket path without an upgrade
                assert plain.status == 426

    run(body())


# ---------------------------------------------------------------------------------------------------
# The schema's conversions
# ---------------------------------------------------------------------------------------------------


def test_move_and_pan_become_keys_and_a_camera_turn_the_toy_world_maps_back():
    from helios_runtime.engine.actions import MovePanActions
    from helios_runtime.moves import MOVE_NAMES
    from helios_sdk.actions import Control

    adapter = MovePanActions()
    for move in MOVE_NAMES:
        for pan in MOVE_NAMES:
            proto = wm.action({"type": "session.action", "move": move, "pan": pan}).control
            control = Control(
                tuple(proto.keys), proto.mouse_dx, proto.mouse_dy, proto.camera_yaw, proto.camera_pitch
            )
            assert adapter.ids(control.to_dict()) == (MOVE_NAMES.index(move), 9 + MOVE_NAMES.index(pan))
    assert wm.action({"type": "session.action"}) == pb.Action(), "no fields: the world goes on"
    with pytest.raises(wm.WebError, match="keys or move"):
        wm.action({"keys": ["w"], "move": "n"})


def test_frame_header_round_trip():
    frame = pb.Frame(
        chunk_index=3,
        frame_index=3 * 33 + 32,
        index_in_chunk=32,
        width=640,
        height=384,
        encoding=pb.FRAME_ENCODING_JPEG,
        data=b"\xff\xd8jpeg",
        keyframe=True,
        action_seq=2**32 - 1,
        timestamp_ns=1_796_000_000_123_456_789,
    )
    message = wm.frame_message(frame)
    assert len(message) == wm.FRAME_HEADER.size + 6 == 38
    header, payload = wm.read_frame(message)
    assert payload == b"\xff\xd8jpeg"
    assert header == {
        "version": 1,
        "encoding": "jpeg",
        "keyframe": True,
        "chunk_index": 3,
        "frame_index": 131,
        "index_in_chunk": 32,
        "width": 640,
        "height": 384,
        "action_seq": 2**32 - 1,
        "timestamp_ms": pytest.approx(1_796_000_000_123.4568, abs=1e-3),
    }
    assert np.frombuffer(message[:4], np.uint8).tolist() == [1, 2, 1, 32]


def test_with_tls_the_page_and_socket_are_https_and_wss(tmp_path):
    """--tls-cert / --tls-key cover the gateway too: the page over HTTPS, the socket over WSS, both
    verified against the test CA; plain HTTP gets no page."""
    pki = make_pki(tmp_path)
    settings = ServerSettings(
        model="tiny",
        port=0,
        web_port=0,
        token=TOKEN,
        warm_up=False,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
    )
    handle = next(servers := start_server(settings))
    trusted = ssl.create_default_context(cafile=str(pki.ca))
    port = handle.server.web.port

    async def body():
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{port}/", ssl=trusted) as page:
                assert page.status == 200 and "/static/page.js" in await page.text()
            async with http.ws_connect(
                f"wss://127.0.0.1:{port}/v1/realtime/world", protocols=["helios.v1"], ssl=trusted
            ) as ws:
                await ws.send_str(json.dumps({"type": "server.info", "token": TOKEN}))
                assert json.loads((await ws.receive(timeout=60)).data)["type"] == "server.info"
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/") as plain:
                    await plain.read()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # a CA it does not trust
                await http.get(
                    f"https://127.0.0.1:{port}/", ssl=ssl.create_default_context(cafile=str(pki.other_ca))
                )

    try:
        run(body())
    finally:
        next(servers, None)
