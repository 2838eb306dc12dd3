"""Forwarding with the real OpenSSH client against trissh on the in-process backend: the
handlers, the policy and what the client shows, fast. The container's side is the memory
sandbox's fake network (the podman end to end tests: tests/e2e/test_forwarding.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from trissh.backend import ForwardError, SandboxSpec, SocketAddress
from trissh.backend.memory import MemoryBackend, MemorySandbox

from ..support import (
    ClientKey,
    RunningServer,
    capture_module_log,
    free_port,
    make_context,
    needs_ssh,
    require_binary,
    require_module,
    ssh_argv,
    start_server,
    wait_until,
)

pytestmark = [needs_ssh, pytest.mark.interop]


class CapturingBackend(MemoryBackend):
    """A memory backend that lets the test act inside the sandboxes it made, and (with
    ``listen_on``) starts an echo server in each as it is made."""

    def __init__(self) -> None:
        super().__init__()
        self.sandboxes: list[MemorySandbox] = []
        self.listen_on: SocketAddress | None = None

    @asynccontextmanager
    async def open_sandbox(self, spec: SandboxSpec) -> AsyncIterator[MemorySandbox]:
        async with super().open_sandbox(spec) as sandbox:
            self.sandboxes.append(sandbox)
            if self.listen_on is None:
                yield sandbox
                return
            async with sandbox.listen(self.listen_on) as listener, trio.open_nursery() as inside:
                await inside.start(serve_echo, listener)
                yield sandbox
                inside.cancel_scope.cancel()


async def serve_echo(listener: Any, *, task_status: trio.TaskStatus[None]) -> None:
    """Echo every connection to ``listener`` until cancelled."""

    async def echo(stream: trio.abc.HalfCloseableStream) -> None:
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            await stream.send_eof()

    task_status.started()
    async with trio.open_nursery() as nursery:
        while True:
            try:
                accepted = await listener.accept()
            except trio.ClosedResourceError:
                return  # the listener's context was left
            # a sandbox listener gives (stream, peer), a trio.SocketListener the stream
            nursery.start_soon(echo, accepted[0] if isinstance(accepted, tuple) else accepted)


async def server(nursery: trio.Nursery, keys: Path, tmp: Path, **settings: Any) -> RunningServer:
    # No keepalive timer: nothing but the forwards' own writes may flush their answers.
    settings = {"session.client_alive_interval": 0, **settings}
    ctx = make_context(BACKEND[0], keys, tmp / "host_key", **settings)
    return await start_server(nursery, ctx)


BACKEND: list[CapturingBackend] = []


@pytest.fixture
def backend() -> CapturingBackend:
    BACKEND[:] = [CapturingBackend()]
    return BACKEND[0]


@pytest.fixture
async def agent_env(tmp_path: Path, client_key: ClientKey) -> AsyncIterator[dict[str, str]]:
    """An ``ssh-agent`` holding the client key: the environment that points ssh at it."""
    agent_sock = tmp_path / "agent.sock"
    agent = await trio.lowlevel.open_process(
        [require_binary("ssh-agent"), "-D", "-a", str(agent_sock)]
    )
    try:
        await wait_until(agent_sock.exists)
        env = {**os.environ, "SSH_AUTH_SOCK": str(agent_sock)}
        await trio.run_process([require_binary("ssh-add"), "-q", str(client_key.path)], env=env)
        yield env
    finally:
        agent.kill()
        await agent.wait()


@asynccontextmanager
async def forwarding_to_an_echo(
    nursery: trio.Nursery,
    backend: CapturingBackend,
    running: RunningServer,
    key: ClientKey,
    command: str,
) -> AsyncIterator[tuple[trio.Process, MemorySandbox]]:
    """``ssh -R 9000:...`` to an echo server on the client's side, running ``command``: the
    client and the container (whose localhost:9000 is the forward)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    client_side = listeners[0].socket.getsockname()[1]
    await nursery.start(serve_echo, listeners[0])
    async with ssh_running(
        running.port, key.path, "-o", "ExitOnForwardFailure=yes",
        "-R", f"9000:127.0.0.1:{client_side}", command,
    ) as client:  # fmt: skip
        await wait_until(lambda: bool(backend.sandboxes))
        yield client, backend.sandboxes[0]


