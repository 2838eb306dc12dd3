"""Deferred container removals, against a podman API that fails as podman does (a fake
below Removals: what it owes, what it tries, in which order)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from trissh.backend.errors import BackendError, BackendUnavailable
from trissh.backend.podman.removal import Removals


class Podman:
    """DELETE /containers/REF: removed (``{}``), absent (None, as ``missing_ok``), or not."""

    def __init__(self) -> None:
        self.containers: set[str] = set()
        self.refused: set[str] = set()
        self.down = False
        self.deletes: list[str] = []

    async def request(self, method: str, path: str, **_: Any) -> dict[str, Any] | None:
        await trio.lowlevel.checkpoint()
        assert method == "DELETE"
        ref = path.rsplit("/", 1)[1]
        self.deletes.append(ref)
        if self.down:
            raise BackendUnavailable("podman: cannot connect")
        if ref in self.refused:
            raise BackendError(f"podman: removing container {ref}: device or resource busy")
        if ref not in self.containers:
            return None
        self.containers.discard(ref)
        return {}


async def test_a_container_podman_refuses_to_remove_does_not_hold_up_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Three removals deferred while podman was down; once it answers, one it keeps
    refusing no longer keeps the two behind it from being retried (leaks reviewer: after
    ten minutes all three were still owed)."""
    podman = Podman()
    podman.containers = {"stuck", "b", "c"}
    podman.refused = {"stuck"}
    podman.down = True
    removals = Removals(podman, lambda *_: None)  # type: ignore[arg-type]
    for ref in ("stuck", "b", "c"):
        await removals.remove_at_exit(ref, "conn-" + ref)
    podman.down = False
    with trio.move_on_after(60):
        await removals.retry()
    assert podman.containers == {"stuck"}


async def test_a_create_that_timed_out_is_removed_when_podman_finishes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A create request timed out: the container may appear later, when a stalled podman
    catches up, after the removal by name found nothing (leaks reviewer: 6 of 20 such
    logins left a container). Its name is watched for a while and removed if it appears."""
    podman = Podman()
    removals = Removals(podman, lambda *_: None)  # type: ignore[arg-type]
    removals.watch("trissh-late", "conn-late", window=120)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(removals.retry)
        await trio.sleep(30)
        podman.containers.add("trissh-late")  # podman finishes the create
        await trio.sleep(30)
        assert "trissh-late" not in podman.containers
        await trio.sleep(200)  # past the window: no more requests for it
        asked = len(podman.deletes)
        await trio.sleep(100)
        assert len(podman.deletes) == asked
        nursery.cancel_scope.cancel()
