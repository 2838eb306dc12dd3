"""Bounded in-memory byte pipes, a program's stdin and a nursery helper shared by the backends.

Theory of operation
-------------------
A memory pipe is a one-way byte stream between two tasks in the same process (the
file-descriptor pipes that reach a program are :mod:`trissh.backend.podman.fd_pipes`): a
producer (the podman demux task, or a MemoryBackend program) and a consumer (the session's
pump). It holds whole chunks in a deque and counts their bytes; ``send_all`` parks while
the buffered total is at or above ``limit``, so a lagging consumer stops the producer
(backpressure) and memory stays bounded by ``limit`` plus one chunk. Chunks are passed by
reference, so a producer handing over ``bytes`` costs no copy until the consumer asks for
less than a whole chunk.

:class:`ProcessStdin` is what both backends hand out as a program's stdin, so that closing
it means the same in both: writes stop, and EOF is delivered only without a pty.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

__all__ = [
    "MemoryPipeReceiveStream",
    "MemoryPipeSendStream",
    "ProcessStdin",
    "open_memory_pipe",
    "open_task_nursery",
]


class _PipeState:
    __slots__ = (
        "chunks",
        "error",
        "limit",
        "readable",
        "receiver_closed",
        "receiving",
        "sender_closed",
        "sending",
        "size",
        "writable",
    )

    def __init__(self, limit: int) -> None:
        self.chunks: deque[bytes | memoryview] = deque()
        self.size = 0
        self.limit = limit
        self.sender_closed = False
        self.receiver_closed = False
        #: Raised (as the cause of BrokenResourceError) to the reader after buffered data.
        self.error: BaseException | None = None
        self.sending = False
        self.receiving = False
        self.readable = trio.lowlevel.ParkingLot()
        self.writable = trio.lowlevel.ParkingLot()


class MemoryPipeSendStream(trio.abc.SendStream):
    """The producer's end. ``aclose``/``send_eof`` mean EOF for the reader."""

    def __init__(self, state: _PipeState) -> None:
        self._state = state

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        st = self._state
        if st.sending:
            raise trio.BusyResourceError("another task is already sending on this pipe")
        st.sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            parked = False
            while True:
                if st.sender_closed:
                    raise trio.ClosedResourceError("pipe already closed for sending")
                if st.receiver_closed:
                    raise trio.BrokenResourceError("pipe reader went away")
                if st.size < st.limit or not data:
                    break
                parked = True
                await st.writable.park()
            if data:
                chunk = data if isinstance(data, bytes) else bytes(data)
                st.chunks.append(chunk)
                st.size += len(chunk)
                st.readable.unpark_all()
            if not parked:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            st.sending = False

    async def wait_send_all_might_not_block(self) -> None:
        st = self._state
        await trio.lowlevel.checkpoint_if_cancelled()
        parked = False
        while st.size >= st.limit and not (st.sender_closed or st.receiver_closed):
            parked = True
            await st.writable.park()
        if not parked:
            await trio.lowlevel.cancel_shielded_checkpoint()
        if st.sender_closed:
            raise trio.ClosedResourceError("pipe already closed for sending")

    def close(self, error: BaseException | None = None) -> None:
        """Close without a checkpoint (for ``finally`` blocks); ``error`` reaches the reader."""
        st = self._state
        if not st.sender_closed:
            st.sender_closed = True
            st.error = error
        st.readable.unpark_all()
        st.writable.unpark_all()

    async def send_eof(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    @property
    def receiver_closed(self) -> bool:
        """True once the consumer has closed its end (nothing written will be read)."""
        return self._state.receiver_closed


class MemoryPipeReceiveStream(trio.abc.ReceiveStream):
    """The consumer's end. ``receive_some`` returns ``b""`` after the producer's EOF."""

    def __init__(self, state: _PipeState) -> None:
        self._state = state

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        st = self._state
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if st.receiving:
            raise trio.BusyResourceError("another task is already receiving on this pipe")
        st.receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            parked = False
            while not st.chunks:
                if st.receiver_closed:
                    raise trio.ClosedResourceError("pipe already closed for receiving")
                if st.sender_closed:
                    if st.error is not None:
                        raise trio.BrokenResourceError(str(st.error)) from st.error
                    break
                parked = True
                await st.readable.park()
            if st.receiver_closed:
                raise trio.ClosedResourceError("pipe already closed for receiving")
            out = self._take(max_bytes)
            if not parked:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return out
        finally:
            st.receiving = False

    def _take(self, max_bytes: int | None) -> bytes:
        st = self._state
        if not st.chunks:
            return b""
        chunk = st.chunks[0]
        if max_bytes is None or len(chunk) <= max_bytes:
            st.chunks.popleft()
            out = chunk if isinstance(chunk, bytes) else bytes(chunk)
        else:
            view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
            out = bytes(view[:max_bytes])
            st.chunks[0] = view[max_bytes:]
        st.size -= len(out)
        if st.size < st.limit:
            st.writable.unpark_all()
        return out

    def close(self) -> None:
        """Close without a checkpoint; the producer's next send raises BrokenResourceError."""
        st = self._state
        st.receiver_closed = True
        st.chunks.clear()
        st.size = 0
        st.writable.unpark_all()
        st.readable.unpark_all()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class ProcessStdin(trio.abc.SendStream):
    """Writes go to ``stream``; ``aclose`` stops them and, given ``eof``, calls it once.

    Without ``eof`` (a pty: as with sshd and podman) closing is no EOF; the program sees
    one when the user types ^D. An ``eof`` that finds the stream already gone is ignored.
    """

    def __init__(
        self, stream: trio.abc.SendStream, *, eof: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._stream = stream
        self._eof = eof
        self._closed = False

    async def _check_open(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("stdin already closed")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._check_open()
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._check_open()
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        eof = None if self._closed else self._eof
        self._closed = True
        if eof is None:
            await trio.lowlevel.checkpoint()
            return
        try:
            await eof()
        except (trio.ClosedResourceError, trio.BrokenResourceError, OSError):
            await trio.lowlevel.checkpoint()


def open_memory_pipe(limit: int = 65536) -> tuple[MemoryPipeSendStream, MemoryPipeReceiveStream]:
    """A bounded one-way byte pipe; ``limit`` is the buffered bytes at which sends park."""
    if limit < 1:
        raise ValueError("limit must be >= 1")
    state = _PipeState(limit)
    return MemoryPipeSendStream(state), MemoryPipeReceiveStream(state)


@asynccontextmanager
async def open_task_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for helper tasks that never raise, whose body exceptions come out unwrapped.

    Why: with strict exception groups a nursery wraps even the *body's* exception in an
    ``ExceptionGroup``, so a context manager that owns a nursery would turn a caller's
    ``ValueError`` into a group. Our background tasks (demux, fake programs) catch their own
    errors, so a single-exception group can only be the body's (or a ``Cancelled``) and is
    re-raised bare. The nursery is cancelled when the body ends.
    """
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            exc = group.exceptions[0]
            raise exc from exc.__cause__
        raise
