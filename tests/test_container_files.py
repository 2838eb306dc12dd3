"""A connection's files go into each container once: a session starting there meanwhile
waits until they are written, and a write that was cancelled is done again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import trio
import trio.testing

from trissh.backend import Sandbox
from trissh.channels.files import ContainerFiles


@dataclass
class Container:
    """Only what ``once`` looks at: the container's id."""

    container_id: str = "c1"


SANDBOX = cast("Sandbox", Container())


async def test_a_concurrent_session_waits_for_the_files(
    autojump_clock: trio.testing.MockClock,
) -> None:
    files = ContainerFiles()
    written: list[float] = []
    seen: list[float] = []

    async def write() -> None:
        await trio.sleep(1)
        written.append(trio.current_time())

    async def session() -> None:
        await files.once("secret", SANDBOX, write)
        seen.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session)
        await trio.sleep(0.1)
        nursery.start_soon(session)
    assert len(written) == 1
    assert min(seen) >= written[0]  # neither went on before the files were there


async def test_a_cancelled_write_is_done_by_the_next_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    files = ContainerFiles()
    writes: list[str] = []

    async def write() -> None:
        await trio.sleep(1)
        writes.append("done")

    with trio.move_on_after(0.5):  # the first session's client left mid-write
        await files.once("secret", SANDBOX, write)
    await files.once("secret", SANDBOX, write)
    assert writes == ["done"]
