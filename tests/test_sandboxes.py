"""ConnectionSandbox: one container per connection, however its users ask for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from trissh.backend import SandboxSpec
from trissh.backend.memory import MemoryBackend, MemorySandbox
from trissh.connection.sandboxes import ConnectionSandbox


class SlowStart(MemoryBackend):
    """Containers start when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.go = trio.Event()
        self.started = 0

    @asynccontextmanager
    async def open_sandbox(self, spec: SandboxSpec) -> AsyncIterator[MemorySandbox]:
        self.started += 1
        await self.go.wait()
        async with super().open_sandbox(spec) as sandbox:
            yield sandbox


SPEC = SandboxSpec(conn_id="c", username="alice", remote="127.0.0.1:1", instance="t")


async def test_a_session_opening_while_a_forward_starts_the_container_gets_the_same_one() -> None:
    """A forward's ``get`` is starting the container when a session channel opens
    (``prepare``): no second container is started, both get the one."""
    backend = SlowStart()
    got = []
    async with trio.open_nursery() as nursery:
        sandboxes = ConnectionSandbox(backend, SPEC, nursery)

        async def get() -> None:
            got.append(await sandboxes.get())

        nursery.start_soon(get)
        await trio.testing.wait_all_tasks_blocked()
        sandboxes.prepare(10)
        nursery.start_soon(get)
        await trio.testing.wait_all_tasks_blocked()
        backend.go.set()
        await trio.testing.wait_all_tasks_blocked()
        assert backend.started == 1
        assert len(got) == 2
        assert got[0] is got[1]
        nursery.cancel_scope.cancel()
    assert backend.live_sandboxes == 0
