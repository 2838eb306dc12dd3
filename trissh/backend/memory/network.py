"""The fake network of one :class:`~trissh.backend.memory.MemorySandbox`: forwarding in memory.

Theory of operation
-------------------
Each sandbox has its own :class:`FakeNetwork`, as each container has its own network
namespace: a listener made in one is never reached from another. It behaves like a
container with ``network = "none"``: a loopback (``127.0.0.0/8``, ``::1``) and nothing else.

* ``listen`` registers a :class:`MemoryListener` at (address, port) or at a unix socket
  path. Port 0 takes a free port from 32768 up. ``""``, ``"*"``, ``0.0.0.0`` and ``::``
  listen on every address; other addresses must be loopback (else ``failed``, as
  ``EADDRNOTAVAIL``); a name is resolved through :attr:`FakeNetwork.hosts`. A second
  listener on a taken port or path is ``failed`` ("address in use"). Leaving ``listen``
  unregisters it (the path is "removed"), closes the connections not yet accepted and
  wakes a waiting ``accept`` with ``ClosedResourceError``.
* ``connect`` resolves the host (:attr:`FakeNetwork.hosts`, or a numeric address; any other
  name is ``unknown_host``), tries each address in turn as ssh does, and reaches the
  listener there: ``refused`` when none listens (a unix path included), ``unreachable`` for
  an address off the loopback.
* A connection is two bounded memory pipes (:mod:`trissh.backend._pipe`) stapled into a
  half-closeable stream on each side: ``send_eof`` is EOF for the peer, which may still
  send; ``aclose`` is EOF for the peer's reads and ``BrokenResourceError`` for its writes;
  a reader that lags stops the writer (backpressure), as a socket buffer does.

Test hook: :attr:`FakeNetwork.hosts` (names and the addresses they resolve to).
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import trio

from trissh.addresses import join_host_port
from trissh.backend._pipe import MemoryPipeReceiveStream, MemoryPipeSendStream, open_memory_pipe
from trissh.backend._sockets import check_address
from trissh.backend.base import SocketAddress
from trissh.backend.errors import ForwardError

__all__ = ["FakeNetwork", "MemoryConnection", "MemoryListener", "memory_connection"]

#: Connections waiting for ``accept`` per listener (as ``listen(fd, 128)``).
BACKLOG: Final = 128
_EPHEMERAL_FIRST: Final = 32768
_WILDCARDS: Final = frozenset({"", "*", "0.0.0.0", "::"})  # noqa: S104 (a fake: no bind)
#: Where a wildcard listener is registered.
_ANY: Final = "*"


class MemoryConnection(trio.abc.HalfCloseableStream):
    """One end of a fake connection: what it sends goes into one bounded pipe, what it
    receives comes out of the other."""

    def __init__(self, send: MemoryPipeSendStream, receive: MemoryPipeReceiveStream) -> None:
        self._send = send
        self._receive = receive

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._send.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._send.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._send.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._receive.receive_some(max_bytes)

    def close(self) -> None:
        """Close both ways without a checkpoint."""
        self._send.close()
        self._receive.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


def memory_connection(limit: int) -> tuple[MemoryConnection, MemoryConnection]:
    """Two ends of a fake TCP connection, each direction buffering up to ``limit`` bytes."""
    a_send, b_receive = open_memory_pipe(limit)
    b_send, a_receive = open_memory_pipe(limit)
    return MemoryConnection(a_send, a_receive), MemoryConnection(b_send, b_receive)


class MemoryListener:
    """A listener in a :class:`FakeNetwork`; connections wait in a bounded backlog."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._send, self._receive = trio.open_memory_channel[tuple[MemoryConnection, str]](BACKLOG)

    @property
    def port(self) -> int:
        return self._port

    async def accept(self) -> tuple[trio.abc.HalfCloseableStream, str]:
        """Raises: trio.ClosedResourceError: the listener (or its sandbox) was closed."""
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError("the listener was closed") from None

    def offer(self, stream: MemoryConnection, peer: str) -> None:
        """Queue a connection for :meth:`accept`.

        Raises: ForwardError: the backlog is full (a real client would wait and time out).
        """
        try:
            self._send.send_nowait((stream, peer))
        except (trio.WouldBlock, trio.ClosedResourceError):
            raise ForwardError("timeout", "the listener's backlog is full") from None

    def close(self) -> None:
        """Stop listening; connections not yet accepted are closed (their peers see EOF)."""
        self._send.close()
        while True:
            try:
                stream, _ = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            stream.close()
        self._receive.close()


