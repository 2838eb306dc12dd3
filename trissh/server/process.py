"""The server process: build it from its settings, serve until told to stop, and react to
signals (SIGHUP reloads, the first SIGTERM/SIGINT stops gracefully, a second at once)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import structlog
import trio

from trissh.addresses import parse_listen
from trissh.backend import Backend
from trissh.backend.registry import make_backend
from trissh.config import ServerConfig
from trissh.ops.metrics import Metrics
from trissh.ops.rlimits import raise_open_files
from trissh.server.build import StartupError, build_context, reload_context, retire_context
from trissh.server.listener import open_listeners, serve
from trissh.server.readiness import open_health_listeners
from trissh.server.state import ServerContext

log = structlog.get_logger("trissh")


def checked_backend(settings: ServerConfig, metrics: Metrics | None = None) -> Backend:
    """The configured backend (not contacted yet), its operations timed by ``metrics``.

    Raises:
        StartupError: its own settings are unusable (a URL, a password file).
    """
    try:
        return make_backend(settings, metrics.container_operation if metrics else None)
    except ValueError as exc:
        raise StartupError(str(exc)) from None


def metered_backend(settings: ServerConfig, metrics: Metrics) -> Backend:
    """The configured backend, its container operations timed, its warm pool and its start
    queue counted.

    Raises:
        StartupError: its own settings are unusable.
    """
    backend = checked_backend(settings, metrics)
    metrics.warm_containers.set_function(lambda: backend.warm_containers)
    metrics.starts_waiting.set_function(lambda: backend.starts_waiting)
    metrics.starts_running.set_function(lambda: backend.starts_running)
    return backend


async def run_server(settings: ServerConfig, load: Callable[[], ServerConfig]) -> int:
    """Serve until stopped; ``load`` reads the configuration again (SIGHUP).

    Raises:
        StartupError: the server cannot start (keys, ports, backend).
    """
    metrics = Metrics()
    open_files = raise_open_files()
    log.info("open_files_limit", soft=open_files)
    ctx = build_context(settings, metered_backend(settings, metrics), metrics=metrics)
    try:
        listeners = await open_listeners([parse_listen(item) for item in settings.listen])
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {', '.join(settings.listen)}: {exc.strerror}"
        ) from None
    health = None
    if settings.metrics.listen:
        try:
            health = await open_health_listeners(settings.metrics.listen)
        except OSError as exc:
            for listener in listeners:
                await listener.aclose()
            raise StartupError(
                f"cannot listen on [metrics] listen {settings.metrics.listen}: {exc.strerror}"
            ) from None
    shutdown = trio.Event()
    try:
        async with trio.open_nursery() as nursery:

            def retire(old: ServerContext) -> None:
                nursery.start_soon(retire_context, old)

            nursery.start_soon(
                _watch_signals,
                shutdown,
                nursery.cancel_scope,
                lambda: reload_context(ctx, load, retire),
            )
            await serve(ctx, listeners, shutdown=shutdown, health=health)
            nursery.cancel_scope.cancel()  # retired contexts close now, in their finally
    finally:
        await ctx.latest.auth.aclose()
    return 0


async def _watch_signals(
    shutdown: trio.Event, everything: trio.CancelScope, reload: Callable[[], None]
) -> None:
    """SIGHUP: reload. First SIGTERM/SIGINT: graceful stop. Second: cancel at once (the
    cleanup of every container still runs, bounded). An operator's ``trissh drain`` is no
    signal: the ``systemctl stop`` after it still waits for the sessions."""
    stops = 0
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal_received", signal=signal.Signals(signum).name)
            if signum == signal.SIGHUP:
                reload()
                continue
            stops += 1
            if stops > 1:
                everything.cancel()
            shutdown.set()