async def connect_inside(
    sandbox: MemorySandbox, target: SocketAddress
) -> trio.abc.HalfCloseableStream:
    """A connection made in the container once the forward there listens (bounded)."""
    with trio.fail_after(20):
        while True:
            try:
                return await sandbox.connect(target)
            except Exception:
                await trio.sleep(0.05)


async def first_line(process: trio.Process) -> str:
    """The first line a process printed (bounded)."""
    assert process.stdout is not None
    with trio.fail_after(30):
        line = b""
        while not line.endswith(b"\n"):
            line += await process.stdout.receive_some(1)
    return line.decode().strip()


async def round_trip(port: int, payload: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        await stream.send_eof()
        received = b""
        while data := await stream.receive_some(65536):
            received += data
    return received


@asynccontextmanager
async def ssh_running(port: int, key: Path, *args: str) -> AsyncIterator[trio.Process]:
    """A background ``ssh`` with ``args``; killed on leaving."""
    process = await trio.lowlevel.open_process(
        ssh_argv(port, key, *args), stdin=None, stdout=None, stderr=None
    )
    try:
        yield process
    finally:
        process.kill()
        await process.wait()


async def test_local_forward_reaches_a_server_inside_the_container(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey,
) -> None:  # fmt: skip
    """``ssh -L`` to localhost:8080 reaches the sandbox's own port 8080, both ways, with
    the client's half-close passed on."""
    running = await server(nursery, authorized_keys, tmp_path)
    local = free_port()
    async with ssh_running(
        running.port, client_key.path, "-L", f"{local}:localhost:8080", "sleep 30"
    ):
        await wait_until(lambda: bool(backend.sandboxes))
        sandbox = backend.sandboxes[0]
        async with sandbox.listen(SocketAddress(host="127.0.0.1", port=8080)) as listener:
            await nursery.start(serve_echo, listener)
            await wait_until(lambda: _listening(local))
            payload = os.urandom(3_000_000)
            with trio.fail_after(30):
                assert await round_trip(local, payload) == payload


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_a_refused_target_is_an_open_failure_the_client_shows(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey,
) -> None:  # fmt: skip
    """Nothing listens on the sandbox's port 9: ``ssh -W`` shows OpenSSH's open failure."""
    running = await server(nursery, authorized_keys, tmp_path)
    with trio.fail_after(30):
        result = await trio.run_process(
            ssh_argv(running.port, client_key.path, "-v", "-W", "localhost:9"),
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert result.returncode != 0
    assert b"open failed: connect failed: Connection refused" in result.stderr


async def test_stdio_forward_over_a_control_master_carries_bytes(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey,
) -> None:  # fmt: skip
    """``ssh -W host:port`` (what ProxyJump uses) joins the client's stdio to the port;
    through a ControlMaster it shares the master's connection, hence its container."""
    running = await server(nursery, authorized_keys, tmp_path)
    control = tmp_path / "ctl"
    async with ssh_running(
        running.port, client_key.path, "-M", "-S", str(control), "sleep 30"
    ):  # fmt: skip
        await wait_until(lambda: bool(backend.sandboxes) and control.exists())
        sandbox = backend.sandboxes[0]
        async with sandbox.listen(SocketAddress(host="127.0.0.1", port=7000)) as listener:
            await nursery.start(serve_echo, listener)
            with trio.fail_after(30):
                result = await trio.run_process(
                    ssh_argv(running.port, client_key.path, "-S", str(control),
                             "-W", "127.0.0.1:7000"),
                    stdin=b"hello through -W\n", capture_stdout=True,
                    capture_stderr=True, check=False,
                )  # fmt: skip
    assert result.stdout == b"hello through -W\n", result.stderr
    assert len(backend.sandboxes) == 1


LOCAL_REFUSALS = [
    ({"forwarding.allow_tcp_forwarding": "no"}, "", b"TCP forwarding (local) is not allowed"),
    ({"forwarding.allow_tcp_forwarding": "remote"}, "", b"TCP forwarding (local) is not allowed"),
    ({"forwarding.permit_open": ["db:5432"]}, "", b"localhost:9 is not in permit_open"),
    ({"forwarding.permit_open": ["none"]}, "", b"localhost:9 is not in permit_open"),
    ({}, "no-port-forwarding", b"port forwarding is not allowed for this key"),
    ({}, "restrict", b"port forwarding is not allowed for this key"),
    ({}, 'permitopen="db:5432"', b"localhost:9 is not in permit_open"),
]


def keys_with(options: str, client_key: ClientKey, tmp_path: Path) -> Path:
    path = tmp_path / "authorized_keys_with_options"
    path.write_text(f"{options} {client_key.public_line}\n" if options else client_key.public_line)
    return path


@pytest.mark.parametrize(("settings", "options", "message"), LOCAL_REFUSALS)
async def test_local_forward_refusals_reach_the_client(
    nursery: trio.Nursery, backend: CapturingBackend, tmp_path: Path,
    client_key: ClientKey, settings: dict[str, Any], options: str, message: bytes,
) -> None:  # fmt: skip
    keys = keys_with(options, client_key, tmp_path)
    running = await server(nursery, keys, tmp_path, **settings)
    with trio.fail_after(30):
        result = await trio.run_process(
            ssh_argv(running.port, client_key.path, "-v", "-W", "localhost:9"),
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert b"administratively prohibited" in result.stderr
    assert message in result.stderr
    assert backend.sandboxes == []  # refused before any container was made


REMOTE_REFUSALS = [
    ({"forwarding.allow_tcp_forwarding": "no"}, "", "9000:localhost:1"),
    ({"forwarding.allow_tcp_forwarding": "local"}, "", "9000:localhost:1"),
    ({"forwarding.permit_listen": ["8000"]}, "", "9000:localhost:1"),
    ({"forwarding.allow_streamlocal_forwarding": "no"}, "", "/tmp/in.sock:/tmp/out.sock"),
    ({"forwarding.max_listeners": 0}, "", "9000:localhost:1"),
    ({}, "no-port-forwarding", "9000:localhost:1"),
    ({}, 'permitlisten="8000"', "9000:localhost:1"),
]


@pytest.mark.parametrize(("settings", "options", "spec"), REMOTE_REFUSALS)
async def test_remote_forward_refusals_reach_the_client(
    nursery: trio.Nursery, backend: CapturingBackend, tmp_path: Path,
    client_key: ClientKey, settings: dict[str, Any], options: str, spec: str,
) -> None:  # fmt: skip
    """``ssh -R`` refused: with ExitOnForwardFailure the client says so and exits 255."""
    keys = keys_with(options, client_key, tmp_path)
    running = await server(nursery, keys, tmp_path, **settings)
    with trio.fail_after(30):
        result = await trio.run_process(
            ssh_argv(running.port, client_key.path, "-o", "ExitOnForwardFailure=yes",
                     "-R", spec, "echo not reached"),
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert result.returncode == 255
    assert b"remote port forwarding failed" in result.stderr
    assert result.stdout == b""


@pytest.mark.parametrize(
    ("settings", "options"),
    [({"forwarding.allow_agent_forwarding": False}, ""), ({}, "no-agent-forwarding")],
)
async def test_agent_forwarding_refused_gives_no_socket(
    nursery: trio.Nursery, backend: CapturingBackend, tmp_path: Path,
    client_key: ClientKey, settings: dict[str, Any], options: str, agent_env: dict[str, str],
) -> None:  # fmt: skip
    keys = keys_with(options, client_key, tmp_path)
    running = await server(nursery, keys, tmp_path, **settings)
    with trio.fail_after(30):
        result = await trio.run_process(
            ssh_argv(running.port, client_key.path, "-A", "printenv SSH_AUTH_SOCK; echo done"),
            env=agent_env,
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert result.stdout == b"done\n", result.stderr


async def test_remote_forward_reaches_the_clients_side(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``ssh -R 9000:127.0.0.1:PORT``: a program in the container connecting to its own
    localhost:9000 reaches the client's local server; the forward's lines name its channel
    as a -L's do."""
    logs = capture_module_log(monkeypatch, "trissh.channels.forwards", bound=True)
    running = await server(nursery, authorized_keys, tmp_path)
    async with forwarding_to_an_echo(nursery, backend, running, client_key, "sleep 30") as (
        _,
        sandbox,
    ):
        stream = await connect_inside(sandbox, SocketAddress(host="localhost", port=9000))
        with trio.fail_after(20):
            async with stream:
                await stream.send_all(b"from inside\n")
                await stream.send_eof()
                received = b""
                while data := await stream.receive_some(1024):
                    received += data
    assert received == b"from inside\n"
    [opened] = [line for line in logs if line["event"] == "forward_opened"]
    assert opened["kind"] == "forwarded-tcpip"
    assert isinstance(opened["channel"], int)


async def test_remote_forward_carries_as_many_connections_as_forwarding_allows(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey,
) -> None:  # fmt: skip
    """24 programs in the container connect to an ``-R`` listener at once, with a session
    open: 25 channels, under ``[forwarding] max_channels`` (64) plus the sessions'. Each
    round trip works and the connection goes on (the channel table's own cap, 16, ended the
    connection with "internal server error")."""
    running = await server(nursery, authorized_keys, tmp_path)
    async with forwarding_to_an_echo(nursery, backend, running, client_key, "sleep 60") as (
        client,
        sandbox,
    ):
        target = SocketAddress(host="localhost", port=9000)
        await (await connect_inside(sandbox, target)).aclose()
        streams = [await sandbox.connect(target) for _ in range(24)]
        received: dict[int, bytes] = {}

        async def round_trip_inside(index: int, stream: trio.abc.HalfCloseableStream) -> None:
            async with stream:
                await stream.send_all(b"%d" % index)
                await trio.sleep(0.5)  # every connection open at once
                await stream.send_eof()
                data = b""
                while chunk := await stream.receive_some(1024):
                    data += chunk
            received[index] = data

        with trio.fail_after(30):
            async with trio.open_nursery() as inside:
                for index, stream in enumerate(streams):
                    inside.start_soon(round_trip_inside, index, stream)
        assert received == {index: b"%d" % index for index in range(24)}
        assert client.poll() is None  # the connection is still there


async def test_cancelling_a_remote_forward_leaves_its_open_connections(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey,
) -> None:  # fmt: skip
    """``ssh -O cancel -R`` closes the listener, as sshd: a connection made through it
    before goes on (it was cut with the listener), a new one is refused."""
    running = await server(nursery, authorized_keys, tmp_path)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(serve_echo, listeners[0])
    spec = f"9000:127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    control = tmp_path / "ctl"
    async with ssh_running(
        running.port, client_key.path, "-M", "-S", str(control),
        "-o", "ExitOnForwardFailure=yes", "-R", spec, "sleep 60",
    ):  # fmt: skip
        await wait_until(lambda: bool(backend.sandboxes) and control.exists())
        sandbox = backend.sandboxes[0]
        target = SocketAddress(host="localhost", port=9000)
        stream = await connect_inside(sandbox, target)
        with trio.fail_after(30):
            await stream.send_all(b"before\n")
            assert await stream.receive_some(100) == b"before\n"
            cancel = await trio.run_process(
                ssh_argv(running.port, client_key.path, "-S", str(control),
                         "-O", "cancel", "-R", spec),
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
            assert cancel.returncode == 0, cancel.stderr
            registry = running.ctx.metrics.registry
            while registry.get_sample_value("trissh_forward_listeners_active"):
                await trio.sleep(0.05)  # the listener is gone
            await stream.send_all(b"after\n")
            assert await stream.receive_some(100) == b"after\n"
        with pytest.raises(ForwardError, match="refused"):
            await sandbox.connect(target)
        await stream.aclose()


async def test_a_connection_that_only_forwards_gets_the_shutdown_grace(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey,
) -> None:  # fmt: skip
    """``ssh -N -R`` carrying a connection when the server stops: it goes on through the
    grace as a session would (it was ended at once, its tunnel cut)."""
    running = await server(nursery, authorized_keys, tmp_path)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(serve_echo, listeners[0])
    spec = f"9000:127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    async with ssh_running(
        running.port, client_key.path, "-N", "-o", "ExitOnForwardFailure=yes", "-R", spec
    ) as client:  # fmt: skip
        await wait_until(lambda: bool(backend.sandboxes))
        stream = await connect_inside(
            backend.sandboxes[0], SocketAddress(host="localhost", port=9000)
        )
        with trio.fail_after(30):
            await stream.send_all(b"before\n")
            assert await stream.receive_some(100) == b"before\n"
            running.ctx.state.shutting_down = True
            for driver in list(running.ctx.state.connections):
                driver.shutting_down()
            await trio.sleep(0.5)
            await stream.send_all(b"after\n")
            assert await stream.receive_some(100) == b"after\n"
        assert client.poll() is None
        await stream.aclose()


@pytest.mark.parametrize("option", ["-R", "-A"])
async def test_a_listener_closed_under_its_forward_ends_that_forward_only(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey, agent_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, option: str,
) -> None:  # fmt: skip
    """The container's side closes an ``-R`` (or ``-A``) listener (its agent went away, the
    workspace was removed under it): that forward ends (logged, its gauge back to 0), the
    connection and its session go on."""
    module = "agent_forward" if option == "-A" else "remote_forwards"
    logs = capture_module_log(monkeypatch, f"trissh.channels.{module}")
    env = agent_env if option == "-A" else None
    forward = ["-A"] if option == "-A" else ["-R", "9000:127.0.0.1:9"]
    running = await server(nursery, authorized_keys, tmp_path)
    argv = ssh_argv(running.port, client_key.path, "-o", "ExitOnForwardFailure=yes", *forward,
                    "sleep 30")  # fmt: skip
    client = await trio.lowlevel.open_process(argv, env=env)
    registry = running.ctx.metrics.registry
    try:
        with trio.fail_after(30):
            while registry.get_sample_value("trissh_forward_listeners_active") != 1:
                await trio.sleep(0.05)
            backend.sandboxes[0].network.close()
            while registry.get_sample_value("trissh_forward_listeners_active") != 0:
                await trio.sleep(0.05)  # the forward ended
        assert "forward_listener_closed" in [line["event"] for line in logs]
        await trio.sleep(0.5)
        assert client.poll() is None  # the connection is still there
    finally:
        client.kill()
        await client.wait()


@pytest.mark.parametrize("mode", ["connection", "session"])
async def test_agent_forwarding_gives_sessions_a_socket_to_the_clients_agent(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey, agent_env: dict[str, str], mode: str,
) -> None:  # fmt: skip
    """``ssh -A``: the session sees SSH_AUTH_SOCK, and that socket, in the container the
    session runs in, answers as the client's agent (REQUEST_IDENTITIES lists the key its
    ssh-agent holds). In session mode that is the session's own container: none other is
    started for the socket."""
    running = await server(nursery, authorized_keys, tmp_path, **{"session.execution_mode": mode})
    argv = ssh_argv(running.port, client_key.path, "-A", "printenv SSH_AUTH_SOCK; sleep 30")
    session = await trio.lowlevel.open_process(argv, env=agent_env, stdout=subprocess.PIPE)
    try:
        path = await first_line(session)
        assert path.startswith("/tmp/trissh-agent-")
        [sandbox] = backend.sandboxes
        stream = await sandbox.connect(SocketAddress(path=path))
        async with stream:
            with trio.fail_after(30):
                assert await request_identities(stream) == 1
    finally:
        session.kill()
        await session.wait()


async def request_identities(stream: trio.abc.Stream) -> int:
    await stream.send_all(struct.pack(">IB", 1, 11))  # SSH_AGENTC_REQUEST_IDENTITIES
    header = await stream.receive_some(5)
    length, kind = struct.unpack(">IB", header[:5])
    assert kind == 12  # SSH_AGENT_IDENTITIES_ANSWER
    body = header[5:]
    while len(body) < length - 1:
        body += await stream.receive_some(length - 1 - len(body))
    return int(struct.unpack(">I", body[:4])[0])


async def unix_round_trip(path: Path, payload: bytes) -> bytes:
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(payload)
        await stream.send_eof()
        received = b""
        while data := await stream.receive_some(65536):
            received += data
    return received


async def test_unix_socket_forwards_both_ways(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey,
) -> None:  # fmt: skip
    """``-L /local.sock:/run/app.sock`` reaches a socket in the container, and
    ``-R /tmp/back.sock:/client.sock`` lets the container reach one on the client's side."""
    running = await server(nursery, authorized_keys, tmp_path)
    local = tmp_path / "local.sock"
    client_side = tmp_path / "client.sock"
    unix = trio.socket.socket(trio.socket.AF_UNIX)
    await unix.bind(str(client_side))
    unix.listen(8)
    client_listener = trio.SocketListener(unix)
    await nursery.start(serve_echo, client_listener)
    async with ssh_running(
        running.port, client_key.path, "-o", "ExitOnForwardFailure=yes",
        "-L", f"{local}:/run/app.sock", "-R", f"/tmp/back.sock:{client_side}", "sleep 30",
    ):  # fmt: skip
        await wait_until(lambda: bool(backend.sandboxes) and local.exists())
        sandbox = backend.sandboxes[0]
        async with sandbox.listen(SocketAddress(path="/run/app.sock")) as listener:
            await nursery.start(serve_echo, listener)
            with trio.fail_after(30):
                assert await unix_round_trip(local, b"to the container") == b"to the container"
        with trio.fail_after(20):
            while True:
                try:
                    stream = await sandbox.connect(SocketAddress(path="/tmp/back.sock"))
                    break
                except Exception:
                    await trio.sleep(0.05)
            async with stream:
                await stream.send_all(b"to the client")
                await stream.send_eof()
                assert await stream.receive_some(1024) == b"to the client"


async def test_a_stalled_forward_does_not_slow_a_session_on_the_same_connection(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey,
) -> None:  # fmt: skip
    """A forward whose reader stops reading fills only its own window: 20 MB of session
    output on the same connection (a ControlMaster) still arrives."""
    running = await server(nursery, authorized_keys, tmp_path)
    control, local = tmp_path / "ctl", free_port()
    async with ssh_running(
        running.port, client_key.path, "-M", "-S", str(control), "-L", f"{local}:localhost:8080",
        "sleep 60",
    ):  # fmt: skip
        await wait_until(lambda: bool(backend.sandboxes) and _listening(local))
        async with backend.sandboxes[0].listen(
            SocketAddress(host="127.0.0.1", port=8080)
        ) as listener:

            async def flood(*, task_status: trio.TaskStatus[None]) -> None:
                task_status.started()
                stream, _ = await listener.accept()
                with trio.move_on_after(60), contextlib.suppress(trio.BrokenResourceError):
                    while True:  # until the stalled reader's window and buffers are full
                        await stream.send_all(b"x" * 65536)

            await nursery.start(flood)
            stalled = await trio.open_tcp_stream("127.0.0.1", local)  # never read
            try:
                with trio.fail_after(60):
                    result = await trio.run_process(
                        ssh_argv(running.port, client_key.path, "-S", str(control),
                                 "head -c 20000000 /dev/zero"),
                        capture_stdout=True, capture_stderr=True, check=False,
                    )  # fmt: skip
            finally:
                await stalled.aclose()
    assert (result.returncode, len(result.stdout)) == (0, 20_000_000), result.stderr


async def test_forwards_are_logged_with_their_bytes(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    logs = capture_module_log(monkeypatch, "trissh.channels.forwards")
    running = await server(nursery, authorized_keys, tmp_path)
    local = free_port()
    async with ssh_running(
        running.port, client_key.path, "-L", f"{local}:localhost:8080", "sleep 30"
    ):
        await wait_until(lambda: bool(backend.sandboxes) and _listening(local))
        async with backend.sandboxes[0].listen(
            SocketAddress(host="127.0.0.1", port=8080)
        ) as listener:
            await nursery.start(serve_echo, listener)
            with trio.fail_after(30):
                assert await round_trip(local, b"12345") == b"12345"
            closed = [e for e in logs if e["event"] == "forward_closed"]
            # the first forward is the test's probe for the local port: it carried nothing
            await wait_until(lambda: sum(e["event"] == "forward_closed" for e in logs) >= 2)
    opened = [e for e in logs if e["event"] == "forward_opened"]
    closed = [e for e in logs if e["event"] == "forward_closed"]
    assert {(e["kind"], e["target"]) for e in opened} == {("direct-tcpip", "localhost:8080")}
    assert sorted((e["bytes_in"], e["bytes_out"]) for e in closed) == [(0, 0), (5, 5)]
    assert all(e["duration_ms"] >= 0 for e in closed)
    metrics = running.ctx.metrics.forwards
    assert metrics.bytes_total.labels(direction="in")._value.get() == 5


def _asyncssh_round_trip(port: int, key: str, payload: bytes) -> bytes:
    asyncssh = require_module("asyncssh")
    import asyncio

    async def run() -> bytes:
        async with asyncssh.connect(
            "127.0.0.1", port, username="alice", client_keys=[key], known_hosts=None
        ) as conn:
            reader, writer = await conn.open_connection("localhost", 8080)
            writer.write(payload)
            writer.write_eof()
            return bytes(await reader.read())

    return asyncio.run(asyncio.wait_for(run(), 30))  # the thread cannot be cancelled


def _paramiko_round_trip(port: int, key: str, payload: bytes) -> bytes:
    paramiko = require_module("paramiko")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", port, username="alice", key_filename=key,
                   allow_agent=False, look_for_keys=False, timeout=30)  # fmt: skip
    try:
        channel = client.get_transport().open_channel(
            "direct-tcpip", ("localhost", 8080), ("127.0.0.1", 40000), timeout=30
        )
        channel.settimeout(30)  # the thread cannot be cancelled: bound every wait
        channel.sendall(payload)
        channel.shutdown_write()
        received = b""
        while data := channel.recv(65536):
            received += data
        return received
    finally:
        client.close()


@pytest.mark.parametrize("client", ["asyncssh", "paramiko"])
async def test_python_clients_open_direct_tcpip(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey, client: str,
) -> None:  # fmt: skip
    """asyncssh's open_connection and paramiko's open_channel reach the container's port
    (each connection gets its container when the forward opens: the listener is made in
    every container the backend starts)."""
    backend.listen_on = SocketAddress(host="127.0.0.1", port=8080)
    running = await server(nursery, authorized_keys, tmp_path)
    round_trip_of = {"asyncssh": _asyncssh_round_trip, "paramiko": _paramiko_round_trip}[client]
    with trio.fail_after(60):
        received = await trio.to_thread.run_sync(
            round_trip_of, running.port, str(client_key.path), b"python client"
        )
    assert received == b"python client"


async def test_in_session_mode_forwards_reach_a_container_of_their_own(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey,
) -> None:  # fmt: skip
    """``execution_mode = "session"``: a session's container is its own, so a forward
    reaches a second container the connection keeps for its forwards (docs: README)."""
    running = await server(
        nursery, authorized_keys, tmp_path, **{"session.execution_mode": "session"}
    )
    local = free_port()
    async with ssh_running(
        running.port, client_key.path, "-L", f"{local}:localhost:8080", "sleep 30"
    ):
        await wait_until(lambda: bool(backend.sandboxes) and _listening(local))
        with trio.fail_after(30):  # refused: nothing listens in there yet
            with contextlib.suppress(trio.BrokenResourceError):
                assert await round_trip(local, b"x") == b""
        assert len(backend.sandboxes) == 2
        session_box, forward_box = backend.sandboxes
        async with forward_box.listen(SocketAddress(host="127.0.0.1", port=8080)) as listener:
            await nursery.start(serve_echo, listener)
            with trio.fail_after(30):
                assert await round_trip(local, b"to the forwards' container") == (
                    b"to the forwards' container"
                )
        assert session_box is not forward_box


async def test_recordings_of_the_connection_note_its_forwards(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey,
) -> None:  # fmt: skip
    """A session's recording gets a marker when a forward on its connection opens and when
    it closes (with its bytes)."""
    recordings = tmp_path / "recordings"
    running = await server(
        nursery, authorized_keys, tmp_path,
        **{"recording.enabled": True, "recording.directory": str(recordings)},
    )  # fmt: skip
    local = free_port()
    async with ssh_running(
        running.port, client_key.path, "-L", f"{local}:localhost:8080", "sleep 5"
    ):
        await wait_until(lambda: bool(backend.sandboxes) and _listening(local))
        async with backend.sandboxes[0].listen(
            SocketAddress(host="127.0.0.1", port=8080)
        ) as listener:
            await nursery.start(serve_echo, listener)
            with trio.fail_after(30):
                assert await round_trip(local, b"noted") == b"noted"
        await wait_until(lambda: any(recordings.rglob("*.cast")), timeout=30)
        [cast] = list(recordings.rglob("*.cast"))
        await wait_until(lambda: b'"x"' in cast.read_bytes(), timeout=30)
    markers = [line for line in cast.read_text().splitlines() if '"m"' in line]
    assert any("forward direct-tcpip localhost:8080 opened" in line for line in markers)
    assert any("closed: 5 bytes in, 5 out" in line for line in markers)


async def test_a_session_starts_after_the_listeners_asked_for_before_it(
    nursery: trio.Nursery, backend: CapturingBackend, authorized_keys: Path,
    tmp_path: Path, client_key: ClientKey, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``ssh -R 9000:... host 'curl localhost:9000'``: sshd listens before it reads the
    session's request, so the command finds the listener. A listen inside the container
    takes a moment (here 0.5 s): the session's program waits for it (it ran first, and
    wget in the podman test found nothing on port 9000 now and then)."""
    order: list[str] = []
    real_listen, real_open = MemorySandbox.listen, MemorySandbox.open_process

    @asynccontextmanager
    async def slow_listen(self: MemorySandbox, address: SocketAddress) -> AsyncIterator[Any]:
        await trio.sleep(0.5)
        async with real_listen(self, address) as listener:
            order.append("listening")
            yield listener

    def recorded_open(self: MemorySandbox, spec: Any) -> Any:
        order.append(f"run {spec.argv[-1]}")
        return real_open(self, spec)

    monkeypatch.setattr(MemorySandbox, "listen", slow_listen)
    monkeypatch.setattr(MemorySandbox, "open_process", recorded_open)
    running = await server(nursery, authorized_keys, tmp_path)
    with trio.fail_after(30):
        result = await trio.run_process(
            ssh_argv(running.port, client_key.path, "-o", "ExitOnForwardFailure=yes",
                     "-R", "9000:127.0.0.1:9", "echo ran"),
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert result.stdout == b"ran\n", result.stderr
    runs = [item for item in order if item.startswith("run ")]
    assert runs, order
    assert order.index("listening") < order.index(runs[-1]), order
