"""What trissh refuses, the way OpenSSH clients expect to be refused."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from ..support import (
    ClientKey,
    RunningServer,
    capture_module_log,
    make_context,
    needs_ssh,
    run_ssh,
    ssh_argv,
    start_server,
)
from .conftest import podman_backend

pytestmark = [pytest.mark.podman, pytest.mark.interop, needs_ssh]


@pytest.fixture
async def no_forwarding_server(
    nursery: trio.Nursery, podman_url: str, authorized_keys: Path, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    """Forwarding is on by default (docs: README "Forwarding"); this server turns it off."""
    ctx = make_context(
        podman_backend(podman_url), authorized_keys, tmp_path / "host_key",
        forwarding={"allow_tcp_forwarding": "no", "allow_agent_forwarding": False},
    )  # fmt: skip
    server = await start_server(nursery, ctx)
    yield server
    await server.stop()


async def test_remote_port_forwarding_is_refused_when_turned_off(
    no_forwarding_server: RunningServer, client_key: ClientKey
) -> None:
    """tcpip-forward gets REQUEST_FAILURE; with ExitOnForwardFailure ssh gives up (255)."""
    result = await run_ssh(
        no_forwarding_server.port, client_key.path,
        "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9", "echo should-not-run",
    )  # fmt: skip
    assert result.returncode == 255
    assert b"remote port forwarding failed" in result.stderr.lower()
    assert b"should-not-run" not in result.stdout


async def test_direct_tcpip_is_refused_when_turned_off(
    no_forwarding_server: RunningServer, client_key: ClientKey
) -> None:
    """ssh -W (a direct-tcpip channel) is administratively prohibited, and says why."""
    result = await run_ssh(no_forwarding_server.port, client_key.path, "-v", "-W", "127.0.0.1:22")
    assert result.returncode == 255
    assert b"administratively prohibited: TCP forwarding (local) is not allowed" in result.stderr


async def test_agent_forwarding_turned_off_and_x11_are_not_granted(
    no_forwarding_server: RunningServer, client_key: ClientKey, tmp_path: Path
) -> None:
    """-A (with a real agent) and -X: the session still runs, without an agent socket or
    a DISPLAY."""
    agent_sock = tmp_path / "agent.sock"
    agent = await trio.lowlevel.open_process(["ssh-agent", "-D", "-a", str(agent_sock)])
    try:
        with trio.fail_after(30):
            while not agent_sock.exists():
                await trio.sleep(0.05)
            result = await trio.run_process(
                ssh_argv(no_forwarding_server.port, client_key.path, "-A", "-X",
                         'echo "agent=$SSH_AUTH_SOCK display=$DISPLAY"'),
                capture_stdout=True, capture_stderr=True, check=False,
                env={**os.environ, "DISPLAY": ":99", "SSH_AUTH_SOCK": str(agent_sock)},
            )  # fmt: skip
    finally:
        agent.kill()
        await agent.wait()
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"agent= display=\n"


@pytest.fixture
async def session_mode_server(
    nursery: trio.Nursery, podman_url: str, authorized_keys: Path, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    ctx = make_context(
        podman_backend(podman_url), authorized_keys, tmp_path / "host_key",
        session={"execution_mode": "session"},
    )  # fmt: skip
    server = await start_server(nursery, ctx)
    yield server
    await server.stop()


async def test_an_unknown_subsystem_fails_before_a_container_is_made(
    session_mode_server: RunningServer, client_key: ClientKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ssh -s host nosuch`: OpenSSH's own "subsystem request failed", exit 255, and (one
    container per session) podman never asked for one; sftp still works."""
    created = capture_module_log(monkeypatch, "trissh.backend.podman.backend")
    result = await run_ssh(session_mode_server.port, client_key.path, "-s", "nosuch")
    assert result.returncode == 255
    assert b"subsystem request failed on channel 0" in result.stderr, result.stderr
    assert [line for line in created if line["event"] == "container_created"] == []
    sftp = await run_ssh(session_mode_server.port, client_key.path, "-s", "sftp", stdin=b"")
    assert sftp.returncode == 0, sftp.stderr
    assert [line["event"] for line in created].count("container_created") == 1
