"""Renames of assigned warm-pool containers: due after a delay, never for one removed first.

The podman API below ``Renames`` is a recorder (what is tested is when a rename is asked
for, not podman's rename itself: tests/backend/test_warm_pool.py renames real containers).
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from trissh.backend.errors import BackendError
from trissh.backend.podman.renames import DELAY, QUEUE, Renames


class RecordingApi:
    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[tuple[float, str, dict[str, Any]]] = []
        self.fail = fail

    async def request(self, method: str, path: str, **options: Any) -> Any:
        self.calls.append((trio.current_time(), f"{method} {path}", options["params"]))
        await trio.lowlevel.checkpoint()
        if self.fail:
            raise BackendError("podman went away")
        return {}


async def test_a_rename_is_asked_for_once_its_delay_passed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    api = RecordingApi()
    renames = Renames(api)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(renames.run)
        queued_at = trio.current_time()
        renames.rename("c1", "trissh-alice-conn1-0a1b2c3d")
        await trio.sleep(DELAY / 2)
        assert api.calls == []
        await trio.sleep(DELAY)
        nursery.cancel_scope.cancel()
    [(when, request, params)] = api.calls
    assert request == "POST /containers/c1/rename"
    assert params == {"name": "trissh-alice-conn1-0a1b2c3d"}
    assert when - queued_at >= DELAY


async def test_a_container_removed_before_its_rename_is_never_renamed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An exec login's container (``ssh host true``) is gone before the delay: asking podman
    to rename it would only cost a request answered "no such container"."""
    api = RecordingApi()
    renames = Renames(api)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(renames.run)
        renames.rename("short", "trissh-alice-conn1-00000001")
        await trio.sleep(0.1)
        renames.rename("shell", "trissh-bob-conn2-00000002")
        renames.forget("short")  # removed at the end of its login
        await trio.sleep(DELAY * 2)
        nursery.cancel_scope.cancel()
    assert [request for _, request, _ in api.calls] == ["POST /containers/shell/rename"]


async def test_a_failed_rename_is_logged_and_the_next_still_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    api = RecordingApi(fail=True)
    renames = Renames(api)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(renames.run)
        renames.rename("a", "trissh-a-1-00000001")
        renames.rename("b", "trissh-b-2-00000002")
        await trio.sleep(DELAY * 2)
        nursery.cancel_scope.cancel()
    assert [request for _, request, _ in api.calls] == [
        "POST /containers/a/rename",
        "POST /containers/b/rename",
    ]


async def test_the_queue_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    """A burst of pooled logins beyond the queue keeps its pool names (no unbounded list)."""
    api = RecordingApi()
    renames = Renames(api)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(renames.run)
        for n in range(QUEUE + 10):
            renames.rename(f"c{n}", f"trissh-u-{n}-00000000")
        await trio.sleep(DELAY * 2)
        nursery.cancel_scope.cancel()
    assert len(api.calls) == QUEUE
