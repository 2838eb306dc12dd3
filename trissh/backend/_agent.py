"""The in-container agent: programs without a pty started with no ``podman exec``.

Theory of operation
-------------------
A ``podman exec`` costs tens of milliseconds of the API service, conmon and runc per
session (about 60 ms of a container login's latency and ~90 ms of CPU here). With direct
stdio (:mod:`trissh.backend._direct_stdio`) every container already has a private host
directory bind-mounted at ``/run/trissh-stdio``, and the static ``trissh-exec`` in it. So
the container's main process, instead of a pause, is ``trissh-exec --agent SOCKET TOKEN``
(``helper/trissh-exec.c``), and programs without a pty are its children:

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
* a container whose agent did not connect (``agent_unavailable``), or whose agent went
  away, gets ``podman exec`` as before; pty sessions always do (the pty is conmon's).

Trust: the agent runs as the container's user and takes orders only from trissh; what it
sends back (the token, status lines) is read with bounds and parsed strictly. Nothing is
ever received *from* the container but bytes.
"""

from __future__ import annotations

import array
import contextlib
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Final

import structlog
import trio

from trissh.backend._common import ms_since, process_env, signal_number
from trissh.backend._direct_stdio import (
    CONTAINER_DIR,
    MAX_ATTEMPTS,
    STATUS_LINE_LIMIT,
    TOKEN_BYTES,
    TOKEN_TIMEOUT,
    ProgramPipes,
    parse_status_line,
    receive_bounded,
)
from trissh.backend._pipe import ProcessStdin
from trissh.backend.base import ExitStatus, ProcessSpec, TerminalSize
from trissh.backend.errors import BackendError

__all__ = ["Agent", "AgentListener", "AgentProcess", "open_agent_process"]

log = structlog.get_logger("trissh.backend.podman")

#: The agent's socket in each container's stdio directory.
SOCKET_NAME: Final = "agent.sock"
#: How long a started container's agent has to connect and prove itself.
CONNECT_TIMEOUT: Final = 10.0
#: The largest spawn request (the agent's buffer is 64 KiB).
MAX_REQUEST: Final = 60 * 1024


class AgentListener:
    """Waits in one container's stdio directory for that container's agent."""

    def __init__(self, host_dir: str, helper_path: str) -> None:
        self.host_path = os.path.join(host_dir, SOCKET_NAME)
        self._token = secrets.token_hex(TOKEN_BYTES).encode()
        self._helper_path = helper_path
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self._listener: trio.socket.SocketType | None = trio.socket.from_stdlib_socket(raw)
        try:
            raw.bind(self.host_path)
            # The container's user is not us; the token, not the mode, guards the agent.
            os.chmod(self.host_path, 0o666)  # noqa: S103
            raw.listen(MAX_ATTEMPTS)
        except BaseException:
            self.close()
            raise

    def entrypoint(self) -> list[str]:
        """The container's main process."""
        return [
            self._helper_path,
            "--agent",
            f"{CONTAINER_DIR}/{SOCKET_NAME}",
            self._token.decode(),
        ]

    async def accept(self, **log_fields: object) -> Agent | None:
        """The agent's connection once it proved itself; ``None`` if none did in time.
        The listening socket is gone afterwards either way."""
        try:
            with trio.move_on_after(CONNECT_TIMEOUT):
                for _ in range(MAX_ATTEMPTS):
                    assert self._listener is not None
                    conn, _ = await self._listener.accept()
                    token = b""
                    with trio.move_on_after(TOKEN_TIMEOUT):
                        token = await receive_bounded(conn, len(self._token))
                    if secrets.compare_digest(token, self._token):
                        return Agent(conn)
                    log.warning("agent_refused", reason="bad or missing token", **log_fields)
                    conn.close()
            return None
        finally:
            self.close()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(OSError):
                os.unlink(self.host_path)


