"""splice: a channel and a socket joined both ways, with flow control and half-closes.

Each direction is one loop: read what arrived, write it on; the channel's window and the
socket's buffers bound what is in flight, so a reader that stalls on one side slows only
this forward. EOF travels (channel EOF → ``send_eof`` on the socket, socket EOF → channel
EOF); the splice ends when both directions ended, or at once when either side breaks or
the peer closes the channel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from trissh.connection.channel import ChannelHandle, ChannelStream
from trissh.ops.metrics import BYTES_REPORT_INTERVAL

#: Bytes moved per read, each way.
CHUNK = 1024 * 1024
#: Seconds data the peer sent before its CLOSE may take to reach the socket.
DRAIN_AFTER_CLOSE = 10.0


@dataclass(slots=True)
class Transferred:
    #: To the client (read from the socket).
    out: int = 0
    #: From the client (written to the socket).
    into: int = 0
    #: Told the bytes moved since its last call (in, out): at most every
    #: BYTES_REPORT_INTERVAL seconds while data moves, and at ``flush``.
    report: Callable[[int, int], None] | None = None
    _reported_into: int = 0
    _reported_out: int = 0
    _due: float = 0.0

    def moved(self, *, into: int = 0, out: int = 0) -> None:
        self.into += into
        self.out += out
        if self.report is not None and trio.current_time() >= self._due:
            self.flush()

    def flush(self) -> None:
        """Report what moved since the last report (the end of a forward calls it)."""
        if self.report is not None:
            self.report(self.into - self._reported_into, self.out - self._reported_out)
            self._reported_into, self._reported_out = self.into, self.out
            self._due = trio.current_time() + BYTES_REPORT_INTERVAL


async def _copy_to_socket(
    channel: ChannelStream, stream: trio.abc.HalfCloseableStream, counts: Transferred
) -> None:
    while data := await channel.receive_some(CHUNK):
        await stream.send_all(data)
        counts.moved(into=len(data))
    await stream.send_eof()


async def _copy_to_channel(
    stream: trio.abc.HalfCloseableStream, channel: ChannelStream, counts: Transferred
) -> None:
    while data := await stream.receive_some(CHUNK):
        await channel.send_all(data)
        counts.moved(out=len(data))
    await channel.send_eof()


async def splice(
    handle: ChannelHandle, stream: trio.abc.HalfCloseableStream, counts: Transferred
) -> None:
    """Join ``handle``'s channel and ``stream`` until both directions end, counting the
    bytes moved in ``counts``. Closes ``stream``; the caller finishes the channel.

    The peer's CLOSE ends the direction towards it at once (nothing more can be sent), but
    what it sent before its CLOSE still reaches the socket, within ``DRAIN_AFTER_CLOSE``.
    A socket that breaks ends both directions.

    Cancellation: the connection ending stops both directions; the stream is closed either
    way.
    """
    channel = ChannelStream(handle)
    inbound = trio.CancelScope()
    try:
        async with trio.open_nursery() as nursery:

            async def to_socket() -> None:
                with inbound:
                    try:
                        await _copy_to_socket(channel, stream, counts)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        nursery.cancel_scope.cancel()  # the socket is gone: so is the forward

            async def to_channel() -> None:
                try:
                    with handle.cancel_scope:  # cancelled by the peer's CLOSE
                        await _copy_to_channel(stream, channel, counts)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    if not handle.peer_closed:
                        nursery.cancel_scope.cancel()  # the socket broke
                if handle.peer_closed:  # let what arrived before the CLOSE reach the socket
                    inbound.deadline = min(
                        inbound.deadline, trio.current_time() + DRAIN_AFTER_CLOSE
                    )

            nursery.start_soon(to_socket)
            nursery.start_soon(to_channel)
    finally:
        await trio.aclose_forcefully(stream)
