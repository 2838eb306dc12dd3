"""/readyz answered from state kept current in the background, and draining (issue 22):
through real sockets, with the in-process backend."""

from __future__ import annotations

import base64
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.sshpeer import USER_KEY, ed25519_blob
from trissh.admin.client import call
from trissh.backend import ContainerSettings
from trissh.backend.memory import MemoryBackend
from trissh.backend.podman.health import host_checks
from trissh.server import process
from trissh.server.build import StartupError

from .support import ClientKey, RunningServer, free_port, make_context, start_server

IMAGE = "localhost/trissh-base:latest"
ServerFactory = Callable[..., Any]


class CountingBackend(MemoryBackend):
    """Counts readiness checks; ``hang`` makes them never answer (a stuck podman)."""

    def __init__(self) -> None:
        super().__init__(images={IMAGE})
        self.checks = 0
        self.hang = False

    async def ready(self, image: str) -> str | None:
        self.checks += 1
        if self.hang:
            await trio.sleep_forever()
        return await super().ready(image)


@pytest.fixture
async def make_server(
    nursery: trio.Nursery, tmp_path: Path, authorized_keys: Path
) -> AsyncIterator[ServerFactory]:
    servers: list[RunningServer] = []

    async def make(backend: MemoryBackend, **overrides: Any) -> tuple[RunningServer, str]:
        port = free_port()
        overrides = {"metrics.listen": f"127.0.0.1:{port}", **overrides}
        ctx = make_context(backend, authorized_keys, tmp_path / "host_key", **overrides)
        server = await start_server(nursery, ctx)
        servers.append(server)
        return server, f"http://127.0.0.1:{port}"

    yield make
    for server in servers:
        await server.stop()


async def _status(http: httpx.AsyncClient, url: str) -> tuple[int, str]:
    response = await http.get(f"{url}/readyz")
    return response.status_code, response.text.strip()


async def _wait_status(http: httpx.AsyncClient, url: str, wanted: int) -> str:
    with trio.fail_after(10):
        while (answer := await _status(http, url))[0] != wanted:
            await trio.sleep(0.02)
    return answer[1]


async def test_readyz_never_asks_the_backend_per_request(make_server: ServerFactory) -> None:
    """Twenty probes, one backend check (at start): probes cost the backend nothing."""
    backend = CountingBackend()
    _server, url = await make_server(backend, **{"metrics.ready_check_interval": 60})
    async with httpx.AsyncClient() as http:
        answers = [await _status(http, url) for _ in range(20)]
    assert answers == [(200, "ready")] * 20
    assert backend.checks == 1


async def test_readyz_answers_while_the_backend_hangs(make_server: ServerFactory) -> None:
    """A check that never returns leaves /readyz answering at once; after the check's
    bound it says why the instance is not ready."""
    backend = CountingBackend()
    _server, url = await make_server(backend, **{"metrics.ready_check_interval": 0.05})
    backend.hang = True
    async with httpx.AsyncClient(timeout=2) as http:
        with trio.fail_after(2):  # answered from memory, not after the check's 5 s bound
            assert await _status(http, url) == (200, "ready")
        reason = await _wait_status(http, url, 503)
    assert "did not answer" in reason


async def test_readyz_follows_the_backend(make_server: ServerFactory) -> None:
    backend = CountingBackend()
    _server, url = await make_server(backend, **{"metrics.ready_check_interval": 0.05})
    async with httpx.AsyncClient() as http:
        assert await _status(http, url) == (200, "ready")
        backend.unavailable = True
        assert "unavailable" in await _wait_status(http, url, 503)
        backend.unavailable = False
        await _wait_status(http, url, 200)
        backend.images = frozenset()
        assert "not found" in await _wait_status(http, url, 503)


async def test_readyz_is_503_when_max_startups_is_full(make_server: ServerFactory) -> None:
    """Past MaxStartups' ``full`` every new connection is dropped: not ready."""
    server, url = await make_server(CountingBackend(), **{"limits.max_startups": "2"})
    streams = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(2)]
    try:
        async with httpx.AsyncClient() as http:
            assert "max_startups" in await _wait_status(http, url, 503)
            await streams.pop().aclose()
            await _wait_status(http, url, 200)
    finally:
        for stream in streams:
            await stream.aclose()


