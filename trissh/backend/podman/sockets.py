"""Sockets inside a container, made by its agent: what forwarding connects and listens with.

Theory of operation
-------------------
A socket belongs to the network namespace it was made in, whoever holds it later. So the
container's agent (``helper/agent-sockets.c``) makes each one, in a child it forks for the
request (resolving a name and connecting block; the agent's loop serves every session), and
hands it back by ``SCM_RIGHTS``; trissh then reads and writes it directly, as any socket:
no byte passes through the agent, podman or conmon. ``localhost`` is the container's
loopback, a name is resolved with the container's ``/etc/hosts`` and ``/etc/resolv.conf``,
a unix socket path is in the container's filesystem, made as the container's user.

One request per socket, on the agent's control socket, with the request's own line (one end
of a socket pair): ``connect HOST PORT``, ``connect-unix PATH``, ``listen HOST PORT``,
``listen-unix PATH``, ``unlink PATH`` (NUL-separated). The answer on the line is one byte
``s`` with the socket, ``ok`` (unlink) or ``error: REASON: TEXT``; the agent bounds its
child by ``SOCKET_REQUEST_TIMEOUT`` (10 s, :data:`~trissh.backend.base.SOCKET_TIMEOUT`),
and trissh waits :data:`ANSWER_TIMEOUT`. A helper too old to know these requests closes
the line without a word: that is ``unsupported``.

Trust: what comes back from a container is checked before use: one descriptor, a socket
(``S_ISSOCK``), ``SOCK_STREAM``, of the family asked for, listening (``SO_ACCEPTCONN``)
exactly when a listener was asked for, and a connection connected.

Containers without an agent cannot make sockets inside: :class:`NoSockets` says why
(``unsupported``). Leaving :meth:`AgentSockets.listen` closes the listener and has the
agent remove a unix socket's file; closing the container's launcher closes every listener
still open, so an ``accept`` waiting on a container that is going ends.
"""

from __future__ import annotations

import array
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final, Protocol

import structlog
import trio

from trissh.backend._sockets import check_address, peer_text
from trissh.backend.base import SOCKET_TIMEOUT, SocketAddress
from trissh.backend.errors import FORWARD_REASONS, BackendError, ForwardError, ForwardReason
from trissh.backend.podman.agent import Agent
from trissh.backend.podman.direct_stdio import receive_bounded

__all__ = ["AgentSockets", "NoSockets", "PodmanListener", "SandboxSockets"]

log = structlog.get_logger("trissh.backend.podman")

#: How long trissh waits for the agent's answer: its own bound, and some slack.
ANSWER_TIMEOUT: Final = SOCKET_TIMEOUT + 5.0
#: How long leaving a unix listener waits for its file to be removed.
UNLINK_TIMEOUT: Final = 5.0
#: Seconds between a waiting listener's checks that its container is still there.
LIVENESS_POLL: Final = 2.0
#: An error line is short; more is not one.
ERROR_LINE_LIMIT: Final = 512
NO_AGENT: Final = "port forwarding needs the in-container agent ([podman] exec_agent)"
_INET: Final = (socket.AF_INET, socket.AF_INET6)
_UNIX: Final = (socket.AF_UNIX,)


class SandboxSockets(Protocol):
    """How one container makes sockets inside (its launcher's choice)."""

    async def connect(self, address: SocketAddress) -> trio.abc.HalfCloseableStream: ...

    def listen(self, address: SocketAddress) -> AbstractAsyncContextManager[PodmanListener]: ...

    def close(self) -> None:
        """The container is going."""


class NoSockets:
    """A container without an agent: forwarding is ``unsupported``."""

    def __init__(self, why: str = NO_AGENT) -> None:
        self._why = why

    async def connect(self, address: SocketAddress) -> trio.abc.HalfCloseableStream:
        await trio.lowlevel.checkpoint()
        raise ForwardError("unsupported", self._why)

    def listen(self, address: SocketAddress) -> AbstractAsyncContextManager[PodmanListener]:
        return _Refused(self._why)

    def close(self) -> None:
        """Nothing to release."""


