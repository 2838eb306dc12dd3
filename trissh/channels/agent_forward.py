"""Agent forwarding (``ssh -A``, OpenSSH PROTOCOL.agent): a unix socket inside the
connection's container whose every connection is carried to the client's agent on an
``auth-agent@openssh.com`` channel.

The socket is made once per connection, when its first session asks
(``auth-agent-req@openssh.com``), at a path named after the connection, and the sessions
that asked get ``SSH_AUTH_SOCK``; sessions of other connections are never told of it.
It goes away with the connection.

Nursery tree (in the connection nursery)::

    AgentForwarding._listen     listen, then accept until the connection ends
    └─ accept nursery
       └─ _carry                one per agent client: open the channel, splice
"""

from __future__ import annotations

import structlog
import trio

from trissh.backend import BackendError, ForwardError, SocketAddress
from trissh.channels.forwards import (
    ConnectFailed,
    ForwardContext,
    carry,
    open_or_refuse,
    sandbox_for_forwards,
)
from trissh.connection.port import ConnectionPort
from trissh.protocol import SocketPath

log = structlog.get_logger("trissh.channels.forwards")

AUTH_AGENT = "auth-agent@openssh.com"
#: How long a session waits for the socket before starting without it.
READY_TIMEOUT = 10.0


class AgentForwarding:
    def __init__(
        self, ctx: ForwardContext, port: ConnectionPort, nursery: trio.Nursery, conn_id: str
    ) -> None:
        self._ctx = ctx
        self._port = port
        self._nursery = nursery
        #: Inside the container; /tmp is the one place every image lets its user write.
        self.path = f"/tmp/trissh-agent-{conn_id}.sock"  # noqa: S108 - the container's /tmp
        self._started = False
        self._ready = trio.Event()
        self._listening = False

    def requested(self) -> None:
        """A session asked for the agent: make the socket, once."""
        if not self._started:
            self._started = True
            self._nursery.start_soon(self._listen)

    async def socket_path(self) -> str | None:
        """``SSH_AUTH_SOCK`` for a session that asked, once the socket exists; ``None``
        when it could not be made (the session runs without it)."""
        if not self._started:
            return None
        with trio.move_on_after(READY_TIMEOUT):
            await self._ready.wait()
        return self.path if self._listening else None

    async def _listen(self) -> None:
        target = SocketPath(path=self.path)
        try:
            sandbox = await sandbox_for_forwards(self._ctx)
            async with sandbox.listen(SocketAddress(path=self.path)) as listener:
                self._listening = True
                self._ready.set()
                self._ctx.metrics.listeners_active.inc()
                log.info("forward_listening", target=self.path, kind="agent")
                try:
                    async with trio.open_nursery() as accepted:
                        while True:
                            try:
                                stream, _ = await listener.accept()
                            except trio.ClosedResourceError:  # the container's side went away
                                log.warning("forward_listener_closed", target=self.path)
                                return
                            accepted.start_soon(self._carry, stream, target)
                finally:
                    self._ctx.metrics.listeners_active.dec()
        except (ConnectFailed, ForwardError, BackendError) as exc:
            self._ctx.metrics.failed("failed")
            log.warning("forward_listen_failed", target=self.path, kind="agent", error=str(exc))
        finally:
            self._listening = False
            self._ready.set()

    async def _carry(self, stream: trio.abc.HalfCloseableStream, target: SocketPath) -> None:
        ctx = self._ctx
        if ctx.count.full:
            ctx.metrics.failed("limit")
            await trio.aclose_forcefully(stream)
            return
        ctx.count.open += 1
        try:
            handle = open_or_refuse(self._port, AUTH_AGENT, b"", ctx, "agent", target)
            if handle is None:
                await trio.aclose_forcefully(stream)
                return
            if not await handle.opened():
                ctx.metrics.failed("client_refused")
                log.info("forward_failed", kind="agent", target=self.path, reason="client_refused",
                         error=handle.refusal or "", originator="")  # fmt: skip
                await trio.aclose_forcefully(stream)
                return
            await carry(ctx, self._port, handle, stream, kind="agent", target=target)
        finally:
            ctx.count.open -= 1
