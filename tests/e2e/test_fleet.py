"""Two trissh processes behind a real HAProxy 2.6 with PROXY v2 and /readyz health checks
every 300 ms, configured as docs/deployment.md says (tests/e2e/fleet.py)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from ..support import ClientKey, needs
from .fleet import (
    BALANCER_IP,
    CLIENT_IP,
    Balancer,
    Instance,
    instance_settings,
    run_balancer,
    run_instance,
    ssh_through,
)

pytestmark = [pytest.mark.podman, needs("ssh", "haproxy")]


@dataclass
class Fleet:
    instances: list[Instance]
    balancer: Balancer


@pytest.fixture
async def fleet(podman_url: str, authorized_keys: Path, tmp_path: Path) -> AsyncIterator[Fleet]:
    settings = [
        instance_settings(
            tmp_path, name, podman_url=podman_url, authorized_keys=authorized_keys,
            limits__shutdown_grace=30.0,
        )
        for name in ("one", "two")
    ]  # fmt: skip
    async with (
        run_instance(tmp_path, "one", settings[0]) as one,
        run_instance(tmp_path, "two", settings[1]) as two,
        run_balancer(tmp_path, [one, two]) as balancer,
    ):
        yield Fleet([one, two], balancer)


def _states(balancer: Balancer) -> dict[str, tuple[str, str]]:
    """Server name -> (status, last check's status), e.g. ("UP", "L7OK"); a leading "* "
    (a check in progress) is dropped."""
    return {
        name: (row["status"], row["check_status"].removeprefix("* "))
        for name, row in balancer.servers().items()
    }


async def _wait_all_up(fleet: Fleet, within: float) -> None:
    states: dict[str, tuple[str, str]] = {}
    with trio.move_on_after(within):
        while True:
            states = _states(fleet.balancer)
            if states and all(state == ("UP", "L7OK") for state in states.values()):
                return
            await trio.sleep(0.02)
    answers = [await _readyz(server) for server in fleet.instances]
    pytest.fail(f"not every instance UP with a passed check within {within} s: {states}; "
                f"their /readyz now: {answers}")  # fmt: skip


async def _readyz(server: Instance) -> str:
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", server.metrics_port)
        async with stream:
            await stream.send_all(b"GET /readyz HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some(4096):
                answer += chunk
    status, _, body = answer.decode(errors="replace").partition("\r\n\r\n")
    return f"{status.splitlines()[0]}: {body.strip()}"


async def test_both_instances_are_up_within_a_second_and_stay_up(fleet: Fleet) -> None:
    """Checks every 300 ms that must each answer within 300 ms: an instance whose /readyz
    is slower (or that answers 503 for a mere warning) is marked DOWN after three."""
    await _wait_all_up(fleet, within=1.0)
    with trio.move_on_after(2.0):  # six or seven more checks each
        while True:
            states = _states(fleet.balancer)
            assert all(state == ("UP", "L7OK") for state in states.values()), states
            await trio.sleep(0.05)


async def test_logins_spread_over_the_fleet_with_the_clients_address(
    fleet: Fleet, client_key: ClientKey
) -> None:
    """Four logins at once from 127.0.0.2: both instances serve some, and log the client's
    address (from the PROXY header), never the balancer's."""
    await _wait_all_up(fleet, within=5.0)
    results: list[subprocess.CompletedProcess[bytes]] = []

    async def login() -> None:
        results.append(await ssh_through(fleet.balancer.port, client_key.path, "sleep 1; echo ok"))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(login)
    assert [r.stdout for r in results] == [b"ok\n"] * 4, [r.stderr for r in results]
    for server in fleet.instances:
        logins = server.events("auth_succeeded")
        assert logins, f"instance {server.name} served no login"
        assert all(e["remote"].startswith(f"{CLIENT_IP}:") for e in logins), logins
        accepted = [e["remote"] for e in server.events("connection_accepted")]
        assert not [r for r in accepted if r.startswith(f"{BALANCER_IP}:")], accepted


async def test_draining_loses_no_login_and_no_session(fleet: Fleet, client_key: ClientKey) -> None:
    """SIGTERM one instance while sessions run on both and logins keep coming: every login
    succeeds (the instance keeps serving for drain_time while HAProxy marks it DOWN), the
    running sessions finish, and the drained instance exits 0 once its session ended."""
    balancer, (one, _two) = fleet.balancer, fleet.instances
    await _wait_all_up(fleet, within=5.0)
    long_ones: list[subprocess.CompletedProcess[bytes]] = []
    logins: list[subprocess.CompletedProcess[bytes]] = []

    async def long_session() -> None:
        command = "sleep 6; echo finished"
        long_ones.append(await ssh_through(balancer.port, client_key.path, command))

    async def keep_logging_in(until: float) -> None:
        # At most two a second each: the balancer rejects past 60 connections in 10 s from
        # one address, and a login from the warm pool takes a tenth of a second.
        while (started := trio.current_time()) < until:
            logins.append(await ssh_through(balancer.port, client_key.path, "echo ok"))
            await trio.sleep_until(started + 0.5)

    async with trio.open_nursery() as nursery:
        for _ in range(2):  # leastconn: one on each instance
            nursery.start_soon(long_session)
        with trio.fail_after(30):
            while not all(server.events("session_started") for server in fleet.instances):
                await trio.sleep(0.05)
        one.process.send_signal(signal.SIGTERM)
        # Four at a time (with the two long ones, below the balancer's 10 per address and
        # 60 per 10 s)
        # through drain_time (2 s) and some after it.
        drain_ends = trio.current_time() + 3.5
        for _ in range(4):
            nursery.start_soon(keep_logging_in, drain_ends)
    failed = [r.stderr for r in logins if r.stdout != b"ok\n"]
    assert failed == [], f"{len(failed)} of {len(logins)} logins failed during the drain"
    assert len(logins) >= 8
    assert [r.stdout for r in long_ones] == [b"finished\n"] * 2, [r.stderr for r in long_ones]
    with trio.fail_after(30):
        assert await one.process.wait() == 0
    assert one.events("server_draining")
    states = _states(balancer)
    assert (states["trissh1"][0], states["trissh2"][0]) == ("DOWN", "UP"), states
    # No connection met a closed listener: none failed, was retried or redispatched (which
    # the balancer would do, a second late, with the login's client waiting).
    drained = balancer.servers()["trissh1"]
    assert [drained[key] for key in ("econ", "wretr", "wredis")] == ["0", "0", "0"], drained


async def test_per_source_limit_is_the_balancers(fleet: Fleet) -> None:
    """The stick table of the documented configuration: 10 connections at once from one
    address get an SSH banner, the 11th is closed at once; another address still gets in."""
    await _wait_all_up(fleet, within=5.0)
    port = fleet.balancer.port
    held: list[trio.SocketStream] = []
    try:
        for _ in range(10):
            assert (await _banner_from("127.0.0.4", port, held)).startswith(b"SSH-2.0-")
        assert await _banner_from("127.0.0.4", port, held) == b""
        assert (await _banner_from("127.0.0.5", port, held)).startswith(b"SSH-2.0-")
    finally:
        for stream in held:
            await stream.aclose()


async def _banner_from(source: str, port: int, held: list[trio.SocketStream]) -> bytes:
    """Connect from ``source`` and read the first line the server sends, keeping the
    connection open in ``held``; b"" when it is closed or reset first (HAProxy's reject
    can reset it before ``connect`` returns)."""
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    try:
        await sock.connect((BALANCER_IP, port))
    except ConnectionResetError:
        sock.close()
        return b""
    stream = trio.SocketStream(sock)
    held.append(stream)
    data = b""
    with trio.fail_after(10):
        while b"\n" not in data:
            try:
                chunk = await stream.receive_some(256)
            except trio.BrokenResourceError:
                return b""
            if not chunk:
                return b""
            data += chunk
    return data
