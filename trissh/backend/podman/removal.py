"""Removing containers: bounded and shielded at teardown, retried later when podman failed.

Theory of operation
-------------------
A container goes with ``DELETE /containers/{ref}?force=true&timeout=0``: no stop timeout,
so a PID 1 that ignores SIGTERM costs nothing (removal takes ~0.1 s). At teardown
(:meth:`Removals.remove_at_exit`) that happens inside a shielded scope bounded by
:data:`REMOVE_BOUND`, so a cancelled connection still removes its container and a hung
podman cannot hold the connection's task forever. A removal that failed or timed out
(podman restarting, say) is *deferred*: :meth:`Removals.retry`, in the backend's upkeep
task, retries it with backoff for as long as the server runs, and :meth:`Removals.finish`
makes one last bounded attempt when the server stops; what is still left then is logged as
leaked (the next start-up sweep removes it).
"""

from __future__ import annotations

import re
import time
from typing import Final

import structlog
import trio

from trissh.backend._common import ms_since
from trissh.backend.base import Observe
from trissh.backend.errors import BackendError, BackendUnavailable
from trissh.backend.podman.api import PodmanApi

__all__ = ["REMOVE_BOUND", "Removals", "short"]

log = structlog.get_logger("trissh.backend.podman")

#: Bound on removing one container at teardown, once its request has a slot (forced
#: removal takes ~0.1 s).
REMOVE_BOUND: Final = 10.0
#: Bound on waiting for that slot: a thousand sessions ending together (a storm's end, a
#: shutdown) queue their removals behind the API's concurrency limit; counting the wait
#: against REMOVE_BOUND left hundreds deferred and, at shutdown, leaked.
REMOVE_QUEUE_BOUND: Final = 120.0
#: Backoff for retrying removals that failed, in seconds.
ORPHAN_RETRY_MIN: Final = 0.5
ORPHAN_RETRY_MAX: Final = 15.0


class Removals:
    """Container removal for one backend, and the removals it still owes."""

    def __init__(self, api: PodmanApi, observe: Observe) -> None:
        self._api = api
        self._observe = observe
        #: Containers whose removal failed, by id or name -> conn_id; ``run`` retries them.
        self._orphans: dict[str, str] = {}
        #: Names of containers whose create request timed out -> (conn_id, until when to
        #: look, how long after podman last failed to answer): podman may still make them
        #: after a removal found nothing.
        self._uncertain: dict[str, tuple[str, float, float]] = {}
        self._orphans_changed = trio.Event()

    async def remove_now(self, ref: str) -> bool:
        """Force-remove ``ref`` (id or name), no stop timeout; False if it was already gone.

        Raises:
            BackendError: podman failed (nothing is deferred).
        """
        return await self._force_remove(ref, abandon_on_cancel=False)

    async def remove_at_exit(self, ref: str, conn_id: str) -> None:
        """Remove ``ref`` (id or name) within :data:`REMOVE_BOUND` of its request's turn
        (:data:`REMOVE_QUEUE_BOUND` for the turn), even when cancelled; defer it if podman
        failed.

        Cancellation: shielded, bounded.
        """
        started = time.monotonic()
        with trio.move_on_after(REMOVE_QUEUE_BOUND + REMOVE_BOUND, shield=True) as scope:
            try:
                removed = await self._force_remove(ref, bound=REMOVE_BOUND)
            except BackendError as exc:
                self._defer(ref, conn_id, str(exc))
                return
            if removed:
                self._observe("remove", time.monotonic() - started)
                log.info(
                    "container_removed",
                    container=short(ref),
                    conn_id=conn_id,
                    duration_ms=ms_since(started),
                )
        if scope.cancelled_caught:
            self._defer(ref, conn_id, "timed out")

    async def retry(self) -> None:
        """Retry deferred removals, with backoff, until cancelled."""
        delay = ORPHAN_RETRY_MIN
        while True:
            with trio.move_on_after(delay):
                await self._orphans_changed.wait()
            self._orphans_changed = trio.Event()
            if not self._orphans and not self._uncertain:
                delay = ORPHAN_RETRY_MIN
                continue
            await trio.sleep(delay)
            removed_all = await self._remove_orphans() and not self._uncertain
            delay = ORPHAN_RETRY_MIN if removed_all else min(delay * 2, ORPHAN_RETRY_MAX)

    async def finish(self) -> None:
        """One last attempt at the deferred removals; what is still left is logged as
        leaked (the next start-up sweep removes it).

        Cancellation: shielded, bounded by :data:`REMOVE_BOUND`.
        """
        with trio.move_on_after(REMOVE_BOUND, shield=True):
            await self._remove_orphans()
        for ref, conn_id in self._orphans.items():
            log.error("container_leaked", container=short(ref), conn_id=conn_id)
        for name, (conn_id, *_) in self._uncertain.items():  # podman may still make it
            log.warning("container_maybe_leaked", container=name, conn_id=conn_id)

    def watch(self, name: str, conn_id: str, *, window: float) -> None:
        """A create request for ``name`` timed out: for ``window`` seconds keep removing
        it should a stalled podman make it after all (``run`` does, with the deferred)."""
        self._uncertain[name] = (conn_id, trio.current_time() + window, window)
        self._orphans_changed.set()

    def _defer(self, ref: str, conn_id: str, error: str) -> None:
        """Podman could not remove it now (service restarting?): ``run`` keeps trying."""
        self._orphans[ref] = conn_id
        log.warning("container_remove_deferred", container=short(ref), conn_id=conn_id, error=error)
        self._orphans_changed.set()

    async def _remove_orphans(self) -> bool:
        """Try each deferred removal once, then each watched name; True when no deferred
        removal is left. One podman refuses does not hold up the others."""
        for ref, conn_id in list(self._orphans.items()):
            try:
                await self._force_remove(ref)
            except BackendUnavailable:
                return False  # podman unreachable: try them all later
            except BackendError:
                continue  # refused (logged when deferred; leaked at the end if still so)
            del self._orphans[ref]
            log.info("container_removed", container=short(ref), conn_id=conn_id, deferred=True)
        for name, (conn_id, until, window) in list(self._uncertain.items()):
            try:
                removed = await self._force_remove(name)
            except BackendError:  # podman still stalled: look on once it answers again
                self._uncertain[name] = (conn_id, trio.current_time() + window, window)
                continue
            if removed:
                log.info("container_removed", container=name, conn_id=conn_id, deferred=True)
            if removed or trio.current_time() >= until:
                del self._uncertain[name]
        return not self._orphans

    async def _force_remove(
        self, ref: str, *, abandon_on_cancel: bool = True, bound: float | None = None
    ) -> bool:
        result = await self._api.request(
            "DELETE",
            f"/containers/{ref}",
            params={"force": "true", "timeout": 0},
            abandon_on_cancel=abandon_on_cancel,
            missing_ok=True,
            exchange_bound=bound,
        )
        return result is not None


def short(ref: str) -> str:
    """Container ids shortened as ``podman ps`` shows them; names left whole."""
    return ref[:12] if re.fullmatch(r"[0-9a-f]{64}", ref) else ref
