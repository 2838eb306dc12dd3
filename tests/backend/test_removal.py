"""Deferred container removals, against a podman API that fails as podman does (a fake
below Removals: what it owes, what it tries, in which order)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

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


TIMEOUT = 60.0  # PodmanApi default request_timeout


class StalledPodman:
    """podman hung until ``resume_at``: requests time out; then it answers the DELETE it
    holds before the create it holds commits (the race the leaks reviewer saw)."""

    def __init__(self, resume_at: float, name: str) -> None:
        self.timeout = TIMEOUT
        self.resume_at = resume_at
        self.name = name
        self.containers: set[str] = set()
        self.log: list[tuple[float, str, str]] = []

    async def request(
        self, method: str, path: str, *, exchange_bound: float | None = None, **_: Any
    ) -> dict[str, Any] | None:
        ref = path.rsplit("/", 1)[1]
        sent = trio.current_time()
        if sent < self.resume_at:
            with trio.move_on_after(exchange_bound or self.timeout) as bound:
                await trio.sleep_until(self.resume_at)
            if bound.cancelled_caught:
                self.log.append((trio.current_time(), ref, "timed out"))
                raise BackendError("podman: request timed out")
        else:
            await trio.sleep(0.005)
        answer = "200" if ref in self.containers else "404"
        self.containers.discard(ref)
        self.log.append((trio.current_time(), ref, answer))
        return {} if answer == "200" else None

    async def commit_create_after_resume(self) -> None:
        await trio.sleep_until(self.resume_at + 0.05)
        self.containers.add(self.name)


async def _stalled(stall: float) -> set[str]:
    """What is left after a create timed out in a podman stalled ``stall`` seconds."""
    name = "trissh-alice-c1-0123abcd"
    t0 = trio.current_time()
    podman = StalledPodman(resume_at=t0 + stall, name=name)
    removals = Removals(podman, lambda *_: None)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(podman.commit_create_after_resume)
        nursery.start_soon(removals.retry)
        # backend.py _start_container_once: the create times out after TIMEOUT ...
        await trio.sleep(TIMEOUT)
        # ... then _remove_at_exit(name) and watch(name, window=2 * timeout)
        await removals.remove_at_exit(name, "c1")
        removals.watch(name, "c1", window=2 * TIMEOUT)
        await trio.sleep(stall + 600)
        nursery.cancel_scope.cancel()
    return podman.containers


@pytest.mark.parametrize("stall", [100, 200, 240, 300, 400, 600])
async def test_a_create_timed_out_in_a_long_stall_is_removed_after_it(
    autojump_clock: trio.testing.MockClock, stall: float
) -> None:
    """The watch counts from when podman answers again: a stall longer than the window
    left the late container behind (third reader: at 200, 240 and 600 s)."""
    assert not await _stalled(stall)


async def test_a_watched_name_at_shutdown_is_logged(autojump_clock: trio.testing.MockClock) -> None:
    """podman down as the server stops: a name still watched may be made later, which
    the log says (third reader: dropped without a word)."""
    podman = Podman()
    podman.down = True
    removals = Removals(podman, lambda *_: None)  # type: ignore[arg-type]
    removals.watch("trissh-timedout", "c1", window=120)
    with capture_logs() as logs:
        await removals.finish()
    assert [(e["event"], e["container"]) for e in logs] == [
        ("container_maybe_leaked", "trissh-timedout")
    ]
