"""Local forwards: ``direct-tcpip`` and ``direct-streamlocal@openssh.com`` channels
(``ssh -L``, ``-D``, ``-W``, ``ProxyJump``), each a connection made inside the user's own
container.

The channel is confirmed only once the connection exists, so a refused or unreachable
target reaches the client as CHANNEL_OPEN_FAILURE with its reason (OpenSSH prints
"open failed: connect failed: ..."). Then the channel and the socket are spliced
(splice.py) in one task per forward, in the connection nursery.

Nursery tree (in the connection nursery)::

    LocalForwards._forward      one per channel: connect, confirm, splice, finish
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
import trio

from trissh.auth.names import escaped
from trissh.backend import BackendError, ForwardError, Sandbox, SocketAddress
from trissh.channels.forward_policy import ForwardPolicy
from trissh.channels.splice import Transferred, splice
from trissh.connection.channel import ChannelHandle
from trissh.connection.port import ConnectionPort, Refusal
from trissh.ops.forward_metrics import ForwardMetrics
from trissh.ops.log_quota import LogQuota
from trissh.protocol import (
    ChannelLimitReached,
    ChannelOpenFailureReason,
    ChannelOpenRequested,
    ForwardTarget,
    SocketPath,
)

log = structlog.get_logger("trissh.channels.forwards")

#: What each backend reason tells the client (OpenSSH shows the text after "open failed").
_CONNECT_FAILURES = {
    "refused": "Connection refused",
    "unreachable": "No route to host",
    "unknown_host": "Name or service not known",
    "timeout": "Connection timed out",
}


@dataclass(slots=True)
class ForwardCount:
    """Forwarded connections open on one SSH connection, against their limit."""

    limit: int
    open: int = 0

    @property
    def full(self) -> bool:
        return self.open >= self.limit


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardContext:
    """What forwards know of their connection."""

    policy: ForwardPolicy
    #: The container forwards reach (the connection's; session mode: one kept for forwards).
    sandbox: Callable[[], Awaitable[Sandbox]]
    #: Seconds allowed for that container to start.
    start_timeout: float
    metrics: ForwardMetrics
    count: ForwardCount
    #: The connection's log of refused requests (bounded per connection).
    note_refused: Callable[[str, str, str], None]
    #: The bound on the connection's other client-caused lines (forward_failed).
    lines: LogQuota
    #: Notes a forward in the recordings of the connection's running sessions.
    mark: Callable[[str], None] = lambda text: None


def address_of(target: ForwardTarget) -> SocketAddress:
    if isinstance(target, SocketPath):
        return SocketAddress(path=target.path)
    return SocketAddress(host=target.host, port=target.port)


def kind_of(target: ForwardTarget, *, remote: bool) -> str:
    """The metrics/log kind of a forward to or from ``target``."""
    side = "forwarded" if remote else "direct"
    return f"{side}-{'streamlocal' if isinstance(target, SocketPath) else 'tcpip'}"


class ConnectFailed(Exception):
    def __init__(self, refusal: Refusal, reason: str) -> None:
        super().__init__(refusal.text)
        self.refusal = refusal
        self.reason = reason


async def sandbox_for_forwards(ctx: ForwardContext) -> Sandbox:
    """The container forwards reach, started if need be (bounded).

    Raises:
        ConnectFailed: it cannot be had.
    """
    try:
        with trio.fail_after(ctx.start_timeout):
            return await ctx.sandbox()
    except (BackendError, trio.TooSlowError) as exc:
        text = str(exc) or f"container did not start within {ctx.start_timeout:g} s"
        failure = Refusal(ChannelOpenFailureReason.CONNECT_FAILED, f"container unavailable: {text}")
        raise ConnectFailed(failure, "container") from None


async def connect_inside(
    ctx: ForwardContext, target: ForwardTarget
) -> trio.abc.HalfCloseableStream:
    """A connection to ``target`` made inside the container.

    Raises:
        ConnectFailed: with what the client should be told.
    """
    sandbox = await sandbox_for_forwards(ctx)
    try:
        return await sandbox.connect(address_of(target))
    except ForwardError as exc:
        if exc.reason == "unsupported":
            code = ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED
        else:
            code = ChannelOpenFailureReason.CONNECT_FAILED
        text = _CONNECT_FAILURES.get(exc.reason, str(exc))
        raise ConnectFailed(Refusal(code, text), exc.reason) from None


async def carry_accepted(
    ctx: ForwardContext,
    port: ConnectionPort,
    stream: trio.abc.HalfCloseableStream,
    channel: tuple[str, bytes],
    *,
    kind: str,
    target: ForwardTarget,
    originator: str,
) -> None:
    """A connection accepted by a listener in the container (``-R``, the agent): open the
    client's ``channel`` (type and data) for it and carry it. When the connection's limits
    are reached or the client refuses, that one connection is closed (counted, logged);
    the others go on."""
    if ctx.count.full:
        ctx.metrics.failed("limit")
        await trio.aclose_forcefully(stream)
        return
    ctx.count.open += 1
    try:
        handle = _open_or_refuse(ctx, port, channel, kind, target)
        if handle is not None and not await _answered(port, handle):
            ctx.metrics.failed("client_refused")
            if ctx.lines.take():
                log.info("forward_failed", kind=kind, target=str(target),
                         reason="client_refused", error=escaped(handle.refusal or ""),
                         originator=originator)  # fmt: skip
            handle = None
        if handle is None or handle.peer_closed:
            # Refused, or closed by the client before this task ran: the driver ended it,
            # and its id may be another channel's by now.
            await trio.aclose_forcefully(stream)
            return
        await carry(ctx, port, handle, stream, kind=kind, target=target)
    finally:
        ctx.count.open -= 1


async def _answered(port: ConnectionPort, handle: ChannelHandle) -> bool:
    """Whether the client confirmed the channel we opened.

    Cancellation: the port closes the channel once the client confirms it.
    """
    try:
        return await handle.opened()
    except BaseException:
        port.abandon(handle)
        raise


def _open_or_refuse(
    ctx: ForwardContext,
    port: ConnectionPort,
    channel: tuple[str, bytes],
    kind: str,
    target: ForwardTarget,
) -> ChannelHandle | None:
    """The client's channel, or ``None`` (logged, counted) when the connection has its
    maximum of channels open."""
    try:
        return port.open(*channel)
    except ChannelLimitReached as exc:
        ctx.metrics.failed("limit")
        if ctx.lines.take():
            log.warning("forward_failed", kind=kind, target=str(target), reason="limit",
                        error=str(exc), originator="")  # fmt: skip
        return None


async def carry(
    ctx: ForwardContext,
    port: ConnectionPort,
    handle: ChannelHandle,
    stream: trio.abc.HalfCloseableStream,
    *,
    kind: str,
    target: ForwardTarget,
) -> None:
    """Splice an open forward until it ends, then finish its channel; one log line and the
    metrics at each end.

    Cancellation: closes the stream and the channel.
    """
    started = time.monotonic()
    counts = Transferred(report=ctx.metrics.moved)
    handle.started = True  # a peer's CLOSE now cancels this task, which finishes the channel
    ctx.metrics.opened(kind)
    with structlog.contextvars.bound_contextvars(channel=int(handle.id)):  # (-R, agent too)
        log.info("forward_opened", kind=kind, target=str(target))
        ctx.mark(f"forward {kind} {target} opened")
        try:
            await splice(handle, stream, counts)
        finally:
            port.finish(handle.id)
            counts.flush()
            ctx.metrics.closed(kind)
            ctx.mark(f"forward {kind} {target} closed: {counts.into} bytes in, {counts.out} out")
            log.info(
                "forward_closed",
                kind=kind,
                target=str(target),
                bytes_in=counts.into,
                bytes_out=counts.out,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )


class LocalForwards:
    """The handler of ``direct-tcpip`` and ``direct-streamlocal@openssh.com`` opens."""

    def __init__(self, ctx: ForwardContext, port: ConnectionPort, nursery: trio.Nursery) -> None:
        self._ctx = ctx
        self._port = port
        self._nursery = nursery

    def open(self, event: ChannelOpenRequested) -> Refusal | None:
        """Refuse by policy or limit now; otherwise connect in a task that answers."""
        target = event.target
        assert target is not None, "the core reads a target for every forwarding open"
        ctx = self._ctx
        reason = ctx.policy.refuse_open(target)
        if reason is not None:
            ctx.metrics.failed("prohibited")
            return Refusal(ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED, reason)
        if ctx.count.full:
            ctx.metrics.failed("limit")
            text = f"at most {ctx.count.limit} forwarded connections at once"
            return Refusal(ChannelOpenFailureReason.RESOURCE_SHORTAGE, text)
        ctx.count.open += 1
        self._nursery.start_soon(self._forward, event, target)
        return None

    async def _forward(self, event: ChannelOpenRequested, target: ForwardTarget) -> None:
        kind = kind_of(target, remote=False)
        with structlog.contextvars.bound_contextvars(channel=int(event.channel_id)):
            try:
                try:
                    stream = await connect_inside(self._ctx, target)
                except ConnectFailed as failed:
                    self._port.reject(event.channel_id, failed.refusal)
                    self._ctx.metrics.failed(failed.reason)
                    if self._ctx.lines.take():
                        log.info(
                            "forward_failed", kind=kind, target=str(target),
                            reason=failed.reason, error=failed.refusal.text,
                            originator=escaped(str(event.originator or "")),
                        )  # fmt: skip
                    return
                handle = self._port.accept(event.channel_id)
                await carry(self._ctx, self._port, handle, stream, kind=kind, target=target)
            finally:
                self._ctx.count.open -= 1
