"""The host's ceilings on containers at once, for ``trissh doctor``: each with the number of
containers it allows and how to raise it.

Measured, not assumed, where the host tells: what one container costs the podman user in
kernel keys and in processes is the difference while a probe container runs
(``/proc/key-users``, ``/proc/*/status``), since both depend on the podman configuration
(``keyring``) and on how trissh starts programs. A rootless user holds at most
``kernel.keys.maxkeys`` (200) keys: with a session keyring per container (podman's default)
runc fails past ~200 containers with "unable to join session keyring: disk quota exceeded"
(issue 19), unless each container has a user namespace of its own: its keys are then
charged to its own root's host uid, with a quota of its own. The other ceilings:
subordinate ids (a user namespace per container), the podman user's process limit and the
kernel's, podman's lock count, memory, and trissh's own open files. Readings of another
host (podman reached through a socket of another machine or namespace) are reported as
unknown, not guessed.
"""

from __future__ import annotations

import os
import re
import resource
import socket
import struct
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from trissh.backend.base import HealthCheck
from trissh.backend.podman.containment import HostCaps
from trissh.ops.rlimits import open_files_target

__all__ = ["host_limits"]

#: podman's default ``[engine] num_locks``: containers, pods and volumes together.
PODMAN_LOCKS: Final = 2048
#: Host memory one idle container session costs (issue 19: ~3.3 MB measured).
SESSION_MEMORY: Final = 3.5 * 1024 * 1024
#: Descriptors trissh holds per container session (socket, agent, pipes, a spare).
FDS_PER_SESSION: Final = 8
#: Processes one container costs when the probe cannot tell (conmon, init, agent).
TASKS_GUESS: Final = 3
#: Fewer containers than this left under a ceiling: doctor warns.
FEW: Final = 1000
KEYRING_FIX: Final = (
    "keyring = false in the [containers] table of the podman user's"
    " ~/.config/containers/containers.conf (scripts/setup-host.sh writes it), or as root"
    " raise sysctl kernel.keys.maxkeys and kernel.keys.maxbytes"
)


@dataclass(frozen=True, slots=True)
class Usage:
    """What the podman user holds now: kernel keys (and their bytes) and tasks."""

    keys: int | None
    key_bytes: int | None
    tasks: int | None
    #: Every host uid holding kernel keys: a container with a user namespace of its own
    #: has its keys charged to its own root's uid, not the podman user's.
    key_owners: frozenset[int] = frozenset()


Probe = Callable[[], AbstractAsyncContextManager[object]]
#: A check, and how many more containers it allows (``None``: no bound, or unknown).
Ceiling = tuple[HealthCheck, int | None]


async def host_limits(
    info: dict[str, Any], socket_path: str, probe: Probe, userns_size: int
) -> list[HealthCheck]:
    """The ceilings; ``info`` is podman's ``GET /info``, ``probe`` runs one container,
    ``userns_size`` is the ids each container's own user namespace takes (0: none)."""
    uid = podman_uid(info)
    before = usage(uid)
    async with probe():
        during = usage(uid)
    service = service_limits(socket_path)
    ceilings = [
        keyring_check(uid, before, during),
        subids_check(info, userns_size),
        processes_check(uid, before, during, service),
        locks_check(info),
        memory_check(info),
        open_files_check(),
    ]
    checks = [check for check, _ in ceilings]
    bounds = [(allows, check.name) for check, allows in ceilings if allows is not None]
    if bounds:
        most, name = min(bounds)
        checks.append(
            HealthCheck(
                name="containers at once",
                ok=True,
                warning=most < FEW,
                detail=f"about {most:,} more, bounded by {name}",
                fix=f"raise {name} (above)" if most < FEW else "",
            )
        )
    return checks


def podman_uid(info: dict[str, Any]) -> int | None:
    """The host uid of container root: the rootless podman user."""
    for entry in (info.get("host") or {}).get("idMappings", {}).get("uidmap") or ():
        if entry.get("container_id") == 0:
            return int(entry["host_id"])
    return None


