"""End-to-end fixtures: a trissh server on real podman, and a way to count its containers."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from podman import PodmanClient
from podman.errors import ImageNotFound

from trissh.backend.base import LABEL_INSTANCE, LABEL_WORKSPACE
from trissh.backend.podman import PodmanBackend
from trissh.config import ServerConfig
from trissh.ops.workspaces_cli import remove_workspace

from ..support import RunningServer, make_context, missing, start_server

#: Built by scripts/setup-host.sh (scripts/build-image.sh import-debian).
DEBIAN_IMAGE = "localhost/trissh-debian:latest"

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


@pytest.fixture(scope="session")
def debian_image(podman_url: str) -> str:
    """The image setup-host.sh builds (docs/testing.md: missing fails under CI)."""
    try:
        PodmanClient(base_url=podman_url).images.get(DEBIAN_IMAGE)
    except ImageNotFound:
        missing(DEBIAN_IMAGE, "run scripts/setup-host.sh as root (it builds it with mmdebstrap)")
    return DEBIAN_IMAGE


ServerFactory = Callable[..., Awaitable[RunningServer]]


def podman_workspaces(url: str, user: str) -> list[str]:
    """Ids of ``user``'s workspace containers, asked of podman directly."""
    with PodmanClient(base_url=url) as client:
        found = client.containers.list(all=True, filters={"label": f"{LABEL_WORKSPACE}={user}"})
        return [str(container.id) for container in found]


async def workspaces_of(url: str, user: str) -> list[str]:
    return await trio.to_thread.run_sync(podman_workspaces, url, user)


@pytest.fixture
def users() -> list[str]:
    """Fresh user names per test, so leftovers of an earlier run never meet this one."""
    tag = uuid.uuid4().hex[:6]
    return [f"wsa{tag}", f"wsb{tag}"]


@pytest.fixture
async def make_server(
    nursery: trio.Nursery,
    podman_url: str,
    authorized_keys: Path,
    tmp_path: Path,
    debian_image: str,
    users: list[str],
) -> AsyncIterator[ServerFactory]:
    """trissh in workspace mode on the Debian image (bash, git, rsync, tmux), one state file
    per test; every workspace and home volume of the test's users is gone afterwards."""
    started: list[RunningServer] = []

    async def make(**overrides: Any) -> RunningServer:
        settings = {
            "container.image": debian_image,
            "container.shell": ["/bin/bash"],
            "session.execution_mode": "workspace",
            "session.workspace_ttl": 120,
            "session.accept_env": ["LANG", "LC_*", "GIT_PROTOCOL"],
            "workspaces.state_file": str(tmp_path / "workspaces.json"),
            "workspaces.on_shutdown": "remove",
            **overrides,
        }
        backend = podman_backend(podman_url)
        ctx = make_context(backend, authorized_keys, tmp_path / "host_key", **settings)
        server = await start_server(nursery, ctx)
        started.append(server)
        return server

    yield make
    for server in started:
        if not server.done.is_set():
            await server.stop()
    backend = podman_backend(podman_url)
    for user in users:
        for settings in {id(s.ctx.settings): s.ctx.settings for s in started}.values():
            await remove_workspace(backend, settings, user, volume=True)
        assert await workspaces_of(podman_url, user) == []
    backend.close()
