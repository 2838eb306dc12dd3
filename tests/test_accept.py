"""The accept path under load (issue 19): every client gets the server's version line at
once however busy the event loop is, through real sockets, with the in-process backend."""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

import pytest
import trio

from trissh.backend.memory import MemoryBackend
from trissh.server.accept import Acceptor, Address

from .support import ClientKey, make_context, start_server

#: Connections opened together while the event loop is hogged.
CLIENTS = 30
#: CPU the hog burns between checkpoints: one scheduler pass of the key exchanges of a few
#: hundred connections.
PASS = 0.25


def _banner_waits(port: int, count: int, timeout: float) -> list[float]:
    """Open ``count`` connections at once (blocking sockets, in a thread: the event loop is
    the server's); the seconds each waited for its first ``SSH-`` bytes (``inf``: none)."""
    socks = []
    try:
        started = time.monotonic()
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            socks.append(sock)
        waits = []
        for sock in socks:
            sock.settimeout(max(0.01, started + timeout - time.monotonic()))
            try:
                data = sock.recv(64)
            except TimeoutError:
                data = b""
            waits.append(time.monotonic() - started if data.startswith(b"SSH-") else float("inf"))
        return waits
    finally:
        for sock in socks:
            sock.close()


async def test_the_version_line_goes_out_while_the_event_loop_is_busy(
    nursery: trio.Nursery, tmp_path: Path, authorized_keys: Path, client_key: ClientKey
) -> None:
    """A task hogs the event loop for 0.25 s per scheduler pass (as the key exchanges of
    hundreds of connections do in a storm) while 30 clients connect at once: each one reads
    the version line within 2 s. Accepting in the event loop, one connection per pass, the
    last waited ~30 passes (7.5 s), past OpenSSH's usual ConnectTimeout."""
    ctx = make_context(
        MemoryBackend(),
        authorized_keys,
        tmp_path / "host_key",
        **{"limits.max_startups": "100", "limits.max_startups_per_source": 0},
    )
    server = await start_server(nursery, ctx)
    hogging = True

    async def hog() -> None:
        while hogging:
            end = time.perf_counter() + PASS
            while time.perf_counter() < end:
                pass
            await trio.lowlevel.checkpoint()

    try:
        async with trio.open_nursery() as load:
            load.start_soon(hog)
            await trio.sleep(0.1)
            with trio.fail_after(60):
                waits = await trio.to_thread.run_sync(_banner_waits, server.port, CLIENTS, 30.0)
            hogging = False
    finally:
        hogging = False
    assert max(waits) < 2.0, sorted(waits)
    await server.stop()
    assert ctx.state.statistics() == {"connections": 0, "tasks": 0}


async def test_a_connection_whose_hand_over_fails_is_closed_and_the_server_goes_on() -> None:
    """A bug while taking one connection over (``deliver`` raising, in a ``run_sync_soon``
    callback) costs that connection only: raised there it became TrioInternalError, which
    abandons every task, shielded clean-up (container removal) included."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    delivered: list[socket.socket] = []
    failed: list[socket.socket] = []

    def deliver(conn: socket.socket, address: Address, greeted: bool) -> None:
        if not failed:
            failed.append(conn)
            raise RuntimeError("a bug in the hand-over")
        delivered.append(conn)

    acceptor = Acceptor(
        listener, greeting=lambda conn, address: b"SSH-2.0-test\r\n", deliver=deliver
    )

    def client() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            received = b""
            while chunk := sock.recv(64):
                received += chunk
            return received  # the server closed it

    async with trio.open_nursery() as nursery:
        nursery.start_soon(acceptor.run)
        with trio.fail_after(10):
            first = await trio.to_thread.run_sync(client)
            with socket.create_connection(("127.0.0.1", port), timeout=10):
                while not delivered:
                    await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert first == b"SSH-2.0-test\r\n"  # greeted, then closed
    for conn in delivered:
        conn.close()


class _FailingOnce:
    """The listening socket, whose first ``accept`` fails with ``number``."""

    def __init__(self, sock: socket.socket, number: int) -> None:
        self._sock = sock
        self._number: int | None = number

    def accept(self) -> tuple[socket.socket, Address]:
        if self._number is not None:
            number, self._number = self._number, None
            raise OSError(number, os.strerror(number))
        return self._sock.accept()

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


@pytest.mark.parametrize(
    "number", [errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETDOWN, errno.ETIMEDOUT]
)
async def test_a_network_error_from_accept_costs_that_connection_only(number: int) -> None:
    """accept(2): Linux passes a pending network error of the new connection on as the
    error of accept (ENETDOWN, EHOSTUNREACH, ENETUNREACH...), to be treated as EAGAIN. It
    ended every accept loop, so the whole server, with every session."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    delivered: list[socket.socket] = []
    acceptor = Acceptor(
        listener,
        greeting=lambda conn, address: b"",
        deliver=lambda conn, address, greeted: delivered.append(conn),
    )
    acceptor._sock = _FailingOnce(acceptor._sock, number)  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(acceptor.run)
        with trio.fail_after(10):
            with socket.create_connection(("127.0.0.1", port), timeout=10):
                while not delivered:
                    await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    for conn in delivered:
        conn.close()
