"""One SSH channel seen from its handler task: ``ChannelPort``, ``ChannelHandle`` and
``ChannelStream``.

A handler (a session, a forward) never sees the connection driver. It talks to its
connection through a :class:`ChannelPort` — send data as far as there is room, EOF, close,
acknowledge what it consumed, answer a request — and reads what arrived from its
:class:`ChannelHandle`, which the driver's receive loop feeds without ever blocking.
``ChannelStream`` turns a handle into a ``trio.abc.HalfCloseableStream``: the byte-stream
shape every kind of channel pumps through. Back-pressure comes from the peer's window and
from the connection's output high-water mark.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

import trio

from trissh.protocol import ChannelId, TerminalSize

#: Control items (resizes, signals) a handle queues before dropping the oldest.
MAX_CONTROL_ITEMS = 16
#: Data packets below this size are joined as they arrive (``ChannelHandle.feed``), into
#: buffers of up to about this size.
SMALL_PACKET = 4096
JOINED_BUFFER = 64 * 1024


class ChannelPort(Protocol):
    """What a channel may do to its connection; synchronous, never waits."""

    @property
    def space_changed(self) -> trio.Event:
        """Set when send room may have grown (window adjust, socket drained)."""
        ...

    def send_room(self, channel_id: ChannelId) -> int:
        """Bytes the channel may send now; ``-1`` once it can never send again."""
        ...

    def send_data(self, channel_id: ChannelId, data: memoryview, *, stderr: bool) -> int:
        """Queue up to ``send_room`` bytes; the caller then calls ``flush``."""
        ...

    def flush(self) -> None:
        """Write queued output as far as the socket takes it now."""
        ...

    def send_eof(self, channel_id: ChannelId) -> None: ...

    def acknowledge(self, channel_id: ChannelId, amount: int) -> None:
        """``amount`` received bytes were consumed: the peer may send that much more."""
        ...

    def reply_request(self, channel_id: ChannelId, ok: bool) -> None:
        """Answer the request the channel's kind left to its handler (a session start)."""
        ...

    def finish(
        self,
        channel_id: ChannelId,
        *,
        exit_code: int | None = None,
        signal: str | None = None,
        core_dumped: bool = False,
    ) -> None:
        """End the channel as sshd does: exit status or signal (sessions, with whether it
        dumped core), EOF, CLOSE; then forget its handle."""
        ...


class ChannelHandle:
    """A channel's inbound side: what arrived, not yet consumed by its handler."""

    def __init__(self, port: ChannelPort, channel_id: ChannelId) -> None:
        self.port = port
        self.id = channel_id
        self._inbound: deque[bytes | bytearray | memoryview] = deque()
        self._input_changed = trio.Event()
        self.eof_received = False
        self.peer_closed = False
        self.control: deque[TerminalSize | str] = deque(maxlen=MAX_CONTROL_ITEMS)
        #: Called after a resize or signal is queued: the session starts its forwarder.
        self.on_control: Callable[[], None] | None = None
        #: Cancelled when the peer closes the channel: the handler's task unwinds.
        self.cancel_scope = trio.CancelScope()
        #: A handler task runs for it (until then a peer's CLOSE is answered at once).
        self.started = False
        #: When data last moved either way (idle timeout).
        self.last_activity = trio.current_time()
        #: A channel we opened: set once the peer answered; ``refusal`` says if it refused.
        self._answered = trio.Event()
        self.refusal: str | None = None
        #: A channel we opened whose opener left before the answer: closed once confirmed.
        self.abandoned = False

    def _input_arrived(self) -> None:
        self._input_changed.set()
        self._input_changed = trio.Event()

    # -- fed by the driver (sync, never blocks) --------------------------------------------

    def feed(self, data: bytes | memoryview) -> None:
        """Queue what arrived. Small packets are copied into a shared buffer: queued one by
        one, each would keep its view and decrypted packet (~320 bytes for one byte of
        data), and the window bounds bytes, not packets."""
        inbound = self._inbound
        if len(data) < SMALL_PACKET:
            tail = inbound[-1] if inbound else None
            if isinstance(tail, bytearray) and len(tail) < JOINED_BUFFER:
                tail += data
            else:
                inbound.append(bytearray(data))
        else:
            inbound.append(data)
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

    def answer_open(self, refusal: str | None) -> None:
        """The peer confirmed (``None``) or refused a channel we opened."""
        self.refusal = refusal
        self._answered.set()

    # -- used by the handler task ----------------------------------------------------------

    @property
    def answered(self) -> bool:
        return self._answered.is_set()

    async def opened(self) -> bool:
        """Whether the peer accepted the channel we opened (waits for its answer)."""
        await self._answered.wait()
        return self.refusal is None

    async def wait_input(self) -> None:
        """Until data, EOF or CLOSE arrives."""
        await self._input_changed.wait()

    def touch(self) -> None:
        self.last_activity = trio.current_time()

    def take_data(self, max_bytes: int | None) -> bytes:
        """Queued data, up to ``max_bytes``: all that arrived in one go, joined (one
        wakeup per socket read, not one per 32 KiB packet)."""
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
        self.port.acknowledge(self.id, len(chunk))
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
        port = handle.port
        self._sending = True
        try:
            view = memoryview(data).cast("B")
            await trio.lowlevel.checkpoint_if_cancelled()
            while view:
                space = port.space_changed
                room = port.send_room(handle.id)
                if room < 0 or handle.peer_closed:
                    raise trio.BrokenResourceError("channel closed")
                if room == 0:
                    port.flush()
                    await space.wait()
                    continue
                sent = port.send_data(handle.id, view[:room], stderr=self._stderr)
                view = view[sent:]
                handle.touch()
            port.flush()
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        port = self._handle.port
        while port.send_room(self._handle.id) == 0:
            await port.space_changed.wait()
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self._handle.port.send_eof(self._handle.id)

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
        """Closing the stream does not close the channel; its handler does that."""
        await trio.lowlevel.checkpoint()
