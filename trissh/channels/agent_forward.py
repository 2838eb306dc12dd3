"""Agent forwarding (``ssh -A``, OpenSSH PROTOCOL.agent): a unix socket inside the
connection's container whose every connection is carried to the client's agent on an
``auth-agent@openssh.com`` channel.

The socket is made once per connection, when its first session asks
(``auth-agent-req@openssh.com``), at a path named after the connection, and the sessions
that asked get ``SSH_AUTH_SOCK``; sessions of other connections are never told of it.
It goes away with the connection; a session whose container is not the one it was made in
(the connection's workspace was replaced) makes it again there. In ``session`` execution
mode, where each session has a container of its own, each session that asked gets the
socket in its own container, and it goes away with the session.

Nursery tree (in the connection nursery)::

    AgentForwarding._listen     listen, then accept until the connection (or session) ends
    └─ accept nursery
       └─ _carry                one per agent client: open the channel, splice
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import structlog
import trio

from trissh.backend import BackendError, ForwardError, Sandbox, SocketAddress
from trissh.channels.forwards import (
    ConnectFailed,
    ForwardContext,
    carry_accepted,
    sandbox_for_forwards,
)
from trissh.connection.port import ConnectionPort
from trissh.protocol import SocketPath

log = structlog.get_logger("trissh.channels.forwards")

AUTH_AGENT = "auth-agent@openssh.com"
#: How long a session waits for the socket before starting without it.
READY_TIMEOUT = 10.0


@dataclass(eq=False)
class _Socket:
    """One agent socket being made and served."""

    #: Cancelled when its session ends (``session`` mode); else the connection's end.
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ready: trio.Event = field(default_factory=trio.Event)
    listening: bool = False
    #: The container it was made in, once it listens.
    container: str | None = None


class AgentForwarding:
    """``connection`` and ``workspace`` mode: one socket in the connection's container,
    made at the first request. ``session`` mode (``per_session``): each session that asked
    gets one in its own container, for as long as it runs."""

    def __init__(
        self,
        ctx: ForwardContext,
        port: ConnectionPort,
        nursery: trio.Nursery,
        conn_id: str,
        *,
        per_session: bool = False,
    ) -> None:
        self._ctx = ctx
        self._port = port
        self._nursery = nursery
        self._per_session = per_session
        #: Inside the container; /tmp is the one place every image lets its user write.
        self.path = f"/tmp/trissh-agent-{conn_id}.sock"  # noqa: S108 - the container's /tmp
        self._shared: _Socket | None = None

    def requested(self) -> None:
        """A session asked for the agent: make the connection's socket, if it has none."""
        if self._shared is None and not self._per_session:
            self._share()

    def _share(self) -> None:
        self._shared = _Socket()
        self._nursery.start_soon(self._listen, self._shared, None)

    @asynccontextmanager
    async def socket_in(self, sandbox: Sandbox) -> AsyncIterator[str | None]:
        """``SSH_AUTH_SOCK`` for a session that asked and runs in ``sandbox``, once the
        socket exists; ``None`` when it could not be made (the session runs without it)."""
        if not self._per_session:
            shared = self._shared
            if (
                shared is not None
                and shared.ready.is_set()
                and shared.container != sandbox.container_id
            ):
                shared.scope.cancel()  # not made in the session's container: a replaced
                self._share()  # workspace, or a failed try
            yield await self._wait(self._shared)
            return

        socket = _Socket()
        self._nursery.start_soon(self._listen, socket, sandbox)
        try:
            yield await self._wait(socket)
        finally:
            socket.scope.cancel()

    async def _wait(self, socket: _Socket | None) -> str | None:
        if socket is None:
            return None
        with trio.move_on_after(READY_TIMEOUT):
            await socket.ready.wait()
        return self.path if socket.listening else None

    async def _listen(self, socket: _Socket, sandbox: Sandbox | None) -> None:
        """``sandbox``: the session's own; ``None``: the connection's (started if need be)."""
        target = SocketPath(path=self.path)
        try:
            with socket.scope:
                listening_in = sandbox or await sandbox_for_forwards(self._ctx)
                async with listening_in.listen(SocketAddress(path=self.path)) as listener:
                    socket.listening, socket.container = True, listening_in.container_id
                    socket.ready.set()
                    self._ctx.metrics.listeners_active.inc()
                    log.info("forward_listening", target=self.path, kind="agent")
                    try:
                        async with trio.open_nursery() as accepted:
                            while True:
                                try:
                                    stream, _ = await listener.accept()
                                except trio.ClosedResourceError:  # the container's side went
                                    log.warning("forward_listener_closed", target=self.path)
                                    return
                                except ForwardError as exc:  # out of fds: this listener ends,
                                    self._listen_failed(exc)  # not the connection (the
                                    return  # nursery would wrap it in a group)
                                accepted.start_soon(self._carry, stream, target)
                    finally:
                        self._ctx.metrics.listeners_active.dec()
        except (ConnectFailed, ForwardError, BackendError) as exc:
            self._listen_failed(exc)
        finally:
            socket.listening = False
            socket.ready.set()

    def _listen_failed(self, exc: Exception) -> None:
        self._ctx.metrics.failed("failed")
        log.warning("forward_listen_failed", target=self.path, kind="agent", error=str(exc))

    async def _carry(self, stream: trio.abc.HalfCloseableStream, target: SocketPath) -> None:
        await carry_accepted(
            self._ctx, self._port, stream, (AUTH_AGENT, b""),
            kind="agent", target=target, originator="",
        )  # fmt: skip
