"""run_session: one session channel ⇄ one process in a container.

Theory of operation
-------------------
The task owns the process for the channel's life. It answers the session request once
the process runs; if it cannot run, the user gets a one-line reason on stderr and exit
status 255. It pumps stdio both ways with flow control, forwards resizes
and signals, and ends the channel the way sshd does: after the last output,
``exit-status`` (or ``exit-signal``), then EOF, then CLOSE — sent as soon as the status
is known, before the process context (and a ``session``-mode container) is torn down,
so the client never waits for podman's clean-up; the task still owns that teardown.

Nursery tree::

    run_session                 binds channel; its cancel scope is the handle's
    └─ [sandbox context]        ``session`` mode only: this session's own container
       └─ process context       leaving it kills the process (backend, bounded)
       └─ stdio nursery          its body pumps process stdout → channel until EOF
          ├─ _pump_input        channel → process stdin, then EOF (and the recording)
          ├─ _pump_stderr       process stderr → channel (no pty); the body waits for its EOF
          ├─ _ControlForwarder  window-change → resize, signal → kill (while any are queued)
          └─ _enforce_limits    idle timeout, maximum duration (when either is set)

The peer closing the channel cancels the handle's scope; the connection ending cancels
everything. Either way the ``finally`` sends what the channel still needs and closes it.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import structlog
import trio

from trissh.admin.live import LiveSession, LiveSessions
from trissh.auth.policy import Grant
from trissh.backend import BackendError, ExitStatus, Process, ProcessSpec, PtySpec, Sandbox
from trissh.backend import TerminalSize as BackendTerminalSize
from trissh.channels.environment import program_argv, session_environment
from trissh.channels.files import ContainerFiles
from trissh.channels.session_tap import SessionTap
from trissh.config import ContainerSection, SessionSection, subsystem_command
from trissh.connection.channel import ChannelHandle, ChannelStream
from trissh.connection.sandboxes import SandboxSource
from trissh.ops.log_quota import LogQuota
from trissh.ops.metrics import Metrics
from trissh.ops.recording import Recorder, SessionRecording
from trissh.protocol import SessionKind, SessionRequested, TerminalSize

log = structlog.get_logger("trissh.channels.session")

#: Bytes moved per read on each stdio pump.
PUMP_CHUNK = 256 * 1024
#: The most of a client's command a log line carries (a command may be 128 KiB).
LOGGED_COMMAND = 4096
#: Exit status of a session whose program never started (what ssh uses for its own errors).
SESSION_FAILED_EXIT_CODE = 255
#: Bound on writing the last error message to a client that may be gone.
MESSAGE_TIMEOUT = 2.0


class SessionRefused(Exception):
    """The session cannot run; the message is for the user's stderr."""


class RecordingMarks:
    """The recordings of a connection's running sessions, which note what else happened on
    the connection (its forwards) as asciicast markers."""

    def __init__(self) -> None:
        self._live: set[SessionRecording] = set()

    def add(self, recording: SessionRecording) -> None:
        self._live.add(recording)

    def discard(self, recording: SessionRecording) -> None:
        self._live.discard(recording)

    def mark(self, text: str) -> None:
        for recording in list(self._live):
            recording.mark(text)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionContext:
    """What a session knows of its connection: the login's outcome and where it runs."""

    conn_id: str
    username: str
    container: ContainerSection
    settings: SessionSection
    #: Restrictions of the login (forced command, no pty, environment).
    grant: Grant
    sandboxes: SandboxSource
    metrics: Metrics
    #: The bound on the connection's client-caused lines (signals, subsystem refusals).
    lines: LogQuota
    #: Where this user's sessions are recorded; ``None`` when they are not.
    recorder: Recorder | None = None
    #: The forwarded agent's socket (``ssh -A``) for a session in a given container, while
    #: the context is open (``None`` inside: it could not be made).
    agent_socket: Callable[[Sandbox], AbstractAsyncContextManager[str | None]] | None = None
    #: Where the connection's live recordings are listed for markers.
    marks: RecordingMarks | None = None
    #: Which containers have the login's files (secret and webhook ones) already.
    container_files: ContainerFiles = field(default_factory=ContainerFiles)
    #: The connection's sessions as operators see them (``trissh sessions``, ``watch``).
    live: LiveSessions | None = None
    #: The client's and the server's ``HOST:PORT`` (``SSH_CONNECTION``).
    remote: str = ""
    local: str = ""


#: The most a terminal's ``struct winsize`` holds in each field (SSH sends uint32).
_WINSIZE_MAX = 0xFFFF


def backend_size(size: TerminalSize) -> BackendTerminalSize:
    """The client's size as a terminal can take it: each field clamped to 16 bits."""
    return BackendTerminalSize(
        columns=min(size.columns, _WINSIZE_MAX),
        rows=min(size.rows, _WINSIZE_MAX),
        width_px=min(size.width_px, _WINSIZE_MAX),
        height_px=min(size.height_px, _WINSIZE_MAX),
    )


def _columns_rows(size: TerminalSize) -> tuple[int, int]:
    clamped = backend_size(size)
    return clamped.columns, clamped.rows


def subsystem_argv(ctx: SessionContext, name: str) -> list[str] | None:
    """What ``ssh -s NAME`` runs: ``[session] subsystems`` (the deprecated ``[container]
    sftp_server`` first, for ``sftp``); ``None``: no such subsystem."""
    if name == "sftp" and ctx.container.sftp_server:
        return [ctx.container.sftp_server]
    command = ctx.settings.subsystems.get(name)
    return subsystem_command(command) if command is not None else None


def build_process_spec(
    ctx: SessionContext,
    request: SessionRequested,
    extra_env: Mapping[str, str] | None = None,
    home: str | None = None,
) -> ProcessSpec:
    """Turn a shell/exec/subsystem request into the argv and environment to run."""
    container = ctx.container
    shell = list(container.shell)
    grant = ctx.grant
    original = None
    if grant.forced_command is not None:
        # As sshd's command=: whatever was asked runs the forced command instead; for a
        # subsystem, SSH_ORIGINAL_COMMAND is the subsystem's command.
        original = request.command
        if request.kind is SessionKind.SUBSYSTEM:
            asked = subsystem_argv(ctx, request.subsystem or "")
            original = shlex.join(asked) if asked is not None else None
        argv = [*shell, "-c", grant.forced_command]
    elif request.kind is SessionKind.SHELL:
        argv = [*shell, "-l"]
    elif request.kind is SessionKind.EXEC:
        assert request.command is not None
        argv = [*shell, "-c", request.command]
    elif (subsystem := subsystem_argv(ctx, request.subsystem or "")) is not None:
        argv = subsystem
    else:  # refused earlier by the session handler; kept for a direct caller
        raise SessionRefused(f"subsystem {request.subsystem!r} is not available")
    env = session_environment(
        username=ctx.username,
        shell=shell[0],
        home=home,
        client=request.env,
        granted=grant.environment,
        remote=ctx.remote,
        local=ctx.local,
        original_command=original,
    )
    env.update(extra_env or {})
    pty = None
    if request.pty is not None:
        env["TERM"] = request.pty.term
        pty = PtySpec(
            term=request.pty.term, size=backend_size(request.pty.size), modes=request.pty.modes
        )
    argv = program_argv(
        shell, argv, modes=pty.modes if pty else None, home=container.workdir is None
    )
    return ProcessSpec(argv=argv, env=env, pty=pty, channel_id=int(request.channel_id))


async def run_session(
    ctx: SessionContext, handle: ChannelHandle, request: SessionRequested
) -> None:
    """Run the requested program until it exits or the channel goes away.

    Cancellation: kills the process and closes the channel; never raises otherwise.
    """
    finish = _Ending(handle)
    tracked = ctx.metrics.session_started(request.kind.value)
    with structlog.contextvars.bound_contextvars(channel=int(handle.id)):
        recording = _open_recording(ctx, handle, request)
        tap = SessionTap(recording, _open_live(ctx, handle, request))
        if recording is not None and ctx.marks is not None:
            ctx.marks.add(recording)
        try:
            with handle.cancel_scope:
                await _run(ctx, handle, request, tap, finish)
        except* (BackendError, SessionRefused) as group:
            # OpenSSH drops a channel's pending stderr when the request is refused, so the
            # request is granted and the reason printed, with ssh's own "did not run" code.
            exc = _first(group)
            log.warning("session_failed", kind=request.kind.value, error=str(exc))
            finish.reason = "failed"
            if not finish.done:
                handle.port.reply_request(handle.id, True)
                await tell_user(handle, f"trissh: {exc}\r\n" if request.pty else f"trissh: {exc}\n")
                finish.outcome = ExitStatus(code=SESSION_FAILED_EXIT_CODE)
        except* Exception:
            log.exception("session_crashed")
            finish.reason = "crashed"
        finally:
            finish(None)
            tracked.ended()
            if recording is not None and ctx.marks is not None:
                ctx.marks.discard(recording)
            tap.close(finish.outcome.code, finish.outcome.signal)


class _Ending:
    """How a session ends, said once, as soon as the outcome is known: ``session_ended``
    (only after its ``session_started``), then exit status, EOF, CLOSE. Logged first: an
    ``ssh`` that hangs up at CLOSE cancels the session's task."""

    def __init__(self, handle: ChannelHandle) -> None:
        self._handle = handle
        self.outcome = ExitStatus()
        #: Why, if it ends without a status (``failed``, ``crashed``; else ``cancelled``).
        self.reason = "cancelled"
        #: ``session_started`` was logged.
        self.started = False
        self.done = False

    def __call__(self, status: ExitStatus | None) -> None:
        if status is not None:
            self.outcome = status
        if self.done:
            return
        self.done = True
        handle, outcome = self._handle, self.outcome
        reason = "exited" if status is not None else self.reason
        if reason == "cancelled" and handle.peer_closed:
            reason = "channel_closed"
        if self.started:
            log.info("session_ended", exit_code=outcome.code, signal=outcome.signal, reason=reason)
        handle.port.finish(
            handle.id,
            exit_code=outcome.code,
            signal=outcome.signal,
            core_dumped=outcome.core_dumped,
        )


def _logged(command: str | None) -> str | None:
    """A client's command as a log line carries it: cut past LOGGED_COMMAND characters."""
    if command is None or len(command) <= LOGGED_COMMAND:
        return command
    return f"{command[:LOGGED_COMMAND]}... ({len(command)} characters)"


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf of an exception group (nurseries nest them)."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


async def tell_user(handle: ChannelHandle, message: str) -> None:
    """Write a notice on a session's stderr, bounded; a closed channel just misses it."""
    with trio.move_on_after(MESSAGE_TIMEOUT):
        with contextlib.suppress(trio.BrokenResourceError):
            await ChannelStream(handle, stderr=True).send_all(message.encode())


async def _run(
    ctx: SessionContext,
    handle: ChannelHandle,
    request: SessionRequested,
    tap: SessionTap,
    finish: _Ending,
) -> None:
    """Serve the session, then ``finish`` it *before* the process (and, in ``session``
    mode, the container) is torn down: ``ssh host cmd`` does not wait for podman to
    remove a container. The teardown still runs here, owned by this task."""
    extra_env = {}
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as owned:
        sandbox = await _sandbox_for(ctx, owned)
        structlog.contextvars.bind_contextvars(container=sandbox.container_id[:12])
        if request.agent_forwarding and ctx.agent_socket is not None:
            agent_socket = await owned.enter_async_context(ctx.agent_socket(sandbox))
            if agent_socket is not None:
                extra_env["SSH_AUTH_SOCK"] = agent_socket
        spec = build_process_spec(ctx, request, extra_env, ctx.sandboxes.home())
        await ctx.container_files.provide(sandbox, ctx.grant.secret_files, ctx.container.shell[0])
        tap.attached(sandbox.container_id)
        try:
            process = await owned.enter_async_context(sandbox.open_process(spec))
        except BackendError:
            ctx.sandboxes.lost()
            raise
        await _serve(ctx, handle, request, process, started, tap, finish)


