"""A bound on the log lines one connection's client can cause.

A client looping on something refused (an unknown subsystem, a forward to a closed port,
signals) would otherwise get one line per request: thousands a second of the operator's
disk, written synchronously by the event loop every user shares. Past the quota the lines
are only counted; ``connection_closed`` says how many were left out.
"""

from __future__ import annotations


class LogQuota:
    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self) -> bool:
        """Whether one more line may be written (it is counted either way)."""
        self.used += 1
        return self.used <= self.limit

    @property
    def suppressed(self) -> int:
        return max(0, self.used - self.limit)
