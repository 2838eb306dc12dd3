"""The in-container agent: session programs started with no ``podman exec``.

Theory of operation
-------------------
A ``podman exec`` costs tens of milliseconds of the API service, conmon and runc per
session (about 60 ms of a container login's latency and ~90 ms of CPU here). With direct
stdio (:mod:`.direct_stdio`) every container already has a private host
directory bind-mounted at ``/run/trissh-stdio``, and the static ``trissh-exec`` in it. So
the container's main process, instead of a pause, is ``trissh-exec --agent SOCKET TOKEN``
(``helper/trissh-exec.c``), and session programs are its children:

* before creating the container, :class:`AgentListener` listens on a ``SOCK_SEQPACKET``
  socket in the container's directory; once the container runs, the agent connects and
  sends the 128-bit token (bounded like the stdio handover: attempts, time, compared in
  constant time). The connection is the container's :class:`Agent`;
* :meth:`Agent.spawn` sends one message per program: argv and the session's environment
  (NUL-separated; no NUL inside, at most :data:`MAX_REQUEST` bytes) with four
  descriptors: the program's ends of its three pipes and one end of a socket pair that
  is the program's own line to the agent;
* the agent forks and execs the program in a new session, with the container's user,
  directory, environment, capabilities and cgroup (its own, which are the container's);
  on the program's socket trissh sends ``kill N``; the agent answers with the status
  line when the program ends, and kills it when trissh closes the socket (teardown);
* with a pty the request carries the size and only the program's socket: the agent opens
  the pty in the container, makes it the program's terminal, and sends the master back
  on that socket; trissh checks it is a pty master before using it. Its output ends at
  EIO (nobody holds the terminal any more) or, as podman's stream does, once the program
  has ended and the terminal stays quiet for :data:`PTY_DRAIN`;
* a container whose agent did not connect (``agent_unavailable``), or whose agent went
  away, gets ``podman exec`` as before.

Tasks: one per program, :meth:`AgentProcess.watch`, in the process context's nursery
(:func:`open_agent_process`): it takes the status line, so ``wait`` and a terminal's end
both know when the program ended. Teardown is synchronous (close the line and the fds).

Trust: the agent runs as the container's user and takes orders only from trissh; what it
sends back (the token, status lines, a pty master) is read with bounds and checked: the
one descriptor ever taken from a container must be a pty master (a character device
answering ``TIOCGPTN``), read without blocking. The agent makes itself undumpable, so the
programs (same user) cannot ptrace it or copy that master and clear its ``O_NONBLOCK``,
which would make a read of it block the whole server.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import select
import socket
import stat
import struct
import termios
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Final

import structlog
import trio

from trissh.backend._common import process_env, signal_number
from trissh.backend._pipe import ProcessStdin, open_task_nursery
from trissh.backend.base import ExitStatus, Observe, ProcessSpec, PtySpec, TerminalSize
from trissh.backend.errors import BackendError
from trissh.backend.podman.direct_stdio import (
    CONTAINER_DIR,
    STATUS_LINE_LIMIT,
    TokenListener,
    parse_status_line,
    receive_bounded,
)
from trissh.backend.podman.exec import note_started
from trissh.backend.podman.fd_pipes import FdPipeEnd, FdPipeWriter, ProgramPipes

__all__ = ["Agent", "AgentListener", "AgentProcess", "open_agent_process"]

log = structlog.get_logger("trissh.backend.podman")

#: The agent's socket in each container's stdio directory.
SOCKET_NAME: Final = "agent.sock"
#: How long a started container's agent has to connect and prove itself.
CONNECT_TIMEOUT: Final = 10.0
#: The largest spawn request (the agent's buffer is 400 KiB): a 128 KiB command (execve's
#: limit for one argument, the protocol's for a command), a forced command's copy of it in
#: SSH_ORIGINAL_COMMAND, and the environment.
MAX_REQUEST: Final = 384 * 1024
#: Send buffer asked for the agent's connection: a request is one SOCK_SEQPACKET message,
#: which must fit in it (Linux doubles the value, within net.core.wmem_max; its default
#: still gives 416 KiB).
SEND_BUFFER: Final = 512 * 1024
#: How long the agent may take to open a pty and send its master.
PTY_TIMEOUT: Final = 10.0
#: After the program ended, a quiet terminal this long is the end of its output.
PTY_DRAIN: Final = 0.2
#: ``_IOR('T', 0x30, unsigned int)``: only a pty master answers it.
_TIOCGPTN: Final = getattr(termios, "TIOCGPTN", 0x80045430)


class AgentListener:
    """Waits in one container's stdio directory for that container's agent."""

    def __init__(self, host_dir: str, helper_path: str) -> None:
        self.host_path = os.path.join(host_dir, SOCKET_NAME)
        self._helper_path = helper_path
        self._listener = TokenListener(self.host_path, socket.SOCK_SEQPACKET)

    def entrypoint(self) -> list[str]:
        """The container's main process."""
        return [
            self._helper_path,
            "--agent",
            f"{CONTAINER_DIR}/{SOCKET_NAME}",
            self._listener.token.decode(),
        ]

    async def accept(self, **log_fields: object) -> Agent | None:
        """The agent's connection once it proved itself; ``None`` if none did in time.
        The listening socket is gone afterwards either way."""
        conn = None
        with trio.move_on_after(CONNECT_TIMEOUT):
            conn = await self._listener.accept(
                lambda: log.warning("agent_refused", reason="bad or missing token", **log_fields)
            )
        return Agent(conn) if conn is not None else None

    def close(self) -> None:
        self._listener.close()


class Agent:
    """The connection to one container's agent; :meth:`close` stops what it started."""

    def __init__(self, conn: trio.socket.SocketType) -> None:
        self._conn = conn
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self._sending = trio.Lock()
        #: Set once a request could not be sent: the container gets ``podman exec``.
        self.broken = False

    async def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], pty: PtySpec | None = None
    ) -> AgentProcess:
        """Start ``argv`` with ``env`` added to the container's environment, on pipes or
        on a terminal of ``pty``'s size.

        Raises:
            BackendError: a NUL in the request, a request too large, the agent gone, or
                (a pty) no usable terminal from it.
        """
        words = [*argv, "", *(f"{key}={value}" for key, value in env.items())]
        if any("\0" in word for word in words):
            raise BackendError("the command or its environment contains a NUL byte")
        head = [b"spawn"]
        if pty is not None:
            # 0x0 as asked (OpenSSH's client with stdin not a terminal), as sshd.
            head = [b"spawnpty", b"%d" % pty.size.rows, b"%d" % pty.size.columns]
        request = b"\0".join([*head, *(word.encode() for word in words)]) + b"\0"
        if len(request) > MAX_REQUEST:
            raise BackendError(f"the command and its environment exceed {MAX_REQUEST} bytes")
        pipes = ProgramPipes() if pty is None else None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        line = trio.socket.from_stdlib_socket(ours)
        try:
            try:
                await self.send(request, [*(pipes.child_ends if pipes else []), theirs.fileno()])
            finally:
                theirs.close()
                if pipes is not None:
                    pipes.release_child_ends()
            if pipes is not None:
                return AgentProcess(line, pipes=pipes)
            return AgentProcess(line, master=await _receive_master(line))
        except BaseException:
            line.close()
            if pipes is not None:
                pipes.close()
            raise

    async def send(self, request: bytes, fds: Sequence[int]) -> None:
        """Send one request carrying ``fds`` (the caller still closes its copies).

        Raises:
            BackendError: the agent is gone (:attr:`broken` is set).
        """
        try:
            async with self._sending:
                await self._conn.sendmsg(
                    [request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                )
        except OSError as exc:
            self.broken = True
            raise BackendError(f"the container's agent went away: {exc}") from exc

    def connected(self) -> bool:
        """Whether the agent (hence its container) is still there, without asking podman:
        the socket shut down or broken means it is gone (data waiting, or none, means it
        is there)."""
        if self.broken:
            return False
        poller = select.poll()
        poller.register(self._conn.fileno(), select.POLLRDHUP)  # HUP and ERR come anyway
        return not poller.poll(0)

    def close(self) -> None:
        """The agent kills what it started and stays as the container's keepalive."""
        self.broken = True
        self._conn.close()


async def _receive_master(line: trio.socket.SocketType) -> int:
    """The pty master the agent sends for a ``spawnpty``, checked to be one.

    Raises:
        BackendError: none came in time, the agent said why not, or what came is not a
            pty master.
    """
    data, flags = b"", 0
    fds: list[int] = []
    with trio.move_on_after(PTY_TIMEOUT):
        data, ancillary, flags, _ = await line.recvmsg(
            1, socket.CMSG_SPACE(4 * 4), socket.MSG_CMSG_CLOEXEC
        )
        for level, kind, payload in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                fds += array.array("i", payload[: len(payload) - len(payload) % 4])
    master = fds.pop(0) if data == b"p" and len(fds) == 1 and not flags & socket.MSG_CTRUNC else -1
    for extra in fds:
        os.close(extra)
    if master < 0:
        why = data
        with trio.move_on_after(1.0):  # the agent's reason, if it gave one
            why += await receive_bounded(line, 200, until=b"\n")
        text = why.decode("utf-8", "replace").strip() or "no answer"
        raise BackendError(f"the container's agent gave no terminal: {text}")
    try:
        if not stat.S_ISCHR(os.fstat(master).st_mode):
            raise OSError(errno.ENOTTY, "not a character device")
        fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4)
    except OSError as exc:
        os.close(master)
        raise BackendError(f"the container's agent sent no pty master: {exc}") from None
    return master


class AgentProcess:
    """A program the agent started, seen through the
    :class:`~trissh.backend.base.Process` protocol: on pipes, or on a pty (``master``)."""

    def __init__(
        self,
        line: trio.socket.SocketType,
        *,
        pipes: ProgramPipes | None = None,
        master: int | None = None,
    ) -> None:
        self._line = line
        self._status: ExitStatus | None = None
        self._exited = trio.Event()
        self._stdout: trio.abc.ReceiveStream
        if pipes is not None:
            self._stdin = ProcessStdin(pipes.stdin, eof=pipes.stdin.aclose)
            self._stdout = pipes.stdout
            self._stderr: trio.abc.ReceiveStream | None = pipes.stderr
            self._terminal: _PtyOutput | None = None
            self._closers = [pipes.close]
        else:
            assert master is not None
            writer = FdPipeWriter(trio.lowlevel.FdStream(os.dup(master)))
            self._stdin = ProcessStdin(writer)  # a pty: closing is no EOF (^D is)
            self._terminal = _PtyOutput(trio.lowlevel.FdStream(master), self._exited)
            self._stdout = self._terminal
            self._stderr = None
            self._closers = [self._terminal.close, writer.close]

    @property
    def stdin(self) -> trio.abc.SendStream:
        return self._stdin

    @property
    def stdout(self) -> trio.abc.ReceiveStream:
        return self._stdout

    @property
    def stderr(self) -> trio.abc.ReceiveStream | None:
        return self._stderr

    async def resize(self, size: TerminalSize) -> None:
        """Resize the pty (the kernel tells the program with SIGWINCH); no-op without."""
        await trio.lowlevel.checkpoint()
        if self._terminal is None:
            return
        winsize = struct.pack("HHHH", size.rows, size.columns, size.width_px, size.height_px)
        with contextlib.suppress(OSError):  # closed: the session is going
            fcntl.ioctl(self._terminal.fileno(), termios.TIOCSWINSZ, winsize)

    async def send_signal(self, signal: str) -> None:
        """Raises: BackendError: unknown signal name."""
        try:
            number = signal_number(signal)
        except ValueError as exc:
            raise BackendError(f"cannot send signal {signal!r}: {exc}") from None
        with contextlib.suppress(OSError):  # it has ended: the agent closed its line
            await self._line.send(f"kill {number}\n".encode())

    async def wait(self) -> ExitStatus:
        """How the program ended. An agent that went away without saying was killed with
        its container (``podman kill``/``rm -f``, an out-of-memory kill), and its programs
        with it (PR_SET_PDEATHSIG): SIGKILL, as ``podman exec`` reports it."""
        await self._exited.wait()
        if self._status is None:
            log.warning("agent_lost", status="signal KILL")
            return ExitStatus(signal="KILL")
        return self._status

    async def watch(self) -> None:
        """Take the status line (the agent writes it when the program ends); run in a
        task for the process's lifetime, so a terminal's output can end with it."""
        try:
            line = await receive_bounded(self._line, STATUS_LINE_LIMIT, until=b"\n")
            self._status = parse_status_line(line)
        finally:
            self._exited.set()

    def close(self) -> None:
        """Kill the program if it still runs (the agent does, on our closing its line),
        and release its stdio. No checkpoint."""
        self._line.close()
        for close in self._closers:
            close()


