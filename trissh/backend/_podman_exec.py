"""One program in a podman container: exec create, the stdio stream, signals, exit status.

Theory of operation
-------------------
``open_exec`` creates an exec session through podman-py, then starts it over our own
upgraded connection (:meth:`PodmanApi.upgrade`). The start body carries the initial pty
size (``h``/``w``) so the program never sees a 0x0 terminal; later sizes go through
``POST /exec/{id}/resize``.

*Without a tty* the stream is framed (:mod:`trissh.backend.stdio_frames`). A demux task in
the process context's nursery reads the socket and writes stdout/stderr into two bounded
pipes; when a consumer lags its pipe fills and the demux task blocks, so the socket stops
being read and podman stops reading the program's output (backpressure end to end). The
stdin side half-closes the socket's write direction on ``aclose``, which podman turns into
EOF on the program's stdin.

*Direct stdio* (``stdio_dir`` given, no tty, helper present): the program's stdio are
pipes handed into the container (:mod:`trissh.backend._direct_stdio`), not the stream.
stdout is our pipe end itself; stderr merges the program's stderr pipe with the exec
stream, which now carries only the helper's own diagnostics. The stream's EOF still means
the exec (the helper, hence the program) has ended. Beside the demux task, the process
context's nursery runs ``_copy_stderr`` (stderr pipe -> merged stderr) and ``_hand_over``
(serve the helper's connection, then wait for the exit line it sends; the stream's end
cancels a handover still waiting).

*With a tty* the stream is raw: stdout reads the socket directly and stderr is ``None``.
Closing stdin does **not** half-close the socket: on podman 4.3.1 that takes the whole API
service down, and sshd does not deliver EOF to a pty either (it closes its dup of the
master fd). A program on a pty sees EOF when the client types ^D, as in a real terminal.

*Exit status.* With direct stdio the helper reports it on the handover connection the
moment the program ends (``exit N`` / ``signal N core C``); that is the answer, ~40 ms
before podman's record has it. Otherwise (or if the helper died without a word): the
socket's EOF means the exec has ended; ``GET /exec/{id}/json`` then
gives ``ExitCode`` (polled briefly while it still says ``Running``). If nobody reads stdout
(so EOF is never seen), ``wait`` also polls the exec state with backoff. Podman reports a
program killed by signal N as exit code 128+N; when that N is a signal *we* delivered, the
status is reported as that signal (``ExitStatus(signal="TERM")``), otherwise as the code.

*Signals.* Podman has no exec-kill. We take the exec's host PID from exec inspect, map it
to the PID inside the container's PID namespace (``NSpid`` in ``/proc/PID/status``, or
``podman top`` with ``hpid`` when /proc is not ours to read), and run a detached exec
``SHELL -c "kill -N PID"`` in the container. The signal is sent from inside the sandbox,
as the sandbox user, so a stale or wrong PID can never hit a host process.

*Teardown.* Leaving the context while the program runs: close the output pipes nobody will
read (so the demux task cannot block), send KILL as above, give the stream up to 2 s to end
(draining a tty socket ourselves), then close the socket; all within
:data:`PROCESS_CLEANUP_BOUND`, shielded. The kill comes before the close because tearing
down a running tty exec's connection is what took podman 4.3's service down.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Final, Protocol

import structlog
import trio

from trissh.backend._common import ms_since, process_env, signal_name, signal_number
from trissh.backend._direct_stdio import DirectStdio
from trissh.backend._pipe import (
    PipeReceiveStream,
    PipeSendStream,
    ProcessStdin,
    open_pipe,
    open_task_nursery,
)
from trissh.backend._podman_api import PodmanApi
from trissh.backend.base import ExitStatus, ProcessSpec, TerminalSize
from trissh.backend.errors import BackendError
from trissh.backend.stdio_frames import FrameDecoder, FrameError, StreamType

__all__ = ["PodmanProcess", "note_started", "open_exec"]

log = structlog.get_logger("trissh.backend.podman")

#: Bytes asked of the socket per read, and buffered per output pipe before backpressure.
READ_SIZE: Final = 256 * 1024
PIPE_LIMIT: Final = 256 * 1024
#: Teardown of a still-running process (kill, let the stream end, close).
PROCESS_CLEANUP_BOUND: Final = 5.0
#: How long the stream may take to end after a KILL during teardown.
_DRAIN_AFTER_KILL: Final = 2.0
#: After EOF, how long to wait for podman to stop reporting ``Running``: it records an
#: exec's exit asynchronously, and a busy service (hundreds of execs) takes seconds.
_EXIT_CODE_GRACE: Final = 60.0


@asynccontextmanager
async def open_exec(
    api: PodmanApi,
    container_id: str,
    shell: Sequence[str],
    spec: ProcessSpec,
    *,
    user: str | None = None,
    workdir: str | None = None,
    helper: bool = False,
    stdio_dir: str | None = None,
    observe: Callable[[str, float], None] | None = None,
) -> AsyncIterator[PodmanProcess]:
    """Create and start an exec; leaving the context kills it if it still runs.

    With ``helper`` the program runs under the bind-mounted ``trissh-exec``, which
    records a death by signal in a status file (see ``helper/trissh-exec.c``). With
    ``stdio_dir`` too (the host side of the container's stdio directory) a program
    without a tty gets direct stdio.

    Cancellation: safe at any point; a started program is killed, the socket closed.
    """
    started = time.monotonic()
    argv = list(spec.argv)
    status_path = None
    direct = None
    if helper:
        status_path = f"{HELPER_STATUS_DIR}/{secrets.token_hex(8)}"
        if stdio_dir is not None and spec.pty is None:
            try:
                direct = DirectStdio(
                    stdio_dir, container=container_id[:12], channel=spec.channel_id
                )
            except OSError as exc:  # the directory went away, or the path is too long
                raise BackendError(f"cannot set up the program's stdio: {exc}") from exc
        options = direct.helper_args() if direct is not None else []
        argv = [HELPER_PATH, "--status", status_path, *options, "--", *argv]
    body: dict[str, Any] = {
        "Cmd": argv,
        "Env": [f"{key}={value}" for key, value in process_env(spec).items()],
        "AttachStdin": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": spec.pty is not None,
    }
    if user:
        body["User"] = user
    if workdir:
        body["WorkingDir"] = workdir
    try:
        created = await api.request("POST", f"/containers/{container_id}/exec", body=body)
    except BaseException:
        if direct is not None:
            direct.close()
        raise
    process = PodmanProcess(
        api,
        container_id,
        str(created["Id"]),
        tuple(shell),
        spec,
        status_path=status_path,
        direct=direct,
    )
    async with open_task_nursery() as nursery:
        try:
            await process._attach(nursery)
            note_started(observe, started, container_id, spec.channel_id)
            yield process
        finally:
            with trio.move_on_after(PROCESS_CLEANUP_BOUND, shield=True) as scope:
                await process._shutdown()
            if scope.cancelled_caught:
                log.warning(
                    "process_cleanup_timed_out",
                    container=container_id[:12],
                    channel=spec.channel_id,
                )
            process._close_now()


def note_started(
    observe: Callable[[str, float], None] | None,
    started: float,
    container_id: str,
    channel: int,
    *,
    by_agent: bool = False,
) -> None:
    """A program is running: the ``exec`` metric (``spawn`` when the container's agent
    started it, so an operator sees a fallback to execs) and one line."""
    if observe is not None:
        observe("spawn" if by_agent else "exec", time.monotonic() - started)
    log.debug(
        "process_started",
        container=container_id[:12],
        channel=channel,
        duration_ms=ms_since(started),
        **({"via": "agent"} if by_agent else {}),
    )


#: Where the helper is bind-mounted in every container, and its status files' tmpfs.
HELPER_PATH = "/run/trissh-exec"
HELPER_STATUS_DIR = "/run/trissh"
#: Marks an exec inspection that found no record any more.
_GONE = "trissh-gone"
#: Exit codes that may mean "killed by signal code-128" (signals 1..64).
_MAYBE_SIGNAL = range(129, 193)

#: podman's answers when an exec cannot be made because the container is stopping or gone.
_CONTAINER_GONE = ("container state improper", "no such container")


class PodmanProcess:
    """A podman exec session seen through the :class:`~trissh.backend.base.Process` protocol."""

    def __init__(
        self,
        api: PodmanApi,
        container_id: str,
        exec_id: str,
        shell: tuple[str, ...],
        spec: ProcessSpec,
        *,
        status_path: str | None = None,
        direct: DirectStdio | None = None,
    ) -> None:
        self._api = api
        self._direct = direct
        self._status_path = status_path
        self._container_id = container_id
        self.exec_id = exec_id
        self._shell = shell
        self._spec = spec
        self._tty = spec.pty is not None
        self._sock: trio.SocketStream | None = None
        #: Set when a start request went out: from then on the program may be running.
        self._start_sent = False
        self._stdin: ProcessStdin | None = None
        self._stdout: trio.abc.ReceiveStream | None = None
        self._stderr: trio.abc.ReceiveStream | None = None
        self._pipes: list[PipeSendStream] = []
        #: Whether the helper took the direct stdio pipes (None: not yet, or not direct).
        self.handed_over: bool | None = None
        #: Direct stdio: the exit status the helper reported (set before ``_helper_done``).
        self._helper_status: ExitStatus | None = None
        self._helper_done = trio.Event()
        #: Cancelled when the exec's stream ends: a helper that never connected never will.
        self._handover_scope = trio.CancelScope()
        #: The output stream reached EOF: the exec has ended.
        self._eof = trio.Event()
        self._status: ExitStatus | None = None
        self._signals_sent: set[int] = set()
        self._container_pid: int | None = None

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

    async def resize(self, size: TerminalSize) -> None:
        """Resize the exec's pty; ignored once the program has ended or without a pty.

        Raises:
            BackendError: podman refused while the program still runs.
        """
        if not self._tty or size.rows <= 0 or size.columns <= 0:
            await trio.lowlevel.checkpoint()
            return
        try:
            await self._api.request(
                "POST",
                f"/exec/{self.exec_id}/resize",
                params={"h": size.rows, "w": size.columns},
                abandon_on_cancel=True,
            )
        except BackendError:
            if not (self._eof.is_set() or self._status is not None):
                raise

    async def send_signal(self, signal: str) -> None:
        """Deliver ``signal`` from inside the container (see the module docstring).

        Raises:
            BackendError: unknown signal name, or podman refused the helper exec.
        """
        try:
            number = signal_number(signal)
        except ValueError as exc:
            raise BackendError(f"cannot send signal {signal!r}: {exc}") from None
        info = await self._inspect()
        if not info.get("Running"):
            return
        pid = await self._resolve_container_pid(int(info.get("Pid") or 0))
        self._signals_sent.add(number)
        await self._run_detached([*self._shell, "-c", f"kill -{number} {pid}"])
        log.debug(
            "signal_sent",
            container=self._container_id[:12],
            channel=self._spec.channel_id,
            signal=signal_name(number),
        )

    async def wait(self) -> ExitStatus:
        """Wait for the exec to end and return its status.

        Cancellation: safe; the program keeps running until the context exits.

        Raises:
            BackendError: podman could not tell how the exec ended.
        """
        if self._status is not None:
            await trio.lowlevel.checkpoint()
            return self._status
        if self._direct is not None:
            # The helper says how the program ended as soon as it knows (podman's record
            # lags by tens of ms); without its word, podman's record decides below.
            await self._helper_done.wait()
            if self._helper_status is not None:
                return self._settle(self._helper_status)
        interval = 0.25
        while not self._eof.is_set():
            with trio.move_on_after(interval):
                await self._eof.wait()
            if self._eof.is_set():
                break
            info = await self._inspect()
            if not info.get("Running"):
                return await self._finish(info)
            interval = min(interval * 2, 2.0)
        with trio.move_on_after(_EXIT_CODE_GRACE):
            delay = 0.005
            while True:
                info = await self._inspect()
                if not info.get("Running"):
                    return await self._finish(info)
                await trio.sleep(delay)
                delay = min(delay * 2, 0.2)
        raise BackendError(f"podman still reports exec {self.exec_id[:12]} as running after EOF")

    async def _finish(self, info: dict[str, Any]) -> ExitStatus:
        if self._status is None:
            if info.get(_GONE):
                # podman already dropped the exec's record (exit_command_delay passed on a
                # busy service): the program ran, but how it ended is unknown.
                log.warning(
                    "exit_status_lost", container=self._container_id[:12],
                    channel=self._spec.channel_id,
                )  # fmt: skip
                self._status = ExitStatus()
                return self._status
            code = int(info.get("ExitCode") or 0)
            return self._settle(await self._classify(code))
        return self._status

    def _settle(self, status: ExitStatus) -> ExitStatus:
        self._status = status
        log.debug(
            "process_exited",
            container=self._container_id[:12],
            channel=self._spec.channel_id,
            code=status.code,
            signal=status.signal,
        )
        return status

    async def _classify(self, code: int) -> ExitStatus:
        """An exit code, or the signal behind an ambiguous 128+N."""
        if not _MAYBE_SIGNAL.start <= code < _MAYBE_SIGNAL.stop:
            return ExitStatus(code=code)
        if self._status_path is not None:
            try:
                record = await self._api.exec_output(
                    self._container_id, [HELPER_PATH, "--read-status", self._status_path]
                )
            except BackendError:
                record = None  # the container is gone: killed from outside
            if record is not None:
                match record.split():
                    case [b"signal", number, b"core", core] if number.isdigit():
                        return ExitStatus(signal=signal_name(int(number)), core_dumped=core == b"1")
                    case _:
                        return ExitStatus(code=code)
            if code == 128 + 9:
                return ExitStatus(signal="KILL")
        if code - 128 in self._signals_sent:
            return ExitStatus(signal=signal_name(code - 128))
        return ExitStatus(code=code)

    async def _inspect(self) -> dict[str, Any]:
        info = await self._api.request(
            "GET", f"/exec/{self.exec_id}/json", abandon_on_cancel=True, missing_ok=True
        )
        if info is None:
            return {"Running": False, _GONE: True}
        return dict(info)

    async def _attach(self, nursery: trio.Nursery) -> None:
        body: dict[str, Any] = {"Detach": False, "Tty": self._tty}
        size = None if self._spec.pty is None else self._spec.pty.size
        if size is not None and size.rows > 0 and size.columns > 0:
            body["h"] = size.rows
            body["w"] = size.columns
        self._start_sent = True
        sock, leftover = await self._api.upgrade(f"/exec/{self.exec_id}/start", body)
        self._sock = sock
        # A tty exec gets no half-close: see the module docstring.
        self._stdin = ProcessStdin(sock, eof=None if self._tty else sock.send_eof)
        if self._tty:
            self._stdout = _RawStdout(sock, leftover, self._eof)
            return
        if self._direct is not None:
            self._attach_direct(nursery, self._direct, sock, leftover)
            return
        out_w, out_r = open_pipe(PIPE_LIMIT)
        err_w, err_r = open_pipe(PIPE_LIMIT)
        self._pipes = [out_w, err_w]
        self._stdout, self._stderr = out_r, err_r
        nursery.start_soon(self._demux, sock, leftover, out_w, err_w)

    def _attach_direct(
        self, nursery: trio.Nursery, direct: DirectStdio, sock: trio.SocketStream, leftover: bytes
    ) -> None:
        """stdin/stdout are the pipes; stderr = program's stderr pipe + the helper's stream."""
        self._stdin = ProcessStdin(direct.stdin, eof=direct.stdin.aclose)
        self._stdout = direct.stdout
        err_w, err_r = open_pipe(PIPE_LIMIT)
        self._pipes = [err_w]
        self._stderr = err_r
        merged = _MergedSink(err_w, producers=2)
        nursery.start_soon(self._demux, sock, leftover, merged, merged)
        nursery.start_soon(self._copy_stderr, direct.stderr, merged)
        nursery.start_soon(self._hand_over, direct)

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
                    "stdio_handover_failed",
                    container=self._container_id[:12],
                    channel=self._spec.channel_id,
                    exec_ended=self._eof.is_set(),
                )
                return
            self._helper_status = await direct.exit_status()
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
            log.warning(
                "exec_stream_failed",
                container=self._container_id[:12],
                channel=self._spec.channel_id,
                error=str(exc),
            )
        finally:
            out_w.close(error)
            if err_w is not out_w:
                err_w.close(error)
            self._eof.set()
            self._handover_scope.cancel()

    async def _shutdown(self) -> None:
        """Kill the program if it may still run, let the stream end, close the socket."""
        # Nobody reads any more: a demux task blocked on a full pipe must not hold us up.
        for reader in (self._stdout, self._stderr):
            if isinstance(reader, PipeReceiveStream):
                reader.close()
        try:
            ended = self._status is not None or self._helper_status is not None
            if self._start_sent and not ended and not self._eof.is_set():
                await self.send_signal("KILL")
                with trio.move_on_after(_DRAIN_AFTER_KILL):
                    await self._wait_stream_end()
        except BackendError as exc:
            # The container going away (connection teardown) ends the program anyway.
            gone = any(text in str(exc) for text in _CONTAINER_GONE)
            (log.debug if gone else log.warning)(
                "process_kill_failed",
                container=self._container_id[:12],
                channel=self._spec.channel_id,
                error=str(exc),
            )
        finally:
            if self._sock is not None:
                await trio.aclose_forcefully(self._sock)

    async def _wait_stream_end(self) -> None:
        """Until the exec's stream ends; with a tty nobody else reads now, so we drain it."""
        if self._sock is None:
            await trio.lowlevel.checkpoint()
            return
        if not self._tty:
            await self._eof.wait()
            return
        # Closing a tty exec's socket while the program still runs is what we avoid here.
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            while await self._sock.receive_some(READ_SIZE):
                pass
        self._eof.set()

    def _close_now(self) -> None:
        for pipe in self._pipes:
            pipe.close()
        if self._direct is not None:
            self._direct.close()
        if self._sock is not None:
            self._sock.socket.close()
        self._eof.set()

    async def _resolve_container_pid(self, host_pid: int) -> int:
        if self._container_pid is not None:
            return self._container_pid
        if host_pid <= 0:
            raise BackendError("podman did not report the exec's PID")
        pid = await _nspid_from_proc(host_pid)
        if pid is None:
            pid = await self._nspid_from_top(host_pid)
        self._container_pid = pid
        return pid

    async def _nspid_from_top(self, host_pid: int) -> int:
        top = await self._api.request(
            "GET",
            f"/containers/{self._container_id}/top",
            params={"ps_args": "pid,hpid"},
            abandon_on_cancel=True,
        )
        for row in top.get("Processes") or []:
            if len(row) >= 2 and row[1].strip() == str(host_pid):
                return int(row[0])
        raise BackendError(f"exec PID {host_pid} not found in container")

    async def _run_detached(self, argv: list[str]) -> None:
        created = await self._api.request(
            "POST",
            f"/containers/{self._container_id}/exec",
            body={"Cmd": argv, "AttachStdout": False, "AttachStderr": False},
            abandon_on_cancel=True,
        )
        await self._api.request(
            "POST",
            f"/exec/{created['Id']}/start",
            body={"Detach": True, "Tty": False},
            abandon_on_cancel=True,
        )


class _Sink(Protocol):
    """Where the demux task writes one output stream."""

    @property
    def receiver_closed(self) -> bool: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    def close(self, error: BaseException | None = None) -> None: ...


class _MergedSink:
    """One pipe fed by several producers: sends take turns; the last ``close`` closes it."""

    def __init__(self, pipe: PipeSendStream, *, producers: int) -> None:
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


async def _nspid_from_proc(host_pid: int) -> int | None:
    """The innermost-namespace PID of ``host_pid``, or None if /proc cannot tell us."""
    try:
        status = await trio.Path(f"/proc/{host_pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            fields = line.split()[1:]
            return int(fields[-1]) if fields else None
    return None


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
