"""KexBudget: the event loop's time that key exchanges before login may take, all
connections together.

sshd computes each connection's key exchange in a process of its own; trissh computes
them all in one event loop, where one finite-field exponentiation (tens of ms for
diffie-hellman-group16, more for larger groups) holds every established session's
traffic for its whole duration. A client spends nothing to ask for one (it may send a
constant ``e`` and never finish), so exchanges before login share a budget: a burst of
:data:`BURST` seconds, then at most :data:`SHARE` of the loop's time. A connection whose
turn it is not waits with its bytes unread: a flood slows other logins, never sessions.
"""

from __future__ import annotations

from typing import Final

import trio

__all__ = ["BURST", "SHARE", "KexAccount", "KexBudget"]

#: The share of the loop's time key exchanges before login may take, over time.
SHARE: Final = 0.5
#: Seconds of exchanges that may run back to back before pacing starts.
BURST: Final = 0.25


class KexBudget:
    """A debt of computed seconds, paid back at :data:`SHARE` per second."""

    def __init__(self, share: float = SHARE, burst: float = BURST) -> None:
        self._share = share
        self._burst = burst
        self._debt = 0.0
        self._at = 0.0
        self._queue = trio.Lock()

    def _settle(self) -> float:
        now = trio.current_time()
        self._debt = max(0.0, self._debt - (now - self._at) * self._share)
        self._at = now
        return self._debt

    def charge(self, seconds: float) -> None:
        """A connection before login spent ``seconds`` computing its key exchange."""
        if seconds > 0:
            self._debt = self._settle() + seconds

    async def wait_turn(self) -> None:
        """Return once a connection before login may compute (no checkpoint if at once).

        Waiters queue in order (a trio.Lock is fair) and go one at a time: each one's
        exchange is computed and charged before the next looks at the debt."""
        if self._settle() <= self._burst and not self._queue.locked():
            return
        async with self._queue:
            while (debt := self._settle()) > self._burst:  # noqa: ASYNC110 - a debt, not an event
                await trio.sleep((debt - self._burst) / self._share)

    def account(self) -> KexAccount:
        """One connection's account: it reports its running total, the budget the growth."""
        return KexAccount(self)


class KexAccount:
    """One connection's side of the budget."""

    def __init__(self, budget: KexBudget) -> None:
        self._budget = budget
        self._total = 0.0

    async def wait_turn(self) -> None:
        await self._budget.wait_turn()

    def spent(self, total: float) -> None:
        """The connection's exchanges have cost ``total`` CPU seconds so far."""
        self._budget.charge(total - self._total)
        self._total = total