class _PtyOutput(FdPipeEnd, trio.abc.ReceiveStream):
    """A pty master's output. EIO (nobody holds the terminal any more) is EOF; so is a
    quiet terminal :data:`PTY_DRAIN` after the program ended (something it left running
    may hold the terminal; podman's exec stream, too, ends with the program)."""

    def __init__(self, stream: trio.lowlevel.FdStream, exited: trio.Event) -> None:
        super().__init__(stream)
        self._exited = exited

    def fileno(self) -> int:
        return self._stream.fileno()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            fd = self._fd()
            try:
                return _read_what_is_there(fd, max_bytes or 65536)
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return b""
                raise trio.BrokenResourceError(str(exc)) from exc
            if self._exited.is_set():
                with trio.move_on_after(PTY_DRAIN) as quiet:
                    await trio.lowlevel.wait_readable(fd)
                if quiet.cancelled_caught:
                    return b""
                continue
            async with trio.open_nursery() as either:
                either.start_soon(_cancel_when_set, self._exited, either.cancel_scope)
                await trio.lowlevel.wait_readable(fd)
                either.cancel_scope.cancel()


def _read_what_is_there(fd: int, limit: int) -> bytes:
    """Everything the terminal has now, up to ``limit``: a pty master gives at most a few
    KiB per read, and one SSH packet per read would cap bulk output far below the pty's
    own speed. Raises what the first read raises (nothing there: BlockingIOError)."""
    chunks = [os.read(fd, limit)]
    size = len(chunks[0])
    while chunks[-1] and size < limit:
        try:
            chunks.append(os.read(fd, limit - size))
        except OSError:
            break  # nothing more now (or EIO): the next call sees it
        size += len(chunks[-1])
    return b"".join(chunks)


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


@asynccontextmanager
async def open_agent_process(
    agent: Agent,
    spec: ProcessSpec,
    *,
    container: str,
    observe: Observe | None = None,
) -> AsyncIterator[AgentProcess]:
    """Start ``spec`` through ``agent``; leaving the context kills it if it still runs.

    Raises:
        BackendError: the agent could not start it (see :meth:`Agent.spawn`).

    Cancellation: safe at any point; teardown is synchronous.
    """
    started = time.monotonic()
    process = await agent.spawn(spec.argv, process_env(spec), spec.pty)
    try:
        async with open_task_nursery() as nursery:
            nursery.start_soon(process.watch)
            note_started(observe, started, container, spec.channel_id, by_agent=True)
            yield process
    finally:
        process.close()
