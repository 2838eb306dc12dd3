"""One program in a podman container: exec create, start, signals, exit status, teardown.

Theory of operation
-------------------
``open_exec`` creates an exec session through podman's REST API, then starts it over our
own upgraded connection (:meth:`PodmanApi.upgrade`), whose stream
:class:`~.exec_stdio.ExecStdio` turns into the program's stdio (framed, raw with a tty, or
direct stdio pipes beside it). The start body carries the initial pty size (``h``/``w``)
so the program never sees a 0x0 terminal; later sizes go through
``POST /exec/{id}/resize``. With the exec helper (``trissh-exec``, bind-mounted at
:data:`HELPER_PATH`) the program runs as the helper's child, so a death by signal can be
told from an exit code.

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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import structlog
import trio

from trissh.backend._common import ms_since, process_env, signal_name, signal_number
from trissh.backend._pipe import open_task_nursery
from trissh.backend.base import ExitStatus, Observe, ProcessSpec, TerminalSize
from trissh.backend.errors import BackendError
from trissh.backend.podman.api import PodmanApi
from trissh.backend.podman.direct_stdio import DirectStdio, parse_status_line
from trissh.backend.podman.exec_stdio import ExecStdio

__all__ = [
    "HELPER_PATH",
    "HELPER_STATUS_DIR",
    "ExecTarget",
    "PodmanProcess",
    "note_started",
    "open_exec",
]

log = structlog.get_logger("trissh.backend.podman")

#: Where the helper is bind-mounted in every container, and its status files' tmpfs.
HELPER_PATH: Final = "/run/trissh-exec"
HELPER_STATUS_DIR: Final = "/run/trissh"
#: Teardown of a still-running process (kill, let the stream end, close).
PROCESS_CLEANUP_BOUND: Final = 5.0
#: How long the stream may take to end after a KILL during teardown.
_DRAIN_AFTER_KILL: Final = 2.0
#: After EOF, how long to wait for podman to stop reporting ``Running``: it records an
#: exec's exit asynchronously, and a busy service (hundreds of execs) takes seconds.
_EXIT_CODE_GRACE: Final = 60.0
#: Marks an exec inspection that found no record any more.
_GONE: Final = "trissh-gone"
#: Exit codes that may mean "killed by signal code-128" (signals 1..64).
_MAYBE_SIGNAL: Final = range(129, 193)
#: podman's answers when an exec cannot be made because the container is stopping or gone.
_CONTAINER_GONE: Final = ("container state improper", "no such container")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecTarget:
    """The container programs are exec'd in, and as whom."""

    api: PodmanApi
    container_id: str
    #: Runs ``kill`` inside the container (signals).
    shell: tuple[str, ...]
    user: str | None = None
    workdir: str | None = None
    observe: Observe | None = None


@asynccontextmanager
async def open_exec(
    target: ExecTarget,
    spec: ProcessSpec,
    *,
    helper: bool = False,
    stdio_dir: str | None = None,
) -> AsyncIterator[PodmanProcess]:
    """Create and start an exec; leaving the context kills it if it still runs.

    With ``helper`` the program runs under the bind-mounted ``trissh-exec``, which
    records a death by signal in a status file (see ``helper/trissh-exec.c``). With
    ``stdio_dir`` too (the host side of the container's stdio directory) a program
    without a tty gets direct stdio.

    Cancellation: safe at any point; a started program is killed, the socket closed.
    """
    started = time.monotonic()
    status_path = f"{HELPER_STATUS_DIR}/{secrets.token_hex(8)}" if helper else None
    direct = _direct_stdio(target, spec, stdio_dir) if helper else None
    try:
        created = await target.api.request(
            "POST",
            f"/containers/{target.container_id}/exec",
            body=_exec_body(target, spec, status_path, direct),
        )
    except BaseException:
        if direct is not None:
            direct.close()
        raise
    process = PodmanProcess(
        target, str(created["Id"]), spec, status_path=status_path, direct=direct
    )
    async with open_task_nursery() as nursery:
        try:
            await process._attach(nursery)
            note_started(target.observe, started, target.container_id, spec.channel_id)
            yield process
        finally:
            with trio.move_on_after(PROCESS_CLEANUP_BOUND, shield=True) as scope:
                await process._shutdown()
            if scope.cancelled_caught:
                log.warning(
                    "process_cleanup_timed_out",
                    container=target.container_id[:12],
                    channel=spec.channel_id,
                )
            process._close_now()


