"""Chaos: 200 sessions over 20 connections, random kills and closes, podman restarted
in the middle. Afterwards nothing of trissh may be left: no container, no task."""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import trio

from tests.sshpeer import USER_KEY, ClientConnection, SeededRng, ed25519_blob
from trissh.protocol.messages import connection as conn

from ..peer import Peer
from ..support import make_context, start_server
from .conftest import Containers, podman_backend

pytestmark = [pytest.mark.podman]

CONNECTIONS = 20
SESSIONS_PER_CONNECTION = 10
COMMANDS = ["sleep 1; echo done", "head -c 200000 /dev/zero", "cat", "sleep 60", "exit 3"]
SERVICE_PID = trio.Path("/run/trissh-podman/service.pid")
SETUP = Path(__file__).parents[2] / "scripts" / "setup-host.sh"


async def restart_podman_service(outcome: Counter[str]) -> None:
    """Kill the podman API service and bring it back with the set-up script (root only)."""
    if os.geteuid() != 0 or not await SERVICE_PID.exists():
        outcome["podman_restart_skipped"] += 1
        return
    pid = int(await SERVICE_PID.read_text())
    os.kill(pid, signal.SIGTERM)
    await trio.sleep(1)
    await trio.run_process([str(SETUP)], capture_stdout=True, stderr=subprocess.DEVNULL)
    outcome["podman_restarted"] += 1


async def one_connection(port: int, seed: int, outcome: Counter[str]) -> None:
    try:
        await _one_connection(port, seed, outcome)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        outcome["connection_broken"] += 1


async def _one_connection(port: int, seed: int, outcome: Counter[str]) -> None:
    rng = random.Random(seed)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    peer = Peer(stream, answer_keepalives=True)
    peer.client = ClientConnection(rng=SeededRng(seed))
    abort_after = rng.uniform(0.5, 8) if rng.random() < 0.25 else None
    with trio.move_on_after(abort_after if abort_after is not None else 120) as scope:
        await peer.login()
        open_channels: set[int] = set()
        for index in range(SESSIONS_PER_CONNECTION):
            channel = await peer.open_session(index)
            command = rng.choice(COMMANDS)
            await peer.exec(channel, command, stdin=b"x" * 1000 if command == "cat" else b"")
            open_channels.add(index)
        by_server = {index: index for index in open_channels}  # sender == our local number
        closing: set[int] = set()
        deadline = trio.current_time() + rng.uniform(1, 6)
        while open_channels or closing:
            with trio.move_on_at(deadline) as wait:
                message = await peer.next_message()
            if wait.cancelled_caught and not open_channels:
                deadline = trio.current_time() + 5
                continue
            if wait.cancelled_caught:  # time for a random close
                victim = rng.choice(sorted(open_channels))
                open_channels.discard(victim)
                closing.add(victim)
                peer.client.channel_close(by_server[victim])
                await peer.flush()
                outcome["channels_closed_by_client"] += 1
                deadline = trio.current_time() + rng.uniform(1, 6)
                continue
            if message is None:
                outcome["connection_ended_by_server"] += 1
                break
            if isinstance(message, conn.ChannelData):
                if message.recipient_channel in open_channels:  # never after our own CLOSE
                    peer.client.window_adjust(message.recipient_channel, len(message.data))
            elif isinstance(message, conn.ChannelClose):
                channel = message.recipient_channel
                if channel in open_channels:
                    open_channels.discard(channel)
                    peer.client.channel_close(by_server[channel])
                    outcome["sessions_finished"] += 1
                closing.discard(channel)
            await peer.flush()
    if scope.cancelled_caught:
        outcome["connections_aborted"] += 1
    await trio.aclose_forcefully(stream)


async def test_chaos_leaves_nothing_behind(
    nursery: trio.Nursery, podman_url: str, tmp_path: Path, containers: Containers
) -> None:
    keys = tmp_path / "authorized_keys"
    keys.write_text("ssh-ed25519 " + base64.b64encode(ed25519_blob(USER_KEY)).decode() + "\n")
    ctx = make_context(podman_backend(podman_url), keys, tmp_path / "host_key")
    server = await start_server(nursery, ctx)
    outcome: Counter[str] = Counter()
    with trio.fail_after(240):
        async with trio.open_nursery() as clients:
            for seed in range(CONNECTIONS):
                clients.start_soon(one_connection, server.port, seed, outcome)
                await trio.sleep(0.1)
            await trio.sleep(3)
            await restart_podman_service(outcome)
        await containers.wait_for(ctx.instance, 0, timeout=60)
        while ctx.state.statistics() != {"connections": 0, "tasks": 0}:
            await trio.sleep(0.1)
    print(dict(outcome), ctx.state.statistics())
    assert outcome["podman_restarted"] or outcome["podman_restart_skipped"]
    await server.stop()
