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
    podman_url: str, authorized_keys: Path, tmp_path: Path, *, config: Path | None = None
) -> AsyncIterator[ServerProcess]:
    """Start `python -m trissh` on a free port; read its port and instance from its log.
    Without a ``config``, the warm pool is off, so each login's container is its own."""
    if config is None:
        config = tmp_path / "no-pool.toml"
        config.write_text("[podman]\nwarm_pool = 0\n")
    argv = [
        sys.executable, "-m", "trissh",
        "--listen", "127.0.0.1:0",
        "--authorized-keys", str(authorized_keys),
        "--host-key", str(tmp_path / "host_key"),
        "--podman-url", podman_url,
        "--config", str(config),
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


async def test_sigterm_tells_users_waits_the_grace_then_cleans_up(
    podman_url: str,
    authorized_keys: Path,
    tmp_path: Path,
    client_key: ClientKey,
    containers: Containers,
) -> None:
    """SIGTERM while a session runs: the user reads "server shutting down", the session
    gets shutdown_grace (2 s), then no container remains and the exit status is 0."""
    config = tmp_path / "trissh.toml"
    config.write_text("[limits]\nshutdown_grace = 2\n[podman]\nwarm_pool = 0\n")
    async with trissh_process(podman_url, authorized_keys, tmp_path, config=config) as server:
        client: list[subprocess.CompletedProcess[bytes]] = []
        async with trio.open_nursery() as nursery:

            async def run_client() -> None:
                client.append(await run_ssh_process(server.port, client_key, "sleep 1000"))

            nursery.start_soon(run_client)
            await containers.wait_for(server.instance, 1)
            stopping = trio.current_time()
            server.process.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                code = await server.process.wait()
            assert code == 0
            assert trio.current_time() - stopping >= 1.9  # the grace was given
        assert await containers.of(server.instance) == []
    assert b"trissh: server shutting down" in client[0].stderr
    assert b"server shutting down" in client[0].stderr.splitlines()[-1]  # the DISCONNECT


async def test_second_signal_skips_the_grace(
    podman_url: str,
    authorized_keys: Path,
    tmp_path: Path,
    client_key: ClientKey,
    containers: Containers,
) -> None:
    """A long grace, then a second SIGTERM: the server stops at once, still cleaning up."""
    config = tmp_path / "trissh.toml"
    config.write_text("[limits]\nshutdown_grace = 600\n[podman]\nwarm_pool = 0\n")
    async with trissh_process(podman_url, authorized_keys, tmp_path, config=config) as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(trio.run_process, check=False, capture_stdout=True, capture_stderr=True),
                ssh_argv(server.port, client_key.path, "sleep 1000"),
            )
            await containers.wait_for(server.instance, 1)
            server.process.send_signal(signal.SIGTERM)
            await trio.sleep(1)
            server.process.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                assert await server.process.wait() == 0
        assert await containers.of(server.instance) == []


async def test_sighup_reloads_users_and_rejects_a_bad_file(
    podman_url: str,
    authorized_keys: Path,
    tmp_path: Path,
    client_key: ClientKey,
    stranger_key: ClientKey,
) -> None:
    """SIGHUP: a new key works for new connections; a broken file is refused with a log
    line and the configuration in force stays."""
    config = tmp_path / "trissh.toml"
    config.write_text("")
    async with trissh_process(podman_url, authorized_keys, tmp_path, config=config) as server:
        before = await run_ssh_process(server.port, stranger_key, "echo hi", user="sam")
        assert before.returncode == 255
        config.write_text(f'[users.sam]\nauthorized_keys = ["{stranger_key.public_line}"]\n')
        server.process.send_signal(signal.SIGHUP)
        await wait_for_event(server, "config_reloaded")
        after = await run_ssh_process(server.port, stranger_key, "echo hi", user="sam")
        assert after.stdout == b"hi\n", after.stderr
        config.write_text("[container]\nimgae = 'typo'\n")
        server.process.send_signal(signal.SIGHUP)
        failed = await wait_for_event(server, "config_reload_failed")
        assert "container.imgae" in failed["error"]
        still = await run_ssh_process(server.port, stranger_key, "echo still", user="sam")
        assert still.stdout == b"still\n"
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await server.process.wait() == 0


