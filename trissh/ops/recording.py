"""Session recordings: asciicast v2 for pty sessions, timed transcripts for the others.

File formats
------------
Both are JSON lines in UTF-8: one header object, then one event array per line,
``[seconds_since_start, code, text]`` (seconds rounded to microseconds). Output bytes
are decoded as UTF-8 with U+FFFD for invalid bytes; a multi-byte character split
across two chunks is carried over and written whole.

*pty sessions* (shell or exec with ``pty-req``) are asciicast v2 files (``.cast``) that
``asciinema play`` and ``asciinema cat`` replay. Header::

    {"version": 2, "width": 80, "height": 24, "timestamp": 1732500000,
     "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"}, "title": "alice conn ... ch 0",
     "trissh": {"kind": "pty", "conn_id": "...", "channel": 0, "user": "alice",
                "command": null}}

Events: ``"o"`` terminal output (stdout, and stderr if any), ``"i"`` keyboard input (only
with ``record_input``), ``"r"`` resize as ``"COLSxROWS"``, ``"m"`` a marker (trissh writes
one when the size cap stops the recording, and one when a forward of the same connection
opens or closes: ``forward direct-tcpip localhost:8080 opened``), and last ``"x"`` the exit
(below). Players ignore codes they do not know.

*exec and subsystem sessions without a pty* are transcripts (``.transcript.cast``): the same
shape, so ``asciinema cat`` still prints their stdout, with ``"trissh": {"kind":
"transcript", ...}`` in the header (``width``/``height`` are a nominal 80x24) and the codes
``"i"`` stdin (only with ``record_input``), ``"o"`` stdout and ``"e"`` stderr.

The last line of either kind (unless storage failed) is ``[t, "x", STATUS]`` where STATUS
is the exit status as decimal text (``"0"``), ``"signal:NAME"`` for an exit-signal (RFC
4254 §6.10 names such as ``"signal:KILL"``), or ``""`` when the session ended with
neither. ``"x"`` is the exit event of asciicast v3, which v2 players skip.

Theory of operation
-------------------
The session calls :class:`SessionRecording`'s methods synchronously; they never raise.
Events become lines in a memory buffer. The buffer goes to the file when it reaches
``buffer_bytes`` (64 KiB), once a second of activity (``flush_interval``) and on
``close()``. A failing disk (any ``OSError``) logs ``recording_failed`` once, calls
``on_failure`` (``Metrics.recording_failed``) and stops that recording; the session
goes on. ``max_bytes`` caps each file: room for the final marker and exit lines is
reserved, so a file never exceeds the cap.

Blocking: those writes are ordinary ``write(2)`` calls of at most ``buffer_bytes`` plus
one line, made from the calling (trio) thread. On a local disk they land in the page
cache in microseconds, but they can block for long when storage stalls (writeback
throttling on a saturated disk, NFS, a failing device). To keep that off the trio thread,
a session calls ``defer_writes()`` and then ``await recording.flush()`` whenever
``recording.due``: the buffer goes out from a worker thread (``trio.to_thread``), and
while it runs the synchronous methods only buffer (up to ``max_pending`` bytes, past
which the recording stops as failed rather than grow). Opening (mkdir, open, the header)
and ``close()`` (the rest of the buffer, the exit line) stay synchronous: a few small
operations.
"""

from __future__ import annotations

import codecs
import contextlib
import enum
import errno
import json
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol, final

import structlog
import trio

from trissh.ops.recording_writes import WRITES

log = structlog.get_logger("trissh.ops.recording")

#: Bytes of input turned into one event at most (bounds the size of one JSON line).
CHUNK: Final = 16384
#: Room kept under ``max_bytes`` for the size marker and the exit line.
RESERVE: Final = 256
#: Smallest non-zero ``max_bytes``: the header alone can take several KiB.
MIN_MAX_BYTES: Final = 16384
#: Header fields are cut to these lengths (a command line can be 256 KiB), which keeps the
#: header well under ``MIN_MAX_BYTES`` even if every character needs a 6-byte JSON escape.
MAX_COMMAND: Final = 1024
MAX_FIELD: Final = 200
NOMINAL_SIZE: Final = (80, 24)

