"""Operating a running server: Prometheus metrics, health endpoints, PROXY protocol,
MaxStartups — through real sockets, with the in-process backend."""

from __future__ import annotations

import base64
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.sshpeer import USER_KEY, ed25519_blob
from trissh.backend.memory import MemoryBackend
from trissh.connection.driver import ConnectionDriver

from .peer import Peer, output_of
from .support import (
    ClientKey,
    RunningServer,
    free_port,
    make_context,
    needs_ssh,
    run_ssh,
    start_server,
)

ServerFactory = Callable[..., Any]


@pytest.fixture
async def make_server(
    nursery: trio.Nursery, tmp_path: Path, client_key: ClientKey
) -> AsyncIterator[ServerFactory]:
    keys = tmp_path / "authorized_keys"
    sshpeer_key = "ssh-ed25519 " + base64.b64encode(ed25519_blob(USER_KEY)).decode()
    keys.write_text(f"{client_key.public_line}\n{sshpeer_key}\n")
    servers: list[RunningServer] = []

    async def make(backend: MemoryBackend | None = None, **overrides: Any) -> RunningServer:
        ctx = make_context(backend or MemoryBackend(), keys, tmp_path / "host_key", **overrides)
        server = await start_server(nursery, ctx)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


def scrape(text: str) -> dict[str, float]:
    """``name{label="v",...}`` -> value, for every sample of the exposition."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


@needs_ssh
async def test_metrics_are_scraped_and_parsed(
    make_server: ServerFactory, client_key: ClientKey
) -> None:
    """After one session, the counters and histograms of the issue are there and right."""
    port = free_port()
    server = await make_server(**{"metrics.listen": f"127.0.0.1:{port}"})
    result = await run_ssh(server.port, client_key.path, "echo hi")
    assert result.stdout == b"hi\n"
    with trio.fail_after(10):
        while server.ctx.state.live_connections:
            await trio.sleep(0.05)
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    samples = scrape(response.text)
    assert samples['trissh_connections_total{result="accepted"}'] == 1
    assert samples['trissh_auth_attempts_total{method="publickey",result="success"}'] == 1
    assert samples['trissh_sessions_total{kind="exec"}'] == 1
    assert samples["trissh_sessions_active{}"] == 0
    assert samples["trissh_connections_active{}"] == 0
    assert samples["trissh_handshake_duration_seconds_count{}"] == 1
    assert samples['trissh_bytes_total{direction="in"}'] > 0
    assert any(key.startswith("trissh_disconnects_total{") for key in samples)


async def test_health_and_readiness(make_server: ServerFactory) -> None:
    """/healthz answers while the process runs; /readyz tells whether sessions can start."""
    port = free_port()
    backend = MemoryBackend(images={"localhost/trissh-base:latest"})
    await make_server(backend, **{"metrics.listen": f"127.0.0.1:{port}"})
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        ready = await http.get(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 200
        backend.unavailable = True
        with trio.fail_after(10):  # the background check notices (tests/test_readiness.py)
            while (not_ready := await http.get(f"http://127.0.0.1:{port}/readyz")).is_success:
                await trio.sleep(0.05)
        assert not_ready.status_code == 503
        assert "unavailable" in not_ready.text


def proxy_v2(source: str, source_port: int) -> bytes:
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    body = (
        socket.inet_aton(source)
        + socket.inet_aton("127.0.0.1")
        + struct.pack(">HH", source_port, 2222)
    )
    return signature + bytes((0x21, 0x11)) + struct.pack(">H", len(body)) + body


async def login_after(server: RunningServer, header: bytes) -> tuple[str, bytes]:
    """Send ``header``, then speak SSH with the test client: the address the server holds
    for the connection, and the session's output."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(header)
    peer = Peer(stream)
    with trio.fail_after(10):
        await peer.login()
        [driver] = server.ctx.state.connections
        assert isinstance(driver, ConnectionDriver)
        channel = await peer.open_session()
        await peer.exec(channel, "echo via-proxy")
        output = output_of(await peer.until_close(channel))
    await stream.aclose()
    return driver.remote, output


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_proxy_header_from_a_trusted_balancer(
    make_server: ServerFactory, version: str
) -> None:
    """From a trusted network the header's source is the client's address in the logs."""
    server = await make_server(**{"proxy.trusted_networks": ["127.0.0.0/8"]})
    header = (
        b"PROXY TCP4 203.0.113.7 127.0.0.1 55555 2222\r\n"
        if version == "v1"
        else proxy_v2("203.0.113.7", 55555)
    )
    remote, output = await login_after(server, header)
    assert output == b"via-proxy\n"
    assert remote == "203.0.113.7:55555"


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_a_dual_stack_balancer_s_ipv4_client_is_its_ipv4_address(
    make_server: ServerFactory, version: str
) -> None:
    """HAProxy bound to ``:::22`` sends IPv4 clients as IPv4-mapped IPv6. Kept as
    ``::ffff:...``, they matched no IPv4 network of ``from=``: ``from="!addr,*"`` let
    ``addr`` in (v2), and the dotted text was refused as no IPv6 address at all (v1)."""
    server = await make_server(**{"proxy.trusted_networks": ["127.0.0.0/8"]})
    if version == "v1":
        header = b"PROXY TCP6 ::ffff:203.0.113.7 ::ffff:127.0.0.1 55555 2222\r\n"
    else:
        body = (
            socket.inet_pton(socket.AF_INET6, "::ffff:203.0.113.7")
            + socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1")
            + struct.pack(">HH", 55555, 2222)
        )
        header = b"\r\n\r\n\x00\r\nQUIT\n" + bytes((0x21, 0x21)) + struct.pack(">H", 36) + body
    remote, output = await login_after(server, header)
    assert output == b"via-proxy\n"
    assert remote == "203.0.113.7:55555"


