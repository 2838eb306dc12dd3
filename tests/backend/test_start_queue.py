"""The container start queue (issue 19): starts bounded and served in order, visible in the
log and the gauges; removals yield to waiting logins, within a bound. The podman calls sit
below the queue: these tests hold the slots themselves."""

from __future__ import annotations

import pytest
import trio

from trissh.backend.podman.starts import BUSY_REMOVALS, REMOVAL_PATIENCE, StartQueue

from ..support import capture_module_log


def _queue(slots: int) -> tuple[StartQueue, list[tuple[str, float]]]:
    observed: list[tuple[str, float]] = []
    return StartQueue(slots, lambda operation, seconds: observed.append((operation, seconds))), (
        observed
    )


async def test_logins_start_in_the_order_they_asked_and_the_wait_is_told(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = capture_module_log(monkeypatch, "trissh.backend.podman.starts")
    starts, observed = _queue(1)
    order: list[str] = []
    release = trio.Event()

    async def login(conn_id: str) -> None:
        async with starts.turn(conn_id) as waited:
            order.append(conn_id)
            assert waited >= 0
            if conn_id == "first":
                await release.wait()
            else:
                await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        for conn_id in ("first", "a", "b", "c"):
            nursery.start_soon(login, conn_id)
            await trio.sleep(0.1)
        assert (starts.running, starts.waiting) == (1, 3)
        release.set()
    assert order == ["first", "a", "b", "c"]
    queued = [(e["conn_id"], e["position"]) for e in logs if e["event"] == "container_start_queued"]
    assert queued == [("a", 1), ("b", 2), ("c", 3)]
    waits = [seconds for operation, seconds in observed if operation == "queue"]
    assert len(waits) == 4
    assert waits[-1] >= 1.0  # c waited for first's release and for a and b
    assert (starts.running, starts.waiting) == (0, 0)


async def test_a_login_that_gives_up_leaves_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    logs = capture_module_log(monkeypatch, "trissh.backend.podman.starts")
    starts, _ = _queue(1)
    async with trio.open_nursery() as nursery:
        hold = trio.Event()

        async def holder() -> None:
            async with starts.turn("holder"):
                await hold.wait()

        nursery.start_soon(holder)
        await trio.sleep(0.1)
        with trio.move_on_after(0.3):  # the login's start timeout
            async with starts.turn("late"):
                pytest.fail("got a slot that was taken")
        assert starts.waiting == 0
        hold.set()
    abandoned = [e for e in logs if e["event"] == "container_start_abandoned"]
    assert [e["conn_id"] for e in abandoned] == ["late"]
    assert abandoned[0]["queued_ms"] >= 250


async def test_removals_yield_to_waiting_logins_but_not_forever(
    autojump_clock: trio.abc.Clock,
) -> None:
    """While a login waits for a start, at most BUSY_REMOVALS removals run at once; none
    waits longer than REMOVAL_PATIENCE; with nobody waiting, all run at once."""
    starts, _ = _queue(1)
    running = 0
    most = 0
    finished: list[float] = []

    async def remove() -> None:
        nonlocal running, most
        async with starts.removal_turn():
            running += 1
            most = max(most, running)
            await trio.sleep(1)
            running -= 1
        finished.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        hold = trio.Event()

        async def login(conn_id: str) -> None:
            async with starts.turn(conn_id):
                await hold.wait()

        nursery.start_soon(login, "starting")
        nursery.start_soon(login, "waiting")
        await trio.sleep(0.1)
        assert starts.waiting == 1
        began = trio.current_time()
        for _ in range(6):
            nursery.start_soon(remove)
        await trio.sleep(2.5)
        assert most == BUSY_REMOVALS
        await trio.sleep(REMOVAL_PATIENCE)
        assert len(finished) == 6  # past its patience a removal goes ahead regardless
        assert max(finished) - began <= REMOVAL_PATIENCE + 2
        hold.set()
    most = 0
    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(remove)
    assert most == 6  # nobody waits for a start: no limit


async def test_one_user_with_many_logins_does_not_hold_the_queue_for_others(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Slots go round the users who wait, each user's own logins in their order: one user
    opening many connections at once (a container each) must not make a second user wait
    behind all of them."""
    starts, _ = _queue(1)
    order: list[str] = []

    async def login(user: str, conn_id: str) -> None:
        async with starts.turn(conn_id, user):
            order.append(conn_id)
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        for n in range(6):
            nursery.start_soon(login, "mallory", f"m{n}")
            await trio.sleep(0.01)
        nursery.start_soon(login, "alice", "a0")
        await trio.sleep(0.01)
        nursery.start_soon(login, "bob", "b0")
    assert order == ["m0", "m1", "a0", "b0", "m2", "m3", "m4", "m5"]
    assert (starts.running, starts.waiting) == (0, 0)


async def test_a_slot_handed_to_a_login_that_just_gave_up_goes_on_to_the_next(
    autojump_clock: trio.abc.Clock,
) -> None:
    starts, _ = _queue(1)
    got: list[str] = []
    giving_up = trio.CancelScope()

    async def login(conn_id: str, user: str, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            async with starts.turn(conn_id, user):
                got.append(conn_id)

    with trio.fail_after(60):  # a slot lost with "quitter" would leave "next" waiting
        async with trio.open_nursery() as nursery, starts.turn("holder", "u"):
            nursery.start_soon(login, "quitter", "v", giving_up)
            nursery.start_soon(login, "next", "w")
            await trio.sleep(1)
            # In one step: "quitter" gives up, then the slot is handed to it before it
            # has run to leave the queue.
            giving_up.cancel()
    assert got == ["next"]
    assert (starts.running, starts.waiting) == (0, 0)