async def _sandbox_for(ctx: SessionContext, owned: contextlib.AsyncExitStack) -> Sandbox:
    """The connection's container, or (``session`` mode) one this session owns."""
    timeout = ctx.container.start_timeout
    try:
        with trio.fail_after(timeout):
            sandbox = await ctx.sandboxes.acquire(owned)
            await _place_files(ctx, sandbox)
            return sandbox
    except trio.TooSlowError:
        raise SessionRefused(
            f"container did not start within {timeout:g} s (server busy? try again later)"
        ) from None


async def _place_files(ctx: SessionContext, sandbox: Sandbox) -> None:
    """Webhook ``files``, written once per container and login before its first program
    (a concurrent session waits for them). A failure is logged and the session goes on,
    as in ContainerSSH."""
    files = ctx.grant.files
    if not files:
        return

    async def put() -> None:
        try:
            await sandbox.put_files(files)
            log.info("webhook_files_placed", count=len(files))
        except BackendError as exc:
            log.warning("webhook_files_failed", error=str(exc))

    await ctx.container_files.once("webhook", sandbox, put)


async def _serve(
    ctx: SessionContext,
    handle: ChannelHandle,
    request: SessionRequested,
    process: Process,
    started: float,
    tap: SessionTap,
    finish: _Ending,
) -> None:
    """Answer the request, pump stdio and control until the program ends, then ``finish``
    the channel at once: the client's wait ends there, not after this task's own
    unwinding (stopping the input pump)."""
    handle.port.reply_request(handle.id, True)
    log.info(
        "session_started",
        kind=request.kind.value,
        command=_logged(request.command),
        forced_command=ctx.grant.forced_command,
        subsystem=request.subsystem,
        pty=request.pty is not None,
        start_ms=round((time.monotonic() - started) * 1000, 1),
    )
    finish.started = True
    channel = ChannelStream(handle)
    if request.kind is SessionKind.SHELL and request.pty is not None and ctx.settings.motd:
        await _show_motd(channel, ctx.settings.motd, tap)
    async with trio.open_nursery() as stdio:
        stdio.start_soon(_pump_input, channel, process.stdin, tap)
        handle.on_control = _ControlForwarder(handle, process, tap, stdio, ctx.lines).wake
        try:
            if handle.control:  # a resize that came before the program started
                handle.on_control()
            limits = ctx.settings
            if limits.idle_timeout or limits.max_session_duration:
                stdio.start_soon(_enforce_limits, handle, limits, request.pty is not None)
            stderr_done = None
            if process.stderr is not None:
                stderr_done = trio.Event()
                stderr = ChannelStream(handle, stderr=True)
                stdio.start_soon(_pump_stderr, process.stderr, stderr, tap, stderr_done)
            await _pump_output(process.stdout, channel, tap, tap.stdout)
            if stderr_done is not None:
                await stderr_done.wait()
            status = await process.wait()
            finish(status)
            stdio.cancel_scope.cancel()
        finally:
            handle.on_control = None  # the nursery is closing: nothing may start in it


async def _show_motd(channel: ChannelStream, motd: str, tap: SessionTap) -> None:
    """The message of the day on the terminal before the shell's first output (sshd's
    PrintMotd); written by us, so lines end in CRLF as a terminal's would. Bounded."""
    text = ("\r\n".join(motd.splitlines()) + "\r\n").encode()
    tap.stdout(text)
    with trio.move_on_after(MESSAGE_TIMEOUT), contextlib.suppress(trio.BrokenResourceError):
        await channel.send_all(text)


