"""The pre-authentication banner (RFC 4252 §5.4) as OpenSSH, PuTTY's plink and paramiko
show it, and the message of the day on terminal shells (server-wide and per user)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from trissh.backend.memory import MemoryBackend
from trissh.server.hostkeys import load_or_create_host_key

from ..support import (
    ClientKey,
    RunningServer,
    make_context,
    require_binary,
    require_module,
    ssh_argv,
    start_server,
)

pytestmark = pytest.mark.interop

BANNER = "Authorized use only: trissh test banner.\nSecond line.\n"
MOTD = "Welcome to the test box.\nBe nice."


@pytest.fixture
async def server(
    nursery: trio.Nursery, authorized_keys: Path, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    ctx = make_context(
        MemoryBackend(), authorized_keys, tmp_path / "host_key",
        **{"auth.banner": BANNER, "session.motd": MOTD},
        users={"bob": {"session": {"motd": "Bob's own message."}}},
    )  # fmt: skip
    running = await start_server(nursery, ctx)
    yield running
    await running.stop()


async def run(
    argv: list[str], stdin: bytes = b"", **env: str
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            argv, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False,
            env={**os.environ, **env},
        )  # fmt: skip


def openssh(server: RunningServer, key: ClientKey, *args: str, user: str = "alice") -> list[str]:
    """`ssh` at LogLevel INFO: the client prints a banner at INFO or more, never at ERROR."""
    argv = ssh_argv(server.port, key.path, *args, user=user)
    return [arg if arg != "LogLevel=ERROR" else "LogLevel=INFO" for arg in argv]


async def test_openssh_shows_the_banner_before_logging_in(
    server: RunningServer, client_key: ClientKey
) -> None:
    result = await run(openssh(server, client_key, "echo in"))
    assert result.stdout == b"in\n"
    shown = result.stderr.decode().replace("\r\n", "\n")
    assert shown.endswith("known hosts.\n" + BANNER), shown  # (its own notice comes first)


async def test_plink_shows_the_banner(
    server: RunningServer, client_key: ClientKey, tmp_path: Path
) -> None:
    plink = require_binary("plink")
    key = tmp_path / "id.ppk"
    converted = await run(
        [require_binary("puttygen"), str(client_key.path), "-O", "private", "-o", str(key)]
    )
    assert converted.returncode == 0, converted.stderr
    host_key = load_or_create_host_key(server.ctx.settings.host_key_paths()[0])[0]
    argv = [
        plink, "-ssh", "-v", "-noagent", "-P", str(server.port), "-l", "alice",
        "-i", str(key), "-hostkey", host_key.fingerprint, "127.0.0.1", "echo in",
    ]  # fmt: skip
    result = await run(argv, HOME=str(tmp_path))
    assert result.stdout == b"in\n", result.stderr
    shown = result.stderr.decode().replace("\r\n", "\n")
    assert (
        "-- Pre-authentication banner message from server: -"
        in shown  # (plink shows banners on a terminal, or with -v as here, never with -batch)
    )
    assert "| Authorized use only: trissh test banner.\n| Second line.\n" in shown


async def test_paramiko_receives_the_banner(server: RunningServer, client_key: ClientKey) -> None:
    paramiko = require_module("paramiko")

    def connect() -> str:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                "127.0.0.1", port=server.port, username="alice", key_filename=str(client_key.path),
                allow_agent=False, look_for_keys=False, timeout=20,
            )  # fmt: skip
            return str(client.get_transport().get_banner().decode())
        finally:
            client.close()

    assert await trio.to_thread.run_sync(connect) == BANNER


async def test_a_terminal_shell_starts_with_the_motd_and_a_command_does_not(
    server: RunningServer, client_key: ClientKey
) -> None:
    """OpenSSH with a terminal: the MOTD, line by line, before the shell's prompt; bob gets
    his own; `ssh host cmd` (even with -tt) and a shell without a terminal get none."""
    shell = await run(openssh(server, client_key, "-tt"), stdin=b"exit 0\r")
    text = shell.stdout.decode()
    assert text.startswith("Welcome to the test box.\r\nBe nice.\r\n$ "), text
    bobs = await run(openssh(server, client_key, "-tt", user="bob"), stdin=b"exit 0\r")
    assert bobs.stdout.decode().startswith("Bob's own message.\r\n$ ")
    command = await run(openssh(server, client_key, "-tt", "echo in"))
    assert "Welcome" not in command.stdout.decode()
    no_terminal = await run(openssh(server, client_key, "-T"), stdin=b"exit 0\n")
    assert b"Welcome" not in no_terminal.stdout
