"""Accepting connections: every one the kernel holds at each wake-up, each greeted at once.

Why not ``trio.serve_listeners``: each of its accepts is a checkpoint, so it takes one
connection per scheduler pass. In a login storm one pass runs the key exchanges of
hundreds of connections (hundreds of ms); the listen queue then drains one connection per
pass and clients give up waiting for the server's version line (issue 19: 227 of 400
OpenSSH clients timed out "during banner exchange"). Here each wake-up accepts everything
queued (up to :data:`ACCEPT_BATCH`) and hands each socket to ``on_accept``, which is
synchronous: it writes the connection's greeting (version line and KEXINIT) or a refusal
before any other connection's work runs, and only then starts the connection's task.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Final, NoReturn

import structlog
import trio

log = structlog.get_logger("trissh.server.accept")

#: Connections accepted per wake-up at most, so one flooded listener cannot hold the loop.
ACCEPT_BATCH: Final = 512
#: Out of descriptors or memory: the pending connections stay queued in the kernel (as
#: trio.serve_listeners does, pause instead of dying; a connection ending frees one).
CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
CAPACITY_PAUSE: Final = 0.1
#: The client left between the kernel's handshake and our accept: nothing to serve.
GONE_ERRNOS: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
#: How long a refused connection stays open for its client to read why, and how many may.
REFUSAL_LINGER: Final = 2.0
MAX_LINGERING: Final = 256


async def accept_loop(
    listener: trio.SocketListener, on_accept: Callable[[socket.socket], None]
) -> NoReturn:
    """Accept on ``listener`` until cancelled, handing each socket to ``on_accept`` (which
    must not raise); the listener is closed on the way out.

    Cancellation: stops accepting; connections already handed over are the caller's.
    """
    # trio's socket wraps a stdlib one (non-blocking); its public API has no accessor.
    sock: socket.socket = listener.socket._sock  # type: ignore[attr-defined]
    try:
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(ACCEPT_BATCH):
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in GONE_ERRNOS:
                        continue
                    if exc.errno not in CAPACITY_ERRNOS:
                        raise
                    log.error("accept_failed", error=exc.strerror, retry_in_s=CAPACITY_PAUSE)
                    await trio.sleep(CAPACITY_PAUSE)
                    break
                on_accept(conn)
    finally:
        listener.socket.close()


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
