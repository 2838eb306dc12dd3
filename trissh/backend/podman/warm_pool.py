"""Started, unassigned containers, so a login need not wait for podman to create one.

Theory of operation
-------------------
Creating and starting a container is most of an end-to-end login (~150 ms of podman work
on these hosts). The pool keeps up to ``size`` containers started ahead of time from one
*template*: the server's default ``[container]`` settings. A sandbox whose settings equal
the template takes one (``take``) and from then on owns it exactly like a container it
created: removed when its context exits, never handed back, so no container is ever reused
across users or connections. Anything else (per-user or webhook overrides) is created on
demand as before.

``run`` lives in the backend's upkeep task: it replaces what was taken, one container at a
time, so a burst of logins takes the ready ones and creates the rest directly (in parallel)
rather than queueing behind the refill. A new template (SIGHUP) retires the ready containers
of the old one; cancellation (shutdown) removes every unassigned container, bounded and
shielded. Pooled containers exist before anyone logs in, so their labels name the pool
(``trissh.pool``) instead of a user; ``container_assigned`` logs who got which.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import deque
from collections.abc import Awaitable, Callable

import structlog
import trio

from trissh.backend.base import ContainerSettings, SandboxSpec
from trissh.backend.errors import BackendError

log = structlog.get_logger("trissh.backend.pool")

#: Backoff after a failed refill (podman down, image missing), in seconds.
RETRY_MIN = 1.0
RETRY_MAX = 30.0


class WarmPool:
    def __init__(
        self,
        size: int,
        *,
        start: Callable[[SandboxSpec], Awaitable[str]],
        remove: Callable[[str, SandboxSpec], Awaitable[None]],
    ) -> None:
        """Args:
        size: how many started containers to keep ready.
        start: create and start a container, returning its id; removes what it created
            when it fails or is cancelled.
        remove: remove a container (bounded, shielded; a failure is retried elsewhere).
        """
        self.size = size
        self._start = start
        self._remove = remove
        self._template: SandboxSpec | None = None
        self._ready: deque[tuple[str, SandboxSpec]] = deque()
        self._retired: list[tuple[str, SandboxSpec]] = []
        self._wake = trio.Event()

    @property
    def ready(self) -> int:
        return len(self._ready)

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
        """A ready container built from ``settings``, now the caller's; ``None`` if none."""
        if not self._ready or self._template is None or self._template.settings != settings:
            return None
        container_id, _ = self._ready.popleft()
        self._wake.set()
        return container_id

    async def run(self) -> None:
        """Keep the pool full until cancelled; then remove every unassigned container."""
        failures = 0
        try:
            while True:
                if self._retired:
                    container_id, spec = self._retired.pop()
                    await self._remove(container_id, spec)
                    continue
                template = self._template
                if template is None or len(self._ready) >= self.size:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                spec = _fresh(template)
                try:
                    container_id = await self._start(spec)
                except BackendError as exc:
                    failures += 1
                    delay = min(RETRY_MAX, RETRY_MIN * 2 ** (failures - 1))
                    log.warning("warm_pool_fill_failed", error=str(exc), retry_in_s=delay)
                    await trio.sleep(delay)
                    continue
                failures = 0
                if template is self._template:
                    self._ready.append((container_id, spec))
                else:  # the template changed while this one was starting
                    self._retired.append((container_id, spec))
        finally:
            leftovers = [*self._ready, *self._retired]
            self._ready.clear()
            self._retired.clear()
            with trio.CancelScope(shield=True):  # each removal is bounded itself
                async with trio.open_nursery() as nursery:
                    for container_id, spec in leftovers:
                        nursery.start_soon(self._remove, container_id, spec)


def _fresh(template: SandboxSpec) -> SandboxSpec:
    """The template with a connection id of its own, for the container's name and logs."""
    return dataclasses.replace(template, conn_id=f"pool-{secrets.token_hex(6)}")
