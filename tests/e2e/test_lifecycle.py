"""The server as an operator runs it (`python -m trissh`): signals, the sweep, the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from podman import PodmanClient

from trissh.backend.base import LABEL_CONN_ID, LABEL_INSTANCE

from ..support import ClientKey, needs_ssh, ssh_argv
from .conftest import Containers

pytestmark = [pytest.mark.podman, needs_ssh]


class ServerProcess:
    def __init__(self, process: trio.Process, started: dict[str, Any]) -> None:
        self.process = process
        self.port = int(started["listen"][0].rsplit(":", 1)[1])
        self.instance = str(started["instance"])
        self.log = bytearray()

    def events(self) -> list[dict[str, Any]]:
        """Every log line so far, parsed: each one must be a JSON object."""
        return [json.loads(line) for line in self.log.splitlines()]


@asynccontextmanager
async def trissh_process(
    podman_url: str, authorized_keys: Path, tmp_path: Path
) -> AsyncIterator[ServerProcess]:
    """Start `python -m trissh` on a free port; read its port and instance from its log."""
    argv = [
        sys.executable, "-m", "trissh",
        "--listen", "127.0.0.1:0",
        "--authorized-keys", str(authorized_keys),
        "--host-key", str(tmp_path / "host_key"),
        "--podman-url", podman_url,
    ]  # fmt: skip
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, check=False, stderr=subprocess.PIPE), argv
        )
        assert process.stderr is not None
        buffer = b""
        started: dict[str, Any] | None = None
        with trio.fail_after(30):
            while started is None:
                chunk = await process.stderr.receive_some()
                assert chunk, f"trissh exited early: {buffer.decode(errors='replace')}"
                buffer += chunk
                for line in buffer.splitlines():
                    if line.startswith(b"{") and b'"server_started"' in line:
                        started = json.loads(line)
        server = ServerProcess(process, started)
        server.log += buffer

        async def drain() -> None:
            assert process.stderr is not None
            while chunk := await process.stderr.receive_some():
                server.log += chunk

        nursery.start_soon(drain)
        try:
            yield server
        finally:
            if process.returncode is None:
                process.kill()


async def test_sigterm_mid_session_removes_containers_and_exits_zero(
    podman_url: str,
    authorized_keys: Path,
    tmp_path: Path,
    client_key: ClientKey,
    containers: Containers,
) -> None:
    """SIGTERM while a session runs: the client is cut off, no container remains, exit 0."""
    async with trissh_process(podman_url, authorized_keys, tmp_path) as server:
        async with trio.open_nursery() as nursery:
            client = await nursery.start(
                partial(trio.run_process, check=False, capture_stdout=True, capture_stderr=True),
                ssh_argv(server.port, client_key.path, "sleep 1000"),
            )
            await containers.wait_for(server.instance, 1)
            server.process.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                code = await server.process.wait()
            assert code == 0
            with trio.fail_after(10):
                await client.wait()
        assert await containers.of(server.instance) == []


async def test_startup_sweep_removes_leftovers_of_a_crashed_server(
    podman_url: str, authorized_keys: Path, tmp_path: Path, containers: Containers
) -> None:
    """A container labelled by another (dead) trissh instance is removed at start-up."""
    client = PodmanClient(base_url=podman_url)

    def create_leftover() -> str:
        container = client.containers.create(
            "localhost/trissh-base:latest",
            command=["sleep", "1000"],
            labels={LABEL_INSTANCE: "crashed-instance-for-test", LABEL_CONN_ID: "gone"},
            network_mode="none",
        )
        return str(container.id)

    leftover = await trio.to_thread.run_sync(create_leftover)
    async with trissh_process(podman_url, authorized_keys, tmp_path) as server:
        await containers.wait_for("crashed-instance-for-test", 0)
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await server.process.wait()
    assert leftover not in await containers.of("crashed-instance-for-test")


async def test_json_logs_tell_a_connection_s_story(
    podman_url: str, authorized_keys: Path, tmp_path: Path, client_key: ClientKey
) -> None:
    """One JSON object per line; every line of a connection carries its conn_id and remote."""
    async with trissh_process(podman_url, authorized_keys, tmp_path) as server:
        with trio.fail_after(60):
            done = await trio.run_process(
                ssh_argv(server.port, client_key.path, "echo hi; exit 3"),
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
        assert done.returncode == 3
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await server.process.wait()
    events = server.events()
    by_name = {event["event"]: event for event in events}
    expected = (
        "connection_accepted", "kex_completed", "auth_succeeded", "container_created",
        "session_started", "session_ended", "container_removed", "connection_closed",
    )  # fmt: skip
    for name in expected:
        assert name in by_name, f"no {name} in {[e['event'] for e in events]}"
    conn_id = by_name["connection_accepted"]["conn_id"]
    story = [event for event in events if event.get("conn_id") == conn_id]
    assert all(event["remote"].startswith("127.0.0.1:") for event in story)
    assert {"timestamp", "level"} <= set(by_name["connection_closed"])
    assert by_name["kex_completed"]["kex"].startswith("sntrup761x25519-sha512")  # 9.2 default
    assert by_name["auth_succeeded"]["key_fingerprint"].startswith("SHA256:")
    assert by_name["auth_succeeded"]["user"] == "alice"
    assert by_name["session_started"]["command"] == "echo hi; exit 3"
    assert by_name["session_ended"]["exit_code"] == 3
    assert by_name["container_created"]["container"] == by_name["container_removed"]["container"]
    assert by_name["container_removed"]["duration_ms"] > 0
    closed = by_name["connection_closed"]
    assert closed["reason"] in ("client_disconnected", "connection_lost")
    assert closed["bytes_in"] > 0
    assert closed["bytes_out"] > 0
    assert client_key.path.read_text() not in server.log.decode()