class _Refused(AbstractAsyncContextManager["PodmanListener"]):
    def __init__(self, why: str) -> None:
        self._why = why

    async def __aenter__(self) -> PodmanListener:
        await trio.lowlevel.checkpoint()
        raise ForwardError("unsupported", self._why)

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class PodmanListener:
    """A listening socket the agent made; :meth:`accept` yields connections from inside.

    The socket lives in trissh, so a container that dies leaves it listening: while it
    waits, :meth:`accept` asks ``alive`` (the agent's connection, no podman request) every
    :data:`LIVENESS_POLL` seconds and closes it when the container is gone.
    """

    def __init__(self, sock: socket.socket, alive: Callable[[], bool]) -> None:
        self._family = sock.family
        self._port = int(sock.getsockname()[1]) if sock.family in _INET else 0
        self._listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        self._alive = alive

    @property
    def port(self) -> int:
        return self._port

    async def accept(self) -> tuple[trio.abc.HalfCloseableStream, str]:
        """Raises: trio.ClosedResourceError: closed, or its container is gone;
        ForwardError: accept failed."""
        while True:
            with trio.move_on_after(LIVENESS_POLL):
                try:
                    stream = await self._listener.accept()
                except trio.ClosedResourceError:
                    raise
                except OSError as exc:
                    raise ForwardError("failed", f"cannot accept a connection: {exc}") from exc
                break
            if not self._alive():
                self.close()
                raise trio.ClosedResourceError("its container went away")
        try:
            peer = peer_text(self._family, stream.socket.getpeername())
        except OSError:
            peer = ""  # it is gone already: its reads end at once
        return stream, peer

    def close(self) -> None:
        """Stop listening (a task waiting in :meth:`accept` gets ClosedResourceError)."""
        self._listener.socket.close()


class AgentSockets:
    """Sockets made by one container's agent."""

    def __init__(self, agent: Agent, container: str) -> None:
        self._agent = agent
        self._container = container
        self._listeners: set[PodmanListener] = set()

    async def connect(self, address: SocketAddress) -> trio.abc.HalfCloseableStream:
        """Raises: ForwardError. Cancellation: safe; nothing is left open."""
        check_address(address)
        if address.path:
            sock = await self._request([b"connect-unix", _word(address.path)], _UNIX, False)
        else:
            words = [b"connect", _word(address.host), b"%d" % address.port]
            sock = await self._request(words, _INET, False)
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))

    @asynccontextmanager
    async def listen(self, address: SocketAddress) -> AsyncIterator[PodmanListener]:
        """Raises: ForwardError. Cancellation: safe; the listener (and its file) goes."""
        check_address(address)
        if address.path:
            sock = await self._request([b"listen-unix", _word(address.path)], _UNIX, True)
        else:
            words = [b"listen", _word(address.host), b"%d" % address.port]
            sock = await self._request(words, _INET, True)
        try:
            listener = PodmanListener(sock, self._agent.connected)
        except BaseException:
            sock.close()
            raise
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)
            listener.close()
            if address.path:
                await self._unlink(address.path)

    def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()

    async def _unlink(self, path: str) -> None:
        """Have the agent remove a listener's socket file (bounded, shielded)."""
        with trio.move_on_after(UNLINK_TIMEOUT, shield=True) as bound:
            try:
                answer = await self._exchange([b"unlink", _word(path)])
            except ForwardError as exc:
                answer = f"error: {exc.reason}: {exc}"
            if answer == "ok":
                return
        why = "no answer in time" if bound.cancelled_caught else answer
        log.warning("socket_file_left", container=self._container[:12], path=path, error=why)

    async def _request(
        self, words: list[bytes], families: Collection[int], listening: bool
    ) -> socket.socket:
        """The socket the agent made for ``words``, checked.

        Raises: ForwardError.
        """
        with trio.move_on_after(ANSWER_TIMEOUT):
            line = await self._send(words)
            with line:
                data, fds = await _receive_fd(line)
                if data == b"s" and len(fds) == 1:
                    return _checked(fds[0], families, listening, self._container)
                for fd in fds:
                    os.close(fd)
                if data == b"s":
                    raise _bad_socket(f"{len(fds)} descriptors", self._container)
                rest = await receive_bounded(line, ERROR_LINE_LIMIT, until=b"\n")
                raise _answer_error((data + rest).decode("utf-8", "replace"))
        raise ForwardError("timeout", f"no answer from the container within {ANSWER_TIMEOUT:g} s")

    async def _exchange(self, words: list[bytes]) -> str:
        """Send a request answered by a line; that line (``ok`` or ``error: ...``)."""
        line = await self._send(words)
        with line:
            answer = await receive_bounded(line, ERROR_LINE_LIMIT, until=b"\n")
        return answer.decode("utf-8", "replace").strip()

    async def _send(self, words: list[bytes]) -> trio.socket.SocketType:
        """Send ``words`` with a fresh line; our end of it.

        Raises: ForwardError: no agent any more.
        """
        if self._agent.broken:
            raise ForwardError("unsupported", "the container's agent went away")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        line = trio.socket.from_stdlib_socket(ours)
        try:
            await self._agent.send(b"\0".join(words) + b"\0", [theirs.fileno()])
        except BackendError as exc:
            line.close()
            raise ForwardError("failed", str(exc)) from None
        except BaseException:
            line.close()
            raise
        finally:
            theirs.close()
        return line


