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
task, off the login's path: :meth:`Renames.rename` only queues. A queue full in a burst
drops the rename (the container keeps its pool name); a container removed before its turn
is skipped.
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


class Renames:
    def __init__(self, api: PodmanApi) -> None:
        self._api = api
        self._send, self._receive = trio.open_memory_channel[tuple[str, str]](QUEUE)

    def rename(self, container_id: str, name: str) -> None:
        """Queue ``container_id`` to be named ``name``. No checkpoint."""
        try:
            self._send.send_nowait((container_id, name))
        except trio.WouldBlock:
            log.debug("container_rename_dropped", container=container_id[:12])

    async def run(self) -> None:
        """Rename what is queued, one at a time, until cancelled (which drops the rest).

        Cancellation: a request under way is abandoned (it completes in its thread).
        """
        async for container_id, name in self._receive:
            try:
                await self._api.request(
                    "POST", f"/containers/{container_id}/rename",
                    params={"name": name}, missing_ok=True, abandon_on_cancel=True,
                )  # fmt: skip
            except BackendError as exc:
                log.warning("container_rename_failed", container=container_id[:12], error=str(exc))
