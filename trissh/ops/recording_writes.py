"""Recording writes under way in worker threads, process-wide, and the wait for them at
the end of the server's run."""

from __future__ import annotations

import threading
from typing import Final

import structlog
import trio

log = structlog.get_logger("trissh.ops.recording")


class _Writes:
    """Recording writes under way in worker threads, in the whole process. trio's worker
    threads are daemons: the interpreter's exit would cut such a write short, and with it
    the end of a recording, so the server waits for them (:func:`finish_writes`)."""

    def __init__(self) -> None:
        self._done = threading.Condition()
        self._count = 0

    def begin(self) -> None:
        with self._done:
            self._count += 1

    def end(self) -> None:
        with self._done:
            self._count -= 1
            if not self._count:
                self._done.notify_all()

    def wait(self, timeout: float) -> int:
        """Wait until none is under way, at most ``timeout`` seconds; how many still are."""
        with self._done:
            self._done.wait_for(lambda: not self._count, timeout)
            return self._count


WRITES: Final = _Writes()


async def finish_writes(wait_s: float) -> None:
    """Wait (at most ``wait_s`` seconds) for recording writes still under way in worker
    threads, as the server's run ends; logs ``recordings_unfinished`` if some still are."""
    unfinished = await trio.to_thread.run_sync(WRITES.wait, wait_s, abandon_on_cancel=True)
    if unfinished:
        log.warning("recordings_unfinished", writes=unfinished, waited_s=wait_s)