def _duration(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


async def _enforce_limits(handle: ChannelHandle, settings: SessionSection, pty: bool) -> None:
    """Idle timeout and maximum duration: say why on the user's terminal, then end."""
    idle, longest = settings.idle_timeout, settings.max_session_duration
    ends_at = trio.current_time() + longest if longest else math.inf
    while True:
        idle_at = handle.last_activity + idle if idle else math.inf
        await trio.sleep_until(min(idle_at, ends_at))
        now = trio.current_time()
        if now >= ends_at:
            limit, message = "max_session_duration", f"session time limit of {_duration(longest)}"
        elif idle and now >= handle.last_activity + idle:
            limit, message = "idle_timeout", f"session idle for {_duration(idle)}"
        else:
            continue  # there was activity meanwhile
        log.info("session_limit_reached", limit=limit)
        newline = "\r\n" if pty else "\n"
        await tell_user(handle, f"{newline}trissh: {message}, closing{newline}")
        handle.cancel_scope.cancel()
        return


def _what_runs(ctx: SessionContext, request: SessionRequested) -> tuple[str, str | None]:
    """What the session runs, as (``"subsystem"`` or ``"command"``, its name or line): a
    forced command whatever the client asked."""
    forced = ctx.grant.forced_command
    if forced is not None:
        return "command", forced
    if request.kind is SessionKind.SUBSYSTEM:
        return "subsystem", request.subsystem
    return "command", request.command


def _open_recording(
    ctx: SessionContext, handle: ChannelHandle, request: SessionRequested
) -> SessionRecording | None:
    """A recording of this session when ``[recording]`` covers its user."""
    recorder = ctx.recorder
    if recorder is None:
        return None
    what, command = _what_runs(ctx, request)
    if what == "subsystem":
        command = f"subsystem {command}"
    return recorder.open_session(
        ctx.conn_id,
        int(handle.id),
        user=ctx.username,
        pty=backend_size(request.pty.size) if request.pty is not None else None,
        term=request.pty.term if request.pty is not None else "",
        command=command,
        shell=ctx.container.shell[0],
    )


def _open_live(
    ctx: SessionContext, handle: ChannelHandle, request: SessionRequested
) -> LiveSession | None:
    """The session as ``trissh sessions`` lists it and ``trissh watch`` shows it."""
    if ctx.live is None:
        return None
    pty = request.pty
    return ctx.live.open(
        int(handle.id),
        kind=request.kind.value,
        command=_what_runs(ctx, request)[1],
        pty=(pty.term, *_columns_rows(pty.size)) if pty is not None else None,
        notify=lambda message: tell_user(handle, message),
    )


async def _pump_input(channel: ChannelStream, stdin: trio.abc.SendStream, tap: SessionTap) -> None:
    try:
        while data := await channel.receive_some(PUMP_CHUNK):
            tap.stdin(data)
            await stdin.send_all(data)
            await tap.flush_now_and_then()
        await stdin.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the process stopped reading; its exit ends the session


async def _pump_output(
    source: trio.abc.ReceiveStream,
    channel: ChannelStream,
    tap: SessionTap,
    record: Callable[[bytes | bytearray], None],
) -> None:
    try:
        while data := await source.receive_some(PUMP_CHUNK):
            record(data)
            await channel.send_all(data)
            await tap.flush_now_and_then()
    except trio.BrokenResourceError:
        pass  # the client closed the channel; nothing more can be delivered


async def _pump_stderr(
    source: trio.abc.ReceiveStream, channel: ChannelStream, tap: SessionTap, done: trio.Event
) -> None:
    """stderr's pump, a task beside the session's own stdout pump; ``done`` at its EOF."""
    try:
        await _pump_output(source, channel, tap, tap.stderr)
    finally:
        done.set()


class _ControlForwarder:
    """Resizes and signals to the program, by a task that runs only while some are queued.

    Most sessions never get one; a task waiting for them all along would cost every
    session a spawn and a cancellation. One forwarder at a time keeps them in order.
    """

    def __init__(
        self,
        handle: ChannelHandle,
        process: Process,
        tap: SessionTap,
        nursery: trio.Nursery,
        lines: LogQuota,
    ) -> None:
        self._handle = handle
        self._process = process
        self._tap = tap
        self._nursery = nursery
        self._lines = lines
        self._running = False

    def wake(self) -> None:
        if not self._running:
            self._running = True
            self._nursery.start_soon(self._forward)

    async def _forward(self) -> None:
        try:
            while self._handle.control:
                item = self._handle.control.popleft()
                try:
                    if isinstance(item, TerminalSize):
                        size = backend_size(item)  # what the terminal holds, recorded too
                        self._tap.resize(size)
                        await self._process.resize(size)
                    else:
                        await self._process.send_signal(item)
                        if self._lines.take():
                            log.info("signal_forwarded", signal=item)
                except BackendError as exc:
                    if self._lines.take():
                        log.warning("control_failed", error=str(exc))
        finally:
            self._running = False
