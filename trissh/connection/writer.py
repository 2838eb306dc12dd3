"""OutputWriter: everything one connection writes to its socket.

``flush_now`` writes the core's queued output synchronously, from whichever task produced it
(a bulk pump), as far as the socket takes it without waiting; ``_send_loop`` sends the rest
once the socket is writable again. Readers only ring the doorbell, so the small replies
of a batch of events (window adjusts, acks) leave in one write, not one each. Only the
send loop ever awaits a write, so a write is never cancelled half-way except when the whole
connection is going down; its rest is then sent before the last words (a DISCONNECT), since
a half-written packet leaves an encrypted stream unusable.
The send loop starts at the first ring: most connections never fill their socket.
"""

from __future__ import annotations

import contextlib
import socket

import trio

from trissh.connection.scatter_write import Chunk, send_chunks, socket_fd, write_now
from trissh.protocol import ChannelId, ServerConnection

#: Channel writers wait while this much output is queued in the core.
OUTPUT_HIGH_WATER = 1024 * 1024
#: Bound on the final flush of a DISCONNECT and on closing the socket.
CLOSE_TIMEOUT = 2.0


class _Doorbell:
    """Wakes the writer; a ring between two waits is never lost."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def ring(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


class OutputWriter:
    def __init__(self, stream: trio.abc.Stream, conn: ServerConnection) -> None:
        self._stream = stream
        self._conn = conn
        self._fd = socket_fd(stream)
        self._doorbell = _Doorbell()
        #: Set when send room may have grown; replaced by a fresh event each time.
        self.space_changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._started = False
        self._writing = False
        #: Output taken from the core that the socket did not accept yet (``flush_now``).
        self._backlog: list[Chunk] = []
        self._backlog_size = 0
        #: What the send loop's write has still to send (what a cancelled one left).
        self._in_flight: list[Chunk] = []

    def attach(self, nursery: trio.Nursery) -> None:
        """The nursery the send loop starts in, when first needed."""
        self._nursery = nursery

    def ring(self) -> None:
        """Wake the send loop, starting it the first time it is needed."""
        if not self._started and self._nursery is not None:
            self._started = True
            self._nursery.start_soon(self._send_loop)
        self._doorbell.ring()

    def space_freed(self) -> None:
        self.space_changed.set()
        self.space_changed = trio.Event()

    def send_room(self, channel_id: ChannelId) -> int:
        """Bytes a channel may write now; ``-1`` once it can never write again."""
        window = self._conn.send_window(channel_id)
        if window is None:
            return -1
        return max(0, min(window, OUTPUT_HIGH_WATER - self.unsent))

    @property
    def unsent(self) -> int:
        """Output bytes queued in the core or held here, not yet taken by the socket."""
        return self._conn.pending_output_size + self._backlog_size

    async def wait_unsent_at_most(self, limit: int) -> None:
        """Until no more than ``limit`` bytes are unsent (returns at once, without a
        checkpoint, if that is already so)."""
        while self.unsent > limit:
            space = self.space_changed
            self.ring()
            await space.wait()

    def flush_now(self) -> None:
        """Write queued output from the calling task as far as the socket takes it now.

        Saves a hand-off to the send loop per chunk of bulk data. Whatever remains (a full
        socket, a write in progress, a stream that is not a socket) is left to the send
        loop, behind anything it already holds, so the order never changes.
        """
        if not self._conn.pending_output_size:
            return  # nothing new; a backlog already has the writer's attention
        if self._writing or self._backlog or self._fd is None:
            self.ring()
            return
        chunks = self._conn.take_output()
        if not chunks:
            return
        rest = write_now(self._fd, chunks)
        if rest:
            self._backlog = rest
            self._backlog_size = sum(map(len, rest))
            self.ring()
        self.space_freed()

    async def _send_loop(self) -> None:
        while True:
            await self._doorbell.wait()
            self._in_flight = self._take_unsent()
            if self._in_flight:
                self._writing = True
                await send_chunks(self._stream, self._in_flight)
                self._writing = False
                self.space_freed()

    def _take_unsent(self) -> list[Chunk]:
        """The backlog, then what the core queued since: everything not yet written."""
        chunks: list[Chunk] = [*self._backlog, *self._conn.take_output()]
        self._backlog, self._backlog_size = [], 0
        return chunks

    def peer_left(self) -> None:
        """The client closed its side: close ours now (a FIN), not after the teardown.

        Tearing a connection down removes its container, which takes a fraction of a
        second; meanwhile a balancer in front counts the connection as open (against its
        per-source limits) until this side closes too. Nothing written after this could be
        read. No checkpoint."""
        if isinstance(self._stream, trio.SocketStream):
            with contextlib.suppress(OSError):
                self._stream.socket.shutdown(socket.SHUT_WR)

    async def flush_and_close(self) -> None:
        """The connection is over: write what is left (a DISCONNECT), bounded, and close.

        Cancellation: shielded and bounded by ``CLOSE_TIMEOUT``.
        """
        self._started = True  # the nursery is closed: nothing may start in it
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            # The rest of a write the end cancelled goes first, so the stream stays whole (on
            # a socket that rest is exact; on another stream nothing more can be sent).
            chunks = [*self._in_flight, *self._take_unsent()]
            if chunks and (self._fd is not None or not self._writing):
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError
                ):
                    await send_chunks(self._stream, chunks)
        if isinstance(self._stream, trio.SocketStream):
            # What aclose_forcefully does, minus the Cancelled it raises and catches: closing
            # a socket never blocks, and this runs once per connection.
            self._stream.socket.close()
        else:
            await trio.aclose_forcefully(self._stream)
