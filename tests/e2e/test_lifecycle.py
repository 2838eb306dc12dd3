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

        async def drain() -> None:
            assert process.stderr is not None
            while await process.stderr.receive_some():
                pass

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
