"""paramiko as a client: password and public key authentication (a second opinion to
OpenSSH's leniency), with an exec session through the in-process backend."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from trissh.auth.passwords import hash_password
from trissh.backend.memory import MemoryBackend

from ..support import ClientKey, RunningServer, make_context, require_module, start_server

paramiko = require_module("paramiko")
pytestmark = [pytest.mark.interop]


@pytest.fixture
async def server(
    nursery: trio.Nursery, tmp_path: Path, client_key: ClientKey
) -> AsyncIterator[RunningServer]:
    users = {
        "pat": {"password_hash": hash_password("paramiko pw")},
        "kim": {"authorized_keys": [client_key.public_line]},
    }
    ctx = make_context(
        MemoryBackend(), Path(os.devnull), tmp_path / "host_key", users=users,
        **{"auth.failure_delay": 0},
    )  # fmt: skip
    running = await start_server(nursery, ctx)
    yield running
    await running.stop()


def run(port: int, user: str, **credentials: object) -> tuple[bytes, int]:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            "127.0.0.1", port=port, username=user, allow_agent=False, look_for_keys=False,
            timeout=20, **credentials,
        )  # fmt: skip
        _, stdout, _ = client.exec_command("echo from-paramiko; exit 4")
        output = stdout.read()
        return output, stdout.channel.recv_exit_status()
    finally:
        client.close()


async def test_password(server: RunningServer) -> None:
    output, status = await trio.to_thread.run_sync(
        lambda: run(server.port, "pat", password="paramiko pw")
    )
    assert (output, status) == (b"from-paramiko\n", 4)


async def test_wrong_password(server: RunningServer) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        await trio.to_thread.run_sync(lambda: run(server.port, "pat", password="nope"))


async def test_public_key(server: RunningServer, client_key: ClientKey) -> None:
    output, status = await trio.to_thread.run_sync(
        lambda: run(server.port, "kim", key_filename=str(client_key.path))
    )
    assert (output, status) == (b"from-paramiko\n", 4)
