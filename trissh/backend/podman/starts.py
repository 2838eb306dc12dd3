"""The container start queue: at most ``slots`` creations at once, the rest wait in order.

Theory of operation
-------------------
A container start is ~100 ms of CPU for the podman service, conmon and runc; a login storm
asks for hundreds at once. Past a few concurrent starts podman gets no faster, only slower
per start, until its requests time out. So every start (a login's, or the warm pool's
refill) takes one of a few slots first (:class:`_FairSlots`): a freed slot goes round the
users who wait, each user's logins in the order they asked, so one user opening many
connections at once cannot make everyone else wait behind them; podman works at its best
rate, and the wait is visible —
``waiting``/``running`` are gauges on ``/metrics``, a start that has to wait logs
``container_start_queued`` with its place, and its ``container_created`` line says how
long it queued. A login that gives up while queued (its client left, its start timeout
passed) leaves the queue at once and logs ``container_start_abandoned``.

The warm pool's refills come second (:meth:`StartQueue.spare_turn`): they start only when
no login waits and a slot is free, so a storm is served by the logins' own starts first.

Removals come last (:meth:`StartQueue.removal_turn`): podman's removals and creations
contend for its locks, and in a 1,000-login storm, with the first sessions ending while
later users still waited, creations slowed from ~0.5 s to ~10 s each. So while any login
waits for a start, at most :data:`BUSY_REMOVALS` removals run at once (the user whose
session ended is not waiting for them); none waits longer than :data:`REMOVAL_PATIENCE`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import structlog
import trio

from trissh.backend.base import Observe

__all__ = ["StartQueue"]

log = structlog.get_logger("trissh.backend.podman")

#: Removals at once while logins wait for starts.
BUSY_REMOVALS: Final = 2
#: The longest a removal yields to starts; then it goes ahead regardless.
REMOVAL_PATIENCE: Final = 60.0


class _FairSlots:
    """``slots`` slots; a freed one goes to the next user who waits, round the users in
    the order they started waiting, each user's requests first come first served."""

    def __init__(self, slots: int) -> None:
        self.total = slots
        self.available_tokens = slots
        #: Waiters per user, oldest user first; a served user moves to the back.
        self._queues: dict[str, deque[trio.Event]] = {}

    @property
    def borrowed_tokens(self) -> int:
        return self.total - self.available_tokens

    def acquire_nowait(self) -> None:
        if not self.available_tokens or self._queues:
            raise trio.WouldBlock
        self.available_tokens -= 1

    async def acquire(self, user: str) -> None:
        """Cancellation: leaves the queue (a slot already handed over is passed on)."""
        if self.available_tokens and not self._queues:
            self.available_tokens -= 1
            await trio.lowlevel.checkpoint()
            return
        granted = trio.Event()
        self._queues.setdefault(user, deque()).append(granted)
        try:
            await granted.wait()
        except BaseException:
            if granted.is_set():
                self.release()
            else:
                self._forget(user, granted)
            raise

    def release(self) -> None:
        if not self._queues:
            self.available_tokens += 1
            return
        user = next(iter(self._queues))
        queue = self._queues.pop(user)
        granted = queue.popleft()
        if queue:
            self._queues[user] = queue  # to the back: the next slot is another user's
        granted.set()

    def _forget(self, user: str, granted: trio.Event) -> None:
        queue = self._queues.get(user)
        if queue is not None and granted in queue:
            queue.remove(granted)
            if not queue:
                del self._queues[user]


class StartQueue:
    def __init__(self, slots: int, observe: Observe) -> None:
        self._limiter = _FairSlots(slots)
        self._observe = observe
        #: Logins waiting for a slot now.
        self.waiting = 0
        self._removing = 0
        self._changed = trio.Event()

    @property
    def running(self) -> int:
        return int(self._limiter.borrowed_tokens)

    @asynccontextmanager
    async def turn(self, conn_id: str, user: str = "") -> AsyncIterator[float]:
        """A start slot for a login of ``user`` (in turn with other users' logins, see the
        module docstring); yields the seconds it waited.

        Cancellation: leaves the queue (logged when it had to wait).
        """
        started = trio.current_time()  # trio's clock: the wait is in the scheduler's time
        queued = self.waiting > 0 or self._limiter.available_tokens == 0
        if queued:
            log.info(
                "container_start_queued",
                conn_id=conn_id,
                position=self.waiting + 1,
                running=self.running,
            )
        self.waiting += 1
        try:
            await self._limiter.acquire(user)
        except BaseException:
            if queued:
                log.warning("container_start_abandoned", conn_id=conn_id, queued_ms=_ms(started))
            raise
        finally:
            self.waiting -= 1
            self._notify()
        waited = trio.current_time() - started
        self._observe("queue", waited)
        try:
            yield waited
        finally:
            self._limiter.release()
            self._notify()

    @asynccontextmanager
    async def spare_turn(self) -> AsyncIterator[None]:
        """A slot no login wants: waits until none waits and one is free.

        Cancellation: safe.
        """
        while self.waiting or self._limiter.available_tokens == 0:
            await self._changed.wait()
        self._limiter.acquire_nowait()
        try:
            yield
        finally:
            self._limiter.release()
            self._notify()

    @asynccontextmanager
    async def removal_turn(self) -> AsyncIterator[None]:
        """Enter to remove a container: yields to waiting logins (bounded, see above).

        Cancellation: the wait is cancellable; callers tearing down shield it (bounded).
        """
        with trio.move_on_after(REMOVAL_PATIENCE):
            while self.waiting and self._removing >= BUSY_REMOVALS:
                await self._changed.wait()
        self._removing += 1
        try:
            yield
        finally:
            self._removing -= 1
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def _ms(since: float) -> float:
    return round((trio.current_time() - since) * 1000, 1)
