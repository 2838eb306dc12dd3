"""Our ends of a program's pipes: file descriptors that cross into its container.

Theory of operation
-------------------
Direct stdio (:mod:`.direct_stdio`) and the agent (:mod:`.agent`) give a program three
real pipes (:class:`ProgramPipes`) instead of podman's stream; the program holds one end of
each, trissh the other. Our ends are ``FdStream`` wrappers that read or write *first* and
wait only when the pipe is empty or full: on a download every chunk would otherwise cost one
more scheduling round than it needs. A closed end reports ``fileno() == -1`` to them, so a
descriptor number the kernel has reused is never touched. The in-memory pipes between two
tasks of trissh are :mod:`trissh.backend._pipe`'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Final

import trio

__all__ = ["FdPipeEnd", "FdPipeReader", "FdPipeWriter", "ProgramPipes"]

#: Pipe buffer asked for stdin and stdout (bulk data, fewer wakeups per MB); best effort:
#: above /proc/sys/fs/pipe-max-size, or past an unprivileged user's pipe quota, the kernel
#: refuses and the pipe keeps its 64 KiB.
BULK_PIPE_SIZE: Final = 256 * 1024
_F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class ProgramPipes:
    """A program's stdin, stdout and stderr pipes.

    Our ends are :attr:`stdin`, :attr:`stdout` and :attr:`stderr` (trio streams, usable
    at once: writes wait in the pipe until the program runs); :attr:`child_ends` are the
    program's, to pass into the container and then :meth:`release_child_ends` (so the
    program's exit is EOF here). :meth:`close` releases everything; it is idempotent.
    """

    def __init__(self) -> None:
        made: list[int] = []
        try:
            for _ in range(3):
                made += os.pipe2(os.O_CLOEXEC)
        except BaseException:
            for fd in made:
                os.close(fd)
            raise
        stdin_r, stdin_w, stdout_r, stdout_w, stderr_r, stderr_w = made
        for bulk in (stdin_w, stdout_w):
            with contextlib.suppress(OSError):
                fcntl.fcntl(bulk, _F_SETPIPE_SZ, BULK_PIPE_SIZE)
        self.child_ends = [stdin_r, stdout_w, stderr_w]
        self.stdin = FdPipeWriter(trio.lowlevel.FdStream(stdin_w))
        self.stdout = FdPipeReader(trio.lowlevel.FdStream(stdout_r))
        self.stderr = FdPipeReader(trio.lowlevel.FdStream(stderr_r))

    def release_child_ends(self) -> None:
        for fd in self.child_ends:
            os.close(fd)
        self.child_ends = []

    def close(self) -> None:
        """Close every end we still hold (no checkpoint)."""
        self.release_child_ends()
        for stream in (self.stdin, self.stdout, self.stderr):
            stream.close()


class FdPipeEnd:
    """Our end of one of a program's pipes, over an ``FdStream`` (which does the waiting
    and the closing). A closed stream reports ``fileno() == -1``, so a descriptor number
    the kernel has reused is never touched."""

    def __init__(self, stream: trio.lowlevel.FdStream) -> None:
        self._stream = stream

    def _fd(self) -> int:
        fd = self._stream.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("pipe already closed")
        return fd

    def close(self) -> None:
        self._stream.close()

    async def aclose(self) -> None:
        await self._stream.aclose()


class FdPipeReader(FdPipeEnd, trio.abc.ReceiveStream):
    """Our end of a program's output pipe.

    ``FdStream.receive_some`` yields to the scheduler before it even tries to read; in a
    download that is one more scheduling round per chunk on top of the one the channel's
    ``send_all`` makes anyway. This reads first and waits (through the ``FdStream``) only
    when the pipe is empty.
    """

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        fd = self._fd()
        try:
            return os.read(fd, max_bytes or 65536)
        except BlockingIOError:
            return await self._stream.receive_some(max_bytes)
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc


class FdPipeWriter(FdPipeEnd, trio.abc.SendStream):
    """Our end of a program's stdin pipe: writes first, waits (through the ``FdStream``)
    only for what the pipe did not take; the upload twin of :class:`FdPipeReader`."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        fd = self._fd()
        with memoryview(data) as view:
            try:
                sent = os.write(fd, view) if view else 0
            except BlockingIOError:
                sent = 0
            except OSError as exc:  # EPIPE: the program closed its stdin
                raise trio.BrokenResourceError(str(exc)) from exc
            if sent < len(view):
                await self._stream.send_all(view[sent:])

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()