_SAFE_NAME: Final = re.compile(r"[^A-Za-z0-9_.-]")
_OPEN_FLAGS: Final = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class TerminalSizeLike(Protocol):
    """Either ``TerminalSize`` (protocol events or backend spec) fits."""

    @property
    def columns(self) -> int: ...
    @property
    def rows(self) -> int: ...


class RecordingState(enum.Enum):
    RECORDING = "recording"
    #: The size cap was reached: events are dropped, ``close()`` still writes the exit.
    TRUNCATED = "truncated"
    #: Storage failed (or the file could not be created): nothing more is written.
    FAILED = "failed"
    CLOSED = "closed"


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte (a seam the tests replace to simulate a failing disk)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _clip(text: str, limit: int = MAX_FIELD) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _line(*items: object) -> bytes:
    return json.dumps(list(items), ensure_ascii=False).encode() + b"\n"


#: Threads writing recordings at once, for all sessions.
WRITER_THREADS: Final = 4


@final
class Recorder:
    """Creates one recording file per session in ``directory`` (created mode 0700).

    Args:
        directory: where recordings go; created on first use if missing.
        max_bytes: cap per file, 0 for none; otherwise at least ``MIN_MAX_BYTES``.
        record_input: also record what the client types or sends on stdin (may hold secrets).
        clock: seconds for event times (monotonic); ``time.monotonic`` by default.
        wall_clock: Unix time for the header's ``timestamp`` and the file name.
        buffer_bytes: write the buffer once it holds this much.
        flush_interval: and at least this often (seconds of ``clock``) while events arrive.
        max_pending: buffer bound while a threaded ``flush()`` is still writing.
        on_failure: called once per recording that storage stops (e.g. a metrics counter).
        min_free_bytes: no recording starts, and a running one stops as failed, where the
            file system holding them has less free (checked before each write); 0: none.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        record_input: bool,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        buffer_bytes: int = 65536,
        flush_interval: float = 1.0,
        max_pending: int = 4 * 1024 * 1024,
        on_failure: Callable[[], None] | None = None,
        min_free_bytes: int = 0,
    ) -> None:
        if max_bytes < 0 or 0 < max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"max_bytes must be 0 (no cap) or at least {MIN_MAX_BYTES}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.record_input = record_input
        self.clock = clock
        self.wall_clock = wall_clock
        self.buffer_bytes = buffer_bytes
        self.flush_interval = flush_interval
        self.max_pending = max(max_pending, buffer_bytes)
        self.on_failure = on_failure
        self.min_free_bytes = min_free_bytes
        #: Worker threads writing recordings: their own few, so writes stalled on a slow
        #: disk (abandoned threads keep their slots) never take trio's shared ones, which
        #: name lookups, key files and podman's checks need.
        self.writers = trio.CapacityLimiter(WRITER_THREADS)
        self.opened = 0
        self.failed = 0

    def check_room(self, free: os.statvfs_result) -> None:
        """Raises OSError (ENOSPC) when ``free`` (its file system) is below the bound."""
        if self.min_free_bytes and free.f_bavail * free.f_frsize < self.min_free_bytes:
            mib = self.min_free_bytes / 2**20
            raise OSError(errno.ENOSPC, f"less than {mib:g} MiB free for recordings (min_free_mb)")

    def statistics(self) -> dict[str, int]:
        """Recordings opened and recordings stopped by a storage error so far."""
        return {"opened": self.opened, "failed": self.failed}

    def open_session(
        self,
        conn_id: str,
        channel: int,
        *,
        user: str,
        pty: TerminalSizeLike | None,
        term: str = "",
        command: str | None = None,
        shell: str | None = None,
    ) -> SessionRecording:
        """Start recording one session channel; never raises.

        Args:
            conn_id: the connection's id (also in the file name).
            channel: the server's channel id (also in the file name).
            user: the authenticated user name (header only; never a path component).
            pty: the terminal size from ``pty-req``, or ``None`` for a transcript.
            term: ``TERM`` from ``pty-req``.
            command: the exec command or ``"subsystem NAME"``; ``None`` for a shell.
            shell: the container's shell, for the header's ``env.SHELL``, if known.

        Returns:
            The recording; if the file cannot be created it is already ``FAILED`` (logged
            once) and its methods do nothing.
        """
        kind = "pty" if pty is not None else "transcript"
        wall = self.wall_clock()
        stamp = datetime.fromtimestamp(wall, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        stem = f"{stamp}-{_SAFE_NAME.sub('_', conn_id)[:64]}-{int(channel)}"
        suffix = ".cast" if pty is not None else ".transcript.cast"
        width, height = (pty.columns, pty.rows) if pty is not None else NOMINAL_SIZE
        env = {"TERM": _clip(term)} if term else {}
        if shell:
            env["SHELL"] = _clip(shell)
        header = {
            "version": 2,
            "width": width if width > 0 else NOMINAL_SIZE[0],
            "height": height if height > 0 else NOMINAL_SIZE[1],
            "timestamp": int(wall),
            "env": env,
            "title": _clip(f"{user} conn {conn_id} ch {channel}"),
            "trissh": {
                "kind": kind,
                "conn_id": _clip(conn_id),
                "channel": int(channel),
                "user": _clip(user),
                "command": None if command is None else _clip(command, MAX_COMMAND),
            },
        }
        data = json.dumps(header, ensure_ascii=False).encode() + b"\n"
        self.opened += 1
        path = self.directory / (stem + suffix)
        try:
            fd, path = self._create(stem, suffix)
        except OSError as exc:
            return SessionRecording(self, None, None, kind=kind, header=data, error=exc, at=path)
        return SessionRecording(self, path, fd, kind=kind, header=data)

    def _create(self, stem: str, suffix: str) -> tuple[int, Path]:
        """Make the directory (0700) if needed and create a new file (0600), never clobbering."""
        directory = self.directory
        if not directory.is_dir():
            directory.parent.mkdir(parents=True, exist_ok=True)
            try:
                directory.mkdir(mode=0o700)
                directory.chmod(0o700)  # mkdir's mode is filtered by the umask
            except FileExistsError:
                pass
        self.check_room(os.statvfs(directory))
        for attempt in range(10):
            path = directory / (stem + (f"-{attempt}" if attempt else "") + suffix)
            try:
                return os.open(path, _OPEN_FLAGS, 0o600), path
            except FileExistsError:
                continue
        raise FileExistsError(f"{directory / stem}*{suffix}: ten files already exist")


@final
class SessionRecording:
    """One session's recording. Built by :meth:`Recorder.open_session`.

    Every method but :meth:`flush` is synchronous and never raises.
    """

    def __init__(
        self,
        recorder: Recorder,
        path: Path | None,
        fd: int | None,
        *,
        kind: str,
        header: bytes,
        error: OSError | None = None,
        at: Path | None = None,
    ) -> None:
        self.path = path
        self.kind = kind
        self._recorder = recorder
        self._fd = fd
        self._pty = kind == "pty"
        self._start = recorder.clock()
        self._last_time = 0.0
        self._last_flush = self._start
        self._lock = threading.Lock()
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._size = 0
        self._inflight = False
        self._close_pending = False
        #: Writes only through ``flush()`` (the session's tap), never from the calls.
        self._deferred = False
        self._decoders = {
            code: codecs.getincrementaldecoder("utf-8")(errors="replace") for code in "ioe"
        }
        self.state = RecordingState.RECORDING
        if error is not None:
            self._fail(error, at)
            return
        log.info("recording_started", path=str(path), kind=kind)
        self._append(header)
        self._write_now()

    # -- the session's calls ------------------------------------------------------------------

    def stdin(self, data: bytes) -> None:
        """Input from the client (recorded only with ``record_input``)."""
        if self._recorder.record_input:
            self._event("i", data)

    def stdout(self, data: bytes) -> None:
        """Output of the program."""
        self._event("o", data)

    def stderr(self, data: bytes) -> None:
        """Extended data; on a pty it is terminal output like stdout."""
        self._event("o" if self._pty else "e", data)

    def resize(self, cols: int, rows: int) -> None:
        """The client's ``window-change`` (pty recordings only)."""
        if self._pty and self.state is RecordingState.RECORDING and self._open():
            self._guarded(lambda: self._add_line("r", f"{int(cols)}x{int(rows)}"))

    def mark(self, text: str) -> None:
        """A marker (``"m"``): something beside the terminal happened (a forward opened)."""
        if self.state is RecordingState.RECORDING and self._open():
            self._guarded(lambda: self._add_line("m", _clip(text)))

    def close(self, exit_code: int | None = None, *, signal: str | None = None) -> None:
        """Write the exit line and close the file; idempotent."""
        if not self._open():
            return

        def finish() -> None:
            if self.state is RecordingState.RECORDING:
                for code, decoder in self._decoders.items():
                    if rest := decoder.decode(b"", final=True):
                        self._add_line("o" if self._pty and code == "e" else code, rest)
            status = "" if exit_code is None else str(int(exit_code))
            if signal is not None:
                status = f"signal:{signal[:32]}"
            with self._lock:
                line = _line(self._elapsed(), "x", status)
                self._buffer.append(line)
                self._buffered += len(line)
                self._size += len(line)
                self._close_pending = True
                if self._inflight:
                    return  # the worker thread writes the rest and closes
            self._finish_close()

        self._guarded(finish)

    def _finish_close(self) -> None:
        """Write what is buffered (the exit line last) and close the file, from this thread."""
        self._write_now()
        self._close_fd()

    @property
    def pending_bytes(self) -> int:
        """Bytes buffered and not yet handed to the kernel."""
        return self._buffered

    def defer_writes(self) -> None:
        """From now on the synchronous calls only buffer: the caller awaits ``flush()``
        whenever ``due`` says so, and the buffer goes out from a worker thread."""
        self._deferred = True

    @property
    def due(self) -> bool:
        """The buffer should go out: ``buffer_bytes`` of it, or ``flush_interval`` since
        the last write."""
        return self._buffered >= self._recorder.buffer_bytes or (
            self._buffered > 0
            and self._recorder.clock() - self._last_flush >= self._recorder.flush_interval
        )

    def statistics(self) -> dict[str, object]:
        return {"state": self.state.value, "bytes": self._size, "pending": self._buffered}

    async def flush(self) -> None:
        """Write the buffer from a worker thread, so a stalled disk cannot stall trio.

        Cancellation: returns at once; the write goes on in its thread and completes
        (including a ``close()`` made meanwhile), so nothing is lost or torn. Cancelled
        while still waiting for a writer thread, the buffer stays for ``close()``, which
        writes the rest as it always does (a close made meanwhile is finished here).
        """
        with self._lock:
            start = bool(self._buffer) and not self._inflight and self._fd is not None
            if start:
                self._inflight = True
        if not start:
            await trio.lowlevel.checkpoint()
            return
        self._last_flush = self._recorder.clock()
        claimed = threading.Event()  # by the worker as it starts, or by a cancellation

        def drain_once() -> None:
            with self._lock:
                if claimed.is_set():
                    return  # cancelled before it started: the buffer is close()'s
                claimed.set()
                WRITES.begin()
            try:
                self._drain()
            finally:
                WRITES.end()

        try:
            await trio.to_thread.run_sync(
                drain_once, abandon_on_cancel=True, limiter=self._recorder.writers
            )
        except trio.Cancelled:
            with self._lock:
                waiting = not claimed.is_set()
                claimed.set()
                if waiting:
                    self._inflight = False
                closing = waiting and self._close_pending
            if closing:  # close() left the rest to this write
                self._guarded(self._finish_close)
            raise

    # -- internals ------------------------------------------------------------------------------

    def _event(self, code: str, data: bytes) -> None:
        if self.state is not RecordingState.RECORDING or not data or not self._open():
            return

        def record() -> None:
            decoder = self._decoders[code]
            view = memoryview(data)
            for offset in range(0, len(view), CHUNK):
                text = decoder.decode(view[offset : offset + CHUNK])
                if text and not self._add_line(code, text):
                    return
            self._maybe_write()

        self._guarded(record)

    def _open(self) -> bool:
        """Neither closed, closing nor failed."""
        return not self._close_pending and self.state not in (
            RecordingState.CLOSED,
            RecordingState.FAILED,
        )

    def _guarded(self, action: Callable[[], object]) -> None:
        """Run ``action``; any error stops the recording instead of reaching the session."""
        try:
            action()
        except Exception as exc:  # a recording must never take a session down
            self._fail(exc, self.path)

    def _elapsed(self) -> float:
        now = max(self._recorder.clock() - self._start, self._last_time)
        self._last_time = now
        return round(now, 6)

    def _add_line(self, code: str, text: str) -> bool:
        """Buffer one event; False (and the marker) if the size cap is reached."""
        line = _line(self._elapsed(), code, text)
        cap = self._recorder.max_bytes
        if cap and self._size + len(line) > cap - RESERVE:
            self.state = RecordingState.TRUNCATED
            self._append(_line(self._elapsed(), "m", f"trissh: size limit of {cap} bytes reached"))
            log.info("recording_truncated", path=str(self.path), max_bytes=cap)
            return False
        self._append(line)
        return True

    def _append(self, line: bytes) -> None:
        with self._lock:
            if self._inflight and self._buffered + len(line) > self._recorder.max_pending:
                overflow = True
            else:
                overflow = False
                self._buffer.append(line)
                self._buffered += len(line)
                self._size += len(line)
        if overflow:
            raise OSError(f"storage too slow: {self._buffered} bytes waiting to be written")

    def _maybe_write(self) -> None:
        if not self._deferred and self.due:
            self._last_flush = self._recorder.clock()
            self._write_now()

    def _write_now(self) -> None:
        """Write the buffer from this thread, unless a worker thread is writing."""
        with self._lock:
            if self._inflight or self._fd is None or not self._buffer:
                return
            data = self._take_buffer()
        try:
            self._recorder.check_room(os.fstatvfs(self._fd))
            _write_all(self._fd, data)
        except OSError as exc:
            self._fail(exc, self.path)

    def _drain(self) -> None:
        """Worker thread: write until the buffer is empty, then close if asked to."""
        while True:
            with self._lock:
                fd = self._fd
                if not self._buffer or fd is None or self.state is RecordingState.FAILED:
                    self._inflight = False
                    close = self._close_pending or self.state is RecordingState.FAILED
                    break
                data = self._take_buffer()
            try:
                self._recorder.check_room(os.fstatvfs(fd))
                _write_all(fd, data)
            except OSError as exc:
                self._fail(exc, self.path, closing=False)
        if close:
            self._close_fd()

    def _take_buffer(self) -> bytes:
        """Empty the buffer and return what it held; the caller holds ``_lock``."""
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        return data

    def _close_fd(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if self.state is not RecordingState.FAILED:
                self.state = RecordingState.CLOSED
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                self._fail(exc, self.path)

    def _fail(self, exc: BaseException, path: Path | None, *, closing: bool = True) -> None:
        """Stop recording for good: log once, count, drop the buffer, release the file."""
        with self._lock:
            if self.state is RecordingState.FAILED:
                return
            self.state = RecordingState.FAILED
            self._buffer.clear()
            self._buffered = 0
            close = closing and not self._inflight
            fd = self._fd if close else None
            if close:
                self._fd = None
        self._recorder.failed += 1
        log.warning("recording_failed", path=str(path), error=f"{type(exc).__name__}: {exc}")
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._recorder.on_failure is not None:
            try:
                self._recorder.on_failure()
            except Exception as callback_error:  # a metrics hook must not break the promise
                log.warning("recording_failure_hook_failed", error=repr(callback_error))
