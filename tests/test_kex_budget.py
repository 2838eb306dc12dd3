"""Key exchanges before login share the event loop's time: a flood of costly ones (a
client asks for a finite-field group and sends a constant ``e``, at no cost of its own)
waits its turn instead of holding every established session's traffic."""

from __future__ import annotations

import base64
import dataclasses
import itertools
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.peer import Peer
from tests.sshpeer import USER_KEY, ed25519_blob
from trissh.backend.memory import MemoryBackend
from trissh.connection.driver import serve_connection
from trissh.connection.kex_budget import BURST, SHARE, KexBudget

from .support import make_context

#: What each exchange costs in the test (its CPU, as the transport measures it).
COST = 0.1


async def test_the_budget_lets_a_burst_through_then_paces(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = KexBudget()
    started = trio.current_time()
    for _ in range(3):
        await budget.wait_turn()
        budget.charge(COST)
    assert trio.current_time() == started  # within the burst: no wait
    await budget.wait_turn()
    waited = trio.current_time() - started
    assert waited == pytest.approx((3 * COST - BURST) / SHARE, abs=1e-6)


async def test_pre_login_key_exchanges_are_paced_server_wide(
    memory_backend: MemoryBackend, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Ten connections exchanging keys at once, each exchange costing COST: the last one
    is done no sooner than the budget allows (before, all at once: the loop was held for
    the ten exchanges' whole time)."""
    ctx = make_context(memory_backend, Path("/dev/null"), tmp_path / "host_key")
    ticks = itertools.count()
    # Each reading of the CPU clock is COST later than the last: every costed step of an
    # exchange costs COST.
    ctx = dataclasses.replace(
        ctx, protocol=dataclasses.replace(ctx.protocol, cpu_clock=lambda: next(ticks) * COST)
    )
    done: list[float] = []
    started = trio.current_time()

    async def one(nursery: trio.Nursery, number: int) -> None:
        server_end, client_end = trio.testing.memory_stream_pair()
        nursery.start_soon(
            lambda: serve_connection(server_end, ctx, conn_id=f"k{number}", remote="mem")
        )
        peer = Peer(client_end)
        while not peer.client.established:
            await peer._read()
        done.append(trio.current_time() - started)

    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as clients:
                for number in range(10):
                    clients.start_soon(one, nursery, number)
            nursery.cancel_scope.cancel()
    assert len(done) == 10
    assert max(done) >= (10 * COST - BURST) / SHARE - 2 * COST / SHARE


async def test_a_connection_past_its_key_exchange_does_not_wait(
    memory_backend: MemoryBackend, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Turns are for key exchanges: a client that has its keys and is logging in (or only
    closing) is not held behind a flood's debt (before: every read until login waited;
    second reader: logins took 3.0 s instead of 0.8 s under a flood)."""
    keys = tmp_path / "authorized_keys"
    keys.write_text("ssh-ed25519 " + base64.b64encode(ed25519_blob(USER_KEY)).decode() + "\n")
    ctx = make_context(memory_backend, keys, tmp_path / "host_key")
    server_end, client_end = trio.testing.memory_stream_pair()
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: serve_connection(server_end, ctx, conn_id="k", remote="m"))
            peer = Peer(client_end)
            while not peer.client.established:
                await peer._read()
            ctx.state.kex_budget.charge(100.0)  # a flood's exchanges since
            started = trio.current_time()
            await peer.login()
            assert trio.current_time() - started < 1
            nursery.cancel_scope.cancel()
