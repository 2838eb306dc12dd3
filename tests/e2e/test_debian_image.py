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
