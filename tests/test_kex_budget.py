"""Key exchanges before login share the event loop's time: a flood of costly ones (a
client asks for a finite-field group and sends a constant ``e``, at no cost of its own)
waits its turn instead of holding every established session's traffic."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.peer import Peer
from tests.sshpeer import ClientConnection, SeededRng
from trissh.backend.memory import MemoryBackend
from trissh.connection.driver import serve_connection
from trissh.connection.kex_budget import BURST, SHARE, KexBudget
from trissh.protocol import kex_dh
from trissh.protocol.messages import userauth as ua

from .auth.test_user_names import authenticating
from .auth.test_user_names import key_file as user_key_file
from .support import make_context

#: What each exchange costs in the test (its CPU, as the transport measures it).
COST = 0.1
GROUP16 = "diffie-hellman-group16-sha512"


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
    memory_backend: MemoryBackend,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ten group16 exchanges at once, only the exponentiation costing (as on a real CPU,
    where reading a KEXINIT costs microseconds): the last one is done no sooner than the
    budget allows (before: all at once, the loop held for the ten exchanges' whole time;
    and a version that took turns only until the cheap KEXINIT had been charged let the
    costly KEXDH_INIT through unpaced, third reader)."""
    spent = [0.0]
    respond = kex_dh.DhGroup.respond

    def costly(group: kex_dh.DhGroup, e: int, rng: Callable[[int], bytes]) -> tuple[int, int]:
        spent[0] += COST
        return respond(group, e, rng)

    monkeypatch.setattr(kex_dh.DhGroup, "respond", costly)
    ctx = make_context(memory_backend, Path("/dev/null"), tmp_path / "host_key")
    ticks = itertools.count()
    clock = lambda: spent[0] + next(ticks) * 1e-9  # noqa: E731 - a clock that moves
    ctx = dataclasses.replace(ctx, protocol=dataclasses.replace(ctx.protocol, cpu_clock=clock))
    done: list[float] = []
    started = trio.current_time()

    async def one(nursery: trio.Nursery, number: int) -> None:
        server_end, client_end = trio.testing.memory_stream_pair()
        nursery.start_soon(
            lambda: serve_connection(server_end, ctx, conn_id=f"k{number}", remote="mem")
        )
        peer = Peer(client_end)
        peer.client = ClientConnection(rng=SeededRng(number), kex_algorithms=(GROUP16,))
        while not peer.client.established:
            await peer._read()
        done.append(trio.current_time() - started)

    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as clients:
                for number in range(10):
                    clients.start_soon(one, nursery, number)
            nursery.cancel_scope.cancel()
    assert spent[0] == pytest.approx(10 * COST)
    assert max(done) >= (10 * COST - BURST) / SHARE - 2 * COST / SHARE


async def test_a_connection_past_its_key_exchange_does_not_wait(
    memory_backend: MemoryBackend, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Turns are for key exchanges: a client that has its keys and is logging in (or only
    closing) is not held behind a flood's debt (before: every read until login waited;
    second reader: logins took 3.0 s instead of 0.8 s under a flood)."""
    ctx = make_context(memory_backend, user_key_file(tmp_path), tmp_path / "host_key")
    with trio.fail_after(600):
        async with authenticating(ctx) as peer:
            ctx.state.kex_budget.charge(100.0)  # a flood's exchanges since
            started = trio.current_time()
            peer.client.auth_publickey()
            await peer.expect(ua.UserauthSuccess)
            assert trio.current_time() - started < 1


@pytest.mark.parametrize("via_proxy_header", [True, False])
async def test_an_exchange_waits_its_turn_however_its_bytes_came(
    memory_backend: MemoryBackend,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    via_proxy_header: bool,
) -> None:
    """Bytes read past a PROXY header in the same segment (AWS NLB sends them so) are
    processed as the first read's and wait their turn too (fourth reader: they skipped it,
    so behind such a balancer a flood was not paced at all)."""
    computed: list[float] = []
    respond = kex_dh.DhGroup.respond

    def spy(group: kex_dh.DhGroup, e: int, rng: Callable[[int], bytes]) -> tuple[int, int]:
        computed.append(trio.current_time())
        return respond(group, e, rng)

    monkeypatch.setattr(kex_dh.DhGroup, "respond", spy)
    ctx = make_context(memory_backend, Path("/dev/null"), tmp_path / "host_key")
    ctx.state.kex_budget.charge(100.0)  # a flood's debt: a paced exchange waits ~200 s
    client = ClientConnection(rng=SeededRng(1), kex_algorithms=(GROUP16,))
    client.send_ecdh_init(GROUP16)  # KEXDH_INIT right after KEXINIT
    sent = client.data_to_send()
    server_end, client_end = trio.testing.memory_stream_pair()
    initial = sent if via_proxy_header else b""
    with trio.move_on_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: serve_connection(
                    server_end, ctx, conn_id="p", remote="m", initial_data=initial
                )
            )
            if not via_proxy_header:
                await client_end.send_all(sent)
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
    assert computed == []
