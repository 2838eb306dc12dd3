"""Forwarding end to end: the real OpenSSH client, trissh, rootless podman. Everything a
forward reaches is inside the user's own container (its network namespace, its files);
the host's loopback is never reachable through it."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from podman import PodmanClient

from trissh.backend.base import LABEL_INSTANCE

from ..support import (
    ClientKey,
    RunningServer,
    free_port,
    needs,
    needs_ssh,
    require_binary,
    run_ssh,
    ssh_argv,
    wait_until,
)

pytestmark = [pytest.mark.podman, pytest.mark.interop, needs_ssh]

#: A page served by busybox httpd inside the container on its own loopback.
SERVE_PAGE = (
    "mkdir -p /tmp/www && echo hello from the container > /tmp/www/index.html && "
    "exec httpd -f -p 127.0.0.1:8080 -h /tmp/www"
)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def http_get(port: int, path: str = "/") -> bytes:
    """The body of ``GET path`` on 127.0.0.1:port (HTTP/1.0, read to EOF)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        response = b""
        while data := await stream.receive_some(65536):
            response += data
    return response.partition(b"\r\n\r\n")[2]


@asynccontextmanager
async def ssh_background(
    port: int, key: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[trio.Process]:
    process = await trio.lowlevel.open_process(ssh_argv(port, key, *args), env=env)
    try:
        yield process
    finally:
        process.kill()
        await process.wait()


async def eventually(fetch: Callable[[], object], timeout: float = 30) -> None:
    """Until ``fetch()`` (a coroutine function) stops raising OSError: the container, its
    server and the forward come up asynchronously."""
    with trio.fail_after(timeout):
        while True:
            try:
                await fetch()  # type: ignore[misc]
                return
            except (OSError, trio.BrokenResourceError):
                await trio.sleep(0.2)


async def test_local_forward_reaches_httpd_inside_the_container(
    podman_server: RunningServer, client_key: ClientKey
) -> None:
    """``ssh -L PORT:localhost:8080 host httpd ...``: the page comes from the container."""
    local = free_port()
    async with ssh_background(
        podman_server.port, client_key.path, "-L", f"{local}:localhost:8080", SERVE_PAGE
    ):
        body = b""

        async def fetch() -> None:
            nonlocal body
            body = await http_get(local)
            if not body:
                raise OSError("not served yet")

        await eventually(fetch)
    assert body == b"hello from the container\n"


@needs("curl")
async def test_dynamic_forward_with_curl_over_socks(
    podman_server: RunningServer, client_key: ClientKey
) -> None:
    """``ssh -D``: curl's SOCKS5 with the name resolved on the far side (``localhost`` is
    the container's)."""
    socks = free_port()
    async with ssh_background(podman_server.port, client_key.path, "-D", str(socks), SERVE_PAGE):
        await wait_until(lambda: listening(socks), timeout=30)
        with trio.fail_after(60):
            while True:
                result = await trio.run_process(
                    [require_binary("curl"), "-s", "--max-time", "10",
                     "--socks5-hostname", f"127.0.0.1:{socks}", "http://localhost:8080/"],
                    capture_stdout=True, capture_stderr=True, check=False,
                )  # fmt: skip
                if result.returncode == 0:
                    break
                await trio.sleep(0.3)
    assert result.stdout == b"hello from the container\n"


async def test_remote_forward_lets_the_container_reach_the_clients_side(
    podman_server: RunningServer, client_key: ClientKey, nursery: trio.Nursery
) -> None:
    """``ssh -R 9000:127.0.0.1:PORT host wget ...``: a program in the container reaches a
    server on the client's side through its own localhost:9000."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    client_port = listeners[0].socket.getsockname()[1]

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(4096)
            await stream.send_all(b"HTTP/1.0 200 OK\r\n\r\nfrom the client's side\n")

    await nursery.start(trio.serve_listeners, answer, listeners)
    result = await run_ssh(
        podman_server.port, client_key.path, "-o", "ExitOnForwardFailure=yes",
        "-R", f"9000:127.0.0.1:{client_port}", "wget -qO- http://127.0.0.1:9000/",
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, b"from the client's side\n"), result.stderr


async def test_unix_socket_forwards_inside_the_container(
    podman_server: RunningServer, client_key: ClientKey, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``-R /tmp/app.sock:CLIENT.sock`` makes a unix socket in the container; ``-L
    LOCAL.sock:/tmp/app.sock`` on the same connection connects to it there: a round trip
    host → container's socket file → host."""
    client_side, local = tmp_path / "client.sock", tmp_path / "local.sock"
    unix = trio.socket.socket(trio.socket.AF_UNIX)
    await unix.bind(str(client_side))
    unix.listen(8)

    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some(4096):
                await stream.send_all(data)

    await nursery.start(trio.serve_listeners, echo, [trio.SocketListener(unix)])
    async with ssh_background(
        podman_server.port, client_key.path, "-o", "ExitOnForwardFailure=yes",
        "-R", f"/tmp/app.sock:{client_side}", "-L", f"{local}:/tmp/app.sock", "sleep 60",
    ):  # fmt: skip
        received = b""

        async def round_trip() -> None:
            nonlocal received
            stream = await trio.open_unix_socket(str(local))
            async with stream:
                await stream.send_all(b"via a socket file in the container")
                received = await stream.receive_some(4096)
            if not received:
                raise OSError("not forwarded yet")

        await eventually(round_trip)
    assert received == b"via a socket file in the container"


async def test_agent_forwarding_reaches_ssh_add_inside(
    podman_server: RunningServer, client_key: ClientKey, tmp_path: Path
) -> None:
    """``ssh -A host ssh-add -l``: the container's ssh-add lists the client agent's key."""
    agent_sock = tmp_path / "agent.sock"
    agent = await trio.lowlevel.open_process(
        [require_binary("ssh-agent"), "-D", "-a", str(agent_sock)]
    )
    try:
        await wait_until(agent_sock.exists)
        env = {**os.environ, "SSH_AUTH_SOCK": str(agent_sock)}
        await trio.run_process([require_binary("ssh-add"), "-q", str(client_key.path)], env=env)
        with trio.fail_after(60):
            result = await trio.run_process(
                ssh_argv(podman_server.port, client_key.path, "-A", "ssh-add -l"),
                env=env, capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
    finally:
        agent.kill()
        await agent.wait()
    assert result.returncode == 0, result.stderr
    assert b"ED25519" in result.stdout


async def test_proxyjump_through_trissh_to_a_port_inside_the_container(
    podman_server: RunningServer, client_key: ClientKey, tmp_path: Path
) -> None:
    """``-W`` is what ProxyJump runs. Over a ControlMaster whose ``-R`` puts trissh's own
    port at the container's localhost:2222, ``ProxyCommand ssh -W localhost:2222`` logs in
    again through the container; ``ssh -O forward`` adds a forward to the live master."""
    control, local = tmp_path / "ctl", free_port()
    async with ssh_background(
        podman_server.port, client_key.path, "-M", "-S", str(control),
        "-R", f"2222:127.0.0.1:{podman_server.port}", "sleep 90",
    ):  # fmt: skip
        await wait_until(control.exists, timeout=30)
        jump = " ".join(ssh_argv(podman_server.port, client_key.path, "-S", str(control),
                                 "-W", "localhost:2222"))  # fmt: skip
        with trio.fail_after(90):  # the master's -R may be answered after its socket exists
            for _ in range(30):
                result = await trio.run_process(
                    ssh_argv(2222, client_key.path, "-o", f"ProxyCommand={jump}", "echo jumped"),
                    capture_stdout=True, capture_stderr=True, check=False,
                )  # fmt: skip
                if result.returncode == 0:
                    break
                await trio.sleep(1)
        assert (result.returncode, result.stdout) == (0, b"jumped\n"), result.stderr
        added = await trio.run_process(
            ssh_argv(podman_server.port, client_key.path, "-S", str(control), "-O", "forward",
                     "-L", f"{local}:localhost:2222"),
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        await wait_until(lambda: listening(local), timeout=30)
        with trio.fail_after(30):
            banner = await (await trio.open_tcp_stream("127.0.0.1", local)).receive_some(64)
    assert banner.startswith(b"SSH-2.0-trissh")


@pytest.mark.parametrize("how", ["-L", "-W", "-D"])
async def test_the_hosts_loopback_is_never_reachable(
    podman_server: RunningServer, client_key: ClientKey, nursery: trio.Nursery, how: str
) -> None:
    """A server on the HOST's 127.0.0.1 gets no connection through any forward, by
    address or by name: a forward's localhost is the container's."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    host_port = listeners[0].socket.getsockname()[1]
    reached: list[bool] = []

    async def note(stream: trio.SocketStream) -> None:
        reached.append(True)
        await stream.aclose()

    await nursery.start(trio.serve_listeners, note, listeners)
    for target in ("127.0.0.1", "localhost", "[::1]"):
        await _try_to_reach(podman_server, client_key, how, target, host_port)
    assert reached == []


async def _try_to_reach(
    server: RunningServer, key: ClientKey, how: str, host: str, port: int
) -> None:
    if how == "-W":
        with trio.fail_after(60):
            result = await trio.run_process(
                ssh_argv(server.port, key.path, "-v", "-W", f"{host}:{port}"),
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
        assert b"open failed" in result.stderr
        return
    local = free_port()
    spec = ["-L", f"{local}:{host}:{port}"] if how == "-L" else ["-D", str(local)]
    async with ssh_background(server.port, key.path, *spec, "sleep 30"):
        await wait_until(lambda: listening(local), timeout=30)
        if how == "-L":
            with trio.fail_after(30):
                stream = await trio.open_tcp_stream("127.0.0.1", local)
                assert await stream.receive_some(64) == b""  # closed: nothing there
            return
        with trio.fail_after(60):
            result = await trio.run_process(
                [require_binary("curl"), "-s", "--max-time", "10",
                 "--socks5-hostname", f"127.0.0.1:{local}", f"http://{host}:{port}/"],
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
        assert result.returncode != 0


async def test_a_container_that_dies_closes_its_remote_forwards(
    podman_server: RunningServer, client_key: ClientKey, podman_url: str
) -> None:
    """The -R listener is trissh's socket, made in the container's namespace: a container
    killed from outside left it open (and counted) until the client disconnected."""
    registry = podman_server.ctx.metrics.registry
    async with ssh_background(
        podman_server.port, client_key.path, "-N", "-o", "ExitOnForwardFailure=yes",
        "-R", "9000:127.0.0.1:9",
    ):  # fmt: skip
        with trio.fail_after(60):
            while registry.get_sample_value("trissh_forward_listeners_active") != 1:
                await trio.sleep(0.1)
        await trio.to_thread.run_sync(_kill_all, podman_url, podman_server.ctx.instance)
        with trio.fail_after(30):
            while registry.get_sample_value("trissh_forward_listeners_active") != 0:
                await trio.sleep(0.1)


def _kill_all(url: str, instance: str) -> None:
    with PodmanClient(base_url=url) as client:
        for container in client.containers.list(filters={"label": f"{LABEL_INSTANCE}={instance}"}):
            container.kill("KILL")