def _direct_stdio(
    target: ExecTarget, spec: ProcessSpec, stdio_dir: str | None
) -> DirectStdio | None:
    """Pipes for a program without a pty in a container with a stdio directory.

    Raises:
        BackendError: the directory went away, or its path is too long for a socket.
    """
    if stdio_dir is None or spec.pty is not None:
        return None
    try:
        return DirectStdio(stdio_dir, container=target.container_id[:12], channel=spec.channel_id)
    except OSError as exc:
        raise BackendError(f"cannot set up the program's stdio: {exc}") from exc


def _exec_body(
    target: ExecTarget, spec: ProcessSpec, status_path: str | None, direct: DirectStdio | None
) -> dict[str, Any]:
    """The exec create request: the program, under the helper when there is one."""
    argv = list(spec.argv)
    if status_path is not None:
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
    if target.user:
        body["User"] = target.user
    if target.workdir:
        body["WorkingDir"] = target.workdir
    return body


def note_started(
    observe: Observe | None,
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


class PodmanProcess:
    """A podman exec session seen through the :class:`~trissh.backend.base.Process` protocol."""

    def __init__(
        self,
        target: ExecTarget,
        exec_id: str,
        spec: ProcessSpec,
        *,
        status_path: str | None = None,
        direct: DirectStdio | None = None,
    ) -> None:
        self._api = target.api
        self._status_path = status_path
        self._container_id = target.container_id
        self.exec_id = exec_id
        self._shell = target.shell
        self._spec = spec
        self._tty = spec.pty is not None
        self._io = ExecStdio(
            tty=self._tty, direct=direct, container=target.container_id, channel=spec.channel_id
        )
        #: Set when a start request went out: from then on the program may be running.
        self._start_sent = False
        self._status: ExitStatus | None = None
        self._signals_sent: set[int] = set()
        self._container_pid: int | None = None

    @property
    def stdin(self) -> trio.abc.SendStream:
        return self._io.stdin

    @property
    def stdout(self) -> trio.abc.ReceiveStream:
        return self._io.stdout

    @property
    def stderr(self) -> trio.abc.ReceiveStream | None:
        return self._io.stderr

    @property
    def handed_over(self) -> bool | None:
        """Whether the helper took the direct stdio pipes (None: not yet, or not direct)."""
        return self._io.handed_over

    @property
    def helper_status(self) -> ExitStatus | None:
        """Direct stdio: the exit status as the helper reported it."""
        return self._io.helper_status

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
            if not (self._io.ended.is_set() or self._status is not None):
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
        if self._io.direct:
            # The helper says how the program ended as soon as it knows (podman's record
            # lags by tens of ms); without its word, podman's record decides below.
            reported = await self._io.helper_report()
            if reported is not None:
                return self._settle(reported)
        ended = self._io.ended
        interval = 0.25
        while not ended.is_set():
            with trio.move_on_after(interval):
                await ended.wait()
            if ended.is_set():
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
            if record is None and code == 128 + 9:
                return ExitStatus(signal="KILL")  # the container is gone: killed
            if record and record.strip():  # none: the helper itself was killed (our KILL?)
                return parse_status_line(record) or ExitStatus(code=code)
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
        self._io.attach(nursery, sock, leftover)

    async def _shutdown(self) -> None:
        """Kill the program if it may still run, let the stream end, close the socket."""
        io = self._io
        io.close_readers()
        try:
            ended = self._status is not None or io.helper_status is not None
            if self._start_sent and not ended and not io.ended.is_set():
                await self.send_signal("KILL")
                with trio.move_on_after(_DRAIN_AFTER_KILL):
                    await io.wait_stream_end()
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
            await io.close_socket()

    def _close_now(self) -> None:
        self._io.close_now()

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
