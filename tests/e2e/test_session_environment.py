"""The environment sshd gives every program, seen by programs in a real container through the
real OpenSSH client: USER, LOGNAME, HOME, SHELL, SSH_CONNECTION, SSH_CLIENT, SSH_TTY and
SSH_ORIGINAL_COMMAND."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from ..support import ClientKey, RunningServer, make_context, needs_ssh, run_ssh, start_server
from .conftest import podman_backend

pytestmark = [pytest.mark.podman, needs_ssh]

VARIABLES = ("USER", "LOGNAME", "HOME", "SHELL", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "TERM")
#: Prints each variable as NAME=value|, "unset" when it is not in the environment; the
#: terminal's name is checked against the terminal the program really has (`tty`).
PROBE = (
    "for v in " + " ".join(VARIABLES) + "; do "
    'eval "x=\\${$v-unset}"; printf "%s=%s|" "$v" "$x"; done; printf "tty=%s|" "$(tty)"'
)


def parse(output: bytes) -> dict[str, str]:
    text = output.decode().replace("\r", "").strip()
    return dict(item.split("=", 1) for item in text.split("|") if item)


@pytest.fixture
async def forced_server(
    nursery: trio.Nursery, podman_url: str, client_key: ClientKey, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    """alice's key carries command="...": whatever she asks, that runs."""
    keys = tmp_path / "authorized_keys"
    keys.write_text(f'command="echo ran: $SSH_ORIGINAL_COMMAND" {client_key.public_line}\n')
    ctx = make_context(podman_backend(podman_url), keys, tmp_path / "host_key")
    server = await start_server(nursery, ctx)
    yield server
    await server.stop()


async def test_a_terminal_session_gets_sshd_s_variables(
    podman_server: RunningServer, client_key: ClientKey
) -> None:
    """Under `ssh -t`: the login name, the container user's home, the shell, both ends of
    the connection, and SSH_TTY naming the program's own terminal."""
    result = await run_ssh(podman_server.port, client_key.path, "-tt", PROBE, user="carol")
    env = parse(result.stdout)
    assert result.returncode == 0, result.stderr
    assert (env["USER"], env["LOGNAME"], env["HOME"], env["SHELL"]) == (
        "carol", "carol", "/root", "/bin/sh"
    )  # fmt: skip
    client_ip, client_port, server_ip, server_port = env["SSH_CONNECTION"].split()
    port = str(podman_server.port)
    assert (client_ip, server_ip, server_port) == ("127.0.0.1", "127.0.0.1", port)
    assert 1024 <= int(client_port) <= 65535
    assert env["SSH_CLIENT"] == f"127.0.0.1 {client_port} {podman_server.port}"
    assert env["SSH_TTY"].startswith("/dev/pts/")
    assert env["SSH_TTY"] == env["tty"]


async def test_without_a_terminal_there_is_no_ssh_tty(
    podman_server: RunningServer, client_key: ClientKey
) -> None:
    result = await run_ssh(podman_server.port, client_key.path, PROBE, user="carol")
    env = parse(result.stdout)
    assert env["SSH_TTY"] == "unset"
    assert env["TERM"] == "unset"  # as sshd: a terminal's name only with a terminal
    assert env["USER"] == "carol"
    assert env["SSH_CONNECTION"].startswith("127.0.0.1 ")


async def test_a_forced_command_sees_the_original_one(
    forced_server: RunningServer, client_key: ClientKey
) -> None:
    result = await run_ssh(forced_server.port, client_key.path, "ls /etc", user="alice")
    assert result.stdout == b"ran: ls /etc\n"
