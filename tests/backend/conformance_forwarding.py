"""The forwarding half of the backend conformance suite: ``Sandbox.connect`` and ``listen``.

Every harness that can forward runs the same checks: listen then connect, bytes both ways,
half-close both ways, port 0, refusals, unix sockets, isolation between sandboxes, and the
isolation from the host (a server on the host's own loopback is never reached, by address
or by name). Harnesses with real programs (podman) also check that a program in the
container reaches a listener, and a connection reaches a server a program started.
Harnesses without forwarding must refuse with ``unsupported``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from trissh.backend import ExitStatus, ForwardError, ProcessSpec, Sandbox, SocketAddress

from .conformance import TEST_BOUND, Harness, read_all, read_until, run

LOOPBACK = SocketAddress(host="127.0.0.1", port=0)


def unix_path() -> str:
    return f"/tmp/trissh-fwd-{uuid.uuid4().hex[:12]}.sock"


async def expect_eof(stream: trio.abc.ReceiveStream) -> None:
    assert await stream.receive_some(100) == b""


async def exchange_both_ways(
    client: trio.abc.HalfCloseableStream, server: trio.abc.HalfCloseableStream
) -> None:
    """Bytes each way, then a half-close each way with data still flowing the other."""
    await client.send_all(b"ping")
    assert await read_until(server, b"ping") == b"ping"
    await server.send_all(b"pong")
    assert await read_until(client, b"pong") == b"pong"
    await client.send_eof()
    await expect_eof(server)
    await server.send_all(b"after the client's EOF")
    assert await read_until(client, b"EOF") == b"after the client's EOF"
    await server.send_eof()
    await expect_eof(client)


async def sh(h: Harness, sandbox: Sandbox, command: str) -> tuple[bytes, ExitStatus]:
    async with sandbox.open_process(ProcessSpec(argv=h.sh(command))) as process:
        out, _, status = await run(process)
    return out, status


async def connect_when_ready(
    sandbox: Sandbox, address: SocketAddress
) -> trio.abc.HalfCloseableStream:
    """Connect, retrying while a server a program is starting does not listen yet."""
    while True:
        try:
            return await sandbox.connect(address)
        except ForwardError as exc:
            if exc.reason != "refused":
                raise
        await trio.sleep(0.05)


@contextlib.asynccontextmanager
async def host_loopback_server() -> AsyncIterator[tuple[int, int, list[str]]]:
    """A server on the HOST's 127.0.0.1 and ::1 (same test, other port): its ports and
    the peers it accepted (which must stay none)."""
    accepted: list[str] = []

    async def take(listener: trio.SocketListener) -> None:
        while True:
            stream = await listener.accept()
            accepted.append(str(stream.socket.getpeername()))
            await stream.aclose()

    v4 = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    v6 = (await trio.open_tcp_listeners(0, host="::1"))[0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, v4)
        nursery.start_soon(take, v6)
        yield v4.socket.getsockname()[1], v6.socket.getsockname()[1], accepted
        nursery.cancel_scope.cancel()
    await v4.aclose()
    await v6.aclose()


class ForwardingConformance:
    """Sockets inside a sandbox (see the module docstring)."""

    async def test_forwarding_unsupported(self, no_forwarding_harness: Harness) -> None:
        harness = no_forwarding_harness
        with trio.fail_after(TEST_BOUND):
            async with harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox:
                with pytest.raises(ForwardError) as connecting:
                    await sandbox.connect(SocketAddress(host="127.0.0.1", port=22))
                with pytest.raises(ForwardError) as listening:
                    async with sandbox.listen(LOOPBACK):
                        pytest.fail("listening without forwarding")
        for info in (connecting, listening):
            assert info.value.reason == "unsupported"
            assert "exec_agent" in str(info.value)

    async def test_listen_then_connect_both_ways(self, forwarding_harness: Harness) -> None:
        harness = forwarding_harness
        with trio.fail_after(TEST_BOUND):
            async with (
                harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox,
                sandbox.listen(LOOPBACK) as listener,
            ):
                assert 0 < listener.port < 65536  # port 0 got one
                client = await sandbox.connect(SocketAddress(host="127.0.0.1", port=listener.port))
                server, peer = await listener.accept()
                async with client, server:
                    host, _, port = peer.rpartition(":")
                    assert host == "127.0.0.1"
                    assert 0 < int(port) < 65536
                    await exchange_both_ways(client, server)

    @pytest.mark.parametrize(("listen_on", "connect_to"), [("localhost", "localhost"), ("", "::1")])
    async def test_names_and_every_address(
        self, forwarding_harness: Harness, listen_on: str, connect_to: str
    ) -> None:
        """``localhost`` resolves inside; ``""`` listens on every address (v6 too)."""
        harness = forwarding_harness
        with trio.fail_after(TEST_BOUND):
            async with (
                harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox,
                sandbox.listen(SocketAddress(host=listen_on)) as listener,
            ):
                address = SocketAddress(host=connect_to, port=listener.port)
                async with await sandbox.connect(address) as client:
                    server, _ = await listener.accept()
                    async with server:
                        await server.send_all(b"hello")
                        assert await read_until(client, b"hello") == b"hello"

    async def test_refused_when_nothing_listens_any_more(self, forwarding_harness: Harness) -> None:
        harness = forwarding_harness
        path = unix_path()
        with trio.fail_after(TEST_BOUND):
            async with harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox:
                async with sandbox.listen(LOOPBACK) as listener:
                    port = listener.port
                async with sandbox.listen(SocketAddress(path=path)):
                    pass
                with pytest.raises(ForwardError) as tcp:
                    await sandbox.connect(SocketAddress(host="127.0.0.1", port=port))
                with pytest.raises(ForwardError) as unix:
                    await sandbox.connect(SocketAddress(path=path))
                # and the port and path are free again
                async with sandbox.listen(SocketAddress(host="127.0.0.1", port=port)):
                    pass
                async with sandbox.listen(SocketAddress(path=path)):
                    pass
        assert (tcp.value.reason, unix.value.reason) == ("refused", "refused")

    async def test_unix_socket_both_ways(self, forwarding_harness: Harness) -> None:
        harness = forwarding_harness
        path = unix_path()
        with trio.fail_after(TEST_BOUND):
            async with harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox:
                async with sandbox.listen(SocketAddress(path=path)) as listener:
                    assert listener.port == 0
                    if harness.real_programs:  # the file is in the container, 0600
                        out, _ = await sh(harness, sandbox, f"stat -c %F,%a {path}")
                        assert out == b"socket,600\n"
                    client = await sandbox.connect(SocketAddress(path=path))
                    server, peer = await listener.accept()
                    async with client, server:
                        assert peer == ""
                        await exchange_both_ways(client, server)
                if harness.real_programs:  # leaving removed it
                    out, _ = await sh(harness, sandbox, f"test -e {path} || echo gone")
                    assert out == b"gone\n"

    async def test_address_in_use(self, forwarding_harness: Harness) -> None:
        harness = forwarding_harness
        path = unix_path()
        with trio.fail_after(TEST_BOUND):
            async with (
                harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox,
                sandbox.listen(LOOPBACK) as first,
                sandbox.listen(SocketAddress(path=path)),
            ):
                with pytest.raises(ForwardError) as tcp:
                    async with sandbox.listen(SocketAddress(host="127.0.0.1", port=first.port)):
                        pytest.fail("two listeners on one port")
                with pytest.raises(ForwardError) as unix:
                    async with sandbox.listen(SocketAddress(path=path)):
                        pytest.fail("two listeners on one path")
        assert (tcp.value.reason, unix.value.reason) == ("failed", "failed")
        assert "in use" in str(tcp.value)

    @pytest.mark.parametrize(
        ("address", "reason"),
        [
            (SocketAddress(host="no-such-host.invalid", port=80), "unknown_host"),
            (SocketAddress(host="192.0.2.1", port=80), "unreachable"),  # network "none"
            (SocketAddress(host="127.0.0.1", port=70000), "failed"),
            (SocketAddress(host="bad\0name", port=80), "unknown_host"),
            (SocketAddress(path="/tmp/" + "x" * 200), "failed"),
            (SocketAddress(path="/tmp/no-such-socket-here"), "refused"),
        ],
    )
    async def test_connect_failures(
        self, forwarding_harness: Harness, address: SocketAddress, reason: str
    ) -> None:
        harness = forwarding_harness
        with trio.fail_after(TEST_BOUND):
            async with harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox:
                with pytest.raises(ForwardError) as info:
                    await sandbox.connect(address)
        assert info.value.reason == reason, info.value
        assert str(info.value)

    async def test_leaving_listen_ends_a_waiting_accept(self, forwarding_harness: Harness) -> None:
        harness = forwarding_harness
        with trio.fail_after(TEST_BOUND):
            async with (
                harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox,
                trio.open_nursery() as nursery,
                sandbox.listen(LOOPBACK) as listener,
            ):

                async def accept_one() -> None:
                    with pytest.raises(trio.ClosedResourceError):
                        await listener.accept()

                nursery.start_soon(accept_one)
                await trio.testing.wait_all_tasks_blocked()

    async def test_sandboxes_are_isolated(self, forwarding_harness: Harness) -> None:
        harness = forwarding_harness
        path = unix_path()
        with trio.fail_after(TEST_BOUND):
            async with (
                harness.backend.open_sandbox(harness.sandbox_spec()) as one,
                harness.backend.open_sandbox(harness.sandbox_spec()) as other,
                one.listen(SocketAddress(host="", port=0)) as listener,
                one.listen(SocketAddress(path=path)),
            ):
                for host in ("127.0.0.1", "localhost", "::1"):
                    with pytest.raises(ForwardError) as info:
                        await other.connect(SocketAddress(host=host, port=listener.port))
                    assert info.value.reason == "refused"
                with pytest.raises(ForwardError) as info:
                    await other.connect(SocketAddress(path=path))
                assert info.value.reason == "refused"

    async def test_the_hosts_loopback_is_not_reachable(self, forwarding_harness: Harness) -> None:
        """The isolation test: a server on the host's own 127.0.0.1 and ::1 is never
        reached from a sandbox, by address or by name."""
        harness = forwarding_harness
        with trio.fail_after(TEST_BOUND):
            async with (
                host_loopback_server() as (v4_port, v6_port, accepted),
                harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox,
            ):
                targets = [
                    SocketAddress(host="127.0.0.1", port=v4_port),
                    SocketAddress(host="localhost", port=v4_port),
                    SocketAddress(host="::1", port=v6_port),
                    SocketAddress(host="localhost", port=v6_port),
                ]
                for target in targets:
                    with pytest.raises(ForwardError) as info:
                        await sandbox.connect(target)
                    assert info.value.reason == "refused", (target, info.value)
                await trio.sleep(0.1)  # a connection that did arrive would be accepted now
        assert accepted == []

    async def test_doctor_tries_a_forward(self, harness: Harness) -> None:
        """``trissh doctor``'s forwarding trial needs nothing beyond the contract."""
        from trissh.ops.doctor import try_forwarding

        with trio.fail_after(TEST_BOUND):
            async with harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox:
                check = await try_forwarding(sandbox)
        assert check.ok, check
        assert check.warning == (not harness.forwarding), check
        assert ("reached a listener" in check.detail) == harness.forwarding, check

    @pytest.mark.podman
    async def test_a_program_inside_reaches_a_listener(self, agent_harness: Harness) -> None:
        """busybox ``wget`` in the container, by name, to a listener made with ``listen``."""
        harness = agent_harness
        with trio.fail_after(TEST_BOUND):
            async with (
                harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox,
                sandbox.listen(SocketAddress(host="localhost")) as listener,
            ):
                url = f"http://localhost:{listener.port}/from-inside"
                spec = ProcessSpec(argv=harness.sh(f"wget -q -O - {url}"))
                async with sandbox.open_process(spec) as process:
                    server, _ = await listener.accept()
                    async with server:
                        request = await read_until(server, b"\r\n\r\n")
                        await server.send_all(b"HTTP/1.0 200 OK\r\n\r\nserved from outside")
                    out, _, status = await run(process)
        assert request.startswith(b"GET /from-inside HTTP/1.")
        assert (out, status) == (b"served from outside", ExitStatus(code=0))

    @pytest.mark.podman
    async def test_connect_reaches_a_server_a_program_started(self, agent_harness: Harness) -> None:
        """busybox ``nc -l -e cat`` in the container: an echo server that exits at EOF."""
        harness = agent_harness
        with trio.fail_after(TEST_BOUND):
            async with harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox:
                spec = ProcessSpec(argv=harness.sh("exec nc -l -p 7000 -e cat"))
                async with sandbox.open_process(spec) as process:
                    address = SocketAddress(host="localhost", port=7000)
                    client = await connect_when_ready(sandbox, address)
                    async with client:
                        await client.send_all(b"echo me")
                        assert await read_until(client, b"echo me") == b"echo me"
                        assert isinstance(client, trio.abc.HalfCloseableStream)
                        await client.send_eof()  # cat ends, and nc with it
                        assert await read_all(client) == b""
                    assert await process.wait() == ExitStatus(code=0)
