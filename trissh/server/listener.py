"""serve(): listeners, the connections nursery, start-up sweep and graceful shutdown.

Nursery tree::

    serve
    └─ upkeep nursery           backend.run(): retries failed removals (outlives connections)
       ├─ keep_ready            readiness's backend check (server/readiness.py)
       ├─ serve_health          /metrics, /healthz, /readyz, with [metrics] listen
       ├─ serve_admin           the admin socket (admin/server.py), with [admin] socket
       └─ keeping nursery       Workspaces.run (workspaces.py): users' workspaces
          └─ connections nursery   outlives listening so live connections can finish
             ├─ listening scope    cancelled first on shutdown: stop accepting at once
             │  └─ Acceptor.run (one per listener)  (accept.py): its thread accepts and
             │     writes the version line; in trio each connection is refused or started
             └─ serve_connection (one each)  (driver.py)

On ``shutdown`` the server drains first: ``/readyz`` answers 503 while new connections are
still served for ``limits.drain_time`` (a balancer's lame-duck time). Then the listening
scope is cancelled, idle connections end at once, users of running sessions are told
("server shutting down"), and the connections nursery gets a deadline of now +
``limits.shutdown_grace``; cancelled connections remove their containers on the way out,
so ``serve`` returns only when nothing is left running.
"""

from __future__ import annotations

import functools
import gc
import random
import secrets
import socket
from typing import Final

import structlog
import trio

from trissh.addresses import host_of, join_host_port, unmapped
from trissh.admin.server import serve_admin
from trissh.config import container_settings, parse_max_startups
from trissh.connection.driver import open_connection, serve_connection, serve_driver
from trissh.ops.recording_writes import finish_writes
from trissh.protocol import DisconnectReason, version_line
from trissh.protocol import refusal as protocol_refusal
from trissh.server.accept import Acceptor, Address
from trissh.server.proxy_protocol import ProxyProtocolError, TrustedNetworks, parse_proxy_header
from trissh.server.readiness import keep_ready, serve_health
from trissh.server.state import ServerContext
from trissh.server.workspaces import Workspaces

log = structlog.get_logger("trissh.server.listener")
#: For random early drop: unpredictable, so a flood cannot aim at the slots it frees.
_random = random.SystemRandom()
TOO_MANY: Final = DisconnectReason.TOO_MANY_CONNECTIONS
#: Seconds the end of the run waits for recordings still being written (a slow disk).
RECORDING_WRITES_WAIT: Final = 10.0
#: What a refused client's user reads ("Received disconnect from ...: <this>").
REFUSALS: Final = {
    "max_startups": "server busy: too many connections are logging in; try again shortly",
    "max_startups_per_source": "too many connections from your address are logging in",
}


def _local_end(stream: trio.SocketStream) -> str:
    """The server's ``HOST:PORT`` of the connection."""
    try:
        address = stream.socket.getsockname()
    except OSError:
        return "unknown"
    return join_host_port(unmapped(address[0]), address[1])


