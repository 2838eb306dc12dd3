"""Accepting connections: a thread per listener accepts and greets; trio serves.

Why not ``trio.serve_listeners``: each of its accepts is a checkpoint, so it takes one
connection per scheduler pass, and a pass runs every runnable task. In a login storm a pass
runs the key exchanges of hundreds of connections (hundreds of ms), the listen queue drains
one connection per pass, and clients give up waiting for the server's version line, the
only wait OpenSSH bounds (``ConnectTimeout``; issue 19: 227 of 400 timed out "during
banner exchange"). Accepting everything queued at each wake-up, in the event loop, helped
(400 clients: the banner's p99 4.4 s -> 0.5 s), but a wake-up still waits for the pass in
progress, and at 1,000 clients the p99 was ~1 s.

So each listener has an accept thread (:class:`Acceptor`): blocked in ``poll`` without the
GIL, it wakes the moment a connection is queued, accepts everything pending, writes each
one's version line at once (a few dozen bytes: the socket always takes them), and hands the
sockets to trio (``run_sync_soon``), where ``deliver`` admits or refuses each, starts its
task, and the core sends KEXINIT. A client waits for our version line about as long as the
kernel takes to run this thread (it needs the GIL for microseconds), however busy the event
loop is. Connections from a trusted balancer are not greeted here: its PROXY header comes
first (:mod:`.proxy_protocol`).

A refused connection is told why (:class:`Refusals`), then closed without a reset.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import structlog
import trio

log = structlog.get_logger("trissh.server.accept")

#: A peer's address as ``accept`` returns it: (host, port) or, IPv6, (host, port, flow, scope).
Address = tuple[Any, ...]
#: Connections accepted per wake-up at most, so one flooded listener cannot hold the GIL.
ACCEPT_BATCH: Final = 512
#: Out of descriptors or memory: the pending connections stay queued in the kernel (as
#: trio.serve_listeners does, pause instead of dying; a connection ending frees one).
CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
CAPACITY_PAUSE: Final = 0.1
#: The client left between the kernel's handshake and our accept, or its connection has a
#: network error that Linux's accept passes on (accept(2): treat them as EAGAIN): nothing
#: to serve, the next one may be fine.
GONE_ERRNOS: Final = frozenset(
    {
        errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET, errno.ETIMEDOUT,
        errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENONET,
        errno.ENOPROTOOPT, errno.EOPNOTSUPP,
    }
)  # fmt: skip
#: How long a refused connection stays open for its client to read why, and how many may.
REFUSAL_LINGER: Final = 2.0
MAX_LINGERING: Final = 256


class Acceptor:
    """One listener's accept thread and the hand-over of its sockets to trio."""

    def __init__(
        self,
        listener: trio.SocketListener,
        *,
        greeting: Callable[[socket.socket, Address], bytes],
        deliver: Callable[[socket.socket, Address, bool], None],
    ) -> None:
        """Args:
        listener: a bound, listening trio listener (closed when :meth:`run` ends).
        greeting: in the accept thread: the bytes to write at once to a new connection
            from the address ``accept`` gave (``b""``: none). Must be thread-safe and not
            raise.
        deliver: in trio: serve a new connection (its peer's address, whether it was
            greeted); must not raise.
        """
        self._listener = listener
        # trio's socket wraps a stdlib one (non-blocking); its public API has no accessor.
        self._sock: socket.socket = listener.socket._sock  # type: ignore[attr-defined]
        self._greeting = greeting
        self._deliver = deliver
        self._stop_read, self._stop_write = os.pipe()
        #: Guards the pipe: the thread closes it when it ends, so nobody writes to a closed
        #: (perhaps already reused) descriptor.
        self._stop_lock = threading.Lock()
        self._thread_done = False
        self._open = True

    async def run(self) -> None:
        """Accept until cancelled; then stop the thread and close the listener.

        Cancellation: returns at once; the thread ends at its next wake-up, and a socket
        it hands over afterwards is closed.
        """
        token = trio.lowlevel.current_trio_token()
        try:
            # A limiter of its own: the thread lives as long as the listener, and must not
            # hold one of the default limiter's tokens that other thread users share.
            await trio.to_thread.run_sync(
                self._accept_forever,
                token,
                abandon_on_cancel=True,
                limiter=trio.CapacityLimiter(1),
            )
        finally:
            self._open = False
            # Stop listening now: while the thread sleeps in poll() the kernel holds a
            # reference to the socket, so close() alone leaves it accepting connections
            # until the thread runs again (a busy host: milliseconds).
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            with self._stop_lock:
                if not self._thread_done:
                    os.write(self._stop_write, b"x")
            self._listener.socket.close()

    def _hand_over(self, conn: socket.socket, address: Address, greeted: bool) -> None:
        """In trio: the event loop's side of one accepted connection.

        A bug here costs this connection only: raised from a ``run_sync_soon`` callback it
        would end the run with TrioInternalError, abandoning every task's clean-up."""
        if not self._open:
            conn.close()
            return
        try:
            self._deliver(conn, address, greeted)
        except Exception:
            log.exception("connection_hand_over_failed")
            conn.close()

    def _accept_forever(self, token: trio.lowlevel.TrioToken) -> None:
        """The accept thread: ``poll`` without the GIL, then everything that is queued."""
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        poller.register(self._stop_read, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._stop_read in ready or not self._open:
                    return
                self._accept_pending(token)
        finally:
            with self._stop_lock:
                self._thread_done = True
                os.close(self._stop_read)
                os.close(self._stop_write)

    def _accept_pending(self, token: trio.lowlevel.TrioToken) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = self._sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if not self._open:
                    return  # the listener was closed under us: shutting down
                if exc.errno in GONE_ERRNOS:
                    continue
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                log.error("accept_failed", error=exc.strerror, retry_in_s=CAPACITY_PAUSE)
                time.sleep(CAPACITY_PAUSE)
                return
            greeting = self._greeting(conn, address)
            if greeting:
                with contextlib.suppress(OSError):  # a reset client: trio's side sees it
                    conn.send(greeting, socket.MSG_DONTWAIT)
            try:
                token.run_sync_soon(self._hand_over, conn, address, bool(greeting))
            except trio.RunFinishedError:
                conn.close()
                return


class Refusals:
    """Refused connections, each told why before it is closed."""

    def __init__(self) -> None:
        self.lingering = 0

    def refuse(self, stream: trio.SocketStream, message: bytes, nursery: trio.Nursery) -> None:
        """Write ``message`` (a few hundred bytes: the socket takes them at once) and close.

        Closing a socket whose client's bytes are unread sends a reset, which can reach the
        client before it has read the message (OpenSSH then reports a broken pipe). So the
        write side is shut and what the client sends is read and dropped until it leaves
        or :data:`REFUSAL_LINGER` passes; past :data:`MAX_LINGERING` such sockets (a flood)
        the socket is closed at once.
        """
        sock: socket.socket = stream.socket._sock  # type: ignore[attr-defined]
        try:
            sock.send(message)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if self.lingering >= MAX_LINGERING:
            sock.close()
            return
        self.lingering += 1
        nursery.start_soon(self._linger, stream)

    async def _linger(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REFUSAL_LINGER):
                while await stream.receive_some(4096):
                    pass
        except (trio.BrokenResourceError, OSError):
            pass
        finally:
            self.lingering -= 1
            stream.socket.close()
