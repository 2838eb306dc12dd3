"""Backend fixtures: the conformance ``harness`` over MemoryBackend and PodmanBackend.

The podman service is found through ``$CONTAINER_HOST``, else the one
``scripts/setup-host.sh`` starts. When it does not answer, podman tests skip only in the fast
session; under the README's test command they fail (``tests/support.py``: ``missing``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from trissh.backend import Backend, ContainerSettings, Observe
from trissh.backend.base import LABEL_INSTANCE
from trissh.backend.memory import MemoryBackend

pytest.register_assert_rewrite(f"{__package__}.conformance", f"{__package__}.conformance_keeping")

from ..support import missing  # noqa: E402
from .conformance import Harness  # noqa: E402

DEFAULT_PODMAN_URL = "unix:///run/trissh-podman/podman.sock"
#: Label that scopes the podman tests' containers (and their sweeps) to one test session.
TEST_SCOPE_LABEL = "trissh.test-scope"


def podman_url() -> str:
    return os.environ.get("CONTAINER_HOST") or DEFAULT_PODMAN_URL


def ping_podman(url: str) -> str | None:
    """``None`` if the service answers ``_ping``, else why not."""
    from trissh.backend.podman import socket_path

    try:
        path = socket_path(url)
    except ValueError as exc:
        return str(exc)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(path)
            sock.sendall(b"GET /v4.0.0/libpod/_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            answer = sock.recv(64)
    except OSError as exc:
        return f"{path}: {exc}"
    if not answer.startswith(b"HTTP/1.") or b" 200 " not in answer[:16]:
        return f"{path}: unexpected answer {answer!r}"
    return None


@pytest.fixture(scope="session")
def podman_available() -> str:
    url = podman_url()
    problem = ping_podman(url)
    if problem is not None:
        missing(f"podman service at {url} ({problem})", "run scripts/setup-host.sh as root")
    return url


class MemoryHarness(Harness):
    name = "memory"
    launch_via = "in-memory fake shell"

    def __init__(self) -> None:
        super().__init__()
        self.settings = ContainerSettings()
        self.memory = MemoryBackend(images={self.settings.image})
        self.backend = self.memory

    def unavailable_backend(self) -> Backend:
        backend = MemoryBackend()
        backend.unavailable = True
        return backend

    async def containers(self, instance: str) -> list[str]:
        await trio.lowlevel.checkpoint()
        return [
            cid
            for cid, labels in self.memory.containers.items()
            if labels.get(LABEL_INSTANCE) == instance
        ]

    async def add_orphan(self, instance: str) -> None:
        await trio.lowlevel.checkpoint()
        self.memory.add_orphan(instance=instance)

    async def running(self, container_id: str, program: str) -> int:
        """The fake runs no real programs: every live process counts."""
        await trio.lowlevel.checkpoint()
        return self.memory.live_processes


def list_containers(url: str, labels: dict[str, str]) -> list[str]:
    """Ids of the containers carrying all ``labels``, asked of podman directly (as
    ``podman ps -a --filter label=K=V`` would), not through the backend under test."""
    import podman

    with podman.PodmanClient(base_url=url) as client:
        found = client.containers.list(
            all=True, filters=[f"label={key}={value}" for key, value in labels.items()]
        )
        return [str(container.id) for container in found]


async def podman_containers(url: str, labels: dict[str, str]) -> list[str]:
    return await trio.to_thread.run_sync(list_containers, url, labels)


class PodmanHarness(Harness):
    name = "podman"
    launch_via = "podman exec, stream"

    def __init__(
        self,
        url: str,
        *,
        direct_stdio: bool = False,
        agent: bool = False,
        observe: Observe | None = None,
        stdio_dir: str = "",
    ) -> None:
        from trissh.backend.podman import PodmanBackend

        super().__init__()
        self.url = url
        self.settings = ContainerSettings()
        self.scope = {TEST_SCOPE_LABEL: self.instance}
        helper = exec_helper() if direct_stdio or agent else None
        self.podman = PodmanBackend(
            url,
            scope_labels=self.scope,
            exec_helper=helper,
            direct_stdio=direct_stdio or agent,
            exec_agent=agent,
            observe=observe,
            stdio_dir=stdio_dir,
        )
        self.backend = self.podman
        self.forwarding = agent
        self.real_programs = True
        if agent:
            self.name, self.launch_via = "podman-agent", "agent, pipes"
        elif direct_stdio:
            self.name, self.launch_via = "podman-direct", "podman exec, pipes"

    def unavailable_backend(self) -> Backend:
        from trissh.backend.podman import PodmanBackend

        return PodmanBackend("unix:///nonexistent/trissh-test/podman.sock")

    async def containers(self, instance: str) -> list[str]:
        return await podman_containers(
            self.url, {LABEL_INSTANCE: instance, TEST_SCOPE_LABEL: self.instance}
        )

    async def running(self, container_id: str, program: str) -> int:
        top = await self.podman._api.request(
            "GET", f"/containers/{container_id}/top", params={"ps_args": "pid,args"}
        )
        commands = [row[1].split() for row in top["Processes"] if row[0] != "1"]
        return sum(1 for argv in commands if argv and argv[0].rsplit("/", 1)[-1] == program)

    async def add_orphan(self, instance: str, labels: dict[str, str] | None = None) -> None:
        """Create and start a container behind the backend's back, as a crash leaves it."""
        import podman

        def create() -> None:
            with podman.PodmanClient(base_url=self.url) as client:
                container = client.containers.create(
                    self.settings.image,
                    entrypoint=["/run/podman-init", "-P"],
                    init=True,
                    network_mode="none",
                    labels={LABEL_INSTANCE: instance, **self.scope, **(labels or {})},
                )
                container.start()

        await trio.to_thread.run_sync(create)

    async def remove_leftovers(self) -> list[str]:
        """Remove this harness's containers behind the backend's back; their ids."""
        import podman

        def remove() -> list[str]:
            ids = list_containers(self.url, {TEST_SCOPE_LABEL: self.instance})
            with podman.PodmanClient(base_url=self.url) as client:
                for container_id in ids:  # as the backend does: no stop timeout
                    response = client.api.delete(
                        f"/containers/{container_id}", params={"force": "true", "timeout": 0}
                    )
                    assert response.status_code in (200, 204, 404), response.text
            return ids

        return await trio.to_thread.run_sync(remove)


