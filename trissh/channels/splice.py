"""splice: a channel and a socket joined both ways, with flow control and half-closes.

Each direction is one loop: read what arrived, write it on; the channel's window and the
socket's buffers bound what is in flight, so a reader that stalls on one side slows only
this forward. EOF travels (channel EOF → ``send_eof`` on the socket, socket EOF → channel
EOF); the splice ends when both directions ended, or at once when either side breaks or
the peer closes the channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from trissh.connection.channel import ChannelHandle, ChannelStream

#: Bytes moved per read, each way.
CHUNK = 256 * 1024


@dataclass(slots=True)
class Transferred:
    #: To the client (read from the socket).
    out: int = 0
    #: From the client (written to the socket).
    into: int = 0


async def _copy_to_socket(
    channel: ChannelStream, stream: trio.abc.HalfCloseableStream, counts: Transferred
) -> None:
    while data := await channel.receive_some(CHUNK):
        await stream.send_all(data)
        counts.into += len(data)
    await stream.send_eof()


async def _copy_to_channel(
    stream: trio.abc.HalfCloseableStream, channel: ChannelStream, counts: Transferred
) -> None:
    while data := await stream.receive_some(CHUNK):
        await channel.send_all(data)
        counts.out += len(data)
    await channel.send_eof()


async def splice(
    handle: ChannelHandle, stream: trio.abc.HalfCloseableStream, counts: Transferred
) -> None:
    """Join ``handle``'s channel and ``stream`` until both directions end, counting the
    bytes moved in ``counts``. Closes ``stream``; the caller finishes the channel.

    Cancellation: the peer closing the channel (``handle.cancel_scope``) or the connection
    ending stops both directions; the stream is closed either way.
    """
    channel = ChannelStream(handle)
    try:
        with handle.cancel_scope:
            async with trio.open_nursery() as nursery:

                async def guarded(outbound: bool) -> None:
                    try:
                        if outbound:
                            await _copy_to_channel(stream, channel, counts)
                        else:
                            await _copy_to_socket(channel, stream, counts)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        nursery.cancel_scope.cancel()  # one side is gone: so is the forward

                nursery.start_soon(guarded, True)
                nursery.start_soon(guarded, False)
    finally:
        await trio.aclose_forcefully(stream)