class FakeNetwork:
    """One sandbox's loopback network (see the module docstring)."""

    def __init__(self, pipe_limit: int) -> None:
        self._pipe_limit = pipe_limit
        #: Names and the addresses they resolve to, in order (a test may add some).
        self.hosts: dict[str, list[str]] = {"localhost": ["127.0.0.1", "::1"]}
        self._tcp: dict[tuple[str, int], MemoryListener] = {}
        self._unix: dict[str, MemoryListener] = {}
        self._client_ports = itertools.count()
        self.closed = False

    async def connect(self, address: SocketAddress) -> trio.abc.HalfCloseableStream:
        """Raises: ForwardError (refused, unreachable, unknown_host, failed)."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        check_address(address)
        if address.path:
            listener = self._unix.get(address.path)
            if listener is None:
                raise ForwardError("refused", "No such file or directory")
            return self._connect_to(listener, "")
        error = ForwardError("refused", "Connection refused")
        for host in self._resolve(address.host):
            if not _loopback(host):
                error = ForwardError("unreachable", "Network unreachable")
                continue
            port = address.port
            listener = self._tcp.get((host, port)) or self._tcp.get((_ANY, port))
            if listener is not None:
                return self._connect_to(listener, host)
            error = ForwardError("refused", "Connection refused")
        raise error

    @asynccontextmanager
    async def listen(self, address: SocketAddress) -> AsyncIterator[MemoryListener]:
        """Raises: ForwardError (failed: in use, not a local address; unknown_host)."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        check_address(address)
        if address.path:
            key = address.path
            if key in self._unix:
                raise ForwardError("failed", "Address in use")
            listener = self._unix[key] = MemoryListener(0)
            try:
                yield listener
            finally:
                self._unix.pop(key, None)
                listener.close()
            return
        host = self._listen_host(address.host)
        port = address.port or self._free_port(host)
        if self._taken(host, port):
            raise ForwardError("failed", "Address in use")
        listener = self._tcp[(host, port)] = MemoryListener(port)
        try:
            yield listener
        finally:
            self._tcp.pop((host, port), None)
            listener.close()

    def close(self) -> None:
        """The sandbox is gone: every listener closes."""
        self.closed = True
        for listener in [*self._tcp.values(), *self._unix.values()]:
            listener.close()
        self._tcp.clear()
        self._unix.clear()

    def _check_open(self) -> None:
        if self.closed:
            raise ForwardError("failed", "the container is gone")

    def _resolve(self, host: str) -> list[str]:
        if host.lower() in self.hosts:
            return list(self.hosts[host.lower()])
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            raise ForwardError("unknown_host", "Name does not resolve") from None

    def _listen_host(self, host: str) -> str:
        if host in _WILDCARDS:
            return _ANY
        local = self._resolve(host)[0]
        if not _loopback(local):
            raise ForwardError("failed", "Address not available")
        return local

    def _taken(self, host: str, port: int) -> bool:
        return any(
            bound_port == port and (bound == host or _ANY in (host, bound))
            for bound, bound_port in self._tcp
        )

    def _free_port(self, host: str) -> int:
        for port in range(_EPHEMERAL_FIRST, 65536):
            if not self._taken(host, port):
                return port
        raise ForwardError("failed", "no free port")

    def _connect_to(self, listener: MemoryListener, host: str) -> MemoryConnection:
        ours, theirs = memory_connection(self._pipe_limit)
        client_port = _EPHEMERAL_FIRST + next(self._client_ports) % 28232  # Linux's range
        peer = join_host_port(host, client_port) if host else ""
        try:
            listener.offer(theirs, peer)
        except ForwardError:
            ours.close()
            theirs.close()
            raise
        return ours


def _loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback
