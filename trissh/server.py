"""serve(): listeners, the connections nursery, start-up sweep and graceful shutdown.

Nursery tree::

    serve
    └─ upkeep nursery           backend.run(): retries failed removals (outlives connections)
       └─ connections nursery   outlives listening so live connections can finish
          ├─ listening scope    cancelled first on shutdown: stop accepting at once
          │  └─ trio.serve_listeners(handler_nursery=connections)
          └─ serve_connection (one each)  (driver.py)

On ``shutdown`` the listening scope is cancelled, idle connections end at once, users of
running sessions are told ("server shutting down"), and the connections nursery gets a
deadline of now + ``limits.shutdown_grace``; cancelled connections remove their
containers on the way out, so ``serve`` returns only when nothing is left running.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Awaitable, Callable

import structlog
import trio

from trissh.driver import ServerContext, serve_connection

log = structlog.get_logger("trissh.server")


def _peer(stream: trio.SocketStream) -> str:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "unknown"
    if stream.socket.family == socket.AF_INET6:
        return f"[{address[0]}]:{address[1]}"
    return f"{address[0]}:{address[1]}"


async def serve(
    ctx: ServerContext,
    listeners: list[trio.SocketListener],
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on ``listeners`` until ``shutdown`` is set.

    Cancellation: cancels every connection; their cleanup is bounded and shielded.
    """
    try:
        removed = await ctx.backend.sweep(keep_instance=ctx.instance)
        if removed:
            log.info("leftover_containers_removed", count=removed)
    except Exception as exc:  # the server is still useful; sessions will report the cause
        log.warning("sweep_failed", error=str(exc))

    ctx.state.context = ctx

    async def handle(stream: trio.SocketStream) -> None:
        current = ctx.state.context or ctx  # the latest configuration (SIGHUP)
        await serve_connection(stream, current, conn_id=secrets.token_hex(6), remote=_peer(stream))

    async with trio.open_nursery() as upkeep:
        await upkeep.start(ctx.backend.run)
        await _serve_connections(ctx, listeners, handle, shutdown, task_status)
        upkeep.cancel_scope.cancel()
    log.info("server_stopped")


async def _serve_connections(
    ctx: ServerContext,
    listeners: list[trio.SocketListener],
    handle: Callable[[trio.SocketStream], Awaitable[None]],
    shutdown: trio.Event,
    task_status: trio.TaskStatus[None],
) -> None:
    """Accept until ``shutdown``; then stop accepting and give connections their grace."""
    async with trio.open_nursery() as connections:
        ctx.state.connections_nursery = connections
        listening = trio.CancelScope()

        async def listen(*, task_status: trio.TaskStatus[object]) -> None:
            ctx.state.listener_task = trio.lowlevel.current_task()
            with listening:
                await trio.serve_listeners(
                    handle, listeners, handler_nursery=connections, task_status=task_status
                )

        await connections.start(listen)
        log.info(
            "server_started",
            listen=[_listener_address(item) for item in listeners],
            instance=ctx.instance,
        )
        task_status.started()
        await shutdown.wait()
        grace = (ctx.state.context or ctx).settings.limits.shutdown_grace
        log.info("server_stopping", grace_s=grace, connections=ctx.state.live_connections)
        listening.cancel()
        ctx.state.shutting_down = True
        for driver in list(ctx.state.drivers):
            driver.shutting_down()
        connections.cancel_scope.deadline = trio.current_time() + grace


def _listener_address(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def open_listeners(addresses: list[tuple[str, int]]) -> list[trio.SocketListener]:
    listeners: list[trio.SocketListener] = []
    for host, port in addresses:
        listeners.extend(await trio.open_tcp_listeners(port, host=host))
    return listeners
