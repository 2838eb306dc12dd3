"""Chaos: 200 sessions over 20 connections, random kills and closes, podman restarted
in the middle. Afterwards nothing of trissh may be left: no container, no task. On the way:
no SSH connection breaks or hangs; each session ends as its command says, or (caught by the
outage) with status 255 and a message from trissh; logins work again after the restart."""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from tests.sshpeer import USER_KEY, ClientConnection, SeededRng, ed25519_blob
from trissh.protocol.messages import connection as conn
from trissh.protocol.wire import Reader

from ..peer import Peer, exit_status_of, output_of
from ..support import make_context, require, start_server
from .conftest import Containers, _ping, podman_backend

pytestmark = [pytest.mark.podman]

CONNECTIONS = 20
SESSIONS_PER_CONNECTION = 10
#: command -> the exit status it ends with when nobody interrupts it
COMMANDS = {
    "sleep 1; echo done": 0,
    "head -c 200000 /dev/zero": 0,
    "cat": 0,
    "sleep 60": None,  # ended only by the client's random closes
    "exit 3": 3,
}
SERVICE_PID = Path("/run/trissh-podman/service.pid")
SETUP = Path(__file__).parents[2] / "scripts" / "setup-host.sh"


@dataclass
class Outcome:
    counts: Counter[str] = field(default_factory=Counter)
    #: (command, exit status, stderr) of sessions that ended otherwise than their command says
    odd_endings: list[tuple[str, int | None, bytes]] = field(default_factory=list)


def _service_pid() -> int:
    return int(SERVICE_PID.read_text())


def _running(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _restartable() -> bool:
    return os.geteuid() == 0 and SERVICE_PID.exists()


async def restart_podman_service(url: str) -> tuple[int, int]:
    """Kill setup-host.sh's podman API service and start it again with the script (which
    the suite runs as root). Returns the old and the new pid."""
    old = _service_pid()
    os.kill(old, signal.SIGTERM)
    with trio.fail_after(20):
        while _running(old):
            await trio.sleep(0.05)
    await trio.run_process([str(SETUP)], capture_stdout=True, stderr=subprocess.DEVNULL)
    assert _ping(url) is None, "the podman service did not come back"
    return old, _service_pid()


async def one_connection(port: int, seed: int, outcome: Outcome) -> None:
    try:
        await _one_connection(port, seed, outcome)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        outcome.counts["connection_broken"] += 1


async def _one_connection(port: int, seed: int, outcome: Outcome) -> None:
    counts = outcome.counts
    rng = random.Random(seed)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    peer = Peer(stream, answer_keepalives=True)
    peer.client = ClientConnection(rng=SeededRng(seed))
    abort_after = rng.uniform(0.5, 8) if rng.random() < 0.25 else None
    # Without an abort the connection must end by itself well within this bound.
    with trio.move_on_after(abort_after if abort_after is not None else 120) as scope:
        await peer.login()
        commands: dict[int, str] = {}
        statuses: dict[int, int] = {}
        stderr: dict[int, bytes] = {}
        for index in range(SESSIONS_PER_CONNECTION):
            channel = await peer.open_session(index)
            command = rng.choice(list(COMMANDS))
            await peer.exec(channel, command, stdin=b"x" * 1000 if command == "cat" else b"")
            commands[index] = command
        open_channels = set(commands)
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
                counts["channels_closed_by_client"] += 1
                deadline = trio.current_time() + rng.uniform(1, 6)
                continue
            if message is None:
                counts["connection_ended_by_server"] += 1
                break
            if isinstance(message, conn.ChannelData):
                if message.recipient_channel in open_channels:  # never after our own CLOSE
                    peer.client.window_adjust(message.recipient_channel, len(message.data))
            elif isinstance(message, conn.ChannelExtendedData):
                channel = message.recipient_channel
                stderr[channel] = stderr.get(channel, b"") + message.data
            elif isinstance(message, conn.ChannelRequest):
                status = exit_status_of([message])
                if status is not None:
                    statuses[message.recipient_channel] = status
                elif message.request_type == "exit-signal":
                    signal_name = conn.ExitSignalData.decode(Reader(message.data)).signal
                    statuses[message.recipient_channel] = -1
                    counts[f"exit_signal_{signal_name}"] += 1
            elif isinstance(message, conn.ChannelClose):
                channel = message.recipient_channel
                if channel in open_channels:
                    open_channels.discard(channel)
                    peer.client.channel_close(by_server[channel])
                    counts["sessions_finished"] += 1
                    expected, got = COMMANDS[commands[channel]], statuses.get(channel)
                    if got == expected:
                        counts["sessions_ended_as_their_command_says"] += 1
                    else:
                        ending = (commands[channel], got, stderr.get(channel, b""))
                        outcome.odd_endings.append(ending)
                closing.discard(channel)
            await peer.flush()
    if scope.cancelled_caught:
        counts["connections_aborted" if abort_after is not None else "connections_hung"] += 1
    await trio.aclose_forcefully(stream)


async def log_in_and_run(port: int, command: str) -> tuple[bytes, int | None]:
    with trio.fail_after(60):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            peer = Peer(stream, answer_keepalives=True)
            await peer.login()
            channel = await peer.open_session()
            await peer.exec(channel, command)
            messages = await peer.until_close(channel)
        finally:
            await trio.aclose_forcefully(stream)
    return output_of(messages), exit_status_of(messages)


async def test_chaos_leaves_nothing_behind(
    nursery: trio.Nursery, podman_url: str, tmp_path: Path, containers: Containers
) -> None:
    require(
        _restartable(),
        "root and the podman service of scripts/setup-host.sh (to restart it)",
        "run the suite as root, as scripts/nox -s ci does",
    )
    keys = tmp_path / "authorized_keys"
    keys.write_text("ssh-ed25519 " + base64.b64encode(ed25519_blob(USER_KEY)).decode() + "\n")
    ctx = make_context(podman_backend(podman_url), keys, tmp_path / "host_key")
    server = await start_server(nursery, ctx)
    outcome = Outcome()
    with trio.fail_after(240):
        async with trio.open_nursery() as clients:
            for seed in range(CONNECTIONS):
                clients.start_soon(one_connection, server.port, seed, outcome)
                await trio.sleep(0.1)
            await trio.sleep(3)
            old, new = await restart_podman_service(podman_url)
            after = await log_in_and_run(server.port, "echo after-restart")
        await containers.wait_for(ctx.instance, 0, timeout=60)
        while ctx.state.statistics() != {"connections": 0, "tasks": 0}:
            await trio.sleep(0.1)
    counts = outcome.counts
    print(dict(counts), len(outcome.odd_endings), "sessions caught by the outage")
    assert new != old, "the podman service was not restarted"
    assert after == (b"after-restart\n", 0)
    assert counts["connections_hung"] == 0, counts
    assert counts["connection_broken"] == counts["connection_ended_by_server"] == 0, counts
    assert counts["sessions_ended_as_their_command_says"] > 0, counts
    told = [(status, err.startswith(b"trissh: ")) for _, status, err in outcome.odd_endings]
    assert set(told) <= {(255, True)}, outcome.odd_endings
    await server.stop()
