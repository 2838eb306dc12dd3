"""Read the client's bytes off the socket with as little work per read as trio allows.

trio's ``SocketStream.receive_some`` always tries ``recv`` first and waits only after it
fails, through two context managers and an exception. That suits bulk uploads, where the
next data is usually there already, and wastes a system call and an exception on every
read of a login, where the client is always still answering. ``SocketReader`` guesses
from the last read: after a large one it tries ``recv`` first, after a small one it waits
for readability first. Either way each read is a trio checkpoint, as ``receive_some`` is,
and a cancelled read has read nothing, as with trio's own streams.
"""

from __future__ import annotations

import socket
from typing import Final

import trio

#: A read at least this large suggests more is already queued (bulk transfer).
BULK_READ: Final = 16 * 1024


def ask_quick_acks(stream: trio.abc.Stream) -> bool:
    """Delayed ACKs stall handshake round trips by ~40 ms: ask for quick ones (again: Linux
    drops the request after a while). False once the socket cannot."""
    sock = getattr(stream, "socket", None)
    if sock is None or not hasattr(socket, "TCP_QUICKACK"):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    except OSError:
        return False
    return True


class SocketReader:
    """``receive_some`` for a plain socket stream; other streams go through theirs."""

    __slots__ = ("_sock", "_stream", "_try_first")

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._sock: socket.socket | None = None
        if isinstance(stream, trio.SocketStream):
            # trio's socket wraps a stdlib one; its public API has no accessor for it.
            self._sock = stream.socket._sock  # type: ignore[attr-defined]
        self._try_first = False

    async def receive_some(self, max_bytes: int) -> bytes | bytearray:
        """Up to ``max_bytes``; ``b""`` at end of stream. Raises ``OSError`` on a reset."""
        sock = self._sock
        if sock is None:
            return await self._stream.receive_some(max_bytes)
        if self._try_first:
            # Cancelled before the read or not at all: bytes read are never dropped (the
            # connection's clock cancels reads and the connection goes on).
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                pass
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                self._try_first = len(data) >= BULK_READ
                return data
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                continue  # a spurious wake-up
            self._try_first = len(data) >= BULK_READ
            return data
