"""Containment on this host (cgroup v1 here, where podman ignores pids and memory limits):
each container its own range of host UIDs, a process flood and a memory hog held by the
limits in force, no privileges inside; checked from inside the container and from the host.

Every test is bounded even when containment is broken: the flood stops at
``FLOOD_ATTEMPTS`` processes, the hog at ``HOG_MB``, every wait has a deadline, and each
client is killed (its container removed with its connection) when a test ends.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from podman import PodmanClient

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

pytestmark = [pytest.mark.podman, needs_ssh]

#: Processes the flood tries to start (each a ``sleep``): far above the limit, harmless here.
FLOOD_ATTEMPTS = 1000
FLOOD_LIMIT = 64
#: The hog's one allocation, in MiB, against a limit of ``HOG_LIMIT_MB``.
HOG_MB = 400
HOG_LIMIT_MB = 128
READY = "ready-for-the-test"


@pytest.fixture
async def contained_server(
    nursery: trio.Nursery, podman_url: str, authorized_keys: Path, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    users = {
        "flood": {"container": {"pids_limit": FLOOD_LIMIT}},
        "hog": {"container": {"memory_limit_mb": HOG_LIMIT_MB}},
    }
    ctx = make_context(
        podman_backend(podman_url), authorized_keys, tmp_path / "host_key", users=users
    )
    server = await start_server(nursery, ctx)
    yield server
    await server.stop()


@asynccontextmanager
async def held_session(
    server: RunningServer, key: ClientKey, command: str, *, user: str
) -> AsyncIterator[list[str]]:
    """``command`` runs, then the session waits (``read``, a shell builtin: no process)
    until the test is done; yields the lines printed before READY. The client is killed
    on the way out, which ends the connection and so removes its container."""
    argv = ssh_argv(server.port, key.path, f"{command}; echo {READY}; read x", user=user)
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, check=False,
            )
        )  # fmt: skip
        assert process.stdout is not None
        lines: list[str] = []
        buffer = b""
        with trio.fail_after(60):
            while READY not in lines:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, f"the session ended early; printed {buffer!r}"
                buffer += chunk
                *done, buffer = buffer.split(b"\n")
                lines += [line.decode() for line in done]
        yield lines[: lines.index(READY)]
        nursery.cancel_scope.cancel()  # kills the client


def _podman_uid(podman_url: str) -> int:
    """The podman service's user: the owner of its socket."""
    return os.stat(podman_url.removeprefix("unix://")).st_uid


def _host_uids(podman_url: str, container_ids: list[str]) -> list[int]:
    """The real UID, seen from the host, of each container's main process."""
    client = PodmanClient(base_url=podman_url)
    uids = []
    for container_id in container_ids:
        pid = client.containers.get(container_id).attrs["State"]["Pid"]
        status = Path(f"/proc/{pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        uids.append(int(uid_line.split()[1]))
    return uids


async def test_each_container_maps_root_to_a_range_of_its_own(
    contained_server: RunningServer,
    client_key: ClientKey,
    containers: Containers,
    podman_url: str,
) -> None:
    """Two containers at once: their uid_maps map root to different ranges, neither to the
    podman user itself (0 in its namespace); from the host their processes run as two
    different UIDs, neither the podman user's."""
    instance = contained_server.ctx.instance
    show = "cat /proc/self/uid_map"
    async with (
        held_session(contained_server, client_key, show, user="alice") as first,
        held_session(contained_server, client_key, show, user="bob") as second,
    ):
        maps = [[tuple(map(int, line.split())) for line in lines] for lines in (first, second)]
        ids = await containers.of(instance)
        assert len(ids) == 2
        host_uids = await trio.to_thread.run_sync(_host_uids, podman_url, ids)
    for uid_map in maps:
        assert len(uid_map) == 1, maps  # one range, root at its start
        inside, outside, size = uid_map[0]
        assert inside == 0, maps
        assert outside != 0, maps  # 0: the podman user, seen from its own namespace
        assert size >= 1024, maps
    (_, a_start, a_size), (_, b_start, b_size) = maps[0][0], maps[1][0]
    assert a_start + a_size <= b_start or b_start + b_size <= a_start, maps  # disjoint
    assert len(set(host_uids)) == 2, host_uids
    assert _podman_uid(podman_url) not in host_uids, host_uids
    await containers.wait_for(instance, 0)


async def test_a_process_flood_stays_under_the_limit(
    contained_server: RunningServer, client_key: ClientKey, containers: Containers
) -> None:
    """flood (pids_limit 64) tries 1000 ``sleep``s: at most 64 processes run in its
    container (counted there with globbing, no fork needed), another user's login runs
    normally meanwhile, and the container is gone once flood leaves."""
    instance = contained_server.ctx.instance
    flood = (
        f"( i=0; while [ $i -lt {FLOOD_ATTEMPTS} ]; do sleep 120 </dev/null >/dev/null 2>&1 & "
        "i=$((i+1)); done ) 2>/dev/null; set -- /proc/[0-9]*; echo $#"
    )
    async with held_session(contained_server, client_key, flood, user="flood") as lines:
        processes = int(lines[-1])
        other = await run_ssh(contained_server.port, client_key.path, "echo fine", user="bob")
        assert (other.returncode, other.stdout) == (0, b"fine\n"), other.stderr
    assert processes <= FLOOD_LIMIT, f"{processes} processes ran under pids_limit {FLOOD_LIMIT}"
    await containers.wait_for(instance, 0, timeout=30)


async def test_a_memory_hog_is_bounded(
    contained_server: RunningServer, client_key: ClientKey, containers: Containers
) -> None:
    """hog (memory_limit_mb 128): one 400 MiB buffer fails (a per-process heap limit
    here; the memory controller's OOM kill where cgroups allow it), an 8 MiB one works,
    and the container is gone afterwards."""
    command = (
        f"dd if=/dev/zero of=/dev/null bs={HOG_MB}M count=1 2>/dev/null; echo big=$?; "
        "dd if=/dev/zero of=/dev/null bs=8M count=1 2>/dev/null; echo small=$?"
    )
    result = await run_ssh(contained_server.port, client_key.path, command, user="hog")
    assert result.returncode == 0, result.stderr
    big, small = result.stdout.decode().split()
    assert small == "small=0", result.stdout
    assert big != "big=0", f"a {HOG_MB} MiB buffer fit under a {HOG_LIMIT_MB} MiB limit"
    await containers.wait_for(contained_server.ctx.instance, 0)


async def test_no_privileges_inside(contained_server: RunningServer, client_key: ClientKey) -> None:
    """No effective capabilities, no_new_privs set, a seccomp filter in force."""
    command = "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status"
    result = await run_ssh(contained_server.port, client_key.path, command)
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(":\t") for line in result.stdout.decode().splitlines())
    assert fields == {"CapEff": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"}


async def test_a_session_cannot_reach_into_the_agent_that_started_it(
    contained_server: RunningServer, client_key: ClientKey
) -> None:
    """The in-container agent (the program's parent) runs as the session's user. Were it
    dumpable, the session could ptrace it or copy the pty master it sends trissh and make
    trissh's reads of it block the server: its descriptors must be out of reach."""
    command = (
        "tr '\\0' ' ' </proc/$PPID/cmdline; echo; "
        "readlink /proc/$PPID/fd/0 >/dev/null 2>&1 && echo FD-REACHED || echo FD-DENIED"
    )
    result = await run_ssh(contained_server.port, client_key.path, command)
    assert result.returncode == 0, result.stderr
    parent, access = result.stdout.decode().splitlines()
    assert "trissh-exec --agent" in parent
    assert access == "FD-DENIED"