async def test_proxy_header_from_an_untrusted_peer_is_not_honoured(
    make_server: ServerFactory,
) -> None:
    """Loopback is not trusted here: a v1 header is only a line before the SSH version."""
    server = await make_server(**{"proxy.trusted_networks": ["10.0.0.0/8"]})
    remote, output = await login_after(server, b"PROXY TCP4 203.0.113.7 127.0.0.1 55555 2222\r\n")
    assert output == b"via-proxy\n"
    assert remote.startswith("127.0.0.1:")


async def test_trusted_peer_without_a_header_is_refused(make_server: ServerFactory) -> None:
    """A trusted balancer must send the header: plain SSH from there is rejected."""
    server = await make_server(
        **{"proxy.trusted_networks": ["127.0.0.0/8"], "proxy.header_timeout": 1}
    )
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(b"SSH-2.0-client\r\n")
    with trio.fail_after(10):
        assert await stream.receive_some() == b""  # closed without a banner
    assert server.ctx.state.live_connections == 0


@needs_ssh
async def test_max_startups_refuses_floods_of_unauthenticated_connections(
    make_server: ServerFactory, client_key: ClientKey
) -> None:
    """max_startups = 3: a fourth unauthenticated connection is refused with a message the
    user reads (OpenSSH prints the DISCONNECT), and once one of them leaves there is room
    again (the real ssh logs in)."""
    server = await make_server(**{"limits.max_startups": "3", "limits.max_startups_per_source": 0})
    idle = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(3)]
    with trio.fail_after(30):
        while server.ctx.state.unauthenticated < 3:
            await trio.sleep(0.01)
        fourth = await trio.open_tcp_stream("127.0.0.1", server.port)
        received = b""
        while chunk := await fourth.receive_some():
            received += chunk
        assert received.startswith(b"SSH-2.0-trissh")
        assert b"server busy: too many connections are logging in" in received
        refused = await run_ssh(server.port, client_key.path, "echo refused")
        assert refused.returncode == 255
        assert b"Received disconnect" in refused.stderr
        assert b"server busy: too many connections" in refused.stderr
        await idle[0].aclose()
        while server.ctx.state.unauthenticated > 2:
            await trio.sleep(0.01)
        result = await run_ssh(server.port, client_key.path, "echo room")
        assert result.stdout == b"room\n"
    for stream in idle[1:]:
        await stream.aclose()