class Agent:
    """The connection to one container's agent; :meth:`close` stops what it started."""

    def __init__(self, conn: trio.socket.SocketType) -> None:
        self._conn = conn
        self._sending = trio.Lock()
        #: Set once a request could not be sent: the container gets ``podman exec``.
        self.broken = False

    async def spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> AgentProcess:
        """Start ``argv`` with ``env`` added to the container's environment.

        Raises:
            BackendError: a NUL in the request, a request too large, or the agent gone.
        """
        words = [*argv, "", *(f"{key}={value}" for key, value in env.items())]
        if any("\0" in word for word in words):
            raise BackendError("the command or its environment contains a NUL byte")
        request = b"\0".join([b"spawn", *(word.encode() for word in words)]) + b"\0"
        if len(request) > MAX_REQUEST:
            raise BackendError(f"the command and its environment exceed {MAX_REQUEST} bytes")
        pipes = ProgramPipes()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        line = trio.socket.from_stdlib_socket(ours)
        try:
            fds = array.array("i", [*pipes.child_ends, theirs.fileno()])
            async with self._sending:
                await self._conn.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except OSError as exc:
            self.broken = True
            pipes.close()
            line.close()
            raise BackendError(f"the container's agent went away: {exc}") from exc
        except BaseException:
            pipes.close()
            line.close()
            raise
        finally:
            theirs.close()
            pipes.release_child_ends()
        return AgentProcess(pipes, line)

    def close(self) -> None:
        """The agent kills what it started and stays as the container's keepalive."""
        self.broken = True
        self._conn.close()


class AgentProcess:
    """A program the agent started, seen through the
    :class:`~trissh.backend.base.Process` protocol (never with a pty)."""

    def __init__(self, pipes: ProgramPipes, line: trio.socket.SocketType) -> None:
        self._pipes = pipes
        self._line = line
        self._stdin = ProcessStdin(pipes.stdin, eof=pipes.stdin.aclose)
        self._status: ExitStatus | None = None

    @property
    def stdin(self) -> trio.abc.SendStream:
        return self._stdin

    @property
    def stdout(self) -> trio.abc.ReceiveStream:
        return self._pipes.stdout

    @property
    def stderr(self) -> trio.abc.ReceiveStream:
        return self._pipes.stderr

    async def resize(self, size: TerminalSize) -> None:
        await trio.lowlevel.checkpoint()  # no pty

    async def send_signal(self, signal: str) -> None:
        """Raises: BackendError: unknown signal name."""
        try:
            number = signal_number(signal)
        except ValueError as exc:
            raise BackendError(f"cannot send signal {signal!r}: {exc}") from None
        with contextlib.suppress(OSError):  # it has ended: the agent closed its line
            await self._line.send(f"kill {number}\n".encode())

    async def wait(self) -> ExitStatus:
        """Raises: BackendError: the agent went away without saying how it ended."""
        if self._status is None:
            line = await receive_bounded(self._line, STATUS_LINE_LIMIT, until=b"\n")
            status = parse_status_line(line)
            if status is None:
                await trio.lowlevel.checkpoint()
                raise BackendError("the container's agent did not report how the program ended")
            self._status = status
        else:
            await trio.lowlevel.checkpoint()
        return self._status

    def close(self) -> None:
        """Kill the program if it still runs (the agent does, on our closing its line),
        and release the pipes. No checkpoint."""
        self._line.close()
        self._pipes.close()


@asynccontextmanager
async def open_agent_process(
    agent: Agent,
    spec: ProcessSpec,
    *,
    container: str,
    observe: Callable[[str, float], None] | None = None,
) -> AsyncIterator[AgentProcess]:
    """Start ``spec`` through ``agent``; leaving the context kills it if it still runs.

    Raises:
        BackendError: the agent could not start it (see :meth:`Agent.spawn`).

    Cancellation: safe at any point; teardown is synchronous.
    """
    started = time.monotonic()
    process = await agent.spawn(spec.argv, process_env(spec))
    try:
        if observe is not None:
            observe("exec", time.monotonic() - started)
        log.debug(
            "process_started",
            container=container[:12],
            channel=spec.channel_id,
            via="agent",
            duration_ms=ms_since(started),
        )
        yield process
    finally:
        process.close()
