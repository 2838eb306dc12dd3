"""More containers at once than the kernel's key quota (issue 19's first cause).

With podman's defaults every container costs the podman user a session keyring, and a
non-root user may hold ``kernel.keys.maxkeys`` (200) keys: runc failed past ~200 containers
at once ("unable to join session keyring: unable to create session key: disk quota
exceeded"; 203 of 400 logins). scripts/setup-host.sh sets ``keyring = false`` and trissh
gives each container a user namespace of its own (its keys, if any, are charged to its own
root), so past the quota every container still starts.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import trio

from trissh.backend import BackendError, SandboxSpec
from trissh.config import ServerConfig
from trissh.config.container import container_settings

from .conftest import Containers, podman_backend

pytestmark = pytest.mark.podman

#: Past the default quota of 200 keys, bounded for a 2-core CI machine (~30 s).
BEYOND = 20
#: Whatever the server does, the test ends: starts and removals are each bounded.
START_BOUND = 180.0


def _quota() -> int:
    return int(Path("/proc/sys/kernel/keys/maxkeys").read_text())


async def test_more_containers_at_once_than_the_key_quota_all_start(
    podman_url: str, containers: Containers
) -> None:
    count = min(_quota(), 250) + BEYOND
    backend = podman_backend(podman_url)
    settings = container_settings(ServerConfig().container)
    instance = f"keys-{uuid.uuid4().hex[:8]}"
    started = 0
    failures: list[str] = []
    all_started = trio.Event()
    release = trio.Event()

    async def hold(number: int) -> None:
        nonlocal started
        spec = SandboxSpec(
            conn_id=f"k{number}", username="alice", remote="192.0.2.7:50000",
            instance=instance, settings=settings,
        )  # fmt: skip
        try:
            async with backend.open_sandbox(spec):
                started += 1
                if started == count:
                    all_started.set()
                await release.wait()
        except BackendError as exc:
            failures.append(str(exc))
            if started + len(failures) == count:
                all_started.set()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.run)
            async with trio.open_nursery() as holders:
                for number in range(count):
                    holders.start_soon(hold, number)
                with trio.move_on_after(START_BOUND):
                    await all_started.wait()
                assert len(await containers.of(instance)) == started
                release.set()
            nursery.cancel_scope.cancel()
    finally:
        backend.close()
    reasons = sorted(set(failures))[:3]
    assert failures == [], f"{len(failures)} of {count} failed to start: {reasons}"
    assert started == count, f"{started} of {count} started within {START_BOUND} s"
    assert await containers.of(instance) == []
