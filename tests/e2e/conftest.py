"""End-to-end fixtures: a trissh server on real podman, and a way to count its containers."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from podman import PodmanClient

from trissh.backend.base import LABEL_INSTANCE
from trissh.backend.podman import PodmanBackend
from trissh.config import ServerConfig

from ..support import RunningServer, make_context, missing, start_server

DEFAULT_PODMAN_URL = "unix:///run/trissh-podman/podman.sock"


def _ping(url: str) -> str | None:
    path = url.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(3)
            sock.connect(path)
            sock.sendall(b"GET /v4.0.0/libpod/_ping HTTP/1.0\r\n\r\n")
            answer = sock.recv(64)
    except OSError as exc:
        return str(exc)
    return None if b" 200 " in answer[:16] else f"unexpected answer {answer!r}"


@pytest.fixture(scope="session")
def podman_url() -> str:
    url = os.environ.get("CONTAINER_HOST") or DEFAULT_PODMAN_URL
    problem = _ping(url)
    if problem is not None:
        missing(f"podman service at {url} ({problem})", "run scripts/setup-host.sh as root")
    return url


class Containers:
    """Counts a server instance's containers the way an operator would (`podman ps -a`)."""

    def __init__(self, url: str) -> None:
        self._client = PodmanClient(base_url=url)

    def _list(self, instance: str) -> list[str]:
        found = self._client.containers.list(
            all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}
        )
        return [str(container.id) for container in found]

    async def of(self, instance: str) -> list[str]:
        return await trio.to_thread.run_sync(self._list, instance)

    async def wait_for(self, instance: str, count: int, timeout: float = 15) -> None:
        """Poll until exactly ``count`` containers carry the instance label."""
        with trio.fail_after(timeout):
            while len(await self.of(instance)) != count:
                await trio.sleep(0.1)


@pytest.fixture(scope="session")
def containers(podman_url: str) -> Containers:
    return Containers(podman_url)


@pytest.fixture
async def podman_server(
    nursery: trio.Nursery, podman_url: str, authorized_keys: Path, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    ctx = make_context(podman_backend(podman_url), authorized_keys, tmp_path / "host_key")
    server = await start_server(nursery, ctx)
    yield server
    await server.stop()


def podman_backend(url: str) -> PodmanBackend:
    """The backend as `trissh` builds it, exec helper included (setup-host.sh builds it)."""
    settings = ServerConfig().podman
    # a build of a changed helper/ not installed yet may be named (docs/testing.md)
    helper = os.environ.get("TRISSH_EXEC_HELPER") or settings.exec_helper
    if not os.access(helper, os.X_OK):
        missing(helper, "run scripts/setup-host.sh as root (it builds the exec helper)")
    return PodmanBackend(
        url,
        exec_helper=helper,
        direct_stdio=settings.direct_stdio,
        exec_agent=settings.exec_agent,
    )
