"""The Debian image (scripts/build-image.sh import-debian) under real OpenSSH clients: what
users run in it works through trissh."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from ..support import (
    ClientKey,
    RunningServer,
    make_context,
    needs_ssh,
    run_ssh,
    start_server,
)
from .conftest import podman_backend

pytestmark = [pytest.mark.podman, needs_ssh]


@pytest.fixture
async def debian_server(
    nursery: trio.Nursery, podman_url: str, authorized_keys: Path, tmp_path: Path, debian_image: str
) -> AsyncIterator[RunningServer]:
    ctx = make_context(
        podman_backend(podman_url),
        authorized_keys,
        tmp_path / "host_key",
        **{"container.image": debian_image, "container.shell": ["/bin/bash"]},
    )
    server = await start_server(nursery, ctx)
    yield server
    await server.stop()


async def test_the_tools_users_expect_run(
    debian_server: RunningServer, client_key: ClientKey
) -> None:
    """bash as the shell, git, rsync, python3, tmux and ssh-add, as a login runs them."""
    script = (
        'echo "$SHELL $BASH_VERSION" | cut -c1-11; git --version | cut -d" " -f1-2; '
        "rsync --version | head -1 | cut -d' ' -f1; python3 -c 'print(6 * 7)'; "
        "tmux -V | cut -d' ' -f1; ssh-add -l >/dev/null 2>&1; echo agent=$?"
    )
    result = await run_ssh(debian_server.port, client_key.path, script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        "/bin/bash 5", "git version", "rsync", "42", "tmux", "agent=2"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("shell", "command", "expected"),
    [
        (["/bin/rbash"], "echo hi; pwd", "hi\n/root\n"),
        (
            ["/usr/bin/git-shell"],
            "git-upload-pack '/tmp'",
            "'/tmp' does not appear to be a git repository",
        ),
    ],
)
async def test_a_shell_that_does_not_read_sh_runs_the_command_as_sshd_would(
    nursery: trio.Nursery, podman_url: str, authorized_keys: Path, tmp_path: Path,
    debian_image: str, client_key: ClientKey, shell: list[str], command: str, expected: str,
) -> None:  # fmt: skip
    """rbash (a CTF's jail) and git-shell (a git host's account) get the client's command
    as sshd passes it, in the home directory: trissh's own set-up (``cd ~``) runs in
    /bin/sh, not in them (before: rbash said "restricted: cannot redirect output" and ran
    in /, git-shell said "unrecognized command 'cd ~ 2>/dev/null; ...'")."""
    ctx = make_context(
        podman_backend(podman_url), authorized_keys, tmp_path / "host_key",
        **{"container.image": debian_image, "container.shell": shell},
    )  # fmt: skip
    server = await start_server(nursery, ctx)
    try:
        result = await run_ssh(server.port, client_key.path, command)
    finally:
        await server.stop()
    output = (result.stdout + result.stderr).decode()
    assert expected in output, output
    assert "restricted" not in output, output
    assert "unrecognized" not in output, output
