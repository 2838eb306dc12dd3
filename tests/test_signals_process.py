"""The server process's signals: SIGTERM after an operator's drain still waits."""

from __future__ import annotations

import os
import signal

import trio
import trio.testing

from trissh.server.process import _watch_signals


def cancelled(scope: trio.CancelScope) -> bool:
    return scope.cancel_called


async def test_the_first_signal_after_a_drain_still_stops_gracefully() -> None:
    """``trissh drain`` sets the same stop event as a signal; the ``systemctl stop`` after
    it was taken for a second signal and cut every session at once."""
    shutdown = trio.Event()
    shutdown.set()  # what the admin socket's drain does
    everything = trio.CancelScope()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, shutdown, everything, lambda: None)
            await trio.testing.wait_all_tasks_blocked()  # the receiver is installed
            os.kill(os.getpid(), signal.SIGTERM)
            await trio.sleep(0.2)
            assert not everything.cancel_called
            os.kill(os.getpid(), signal.SIGTERM)
            while not cancelled(everything):
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
