"""One exec's stdio: podman's upgraded stream, and the direct stdio pipes beside it.

Theory of operation
-------------------
:class:`ExecStdio` takes the socket :meth:`PodmanApi.upgrade` returned for an exec's start
(and the bytes read past the ``101``) and turns it into the three streams of the
:class:`~trissh.backend.base.Process` protocol; :mod:`.exec` does the rest of the exec's
life (exit status, signals, teardown).

*Without a tty* the stream is framed (:mod:`.stdio_frames`). A demux task in the process
context's nursery reads the socket and writes stdout/stderr into two bounded memory pipes;
when a consumer lags its pipe fills and the demux task blocks, so the socket stops being
read and podman stops reading the program's output (backpressure end to end). The stdin
side half-closes the socket's write direction on ``aclose``, which podman turns into EOF on
the program's stdin.

*Direct stdio* (no tty, a :class:`~.direct_stdio.DirectStdio` given): the program's stdio
are pipes handed into the container, not the stream. stdout is our pipe end itself; stderr
merges the program's stderr pipe with the exec stream, which now carries only the helper's
own diagnostics. The stream's EOF still means the exec (the helper, hence the program) has
ended. Beside the demux task, the nursery runs ``_copy_stderr`` (stderr pipe -> merged
stderr) and ``_hand_over`` (serve the helper's connection, then wait for the exit line it
sends; the stream's end cancels a handover still waiting).

*With a tty* the stream is raw: stdout reads the socket directly and stderr is ``None``.
Closing stdin does **not** half-close the socket: on podman 4.3.1 that takes the whole API
service down, and sshd does not deliver EOF to a pty either (it closes its dup of the
master fd). A program on a pty sees EOF when the client types ^D, as in a real terminal.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Final, Protocol

import structlog
import trio

from trissh.backend._pipe import (
    MemoryPipeReceiveStream,
    MemoryPipeSendStream,
    ProcessStdin,
    open_memory_pipe,
)
from trissh.backend.base import ExitStatus
from trissh.backend.podman.direct_stdio import DirectStdio
from trissh.backend.podman.stdio_frames import FrameDecoder, FrameError, StreamType

__all__ = ["PIPE_LIMIT", "READ_SIZE", "ExecStdio"]

log = structlog.get_logger("trissh.backend.podman")

#: Bytes asked of the socket per read, and buffered per output pipe before backpressure.
READ_SIZE: Final = 256 * 1024
PIPE_LIMIT: Final = 256 * 1024


class ExecStdio:
    """The stdin, stdout and stderr of one exec, and how they end."""

    def __init__(
        self, *, tty: bool, direct: DirectStdio | None, container: str, channel: int
    ) -> None:
        self._tty = tty
        self._direct = direct
        self._log_fields = {"container": container[:12], "channel": channel}
        self._sock: trio.SocketStream | None = None
        self._stdin: ProcessStdin | None = None
        self._stdout: trio.abc.ReceiveStream | None = None
        self._stderr: trio.abc.ReceiveStream | None = None
        self._pipes: list[MemoryPipeSendStream] = []
        #: Whether the helper took the direct stdio pipes (None: not yet, or not direct).
        self.handed_over: bool | None = None
        #: Direct stdio: the exit status the helper reported (set before ``_helper_done``).
        self.helper_status: ExitStatus | None = None
        self._helper_done = trio.Event()
        #: Cancelled when the exec's stream ends: a helper that never connected never will.
        self._handover_scope = trio.CancelScope()
        #: The output stream reached EOF: the exec has ended.
        self.ended = trio.Event()

    @property
    def direct(self) -> bool:
        return self._direct is not None

    @property
    def stdin(self) -> trio.abc.SendStream:
        assert self._stdin is not None
        return self._stdin

    @property
    def stdout(self) -> trio.abc.ReceiveStream:
        assert self._stdout is not None
        return self._stdout

    @property
    def stderr(self) -> trio.abc.ReceiveStream | None:
        return self._stderr

    def attach(self, nursery: trio.Nursery, sock: trio.SocketStream, leftover: bytes) -> None:
        """Serve the started exec's stream ``sock`` (``leftover``: bytes read past the
        ``101``); the tasks it needs run in ``nursery``."""
        self._sock = sock
        # A tty exec gets no half-close: see the module docstring.
        self._stdin = ProcessStdin(sock, eof=None if self._tty else sock.send_eof)
        if self._tty:
            self._stdout = _RawStdout(sock, leftover, self.ended)
            return
        if self._direct is not None:
            self._attach_direct(nursery, self._direct, sock, leftover)
            return
        out_w, out_r = open_memory_pipe(PIPE_LIMIT)
        err_w, err_r = open_memory_pipe(PIPE_LIMIT)
        self._pipes = [out_w, err_w]
        self._stdout, self._stderr = out_r, err_r
        nursery.start_soon(self._demux, sock, leftover, out_w, err_w)

    def _attach_direct(
        self, nursery: trio.Nursery, direct: DirectStdio, sock: trio.SocketStream, leftover: bytes
    ) -> None:
        """stdin/stdout are the pipes; stderr = program's stderr pipe + the helper's stream."""
        self._stdin = ProcessStdin(direct.stdin, eof=direct.stdin.aclose)
        self._stdout = direct.stdout
        err_w, err_r = open_memory_pipe(PIPE_LIMIT)
        self._pipes = [err_w]
        self._stderr = err_r
        merged = _MergedSink(err_w, producers=2)
        nursery.start_soon(self._demux, sock, leftover, merged, merged)
        nursery.start_soon(self._copy_stderr, direct.stderr, merged)
        nursery.start_soon(self._hand_over, direct)

    async def helper_report(self) -> ExitStatus | None:
        """Direct stdio: how the program ended as the helper says it, once it has (or
        ``None``: no word from it, so podman's record decides)."""
        await self._helper_done.wait()
        return self.helper_status

    async def _hand_over(self, direct: DirectStdio) -> None:
        """Give the helper its pipes (giving up if the exec ends first), then wait for the
        exit status it reports. Never raises; ``_helper_done`` is set however it ends."""
        try:
            handed = False
            with self._handover_scope:
                handed = await direct.hand_over()
            self.handed_over = handed
            if not handed:
                log.warning(
                    "stdio_handover_failed", exec_ended=self.ended.is_set(), **self._log_fields
                )
                return
            self.helper_status = await direct.exit_status()
        finally:
            self._helper_done.set()

    async def _copy_stderr(self, source: trio.abc.ReceiveStream, sink: _MergedSink) -> None:
        """The program's stderr pipe into the merged stderr. Never raises."""
        error: BaseException | None = None
        try:
            while data := await source.receive_some(PIPE_LIMIT):
                if not sink.receiver_closed:
                    with suppress(trio.BrokenResourceError):
                        await sink.send_all(data)
        except trio.ClosedResourceError:
            pass  # teardown closed the pipe
        except (trio.BrokenResourceError, OSError) as exc:
            error = exc
        finally:
            sink.close(error)

    async def _demux(
        self,
        sock: trio.SocketStream,
        data: bytes,
        out_w: _Sink,
        err_w: _Sink,
    ) -> None:
        """Socket -> frames -> pipes. Never raises: errors reach the readers via the pipes."""
        decoder = FrameDecoder()
        error: BaseException | None = None
        try:
            while True:
                for stream, chunk in decoder.feed(data):
                    target = out_w if stream is StreamType.STDOUT else err_w
                    if stream is StreamType.STDIN or target.receiver_closed:
                        continue
                    # A consumer that closed its end gets nothing more; the other stream goes on.
                    with suppress(trio.BrokenResourceError):
                        await target.send_all(chunk)
                data = await sock.receive_some(READ_SIZE)
                if not data:
                    decoder.feed_eof()
                    break
        except trio.ClosedResourceError:
            pass  # teardown closed the socket
        except (FrameError, trio.BrokenResourceError, OSError) as exc:
            error = exc
            log.warning("exec_stream_failed", error=str(exc), **self._log_fields)
        finally:
            out_w.close(error)
            if err_w is not out_w:
                err_w.close(error)
            self.ended.set()
            self._handover_scope.cancel()

    def close_readers(self) -> None:
        """Nobody reads any more: a demux task blocked on a full pipe must not hold us up."""
        for reader in (self._stdout, self._stderr):
            if isinstance(reader, MemoryPipeReceiveStream):
                reader.close()

    async def wait_stream_end(self) -> None:
        """Until the exec's stream ends; with a tty nobody else reads now, so we drain it."""
        if self._sock is None:
            await trio.lowlevel.checkpoint()
            return
        if not self._tty:
            await self.ended.wait()
            return
        # Closing a tty exec's socket while the program still runs is what we avoid here.
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            while await self._sock.receive_some(READ_SIZE):
                pass
        self.ended.set()

    async def close_socket(self) -> None:
        if self._sock is not None:
            await trio.aclose_forcefully(self._sock)

    def close_now(self) -> None:
        """Release pipes, the direct stdio and the socket (no checkpoint)."""
        for pipe in self._pipes:
            pipe.close()
        if self._direct is not None:
            self._direct.close()
        if self._sock is not None:
            self._sock.socket.close()
        self.ended.set()


class _Sink(Protocol):
    """Where the demux task writes one output stream."""

    @property
    def receiver_closed(self) -> bool: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    def close(self, error: BaseException | None = None) -> None: ...


class _MergedSink:
    """One pipe fed by several producers: sends take turns; the last ``close`` closes it."""

    def __init__(self, pipe: MemoryPipeSendStream, *, producers: int) -> None:
        self._pipe = pipe
        self._left = producers
        self._turn = trio.Lock()
        self._error: BaseException | None = None

    @property
    def receiver_closed(self) -> bool:
        return self._pipe.receiver_closed

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._turn:
            await self._pipe.send_all(data)

    def close(self, error: BaseException | None = None) -> None:
        self._left -= 1
        self._error = self._error or error
        if self._left <= 0:
            self._pipe.close(self._error)


class _RawStdout(trio.abc.ReceiveStream):
    """A tty exec's output: the socket itself, after the bytes h11 read past the 101."""

    def __init__(self, sock: trio.SocketStream, leftover: bytes, eof: trio.Event) -> None:
        self._sock = sock
        self._leftover = leftover
        self._eof = eof
        self._closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("stdout already closed")
        if self._leftover:
            size = len(self._leftover) if max_bytes is None else max_bytes
            data, self._leftover = self._leftover[:size], self._leftover[size:]
            await trio.lowlevel.checkpoint()
            return data
        try:
            data = await self._sock.receive_some(max_bytes or READ_SIZE)
        except trio.BrokenResourceError:
            self._eof.set()
            raise
        if not data:
            self._eof.set()
        return data

    async def aclose(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()
