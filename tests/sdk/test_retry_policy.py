"""The clients' retry policy (helios_sdk/retry_policy.json), as gRPC itself applies it, against a real
gRPC server whose failures are scripted (tests/scripted_world.py): UNAVAILABLE is retried only on
the RPCs that a second attempt cannot harm, a Step's retries carry its `action_seq`, a session lost
with its worker (ABORTED) is never retried, and the C++ and C# clients embed the same policy."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import grpc
import pytest

from helios_runtime.server.front import server as front
from helios_sdk import errors
from helios_sdk.aio import AsyncHeliosClient
from helios_sdk.client import KEEPALIVE_TIME_MS, RETRY_POLICY_JSON, HeliosClient, Retry
from tests.scripted_world import ScriptedWorld

ROOT = Path(__file__).resolve().parents[2]
UNAVAILABLE, ABORTED = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED
FAST = Retry(initial_s=0.01, max_s=0.05)  # the shared policy with short waits


@pytest.fixture()
def world():
    with ScriptedWorld() as w:
        yield w


def test_unavailable_is_retried_on_the_idempotent_rpcs_with_one_action_seq(world):
    world.fail("GetServerInfo", UNAVAILABLE, times=2)
    with HeliosClient(world.target, retry=FAST) as client:  # the handshake needed 3 attempts
        assert world.attempts("GetServerInfo") == 3
        world.fail("Reset", UNAVAILABLE)
        client.reset("s1", "a harbour", selection="none")
        world.fail("Step", UNAVAILABLE, times=2)
        assert client.step("s1", "rain", selection="none").chunk_index == 1
        # Every attempt of one Step carries the same number: the server answers a repeat with the
        # chunk it made instead of stepping again. The next Step, and another session, count on.
        client.step("s1", selection="none")
        client.step("s2", selection="none")
        client.step("s1", selection="none", action_seq=10)
        client.step("s1", selection="none")
        seqs = [(r.session_id, r.action_seq) for r in world.calls["Step"]]
        assert seqs == [("s1", 1)] * 3 + [("s1", 2), ("s2", 1), ("s1", 10), ("s1", 11)]
        world.fail("CloseSession", UNAVAILABLE)
        client.close_session("s1")
    assert world.attempts("Reset") == 2 and world.attempts("CloseSession") == 2


def test_a_session_lost_with_its_worker_is_not_retried(world):
    with HeliosClient(world.target, retry=FAST) as client:
        world.fail("Step", ABORTED)
        with pytest.raises(errors.SessionLost, match="ABORTED") as lost:
            client.step("s1", "rain", selection="none")
        assert world.attempts("Step") == 1
        assert lost.value.code == "ABORTED" and not isinstance(lost.value, errors.Unavailable)
        assert errors.error_class("ABORTED") is errors.SessionLost


@pytest.mark.parametrize("method", ["CreateSession", "Fork", "Snapshot", "Restore"])
def test_rpcs_that_make_something_are_not_retried(world, method):
    """A retry after a reply lost on the way would make a second session or snapshot."""
    call = {
        "CreateSession": lambda c: c.create_session(64, 64),
        "Fork": lambda c: c.fork("s1"),
        "Snapshot": lambda c: c.snapshot("s1"),
        "Restore": lambda c: c.restore("snap"),
    }[method]
    with HeliosClient(world.target, retry=FAST) as client:
        world.fail(method, UNAVAILABLE)
        with pytest.raises(errors.Unavailable):
            call(client)
        assert world.attempts(method) == 1
        call(client)  # the next call is the caller's choice, and goes through


def test_attempts_are_bounded_and_can_be_turned_off(world):
    with HeliosClient(world.target) as client:  # the shared policy as it ships
        world.fail("Step", UNAVAILABLE, times=10)
        with pytest.raises(errors.Unavailable):
            client.step("s1", selection="none")
        assert (
            world.attempts("Step")
            == json.loads(RETRY_POLICY_JSON)["methodConfig"][0]["retryPolicy"]["maxAttempts"]
        )
    for retry, attempts in ((Retry(attempts=2, initial_s=0.01), 2), (None, 1)):
        world.calls.clear()
        with HeliosClient(world.target, retry=retry) as client:
            world.fail("Step", UNAVAILABLE, times=10)
            with pytest.raises(errors.Unavailable):
                client.step("s1", selection="none")
            assert world.attempts("Step") == attempts


def test_async_client_follows_the_same_policy(world):
    async def main() -> None:
        world.fail("GetServerInfo", UNAVAILABLE)
        async with AsyncHeliosClient(world.target, retry=FAST) as client:
            world.fail("Step", UNAVAILABLE, times=2)
            await client.step("s1", selection="none")
            await client.step("s1", selection="none")
            world.fail("Step", ABORTED)
            with pytest.raises(errors.SessionLost):
                await client.step("s1", selection="none")
            world.fail("CreateSession", UNAVAILABLE)
            with pytest.raises(errors.Unavailable):
                await client.create_session(64, 64)

    asyncio.run(main())
    assert world.attempts("GetServerInfo") == 2 and world.attempts("CreateSession") == 1
    assert [r.action_seq for r in world.calls["Step"]] == [1, 1, 1, 2, 3]


def test_stream_actions_continue_the_sessions_action_seq(world):
    """A stream's actions take the session's next numbers, so a later Step never repeats one."""
    from helios_sdk.client import stream_requests

    with HeliosClient(world.target, retry=FAST) as client:
        client.step("s1", selection="none")
        requests = list(stream_requests("s1", ["a", "b"], "lockstep", "rgb24", 0, client._seqs))
        client.step("s1", selection="none")
    assert [r.action.seq for r in requests[1:]] == [2, 3]
    assert [r.action_seq for r in world.calls["Step"]] == [1, 4]


# ---------------------------------------------------------------------------------------------------
# One policy, every client
# ---------------------------------------------------------------------------------------------------

UNREAL_CORE = ROOT / "integrations/unreal/HeliosWorld/Source/ThirdParty/HeliosWorldCore/src"
# The one C++ client core (the Unreal plugin's WorldClient and the interop harness both use it).
CPP_COPY = UNREAL_CORE / "retry_policy.h"
CPP_CHANNEL = UNREAL_CORE / "connection.cpp"
CSHARP_COPY = ROOT / "integrations/unity/com.helios.world/Runtime/HeliosRetryPolicy.cs"


def test_cpp_client_embeds_the_policy_verbatim():
    match = re.search(r'R"json\((.*?)\)json"', CPP_COPY.read_text(), re.S)
    assert match, f'{CPP_COPY}: no R"json(...)json" literal'
    assert match.group(1) == RETRY_POLICY_JSON
    assert "SetServiceConfigJSON(kRetryPolicyJson)" in CPP_CHANNEL.read_text()


def test_csharp_client_embeds_the_policy_verbatim():
    match = re.search(r'@"(\{.*?\}\n)";', CSHARP_COPY.read_text(), re.S)
    assert match, f"{CSHARP_COPY}: no verbatim string holding the policy"
    assert match.group(1).replace('""', '"') == RETRY_POLICY_JSON


def test_keepalive_of_every_client_is_one_the_server_accepts():
    """A client that pings more often than the server allows gets GOAWAY "too_many_pings"; every
    client pings after 30 s idle, the server accepts pings 10 s apart."""
    assert KEEPALIVE_TIME_MS >= front.MIN_CLIENT_PING_INTERVAL_MS
    assert re.search(r"GRPC_ARG_KEEPALIVE_TIME_MS,\s*kKeepaliveTimeMs", CPP_CHANNEL.read_text())
    assert f"kKeepaliveTimeMs = {KEEPALIVE_TIME_MS}" in CPP_COPY.read_text()
    csharp = (CSHARP_COPY.parent / "HeliosWorldSession.cs").read_text()
    assert "Http2KeepAliveInterval = TimeSpan.FromMilliseconds(HeliosRetryPolicy.KeepaliveTimeMs)" in csharp
    assert f"KeepaliveTimeMs = {KEEPALIVE_TIME_MS}" in CSHARP_COPY.read_text()
