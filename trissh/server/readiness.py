"""``/readyz`` answered from memory, and the background check that keeps it current.

A load balancer asks ``/readyz`` every few hundred milliseconds and takes an instance out
of its pool when an answer is late: the answer must never wait for podman. So a task in the
server's upkeep nursery asks the backend (``Backend.ready``: podman answers, the image
exists) every ``[metrics] ready_check_interval`` seconds and stores the outcome in the
``ServerState``; ``/readyz`` then combines it with what the state already knows — draining,
MaxStartups full — without a single await. Ready means "a login can be served now".
``/healthz`` means the process is alive, nothing more.

Both run in serve's upkeep nursery: ``keep_ready`` (the backend check, every
``ready_check_interval``; also for ``trissh sessions``) and ``serve_health`` (``/metrics``,
``/healthz``, ``/readyz`` through ops/metrics.py's ``serve_http``).
"""

from __future__ import annotations

from typing import Final

import structlog
import trio

from trissh.addresses import parse_listen
from trissh.config import parse_max_startups
from trissh.ops.metrics import serve_http
from trissh.server.state import ServerContext

log = structlog.get_logger("trissh.server.readiness")

#: A backend check that takes longer counts as a failure (podman hangs).
READY_CHECK_TIMEOUT: Final = 5.0


def readiness(ctx: ServerContext) -> tuple[bool, str]:
    """(ready, why) from the state alone: no await, microseconds."""
    state = ctx.state
    current = ctx.latest
    if state.draining:
        return False, "draining"
    if state.backend_problem is not None:
        return False, state.backend_problem
    _start, _rate, full = parse_max_startups(current.settings.limits.max_startups)
    if state.unauthenticated >= full:
        return False, f"max_startups reached ({full} unauthenticated connections)"
    return True, "ready"


async def check_backend(ctx: ServerContext) -> None:
    """Ask the backend once, bounded, and record the answer; log a change."""
    current = ctx.latest
    problem: str | None = f"backend did not answer within {READY_CHECK_TIMEOUT:g} s"
    with trio.move_on_after(READY_CHECK_TIMEOUT):
        problem = await current.backend.ready(current.settings.container.image)
    state = ctx.state
    if problem != state.backend_problem:
        if problem is None:
            log.info("backend_ready")
        else:
            log.warning("backend_not_ready", reason=problem)
        state.backend_problem = problem


async def keep_ready(
    ctx: ServerContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Check now (``started`` after the first answer, so the server starts knowing), then
    every ``ready_check_interval`` seconds of the configuration in force.

    Cancellation: stops between or during checks; nothing to clean up.
    """
    await check_backend(ctx)
    task_status.started()
    while True:
        await trio.sleep(ctx.latest.settings.metrics.ready_check_interval)
        await check_backend(ctx)


async def open_health_listeners(listen: str) -> list[trio.SocketListener]:
    """The sockets of ``[metrics] listen``, opened before serving starts so that a port in
    use stops the start with a clear message (OSError), as the SSH port does."""
    host, port = parse_listen(listen)
    return await trio.open_tcp_listeners(port, host=host)


async def serve_health(
    ctx: ServerContext,
    listeners: list[trio.SocketListener] | None = None,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]],
) -> None:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``listeners``, or on ``[metrics]
    listen`` opened here; ``/readyz`` answers from what ``keep_ready`` keeps current.

    Cancellation: stops serving; nothing to clean up.
    """
    assert ctx.settings.metrics.listen is not None
    if listeners is None:
        listeners = await open_health_listeners(ctx.settings.metrics.listen)
    ctx.metrics.watch_server(
        ready=lambda: readiness(ctx)[0],
        draining=lambda: ctx.state.draining,
        unauthenticated=lambda: ctx.state.unauthenticated,
    )

    async def ready() -> tuple[bool, str]:
        return readiness(ctx)

    await serve_http(ctx.metrics, listeners, ready=ready, task_status=task_status)
