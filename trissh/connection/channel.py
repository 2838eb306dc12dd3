"""One SSH channel seen from a session task: ``ChannelHandle`` and ``ChannelStream``.

The driver's receive loop feeds a handle (data, EOF, close, window changes, signals)
without ever blocking; the session task reads and writes through ``ChannelStream``, a
``trio.abc.HalfCloseableStream``. Channel tasks never touch the socket: a write only puts
packets into the core's output buffer and rings the writer. Back-pressure comes from the
peer's window and from the connection's output high-water mark.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from trissh.protocol import ChannelId, TerminalSize

if TYPE_CHECKING:
    from trissh.connection.driver import ConnectionDriver

#: Control items (resizes, signals) a handle queues before dropping the oldest.
MAX_CONTROL_ITEMS = 16


class ChannelHandle:
    """The driver's half of a channel: what arrived, not yet consumed by the session."""

    def __init__(self, driver: ConnectionDriver, channel_id: ChannelId) -> None:
        self.driver = driver
        self.id = channel_id
        self._inbound: deque[bytes | memoryview] = deque()
        self._input_changed = trio.Event()
        self.eof_received = False
        self.peer_closed = False
        self.control: deque[TerminalSize | str] = deque(maxlen=MAX_CONTROL_ITEMS)
        #: Called after a resize or signal is queued: the session starts its forwarder.
        self.on_control: Callable[[], None] | None = None
        self.cancel_scope = trio.CancelScope()
        self.session_started = False
        #: When stdio last moved either way (idle timeout).
        self.last_activity = trio.current_time()

    def _input_arrived(self) -> None:
        self._input_changed.set()
        self._input_changed = trio.Event()

    # -- fed by the driver (sync, never blocks) --------------------------------------------

    def feed(self, data: bytes | memoryview) -> None:
        self._inbound.append(data)
        self._input_arrived()

    def feed_eof(self) -> None:
        self.eof_received = True
        self._input_arrived()

    def feed_control(self, item: TerminalSize | str) -> None:
        self.control.append(item)
        if self.on_control is not None:
            self.on_control()

    def peer_close(self) -> None:
        self.peer_closed = True
        self.cancel_scope.cancel()
        self._input_arrived()

    # -- used by the session task ----------------------------------------------------------

    async def wait_input(self) -> None:
        """Until data, EOF or CLOSE arrives."""
        await self._input_changed.wait()

    def touch(self) -> None:
        self.last_activity = trio.current_time()

    def take_data(self, max_bytes: int | None) -> bytes:
        """Queued data, up to ``max_bytes``: whole packets joined, so a reader gets all
        that arrived in one go (one wakeup per socket read, not one per 32 KiB packet)."""
        self.touch()
        inbound = self._inbound
        chunk = inbound.popleft()
        if max_bytes is not None and len(chunk) > max_bytes:
            inbound.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        elif inbound:
            parts, size = [chunk], len(chunk)
            while inbound and (max_bytes is None or size + len(inbound[0]) <= max_bytes):
                parts.append(inbound.popleft())
                size += len(parts[-1])
            if len(parts) > 1:
                chunk = b"".join(parts)
        self.driver.acknowledge(self.id, len(chunk))
        return chunk if isinstance(chunk, bytes) else bytes(chunk)  # the one copy

    @property
    def has_data(self) -> bool:
        return bool(self._inbound)


class ChannelStream(trio.abc.HalfCloseableStream):
    """Bytes in and out of one channel; ``stderr=True`` writes extended data instead.

    ``receive_some`` returns ``b""`` after the peer's EOF or CLOSE. ``send_all`` raises
    ``trio.BrokenResourceError`` once the channel can no longer carry data.
    """

    def __init__(self, handle: ChannelHandle, *, stderr: bool = False) -> None:
        self._handle = handle
        self._stderr = stderr
        self._sending = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """One sender at a time (a second one is a bug: BusyResourceError, as trio's own
        streams do); one scheduling point per call, at the end, not also on entry."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this channel")
        handle = self._handle
        driver = handle.driver
        self._sending = True
        try:
            view = memoryview(data).cast("B")
            await trio.lowlevel.checkpoint_if_cancelled()
            while view:
                space = driver.space_changed
                room = driver.send_room(handle.id)
                if room < 0 or handle.peer_closed:
                    raise trio.BrokenResourceError("channel closed")
                if room == 0:
                    driver.flush_now()
                    await space.wait()
                    continue
                sent = driver.send_channel_data(handle.id, view[:room], stderr=self._stderr)
                view = view[sent:]
                handle.touch()
            driver.flush_now()
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        driver = self._handle.driver
        while driver.send_room(self._handle.id) == 0:
            await driver.space_changed.wait()
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self._handle.driver.send_channel_eof(self._handle.id)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        handle = self._handle
        await trio.lowlevel.checkpoint_if_cancelled()
        while not handle.has_data and not handle.eof_received and not handle.peer_closed:
            await handle.wait_input()
        if handle.has_data:
            chunk = handle.take_data(max_bytes)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return chunk
        await trio.lowlevel.cancel_shielded_checkpoint()
        return b""

    async def aclose(self) -> None:
        """Closing the stream does not close the channel; the session task does that."""
        await trio.lowlevel.checkpoint()