async def serve(
    ctx: ServerContext,
    listeners: list[trio.SocketListener],
    *,
    shutdown: trio.Event,
    health: list[trio.SocketListener] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on ``listeners`` until ``shutdown`` is set; ``health``: the
    ``[metrics] listen`` sockets if the caller opened them (else they are opened here).

    Cancellation: cancels every connection; their cleanup is bounded and shielded.
    """
    try:
        removed = await ctx.backend.sweep(keep_instance=ctx.instance)
        if removed:
            log.info("leftover_containers_removed", count=removed)
    except Exception as exc:  # the server is still useful; sessions will report the cause
        log.warning("sweep_failed", error=str(exc))

    if ctx.state.context is None:  # (a reload during the sweep set the one to serve)
        ctx.state.context = ctx

    await _run(ctx, listeners, health, shutdown, task_status)
    await finish_writes(RECORDING_WRITES_WAIT)
    log.info("server_stopped")


async def _run(
    ctx: ServerContext,
    listeners: list[trio.SocketListener],
    health: list[trio.SocketListener] | None,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[None],
) -> None:
    """The nursery tree of the module docstring, from the upkeep nursery down."""
    workspaces = Workspaces(
        ctx.backend,
        ctx.metrics,
        lambda: ctx.latest.settings,
        instance=ctx.instance,
    )
    ctx.state.workspaces = workspaces
    async with trio.open_nursery() as upkeep:
        current = ctx.latest.settings  # (a reload during the sweep)
        ctx.backend.keep_warm(container_settings(current.container), ctx.instance)
        await upkeep.start(ctx.backend.run)
        if ctx.settings.metrics.listen or ctx.settings.admin.socket:
            await upkeep.start(keep_ready, ctx)
        if ctx.settings.metrics.listen:
            await upkeep.start(serve_health, ctx, health)
        if ctx.settings.admin.socket:
            await upkeep.start(serve_admin, ctx, ctx.settings.admin.socket, shutdown)
        # Workspaces end (kept or removed) before the backend's upkeep does.
        async with trio.open_nursery() as keeping:
            await keeping.start(workspaces.run)
            try:
                await _serve_connections(ctx, listeners, shutdown, task_status)
            finally:
                workspaces.stop()
                keeping.cancel_scope.cancel()
        upkeep.cancel_scope.cancel()


def _greeting(ctx: ServerContext, sock: socket.socket, address: Address) -> bytes:
    """In the accept thread: our version line, at once; nothing for a trusted balancer,
    whose PROXY header comes first. Reads only the configuration (thread-safe)."""
    current = ctx.latest  # the latest configuration (SIGHUP)
    trusted = _trusted_networks(current.settings.proxy.trusted_networks)
    if trusted and str(address[0]) in trusted:
        return b""
    return version_line(current.protocol)


def _accepted(ctx: ServerContext, sock: socket.socket, address: Address, greeted: bool) -> None:
    """In trio, right after the accept thread handed ``sock`` over: refuse it or start its
    task (why a thread greets first: server/accept.py). Must not raise."""
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    current = ctx.latest  # the latest configuration (SIGHUP)
    nursery = ctx.state.connections_nursery
    assert nursery is not None
    conn_id = secrets.token_hex(6)
    remote, local = join_host_port(unmapped(address[0]), address[1]), _local_end(stream)
    if not greeted:  # a trusted balancer: the client's address (its header) decides
        nursery.start_soon(_serve_proxied, stream, current, conn_id, remote, local)
        return
    if _refused(stream, current, remote, nursery, greeted=True):
        return
    driver = open_connection(
        stream, current, conn_id=conn_id, remote=remote, local=local, greeted=True
    )
    nursery.start_soon(serve_driver, driver)


async def _serve_proxied(
    stream: trio.SocketStream, ctx: ServerContext, conn_id: str, remote: str, local: str
) -> None:
    """A connection from a trusted balancer: its PROXY header first, then SSH."""
    try:
        remote, local, leftover = await _read_proxy_header(stream, ctx, remote, local)
    except (ProxyProtocolError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        reason = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
        log.warning("proxy_header_invalid", remote=remote, conn_id=conn_id, error=reason)
        ctx.metrics.connection_rejected("rejected_proxy")
        await trio.aclose_forcefully(stream)
        return
    nursery = ctx.state.connections_nursery
    assert nursery is not None
    if _refused(stream, ctx, remote, nursery, greeted=False):
        return
    await serve_connection(
        stream, ctx, conn_id=conn_id, remote=remote, local=local, initial_data=leftover
    )


def _refused(
    stream: trio.SocketStream,
    ctx: ServerContext,
    remote: str,
    nursery: trio.Nursery,
    *,
    greeted: bool,
) -> bool:
    """Turn the connection away if admission says so: unlike sshd past MaxStartups (which
    closes without a banner, and its clients report a timeout or a reset), the client is
    told why, in a DISCONNECT its user sees. Synchronous: a refusal costs one write."""
    refusal = _admission(ctx, host_of(remote))
    if refusal is None:
        return False
    log.warning("connection_rejected", remote=remote, reason=refusal)
    ctx.metrics.connection_rejected("rejected_limit")
    message = protocol_refusal(ctx.protocol, TOO_MANY, REFUSALS[refusal])
    if not greeted:
        message = version_line(ctx.protocol) + message
    ctx.state.refusals.refuse(stream, message, nursery)
    return True


@functools.lru_cache(maxsize=4)
def _trusted_networks(cidrs: tuple[str, ...]) -> TrustedNetworks:
    """Parsed once per configuration, not per connection."""
    return TrustedNetworks(cidrs)


async def _read_proxy_header(
    stream: trio.SocketStream, ctx: ServerContext, peer: str, local: str
) -> tuple[str, str, bytes]:
    """A trusted balancer's PROXY header: the client it speaks for, the address the client
    connected to, and the bytes after it.

    Raises:
        ProxyProtocolError: malformed; trio.TooSlowError: not in time;
        trio.BrokenResourceError: the balancer closed first.
    """
    buffer = bytearray()
    with trio.fail_after(ctx.settings.proxy.header_timeout):
        while (result := parse_proxy_header(buffer)) is None:
            data = await stream.receive_some(4096)
            if not data:
                raise trio.BrokenResourceError("closed before the PROXY header ended")
            buffer += data
    remote = str(result.source) if result.source is not None else peer  # LOCAL: health check
    if result.destination is not None:
        local = str(result.destination)
    return remote, local, bytes(buffer[result.consumed :])


def _admission(ctx: ServerContext, source: str) -> str | None:
    """sshd's MaxStartups with random early drop, and a per-source cap; None: admitted."""
    limits = ctx.settings.limits
    start, rate, full = parse_max_startups(limits.max_startups)
    count = ctx.state.unauthenticated
    if count >= full:
        return "max_startups"
    if count >= start:
        chance = rate + (100 - rate) * (count - start) / max(full - start, 1)
        if _random.uniform(0, 100) < chance:
            return "max_startups"
    per_source = limits.max_startups_per_source
    if per_source and ctx.state.unauthenticated_by_source.get(source, 0) >= per_source:
        return "max_startups_per_source"
    return None


async def _serve_connections(
    ctx: ServerContext,
    listeners: list[trio.SocketListener],
    shutdown: trio.Event,
    task_status: trio.TaskStatus[None],
) -> None:
    """Accept until ``shutdown``; then stop accepting and give connections their grace."""
    async with trio.open_nursery() as connections:
        ctx.state.connections_nursery = connections
        listening = trio.CancelScope()

        async def listen(*, task_status: trio.TaskStatus[None]) -> None:
            ctx.state.listener_task = trio.lowlevel.current_task()
            with listening:
                # Not trio.serve_listeners: it takes one connection per scheduler pass
                # (server/accept.py says why that fails under a login storm).
                async with trio.open_nursery() as loops:
                    for listener in listeners:
                        acceptor = Acceptor(
                            listener,
                            greeting=functools.partial(_greeting, ctx),
                            deliver=functools.partial(_accepted, ctx),
                        )
                        loops.start_soon(acceptor.run)
                    task_status.started()

        await connections.start(listen)
        # What start-up made (modules, configuration, keys, the backend) lives as long as
        # the server: out of the collector's way, a full collection walks only what
        # connections made (CPython's gc.freeze, as long-lived servers use it).
        gc.collect()
        gc.freeze()
        log.info(
            "server_started",
            listen=[join_host_port(*item.socket.getsockname()[:2]) for item in listeners],
            instance=ctx.instance,
        )
        task_status.started()
        await shutdown.wait()
        await _drain(ctx)
        grace = ctx.latest.settings.limits.shutdown_grace
        log.info("server_stopping", grace_s=grace, connections=ctx.state.live_connections)
        listening.cancel()
        ctx.state.shutting_down = True
        for connection in list(ctx.state.connections):
            connection.shutting_down()
        connections.cancel_scope.deadline = trio.current_time() + grace


async def _drain(ctx: ServerContext) -> None:
    """``/readyz`` turns 503 at once, and new connections are still served for
    ``drain_time``: a balancer notices before the listener closes (its lame-duck time)."""
    ctx.state.draining = True
    drain = ctx.latest.settings.limits.drain_time
    log.info("server_draining", drain_s=drain, connections=ctx.state.live_connections)
    await trio.sleep(drain)


async def open_listeners(addresses: list[tuple[str, int]]) -> list[trio.SocketListener]:
    listeners: list[trio.SocketListener] = []
    for host, port in addresses:
        listeners.extend(await trio.open_tcp_listeners(port, host=host))
    return listeners