def _word(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


async def _receive_fd(line: trio.socket.SocketType) -> tuple[bytes, list[int]]:
    """The answer's first byte and the descriptors that came with it (at most four are
    taken; more are cut off by the kernel and closed)."""
    try:
        data, ancillary, _, _ = await line.recvmsg(
            1, socket.CMSG_SPACE(4 * 4), socket.MSG_CMSG_CLOEXEC
        )
    except OSError:
        return b"", []
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
            fds += array.array("i", payload[: len(payload) - len(payload) % 4])
    return data, fds


def _answer_error(answer: str) -> ForwardError:
    """``error: REASON: TEXT`` as a ForwardError; nothing at all: a helper that does not
    know socket requests."""
    if not answer:
        return ForwardError(
            "unsupported",
            "the container's agent cannot make sockets: rebuild trissh-exec"
            " (scripts/setup-host.sh)",
        )
    _, _, rest = answer.strip().partition("error: ")
    reason, _, text = rest.partition(": ")
    if reason not in FORWARD_REASONS:
        return ForwardError("failed", f"the container's agent said: {answer.strip()[:200]}")
    forward_reason: ForwardReason = reason  # type: ignore[assignment]
    return ForwardError(forward_reason, text[:200] or reason)


def _checked(fd: int, families: Collection[int], listening: bool, container: str) -> socket.socket:
    """``fd`` as a socket if it is what was asked for; closed and refused otherwise.

    Raises: ForwardError (``failed``).
    """
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError("not a socket")
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        os.close(fd)
        raise _bad_socket(str(exc), container) from None
    try:
        if sock.type != socket.SOCK_STREAM or sock.family not in families:
            raise OSError(f"a socket of family {sock.family!r}, type {sock.type!r}")
        if bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)) != listening:
            raise OSError("listening" if not listening else "not listening")
        if not listening:
            sock.getpeername()  # ENOTCONN: not connected
    except OSError as exc:
        sock.close()
        raise _bad_socket(str(exc), container) from None
    return sock


def _bad_socket(why: str, container: str) -> ForwardError:
    log.warning("agent_bad_socket", container=container[:12], error=why)
    return ForwardError("failed", f"the container's agent sent no usable socket: {why}")