async def run_ssh_process(
    port: int, key: ClientKey, command: str, *, user: str = "alice"
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            ssh_argv(port, key.path, command, user=user),
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip


async def wait_for_event(server: ServerProcess, name: str) -> dict[str, Any]:
    with trio.fail_after(15):
        while True:
            for event in server.events():
                if event.get("event") == name:
                    return event
            await trio.sleep(0.1)


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
    podman_url: str,
    authorized_keys: Path,
    tmp_path: Path,
    client_key: ClientKey,
    containers: Containers,
) -> None:
    """One JSON object per line; every line of a connection carries its conn_id and remote.
    With the default configuration: the login gets a container from the warm pool."""
    config = tmp_path / "trissh.toml"
    config.write_text("")
    async with trissh_process(podman_url, authorized_keys, tmp_path, config=config) as server:
        await containers.wait_for(server.instance, 2, timeout=60)  # warm_pool_idle = 2
        with trio.fail_after(60):
            done = await trio.run_process(
                ssh_argv(server.port, client_key.path, "echo hi; exit 3"),
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
        assert done.returncode == 3
        await wait_for_event(server, "connection_closed")  # before we stop the server
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await server.process.wait()
    events = server.events()
    by_name = {event["event"]: event for event in events}
    expected = (
        "connection_accepted", "kex_completed", "auth_succeeded", "container_assigned",
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
    assert by_name["container_created"]["pooled"] is True
    assigned = by_name["container_assigned"]
    removed = next(
        e for e in events if e["event"] == "container_removed" and e["conn_id"] == conn_id
    )
    assert assigned["conn_id"] == conn_id
    assert assigned["container"] == removed["container"]
    assert removed["duration_ms"] > 0
    closed = by_name["connection_closed"]
    assert closed["reason"] in ("client_disconnected", "connection_lost")
    assert closed["bytes_in"] > 0
    assert closed["bytes_out"] > 0
    assert client_key.path.read_text() not in server.log.decode()


async def test_warm_pool_serves_logins_follows_reload_and_drains_on_shutdown(
    podman_url: str,
    authorized_keys: Path,
    tmp_path: Path,
    client_key: ClientKey,
    containers: Containers,
) -> None:
    """`[podman] warm_pool = 2`: two containers wait before anyone logs in, a login gets
    one of them (never again), SIGHUP's new [container] settings replace the ready ones,
    and SIGTERM leaves nothing behind."""
    config = tmp_path / "trissh.toml"
    config.write_text("[podman]\nwarm_pool = 2\n")
    async with trissh_process(podman_url, authorized_keys, tmp_path, config=config) as server:
        await containers.wait_for(server.instance, 2, timeout=60)
        pooled = await containers.of(server.instance)
        first = await run_ssh_process(server.port, client_key, "hostname")
        assert first.returncode == 0, first.stderr
        assigned = await wait_for_event(server, "container_assigned")
        assert assigned["user"] == "alice"
        assert assigned["container"] in [cid[:12] for cid in pooled]
        assert first.stdout.strip().decode() == assigned["container"]  # podman's hostname
        with trio.fail_after(30):  # the used one is removed with its connection
            while assigned["container"] in [c[:12] for c in await containers.of(server.instance)]:
                await trio.sleep(0.1)
        await containers.wait_for(server.instance, 2, timeout=60)  # and the pool refilled

        config.write_text('[podman]\nwarm_pool = 2\n[container]\nenv = { POOL_TEST = "v2" }\n')
        server.process.send_signal(signal.SIGHUP)
        await wait_for_event(server, "config_reloaded")
        with trio.fail_after(60):  # the old ready containers are retired, new ones started
            while set(await containers.of(server.instance)) & set(pooled):
                await trio.sleep(0.1)
        await containers.wait_for(server.instance, 2, timeout=60)
        second = await run_ssh_process(server.port, client_key, "echo $POOL_TEST")
        assert second.stdout == b"v2\n", second.stderr

        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await server.process.wait() == 0
        assert await containers.of(server.instance) == []
