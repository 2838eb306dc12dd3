"""What trissh refuses, the way OpenSSH clients expect to be refused."""

from __future__ import annotations

import os

import pytest
import trio

from ..support import ClientKey, RunningServer, needs_ssh, run_ssh, ssh_argv

pytestmark = [pytest.mark.podman, pytest.mark.interop, needs_ssh]


async def test_remote_port_forwarding_is_refused(
    podman_server: RunningServer, client_key: ClientKey
) -> None:
    """tcpip-forward gets REQUEST_FAILURE; with ExitOnForwardFailure ssh gives up (255)."""
    result = await run_ssh(
        podman_server.port, client_key.path,
        "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9", "echo should-not-run",
    )  # fmt: skip
    assert result.returncode == 255
    assert b"remote port forwarding failed" in result.stderr.lower()
    assert b"should-not-run" not in result.stdout


async def test_direct_tcpip_is_refused(podman_server: RunningServer, client_key: ClientKey) -> None:
    """ssh -W (a direct-tcpip channel) is administratively prohibited."""
    result = await run_ssh(podman_server.port, client_key.path, "-W", "127.0.0.1:22")
    assert result.returncode == 255
    assert b"stdio forwarding failed" in result.stderr  # channel open refused


async def test_agent_and_x11_forwarding_are_not_granted(
    podman_server: RunningServer, client_key: ClientKey
) -> None:
    """-A and -X: the session still runs, without an agent socket or a DISPLAY."""
    with trio.fail_after(60):
        result = await trio.run_process(
            ssh_argv(podman_server.port, client_key.path, "-A", "-X",
                     'echo "agent=$SSH_AUTH_SOCK display=$DISPLAY"'),
            capture_stdout=True, capture_stderr=True, check=False,
            env={**os.environ, "DISPLAY": ":99", "SSH_AUTH_SOCK": "/nonexistent"},
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"agent= display=\n"
