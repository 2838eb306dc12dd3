"""ConnectionClock: a connection's two timers, time-based rekeying and ClientAlive.

It keeps no task: the driver's receive loop reads under a cancel scope whose deadline is
``next_deadline()`` and asks ``due`` what to do when it passes (a task per connection for
two timers that rarely fire cost ~2 % of a short login's CPU). Times are trio's clock.
"""

from __future__ import annotations

import enum
import math

import trio


class TimerAction(enum.Enum):
    REKEY = "rekey"
    PROBE = "probe"
    #: ClientAliveCountMax probes went unanswered: the client is gone.
    DROP = "drop"


class ConnectionClock:
    def __init__(self) -> None:
        now = trio.current_time()
        self.last_received = now
        self._keys_since = now
        #: 0 turns a timer off; both are off until ``arm``.
        self._rekey_interval = 0.0
        self._alive_interval = 0.0
        self._alive_count_max = 0
        self._probe_at = math.inf
        #: The receive loop's cancel scope, whose deadline follows the next timer.
        self.scope: trio.CancelScope | None = None

    def arm(self, rekey_interval: float, alive_interval: float, count_max: int) -> None:
        """Start the timers (at authentication; before it the login grace time bounds a
        connection). No key lives longer than ``rekey_interval`` (the core rekeys by volume
        itself); a client silent for ``alive_interval`` is probed, and one that leaves
        ``count_max`` probes unanswered is gone, its containers with it (sshd's ClientAlive).
        """
        self._rekey_interval = rekey_interval
        self._alive_interval = alive_interval
        self._alive_count_max = count_max
        self._probe_at = trio.current_time() + alive_interval if alive_interval else math.inf
        self._moved()

    def next_deadline(self) -> float:
        rekey = self._keys_since + self._rekey_interval if self._rekey_interval else math.inf
        return min(rekey, self._probe_at)

    def keys_changed(self) -> None:
        self._keys_since = trio.current_time()
        self._moved()

    def _moved(self) -> None:
        if self.scope is not None:
            self.scope.deadline = self.next_deadline()

    def due(self, keepalives_unanswered: int) -> list[TimerAction]:
        """What the timers ask for now, in order."""
        now = trio.current_time()
        actions = []
        if self._rekey_interval and now >= self._keys_since + self._rekey_interval:
            actions.append(TimerAction.REKEY)
            self._keys_since = now  # until the exchange completes
        if now >= self._probe_at:
            self._probe_at = now + self._alive_interval
            if now - self.last_received >= self._alive_interval:
                if keepalives_unanswered >= self._alive_count_max:
                    actions.append(TimerAction.DROP)
                else:
                    actions.append(TimerAction.PROBE)
        return actions