def exec_helper() -> str:
    """The static helper as setup-host.sh installs it (direct stdio needs it), or the one
    ``$TRISSH_EXEC_HELPER`` names (a build of a changed helper/, tried before installing)."""
    from trissh.config import ServerConfig

    helper = os.environ.get("TRISSH_EXEC_HELPER") or ServerConfig().podman.exec_helper
    if not os.access(helper, os.X_OK):
        missing(helper, "run scripts/setup-host.sh as root (it builds the exec helper)")
    return helper


def _backend(name: str) -> object:
    return name if name == "memory" else pytest.param(name, marks=pytest.mark.podman)


def _settle(request: pytest.FixtureRequest) -> str:
    """podman's availability is settled here, synchronously, so the skip (or the CI
    failure) reaches pytest unwrapped."""
    name: str = request.param
    if name.startswith("podman"):
        request.getfixturevalue("podman_available")
        if name != "podman":
            exec_helper()
    return name


@pytest.fixture(params=[_backend(n) for n in ("memory", "podman", "podman-direct", "podman-agent")])
def backend_name(request: pytest.FixtureRequest) -> str:
    """Which backend (``podman-direct``: with the exec helper and direct stdio, programs
    started by ``podman exec``; ``podman-agent``: by the in-container agent)."""
    return _settle(request)


@pytest.fixture(params=[_backend(n) for n in ("memory", "podman-agent")])
def forwarding_name(request: pytest.FixtureRequest) -> str:
    """The backends whose sandboxes make sockets inside (forwarding)."""
    return _settle(request)


@pytest.fixture(params=[_backend(n) for n in ("podman", "podman-direct")])
def no_forwarding_name(request: pytest.FixtureRequest) -> str:
    """The backends whose sandboxes cannot (no agent in the container)."""
    return _settle(request)


@asynccontextmanager
async def open_podman_harness(
    *,
    direct_stdio: bool = False,
    agent: bool = False,
    observe: Observe | None = None,
    stdio_dir: str = "",
) -> AsyncIterator[PodmanHarness]:
    """A PodmanHarness whose test-scoped containers are removed, and reported as leaks."""
    podman = PodmanHarness(
        podman_url(), direct_stdio=direct_stdio, agent=agent, observe=observe, stdio_dir=stdio_dir
    )
    try:
        yield podman
    finally:
        leaked = await podman.remove_leftovers()
        podman.podman.close()
    assert not leaked, f"containers leaked: {leaked}"


@pytest.fixture
async def podman_harness(podman_available: str) -> AsyncIterator[PodmanHarness]:
    async with open_podman_harness() as podman:
        yield podman


@asynccontextmanager
async def open_harness(name: str) -> AsyncIterator[Harness]:
    if name == "memory":
        memory = MemoryHarness()
        yield memory
        assert memory.memory.live_sandboxes == 0
        assert memory.memory.live_processes == 0
        return
    async with open_podman_harness(
        direct_stdio=name == "podman-direct", agent=name == "podman-agent"
    ) as podman:
        yield podman


@pytest.fixture
async def harness(backend_name: str) -> AsyncIterator[Harness]:
    async with open_harness(backend_name) as harness:
        yield harness


@pytest.fixture
async def forwarding_harness(forwarding_name: str) -> AsyncIterator[Harness]:
    async with open_harness(forwarding_name) as harness:
        yield harness


@pytest.fixture
async def no_forwarding_harness(no_forwarding_name: str) -> AsyncIterator[Harness]:
    async with open_harness(no_forwarding_name) as harness:
        yield harness


@pytest.fixture
async def agent_harness(podman_available: str) -> AsyncIterator[Harness]:
    """podman with the agent: real programs (busybox) beside the sockets."""
    exec_helper()
    async with open_harness("podman-agent") as harness:
        yield harness
