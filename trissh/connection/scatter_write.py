"""Write queued wire packets to the client with scatter-gather I/O.

The core hands over each flight as a list of packets; joining them would copy every byte
once more before the kernel copies it again. On a real socket ``sendmsg``/``writev`` take
the list as it is; any other stream (tests, wrappers) gets one joined ``send_all``.

``write_now`` is the synchronous half: it writes what the socket takes without waiting and
returns the rest, so a task that just queued bulk data can send it itself instead of
waking the writer task for every chunk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

import trio

#: Buffers per system call, well under Linux's IOV_MAX of 1024.
MAX_BUFFERS_PER_CALL: Final = 256

Chunk = bytes | bytearray | memoryview


def socket_fd(stream: trio.abc.Stream) -> int | None:
    """The file descriptor under ``stream`` if it is a plain socket stream."""
    return stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None


def _drop_sent(pending: Sequence[Chunk], sent: int) -> list[Chunk]:
    """What is left of ``pending`` after a write of ``sent`` bytes; only a chunk written in
    part is wrapped in a view (the rest go to the kernel as they are)."""
    first = 0
    while first < len(pending) and sent >= len(pending[first]):
        sent -= len(pending[first])
        first += 1
    rest = list(pending[first:])
    if sent:
        rest[0] = memoryview(rest[0])[sent:]
    return rest


def write_now(fd: int, chunks: Sequence[Chunk]) -> list[Chunk]:
    """Write as much of ``chunks`` as the (non-blocking) socket takes; return the rest.

    An error is not raised here: everything stays unsent, and the writer task, which sends
    the rest, meets the same error and ends the connection.
    """
    pending = list(chunks)
    while pending:
        batch = pending[:MAX_BUFFERS_PER_CALL]
        try:
            sent = os.writev(fd, batch)
        except OSError:
            return pending
        if len(batch) == len(pending) and sent == sum(map(len, batch)):
            return []
        pending = _drop_sent(pending, sent)
    return pending


async def send_chunks(stream: trio.abc.Stream, pending: list[Chunk]) -> None:
    """Send every byte of ``pending`` in order, as few system calls as the kernel allows.

    On a socket, ``pending`` is kept to what is not sent yet, even a single chunk: a
    cancelled call leaves in it exactly what the peer still needs (a trio send that is
    cancelled sent nothing). On another stream it is emptied first (how much a cancelled
    ``send_all`` sent is unknown).
    """
    pending[:] = [chunk for chunk in pending if chunk]
    if not isinstance(stream, trio.SocketStream):
        whole = b"".join(pending)
        pending.clear()
        await stream.send_all(whole)
        return
    sock = stream.socket
    while pending:
        sent = await sock.sendmsg(pending[:MAX_BUFFERS_PER_CALL])
        pending[:] = _drop_sent(pending, sent)
