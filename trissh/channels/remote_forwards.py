"""Remote forwards: ``tcpip-forward`` and ``streamlocal-forward@openssh.com`` (``ssh -R``):
a listener inside the user's container, each connection to it carried to the client on a
``forwarded-tcpip`` / ``forwarded-streamlocal@openssh.com`` channel.

As sshd with ``GatewayPorts no``, TCP listeners bind the container's loopback whatever
address the client names; the client is told the address it asked for and, for port 0,
the port the container gave. A cancel, or the connection's end, closes the listener (and
removes a unix socket file).

Nursery tree (in the connection nursery)::

    RemoteForwards._listen      one per listener: listen, answer, accept until cancelled
    RemoteForwards._carry_accepted   one per accepted connection: open a channel, splice

An accepted connection outlives its listener, as with sshd: a cancel stops only new ones.
"""

from __future__ import annotations

import structlog
import trio

from trissh.backend import BackendError, ForwardError, SandboxListener, SocketAddress
from trissh.channels.forwards import (
    ConnectFailed,
    ForwardContext,
    carry_accepted,
    kind_of,
    sandbox_for_forwards,
)
from trissh.connection.port import ConnectionPort
from trissh.protocol import ForwardTarget, GlobalRequestReceived, SocketPath, TcpAddress
from trissh.protocol.forwarding import (
    CANCEL_STREAMLOCAL_FORWARD,
    CANCEL_TCPIP_FORWARD,
    forwarded_streamlocal,
    forwarded_tcpip,
)

log = structlog.get_logger("trissh.channels.forwards")

#: What a TCP listener binds inside the container (sshd's GatewayPorts no).
LOOPBACK = "127.0.0.1"


def _key(target: ForwardTarget) -> tuple[str, int] | str:
    return target.path if isinstance(target, SocketPath) else (target.host, target.port)


class RemoteForwards:
    """The handler of forwarding global requests, for one connection."""

    def __init__(
        self, ctx: ForwardContext, port: ConnectionPort, nursery: trio.Nursery, max_listeners: int
    ) -> None:
        self._ctx = ctx
        self._port = port
        self._nursery = nursery
        self._max_listeners = max_listeners
        #: Live listeners by what the client would cancel: (host, bound port) or path.
        self._listeners: dict[tuple[str, int] | str, trio.CancelScope] = {}
        self._starting = 0
        #: Set (and replaced) each time a listen being set up is answered.
        self._answered = trio.Event()

    async def settled(self) -> None:
        """Until every listen asked for so far is answered (listening or refused): sshd
        listens before it reads the next request, so a session asked for after ``-R``
        finds its listener."""
        while self._starting:
            await self._answered.wait()

    def _one_answered(self) -> None:
        self._starting -= 1
        self._answered.set()
        self._answered = trio.Event()

    @property
    def listening(self) -> bool:
        return bool(self._listeners)

    def request(self, event: GlobalRequestReceived) -> None:
        if event.name in (CANCEL_TCPIP_FORWARD, CANCEL_STREAMLOCAL_FORWARD):
            scope = self._listeners.pop(_key(event.target), None)
            if scope is not None:
                scope.cancel()
            self._port.reply_global_request(event.request_id, scope is not None)
            return
        refusal = self._ctx.policy.refuse_listen(event.target)
        if refusal is not None:
            self._refuse(event, refusal, "prohibited")
            return
        if len(self._listeners) + self._starting >= self._max_listeners:
            self._refuse(event, f"at most {self._max_listeners} listeners per connection", "limit")
            return
        self._starting += 1
        self._nursery.start_soon(self._listen, event)

    def _refuse(self, event: GlobalRequestReceived, error: str, reason: str) -> None:
        self._port.reply_global_request(event.request_id, False)
        self._ctx.metrics.failed(reason)
        self._ctx.note_refused(event.name, error, str(event.target))

    async def _listen(self, event: GlobalRequestReceived) -> None:
        """Listen, answer the request, accept until cancelled (or the connection ends)."""
        target = event.target
        if isinstance(target, SocketPath):
            address = SocketAddress(path=target.path)
        else:
            address = SocketAddress(host=LOOPBACK, port=target.port)
        scope = trio.CancelScope()
        answered = False
        try:
            sandbox = await sandbox_for_forwards(self._ctx)
            async with sandbox.listen(address) as listener:
                bound: ForwardTarget = target
                if isinstance(target, TcpAddress):
                    bound = TcpAddress(host=target.host, port=listener.port)
                if _key(bound) in self._listeners:  # a unix path bound anew after an rm
                    self._refuse(event, f"{bound} is already forwarded", "failed")
                    return  # (answered: the finally counts it)
                self._listeners[_key(bound)] = scope
                self._one_answered()
                answered = True
                zero = isinstance(target, TcpAddress) and target.port == 0
                port = listener.port if zero else None
                self._port.reply_global_request(event.request_id, True, port=port)
                await self._serve(listener, bound, scope)
        except (ConnectFailed, ForwardError) as exc:
            if not answered:
                self._refuse(event, str(exc), exc.reason)
            else:
                log.warning("forward_listen_failed", target=str(target), error=str(exc))
        except BackendError as exc:
            if not answered:
                self._refuse(event, str(exc), "container")
            else:
                log.warning("forward_listen_failed", target=str(target), error=str(exc))
        finally:
            if not answered:
                self._one_answered()

    async def _serve(
        self, listener: SandboxListener, bound: ForwardTarget, scope: trio.CancelScope
    ) -> None:
        self._ctx.metrics.listeners_active.inc()
        shown = self._ctx.lines.take()  # a client may listen and cancel in a loop
        if shown:
            log.info("forward_listening", target=str(bound))
        try:
            with scope:
                while True:
                    try:
                        stream, peer = await listener.accept()
                    except trio.ClosedResourceError:  # its container's side went away
                        log.warning("forward_listener_closed", target=str(bound))
                        return
                    self._nursery.start_soon(self._carry_accepted, stream, peer, bound)
        finally:
            if self._listeners.get(_key(bound)) is scope:  # a cancel may have taken it
                del self._listeners[_key(bound)]
            self._ctx.metrics.listeners_active.dec()
            if shown:
                log.info("forward_listen_stopped", target=str(bound))

    async def _carry_accepted(
        self, stream: trio.abc.HalfCloseableStream, peer: str, bound: ForwardTarget
    ) -> None:
        """Open the client's channel for one accepted connection and carry it."""
        if isinstance(bound, SocketPath):
            channel = ("forwarded-streamlocal@openssh.com", forwarded_streamlocal(bound.path))
        else:
            host, _, port = peer.rpartition(":")
            originator = TcpAddress(host=host.strip("[]") or LOOPBACK, port=int(port or 0))
            channel = ("forwarded-tcpip", forwarded_tcpip(bound, originator))
        await carry_accepted(
            self._ctx, self._port, stream, channel,
            kind=kind_of(bound, remote=True), target=bound, originator=peer,
        )  # fmt: skip
