"""`signal` (RFC 4254 §6.9) and `break` (RFC 4335) from a real client (asyncssh), in both
execution modes, down to the program in the container."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from ..support import ClientKey, RunningServer, make_context, require_module, start_server
from .conftest import podman_backend

asyncssh = require_module("asyncssh")
pytestmark = [pytest.mark.podman, pytest.mark.interop]


@pytest.fixture(params=["connection", "session"])
async def server(
    request: pytest.FixtureRequest,
    nursery: trio.Nursery,
    podman_url: str,
    authorized_keys: Path,
    tmp_path: Path,
) -> AsyncIterator[RunningServer]:
    ctx = make_context(
        podman_backend(podman_url), authorized_keys, tmp_path / "host_key",
        **{"session.execution_mode": request.param},
    )  # fmt: skip
    running = await start_server(nursery, ctx)
    yield running
    await running.stop()


def signal_then_wait(
    port: int, key: Path, *, use_break: bool
) -> tuple[tuple[str, bool, str, str] | None, int | None]:
    """In asyncio (asyncssh's world): start `sleep`, interrupt it, return how it ended."""

    async def main() -> tuple[tuple[str, bool, str, str] | None, int | None]:
        async with asyncssh.connect(
            "127.0.0.1", port, username="alice", client_keys=[str(key)], known_hosts=None
        ) as conn:
            term = "xterm" if use_break else None
            process = await conn.create_process("sleep 1000", term_type=term)
            await asyncio.sleep(1.5)  # the program runs
            if use_break:
                process.channel.send_break(500)
            else:
                process.send_signal("TERM")
            result = await asyncio.wait_for(process.wait(), 30)
            exit_signal: tuple[str, bool, str, str] | None = result.exit_signal
            exit_status: int | None = result.exit_status
            return exit_signal, exit_status

    return asyncio.run(main())


async def test_signal_request_kills_the_program(
    server: RunningServer, client_key: ClientKey
) -> None:
    """signal TERM: the program dies of it, and exit-signal TERM comes back."""
    exit_signal, _ = await trio.to_thread.run_sync(
        lambda: signal_then_wait(server.port, client_key.path, use_break=False)
    )
    assert exit_signal is not None
    assert exit_signal[0] == "TERM"


async def test_break_interrupts_a_pty_program(server: RunningServer, client_key: ClientKey) -> None:
    """BREAK on a terminal session is SIGINT for the program."""
    exit_signal, _ = await trio.to_thread.run_sync(
        lambda: signal_then_wait(server.port, client_key.path, use_break=True)
    )
    assert exit_signal is not None
    assert exit_signal[0] == "INT"
