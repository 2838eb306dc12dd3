"""Warm-pool containers renamed for the login they were assigned to.

Theory of operation
-------------------
A pooled container is created before anyone logs in, so its labels name the pool
(``trissh.pool``) instead of a user, and podman cannot relabel a running container. It
can rename one: on assignment the container becomes ``trissh-USER-CONN-RANDOM``
(:func:`.spec.container_name`), the name a container created for that login gets, so
``podman ps --filter name=^trissh-alice-`` finds a user's containers whichever way they
were made (the ``trissh.user`` label stays exact for created ones; ``container_assigned``
says who got each pooled one).

A rename takes 6-30 ms here (an inspection 1.4 ms), so it runs in the backend's upkeep
task, off the login's path: :meth:`Renames.rename` only queues, and the rename waits
:data:`DELAY` seconds. Most exec logins (``ssh host cmd``, ``scp``) end sooner; their
containers are removed meanwhile (:meth:`Renames.forget`) and never renamed, which spares
podman and trissh a request per such login (a rename queued behind the removal only met
"no such container"). A shell's container shows its user's name from its third second on.
A queue full in a burst drops the rename (the container keeps its pool name).
"""

from __future__ import annotations

from typing import Final

import structlog
import trio

from trissh.backend.errors import BackendError
from trissh.backend.podman.api import PodmanApi

__all__ = ["Renames"]

log = structlog.get_logger("trissh.backend.podman")

#: Renames waiting at most (a burst of pooled logins); more keep their pool names.
QUEUE: Final = 256
#: Seconds an assigned container keeps its pool name before it is renamed.
DELAY: Final = 2.0


class Renames:
    def __init__(self, api: PodmanApi, *, delay: float = DELAY) -> None:
        self._api = api
        self._delay = delay
        #: container id -> (when it is due, its new name); due in insertion order.
        self._pending: dict[str, tuple[float, str]] = {}
        self._queued = trio.Event()

    def rename(self, container_id: str, name: str) -> None:
        """Name ``container_id`` ``name`` in :data:`DELAY` seconds, unless it is removed
        first. No checkpoint."""
        if len(self._pending) >= QUEUE:
            log.debug("container_rename_dropped", container=container_id[:12])
            return
        self._pending[container_id] = (trio.current_time() + self._delay, name)
        self._queued.set()

    def forget(self, container_id: str) -> None:
        """``container_id`` is being removed: no rename is owed to it any more."""
        self._pending.pop(container_id, None)

    async def run(self) -> None:
        """Rename what is due, one at a time, until cancelled (which drops the rest).

        Cancellation: a request under way is abandoned (its connection is closed).
        """
        while True:
            if not self._pending:
                await self._queued.wait()
                self._queued = trio.Event()
                continue
            container_id, (due, name) = next(iter(self._pending.items()))
            await trio.sleep_until(due)
            if self._pending.pop(container_id, None) is None:
                continue  # removed while it waited
            try:
                await self._api.request(
                    "POST", f"/containers/{container_id}/rename",
                    params={"name": name}, missing_ok=True, abandon_on_cancel=True,
                )  # fmt: skip
            except BackendError as exc:
                log.warning("container_rename_failed", container=container_id[:12], error=str(exc))
