"""Which trissh process made a container, whether it still runs, and the start-up sweep.

Theory of operation
-------------------
Every container carries ``trissh.owner`` = boot id, PID namespace, PID and process start
time of the trissh process that created it (:func:`owner_token`). ``sweep`` removes
containers of other ``trissh.instance`` values, except those whose owner is provably alive
(:func:`owner_alive`): when all four match a running process on this host, that instance
has not crashed (a second server, a test run) and its sessions are left alone; when they
cannot be checked (another host or namespace, no label) the container is swept as the
contract says. Start time and boot id make a recycled PID or a reboot look dead.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Final

import structlog
import trio

from trissh.backend.base import LABEL_INSTANCE, LABEL_WORKSPACE
from trissh.backend.errors import BackendError, BackendUnavailable
from trissh.backend.podman.api import PodmanApi
from trissh.backend.podman.keeping import find_containers

__all__ = ["LABEL_OWNER", "owner_alive", "owner_token", "sweep"]

log = structlog.get_logger("trissh.backend.podman")

#: Identifies the trissh process that created a container (see :func:`owner_token`).
LABEL_OWNER: Final = "trissh.owner"


def owner_token() -> str:
    """``boot-id/pid-namespace/pid/start-time`` of this process; ``""`` if /proc cannot tell."""
    try:
        return "/".join((*_here(), str(os.getpid()), _start_time(os.getpid())))
    except (OSError, ValueError, IndexError):
        return ""


def owner_alive(token: str) -> bool:
    """True only if ``token`` names a process running now in our boot and PID namespace."""
    try:
        boot, namespace, pid, start = token.split("/")
        return (boot, namespace) == _here() and _start_time(int(pid)) == start
    except (OSError, ValueError, IndexError):
        return False


def _here() -> tuple[str, str]:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return boot, os.readlink("/proc/self/ns/pid").strip("pid:[]")


def _start_time(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Field 22 (starttime); the command name in field 2 may contain spaces and ")".
    return stat.rsplit(")", 1)[1].split()[19]


async def sweep(
    api: PodmanApi,
    scope_labels: Mapping[str, str],
    *,
    keep_instance: str,
    remove: Callable[[str], Awaitable[bool]],
) -> int:
    """Remove (with ``remove``) containers labelled with another ``trissh.instance`` and
    ``scope_labels``, except those whose owner is alive and workspaces (the workspace
    registry adopts or removes those); return how many went.

    Raises:
        BackendUnavailable: podman cannot be reached (one stuck container is only logged).
    """
    labels = {LABEL_INSTANCE: None, **scope_labels}
    others = [
        (found.container_id, found.labels.get(LABEL_OWNER, ""))
        for found in await find_containers(api, labels)
        if found.labels.get(LABEL_INSTANCE) != keep_instance and LABEL_WORKSPACE not in found.labels
    ]
    alive = await trio.to_thread.run_sync(
        lambda: {owner for _, owner in others if owner_alive(owner)}
    )
    stale = [container_id for container_id, owner in others if owner not in alive]
    removed = 0
    for container_id in stale:
        try:
            removed += await remove(container_id)
        except BackendUnavailable:
            raise
        except BackendError as exc:  # one stuck container must not stop the sweep
            log.error("container_remove_failed", container=container_id[:12], error=str(exc))
    log.info(
        "containers_swept",
        count=removed,
        kept_live_owners=len(others) - len(stale),
        keep_instance=keep_instance,
    )
    return removed
