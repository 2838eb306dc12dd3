"""The walking skeleton end to end: real `ssh` → trissh → rootless podman → back.

Each test checks the container count for its own server instance, so they can run next to
anything else on the same podman service.
"""

from __future__ import annotations

import hashlib
import os
import signal
from functools import partial
from pathlib import Path

import pytest
import trio

from ..support import (
    ClientKey,
    RunningServer,
    make_context,
    needs_ssh,
    run_ssh,
    ssh_argv,
    start_server,
)
from .conftest import Containers, podman_backend

pytestmark = [pytest.mark.podman, pytest.mark.interop, needs_ssh]


async def test_exec_prints_and_exits_with_status(
    podman_server: RunningServer, client_key: ClientKey, containers: Containers
) -> None:
    """`ssh ... 'echo hi; exit 3'` prints hi, exits 3, and the container is gone after."""
    result = await run_ssh(podman_server.port, client_key.path, "echo hi; exit 3")
    assert result.stdout == b"hi\n", result.stderr
    assert result.returncode == 3
    await containers.wait_for(podman_server.ctx.instance, 0)


async def test_runs_in_a_hardened_rootless_container(
    podman_server: RunningServer, client_key: ClientKey
) -> None:
    """Inside: no capabilities, no_new_privs, no network interface but loopback, an init as
    PID 1, and no user that is root on the host (every uid maps to a non-zero host uid)."""
    script = (
        "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
        "echo net: $(ls /sys/class/net); echo uid_map: $(cat /proc/self/uid_map); "
        "echo init: $(tr '\\0' ' ' </proc/1/cmdline)"
    )
    result = await run_ssh(podman_server.port, client_key.path, script)
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(":", 1) for line in result.stdout.decode().splitlines())
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["net"].split() == ["lo"]
    numbers = [int(n) for n in fields["uid_map"].split()]
    ranges = [numbers[i : i + 3] for i in range(0, len(numbers), 3)]
    assert ranges
    assert all(outside > 0 for _, outside, _ in ranges), ranges
    assert fields["init"].split()[0] in ("/run/podman-init", "catatonit"), fields["init"]


async def test_upload_round_trip_through_container(
    podman_server: RunningServer, client_key: ClientKey
) -> None:
    """50 MB of random bytes through `cat` in the container come back identical."""
    data = os.urandom(50_000_000)
    result = await run_ssh(podman_server.port, client_key.path, "cat", stdin=data, timeout=120)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_download_from_container(podman_server: RunningServer, client_key: ClientKey) -> None:
    """`head -c 50000000 /dev/zero` in the container gives exactly 50000000 bytes."""
    result = await run_ssh(
        podman_server.port, client_key.path, "head -c 50000000 /dev/zero", timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == 50_000_000
    assert result.stdout.count(0) == 50_000_000


async def test_sessions_of_one_connection_share_its_container(
    podman_server: RunningServer, client_key: ClientKey, tmp_path: Path
) -> None:
    """Connection mode: two sessions multiplexed on one connection see the same container."""
    control = tmp_path / "mux"
    master = ["-o", "ControlMaster=yes", "-o", f"ControlPath={control}", "-N"]
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(trio.run_process, check=False),
            ssh_argv(podman_server.port, client_key.path, *master),
        )
        with trio.fail_after(15):
            while not control.exists():
                await trio.sleep(0.05)
        shared = ["-o", f"ControlPath={control}"]
        first = await run_ssh(
            podman_server.port, client_key.path, *shared, "hostname; touch /tmp/mark"
        )
        second = await run_ssh(
            podman_server.port, client_key.path, *shared, "hostname; ls /tmp/mark"
        )
        assert first.returncode == 0, first.stderr
        assert second.returncode == 0, second.stderr
        assert first.stdout.splitlines()[0] == second.stdout.splitlines()[0]
        nursery.cancel_scope.cancel()


async def test_client_killed_mid_command_removes_container(
    podman_server: RunningServer, client_key: ClientKey, containers: Containers
) -> None:
    """SIGKILL of the ssh client mid-command: its container is removed within seconds."""
    instance = podman_server.ctx.instance
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            partial(trio.run_process, check=False),
            ssh_argv(podman_server.port, client_key.path, "sleep 1000"),
        )
        await containers.wait_for(instance, 1)
        process.send_signal(signal.SIGKILL)
    await containers.wait_for(instance, 0)


async def test_rejected_key_gets_255_and_server_keeps_serving(
    podman_server: RunningServer, client_key: ClientKey, stranger_key: ClientKey
) -> None:
    """A key that is not authorized is refused (exit 255); a good one works afterwards."""
    refused = await run_ssh(podman_server.port, stranger_key.path, "true")
    assert refused.returncode == 255
    accepted = await run_ssh(podman_server.port, client_key.path, "echo ok")
    assert accepted.stdout == b"ok\n", accepted.stderr


async def test_missing_image_fails_with_a_clear_message(
    nursery: trio.Nursery,
    podman_url: str,
    authorized_keys: Path,
    tmp_path: Path,
    client_key: ClientKey,
) -> None:
    """An image that does not exist: the client sees one line naming it, and a failure."""
    ctx = make_context(
        podman_backend(podman_url),
        authorized_keys,
        tmp_path / "host_key",
        **{"container.image": "localhost/does-not-exist:1"},
    )
    server = await start_server(nursery, ctx)
    result = await run_ssh(server.port, client_key.path, "true")
    assert result.returncode == 255
    assert result.stderr == (
        b"trissh: container image 'localhost/does-not-exist:1' not found"
        b" (localhost/ images are never pulled)\n"
    )
    await server.stop()
