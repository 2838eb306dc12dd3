"""Started, unassigned containers, so a login need not wait for podman to create one.

Theory of operation
-------------------
Creating and starting a container is most of an end-to-end login (~150 ms of podman work
on these hosts). The pool keeps containers started ahead of time from one *template*: the
server's default ``[container]`` settings. A sandbox whose settings equal the template
takes one (``take``) and from then on owns it exactly like a container it created:
removed when its context exits, never handed back, so no container is ever reused across
users or connections. Anything else (per-user or webhook overrides) is created on demand.

**Sized by demand.** The pool aims at as many ready containers as logins asked for in the
last :data:`DEMAND_WINDOW` seconds, at least ``idle`` (what a quiet server keeps, so a
login on it is served at once) and at most ``size``. Logins arriving at some rate make it
refill at that rate, up to the bound; once they stop, it shrinks back to ``idle`` within
the window (``warm_pool_shrunk``) and keeps no more than that.

``run`` lives in the backend's upkeep task. Refills run in tasks of their own, several at
once, each only when the start queue has a slot no login waits for
(:meth:`.starts.StartQueue.spare_turn`): a storm is served by the logins' own starts first,
the pool fills behind them. A new template (SIGHUP) retires the ready containers of the old
one; cancellation (shutdown) removes every unassigned container, bounded and shielded.
Pooled containers exist before anyone logs in, so their labels name the pool
(``trissh.pool``) instead of a user; ``container_assigned`` logs who got which.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final

import structlog
import trio

from trissh.backend.base import ContainerSettings, SandboxSpec
from trissh.backend.errors import BackendError

log = structlog.get_logger("trissh.backend.pool")

#: Backoff after a failed refill (podman down, image missing), in seconds.
RETRY_MIN = 1.0
RETRY_MAX = 30.0
#: Logins in this many seconds are the pool's target size (within its bounds).
DEMAND_WINDOW: Final = 30.0

Turn = Callable[[], AbstractAsyncContextManager[None]]


@asynccontextmanager
async def _any_time() -> AsyncIterator[None]:
    yield


class WarmPool:
    def __init__(
        self,
        size: int,
        *,
        start: Callable[[SandboxSpec], Awaitable[str]],
        remove: Callable[[str, SandboxSpec], Awaitable[None]],
        idle: int | None = None,
        turn: Turn = _any_time,
        prepare: Callable[[SandboxSpec], Awaitable[None]] | None = None,
    ) -> None:
        """Args:
        size: the most started containers kept ready.
        start: create and start a container, returning its id; removes what it created
            when it fails or is cancelled.
        remove: remove a container (bounded, shielded; a failure is retried elsewhere).
        idle: the fewest kept ready, when no one logs in (default: ``size``, a fixed pool).
        turn: entered around each refill's start (the start queue's spare slot).
        prepare: run before the turn is taken (the image's pull, which may take minutes).
        """
        self.size = size
        self.idle = size if idle is None else min(idle, size)
        self._start = start
        self._remove = remove
        self._turn = turn
        self._prepare = prepare
        self._template: SandboxSpec | None = None
        self._ready: deque[tuple[str, SandboxSpec]] = deque()
        self._retired: list[tuple[str, SandboxSpec]] = []
        self._starting = 0
        #: Refills that failed in a row; while any did, one refill at a time, after a pause.
        self._failures = 0
        self._backing_off = False
        #: When each recent login asked for a template container (hit or miss).
        self._demand: deque[float] = deque()
        self._wake = trio.Event()

    @property
    def ready(self) -> int:
        return len(self._ready)

    @property
    def target(self) -> int:
        """How many ready containers the pool aims at now."""
        now = trio.current_time()
        # The same sum as run's deadline, so an entry is gone once that deadline passed.
        while self._demand and self._demand[0] + DEMAND_WINDOW <= now:
            self._demand.popleft()
        return max(self.idle, min(self.size, len(self._demand)))

    def set_template(self, settings: ContainerSettings, instance: str) -> None:
        """Pool containers of ``settings`` from now on; ready ones of other settings go."""
        if (
            self._template is not None
            and self._template.settings == settings
            and self._template.instance == instance
        ):
            return
        self._template = SandboxSpec(
            conn_id="pool",
            username="",
            remote="",
            instance=instance,
            settings=settings,
            pooled=True,
        )
        self._retired.extend(self._ready)
        self._ready.clear()
        self._wake.set()

    def take(self, settings: ContainerSettings) -> str | None:
        """A ready container built from ``settings``, now the caller's; ``None`` if none.
        Every call for the template's settings counts as demand, served or not."""
        if self._template is None or self._template.settings != settings:
            return None
        self._demand.append(trio.current_time())
        self._wake.set()
        if not self._ready:
            return None
        container_id, _ = self._ready.popleft()
        return container_id

    async def run(self) -> None:
        """Keep the pool at its target until cancelled; then remove every unassigned
        container."""
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    self._plan(nursery)
                    deadline = (
                        self._demand[0] + DEMAND_WINDOW if self._demand else math.inf
                    )  # the target may shrink then
                    with trio.move_on_at(deadline):
                        await self._wake.wait()
                    self._wake = trio.Event()
        finally:
            leftovers = [*self._ready, *self._retired]
            self._ready.clear()
            self._retired.clear()
            with trio.CancelScope(shield=True):  # each removal is bounded itself
                async with trio.open_nursery() as nursery:
                    for container_id, spec in leftovers:
                        nursery.start_soon(self._remove, container_id, spec)

    def _plan(self, nursery: trio.Nursery) -> None:
        """Start refills up to the target; retire what is beyond it."""
        target = self.target
        surplus = len(self._ready) - target
        if surplus > 0:
            log.info("warm_pool_shrunk", removed=surplus, pool_target=target)
            for _ in range(surplus):
                self._retired.append(self._ready.pop())
        while self._retired:
            container_id, spec = self._retired.pop()
            nursery.start_soon(self._remove, container_id, spec)
        template = self._template
        if template is None or self._backing_off:
            return
        wanted = target - len(self._ready) - self._starting
        if self._failures:
            wanted = min(wanted, 1 - self._starting)  # probe one at a time until one works
        for _ in range(wanted):
            self._starting += 1
            nursery.start_soon(self._refill, template)

    async def _refill(self, template: SandboxSpec) -> None:
        try:
            failure: BackendError | None = None
            spec = _fresh(template)
            try:
                if self._prepare is not None:
                    await self._prepare(spec)
                async with self._turn():
                    if template is not self._template:
                        return
                    container_id = await self._start(spec)
            except BackendError as exc:
                failure = exc
            except Exception as exc:  # a refill's bug must not end the server's upkeep
                log.exception("warm_pool_fill_crashed")
                failure = BackendError(f"{type(exc).__name__}: {exc}")
            if failure is not None:
                await self._back_off(failure)
                return
            self._failures = 0
            if template is self._template:
                self._ready.append((container_id, spec))
            else:  # the template changed while this one was starting
                self._retired.append((container_id, spec))
        finally:
            self._starting -= 1
            self._wake.set()

    async def _back_off(self, failure: BackendError) -> None:
        """Podman down, image missing: no refill for a while (doubling, bounded)."""
        self._failures += 1
        delay = min(RETRY_MAX, RETRY_MIN * 2 ** (self._failures - 1))
        log.warning("warm_pool_fill_failed", error=str(failure), retry_in_s=delay)
        self._backing_off = True
        try:
            await trio.sleep(delay)
        finally:
            self._backing_off = False


def _fresh(template: SandboxSpec) -> SandboxSpec:
    """The template with a connection id of its own, for the container's name and logs."""
    return dataclasses.replace(template, conn_id=f"pool-{secrets.token_hex(6)}")