async def test_draining_turns_readyz_503_and_still_serves(
    make_server: ServerFactory, client_key: ClientKey
) -> None:
    """Shutdown with drain_time: /readyz 503 "draining" at once, new connections still get
    SSH's banner for drain_time, then the listener is closed."""
    server, url = await make_server(CountingBackend(), **{"limits.drain_time": 1.0})
    async with httpx.AsyncClient() as http:
        server.shutdown.set()
        assert await _status(http, url) == (503, "draining")
        assert (await _banner(server.port)).startswith(b"SSH-2.0-trissh")
        scraped = (await http.get(f"{url}/metrics")).text
        assert "trissh_draining 1.0" in scraped
        with trio.fail_after(10):
            await server.done.wait()
    with pytest.raises(OSError, match="connect"):
        await trio.open_tcp_stream("127.0.0.1", server.port)


async def _banner(port: int) -> bytes:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        with trio.fail_after(5):
            return await stream.receive_some(256)


def test_vfs_storage_is_a_warning_not_a_failure() -> None:
    """vfs works, only slower: doctor warns; readiness never looks at it."""
    settings = ContainerSettings()
    *_, storage = host_checks({"store": {"graphDriverName": "vfs"}}, settings)
    assert (storage.name, storage.ok, storage.warning) == ("storage", True, True)
    *_, overlay = host_checks({"store": {"graphDriverName": "overlay"}}, settings)
    assert (overlay.name, overlay.ok, overlay.warning) == ("storage", True, False)


async def test_trissh_drain_drains_like_sigterm(make_server: ServerFactory, tmp_path: Path) -> None:
    """``trissh drain`` through the admin socket: /readyz 503 at once, then the server
    stops once drain_time has passed."""
    admin = tmp_path / "admin.sock"
    overrides = {"limits.drain_time": 2.0, "admin.socket": str(admin)}
    server, url = await make_server(CountingBackend(), **overrides)
    argv = [sys.executable, "-m", "trissh", "drain", "--admin-socket", str(admin)]
    with trio.fail_after(30):
        done = await trio.run_process(argv, capture_stdout=True, check=False)
    assert done.returncode == 0
    assert b"draining" in done.stdout
    async with httpx.AsyncClient() as http:
        assert await _status(http, url) == (503, "draining")
    # A second drain says the first is under way (before: "new logins served for N s").
    again = await trio.to_thread.run_sync(call, str(admin), {"action": "drain"})
    assert again["already"] == "draining"
    with trio.fail_after(10):
        await server.done.wait()


async def test_a_metrics_port_in_use_is_a_clear_start_up_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for the SSH port: one line saying which address, not a traceback out of the
    server's nursery after it started."""
    monkeypatch.setattr(process, "metered_backend", lambda settings, metrics: MemoryBackend())
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = f"127.0.0.1:{busy.getsockname()[1]}"
    keys = tmp_path / "authorized_keys"
    keys.write_text("ssh-ed25519 " + base64.b64encode(ed25519_blob(USER_KEY)).decode() + "\n")
    settings = make_context(
        MemoryBackend(), keys, tmp_path / "host_key", **{"metrics.listen": taken}
    ).settings
    try:
        with pytest.raises(StartupError, match=f"cannot listen on \\[metrics\\] listen {taken}"):
            await process.run_server(settings, lambda: settings)
    finally:
        busy.close()


async def test_every_admin_slot_taken_is_an_answer_not_a_traceback(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """Watchers hold their admin slot while their session runs; with all 16 held, the next
    ``trissh sessions`` died with ConnectionResetError's traceback and nothing was logged."""
    admin = tmp_path / "admin.sock"
    await make_server(CountingBackend(), **{"admin.socket": str(admin)})
    argv = [sys.executable, "-m", "trissh", "sessions", "--admin-socket", str(admin)]
    held = []
    try:
        for _ in range(16):
            held.append(await trio.open_unix_socket(str(admin)))
        await trio.sleep(0.2)  # each is in its slot, waiting for a request
        with trio.fail_after(30):
            busy = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False
            )
        assert busy.returncode != 0
        assert b"too many admin clients" in busy.stderr, busy.stderr
        assert b"Traceback" not in busy.stderr
    finally:
        for stream in held:
            await stream.aclose()
    with trio.fail_after(30):
        free = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    assert free.returncode == 0, free.stderr


def test_a_rootful_podman_fails_doctor() -> None:
    """Containers must be rootless (docs/deployment.md): a rootful service is a failure
    with its fix, not an "ok" line that says ROOTFUL."""
    runtime = {"ociRuntime": {"name": "crun", "version": "crun 1.8"}}
    rootful = {"host": {**runtime, "security": {"rootless": False}}}
    rootless = {"host": {**runtime, "security": {"rootless": True}}}
    first, *_ = host_checks(rootful, ContainerSettings())
    assert (first.name, first.ok) == ("runtime", False)
    assert "unprivileged" in first.fix
    first, *_ = host_checks(rootless, ContainerSettings())
    assert (first.name, first.ok, first.fix) == ("runtime", True, "")