def usage(uid: int | None) -> Usage:
    if uid is None:
        return Usage(None, None, None)
    keys = key_bytes = None
    owners: set[int] = set()
    try:
        for line in Path("/proc/key-users").read_text().splitlines():
            # "  999:     5 5/5 5/200 45/20000": usage, keys/instantiated, quota keys, bytes
            fields = line.split()
            if not fields:
                continue
            owners.add(int(fields[0].rstrip(":")))
            if fields[0] == f"{uid}:":
                keys = int(fields[3].split("/")[0])
                key_bytes = int(fields[4].split("/")[0])
        keys, key_bytes = keys or 0, key_bytes or 0
    except (OSError, ValueError, IndexError):
        pass
    return Usage(keys, key_bytes, tasks_of(uid), frozenset(owners))


def tasks_of(uid: int) -> int | None:
    """Threads of every process whose real uid is ``uid`` (what RLIMIT_NPROC counts)."""
    total = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for name in entries:
        if not name.isdigit():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        found = re.search(r"^Uid:\s+(\d+)", status, re.M)
        threads = re.search(r"^Threads:\s+(\d+)", status, re.M)
        if found and threads and int(found.group(1)) == uid:
            total += int(threads.group(1))
    return total


def keyring_check(uid: int | None, before: Usage, during: Usage) -> Ceiling:
    if before.keys is None or during.keys is None or uid is None:
        unknown = HealthCheck(
            name="keyring",
            ok=True,
            warning=True,
            detail="unknown: podman's user is not visible in /proc/key-users here",
            fix=KEYRING_FIX,
        )
        return unknown, None
    per = during.keys - before.keys
    maxkeys = _sysctl("kernel/keys/maxkeys")
    maxbytes = _sysctl("kernel/keys/maxbytes")
    if per <= 0 and (own := sorted(during.key_owners - before.key_owners - {uid})):
        own_quota = HealthCheck(
            name="keyring",
            ok=True,
            detail=f"a session keyring per container, charged to the container's own root"
            f" (host uid {own[0]}: a user namespace per container, [container] userns_size):"
            f" each container has its own kernel.keys.maxkeys = {maxkeys}, not a limit",
        )
        return own_quota, None
    if per <= 0:
        unbounded = HealthCheck(
            name="keyring",
            ok=True,
            detail=f"no kernel key per container (keyring = false): not a limit; the podman"
            f" user holds {before.keys} of kernel.keys.maxkeys = {maxkeys}",
        )
        return unbounded, None
    left = (maxkeys or 0) - during.keys
    per_bytes = max(1, (during.key_bytes or 0) - (before.key_bytes or 0))
    left = max(0, min(left // per, ((maxbytes or 0) - (during.key_bytes or 0)) // per_bytes))
    check = HealthCheck(
        name="keyring",
        ok=left > 0,
        warning=True,
        detail=f"a session keyring per container ({per} key): the podman user holds"
        f" {during.keys} of kernel.keys.maxkeys = {maxkeys}, so about {left:,} more"
        " containers can start (runc: 'disk quota exceeded' past that)",
        fix=KEYRING_FIX,
    )
    return check, left


def subids_check(info: dict[str, Any], userns_size: int) -> Ceiling:
    """The same count as the containment line's (:meth:`HostCaps.capacity`)."""
    caps = HostCaps.from_info(info)
    subids = caps.subordinate_ids
    if userns_size <= 0:  # containers share the podman user's own mapping
        detail = f"{subids:,} subordinate uids, shared by every container (userns_size = 0)"
        return HealthCheck(name="subordinate ids", ok=subids > 0, detail=detail), None
    namespaces = caps.capacity(userns_size)
    check = HealthCheck(
        name="subordinate ids",
        ok=subids > 0,
        warning=namespaces < FEW,
        detail=f"{subids:,} subordinate uids: {namespaces:,} containers with a user"
        f" namespace of {userns_size:,} ids each (userns_size)",
        fix="usermod --add-subuids FIRST-LAST --add-subgids FIRST-LAST <podman user>, then"
        " `podman system migrate` as that user",
    )
    return check, namespaces


def processes_check(
    uid: int | None, before: Usage, during: Usage, service: dict[str, int]
) -> Ceiling:
    per = TASKS_GUESS
    if before.tasks is not None and during.tasks is not None and during.tasks > before.tasks:
        per = during.tasks - before.tasks
    kernel = min(_sysctl("kernel/pid_max") or 0, _sysctl("kernel/threads-max") or 0)
    limits = [("kernel.pid_max/threads-max", kernel - _all_tasks())]
    nproc = service.get("Max processes")
    if nproc is not None and during.tasks is not None:
        limits.append(("the podman user's process limit", nproc - during.tasks))
    name, room = min(limits, key=lambda item: item[1])
    allows = max(room, 0) // per
    return _ceiling(
        "processes",
        allows,
        detail=f"a container costs ~{per} processes of the podman user (uid {uid}) before"
        f" any session's own: about {allows:,} more containers under {name}"
        + (f" ({nproc:,})" if nproc is not None and name.startswith("the podman") else ""),
        fix="raise LimitNPROC of the podman service (systemd) or its `ulimit -u`; as root"
        " sysctl kernel.pid_max and kernel.threads-max",
    )


def locks_check(info: dict[str, Any]) -> Ceiling:
    store = (info.get("store") or {}).get("containerStore") or {}
    number = int(store.get("number", 0))
    left = max(0, PODMAN_LOCKS - number)
    return _ceiling(
        "podman locks",
        left,
        detail=f"{number:,} containers exist; podman's default num_locks = {PODMAN_LOCKS:,}"
        f" (containers, pods and volumes together) leaves about {left:,} more",
        fix="num_locks = N in the [engine] table of the podman user's containers.conf, then"
        " `podman system renumber`",
    )


def memory_check(info: dict[str, Any]) -> Ceiling:
    free = int((info.get("host") or {}).get("memFree", 0))
    allows = int(free // SESSION_MEMORY)
    return _ceiling(
        "memory",
        allows,
        detail=f"{free / 2**30:.1f} GiB free: about {allows:,} idle container sessions at"
        f" ~{SESSION_MEMORY / 2**20:.1f} MiB each (users' programs need more)",
        fix="more memory, or [container] memory_limit_mb to bound each session",
    )


def open_files_check() -> Ceiling:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    usable = open_files_target(hard)
    allows = usable // FDS_PER_SESSION
    return _ceiling(
        "open files",
        allows,
        detail=f"trissh may open {usable:,} files (its hard limit; the server raises its soft"
        f" limit to it at start): about {allows:,} sessions at ~{FDS_PER_SESSION} each",
        fix="LimitNOFILE= in trissh's systemd unit, or `ulimit -n` before starting it",
    )


def _ceiling(name: str, allows: int, *, detail: str, fix: str) -> Ceiling:
    """A ceiling that allows ``allows`` more containers: failed at none, warned below FEW."""
    check = HealthCheck(name=name, ok=allows > 0, warning=allows < FEW, detail=detail, fix=fix)
    return check, allows


def service_limits(socket_path: str) -> dict[str, int]:
    """The podman service's soft limits (``/proc/PID/limits``), its pid from the socket's
    peer credentials; ``{}`` when the listener is not podman (systemd socket activation)."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(3)
            sock.connect(socket_path)
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        if b"podman" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return {}
        text = Path(f"/proc/{pid}/limits").read_text()
    except (OSError, struct.error):
        return {}
    limits = {}
    for line in text.splitlines()[1:]:
        found = re.match(r"(.+?)\s{2,}(\S+)\s+(\S+)", line)
        if found and found.group(2).isdigit():
            limits[found.group(1)] = int(found.group(2))
    return limits


def _all_tasks() -> int:
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    except (OSError, ValueError, IndexError):
        return 0


def _sysctl(name: str) -> int | None:
    try:
        return int(Path(f"/proc/sys/{name}").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
