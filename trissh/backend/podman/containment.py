"""What holds a container in, and what enforces each part of it on this host.

Theory of operation
-------------------
Rootless podman enforces cgroup limits only for controllers delegated to its user (cgroup
v2 with systemd); on cgroup v1 hosts it silently ignores ``pids_limit`` and memory limits.
So containment is built from what works everywhere, plus the controllers where they exist:

* **A user namespace of its own** (``userns=auto`` with ``userns_size`` IDs): podman picks a
  free range of the podman user's subordinate IDs, so no two containers share a host UID
  (an escaped process owns nothing of another container) and the kernel counts each
  container's processes apart from every other's.
* **Processes**: ``pids_limit`` is the pids controller's ``pids.max`` where it is delegated,
  and, with a namespace of its own, ``RLIMIT_NPROC`` for every user inside the container
  (it counts that user's processes and threads in that namespace; no capability inside can
  raise it). Without a namespace of its own ``RLIMIT_NPROC`` would count the podman user's
  every process, so it is left out.
* **Memory**: ``memory_limit`` is the memory controller's limit (swap included) where it
  is delegated; otherwise ``RLIMIT_DATA`` for each process: a runaway heap fails with
  ENOMEM while address space merely reserved (JVM, V8, Go, glibc arenas) stays free. It
  bounds accidents, not an attacker (shared memory, pipes and kernel memory escape it).
* Always ``RLIMIT_NOFILE`` = ``nofile_limit`` and ``RLIMIT_CORE`` = 0 (no core dumps),
  soft = hard so nothing inside can raise them.

:func:`containment` turns settings and :class:`HostCaps` into podman-py's create arguments
and a description of what is in force, which :func:`containment_check` reports for
``trissh doctor`` and ``/readyz``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from trissh.backend.base import ContainerSettings, HealthCheck
from trissh.backend.errors import BackendError

__all__ = ["Containment", "HostCaps", "containment", "containment_check", "explained"]

#: Fewer containers than this fit in the podman user's subordinate IDs: a warning.
CAPACITY_WARNING: Final = 64
_MIB: Final = 1024 * 1024
_CGROUP_FIX: Final = (
    "cgroup v2 with the systemd cgroup manager, the pids and memory controllers delegated"
    " to the podman user"
)


@dataclass(frozen=True, slots=True)
class HostCaps:
    """What ``GET /info`` says about the host's cgroups and the podman user's IDs."""

    controllers: frozenset[str]
    cgroup_version: str
    #: Subordinate IDs in the podman user's namespace (beyond its own), for containers.
    subordinate_ids: int

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> HostCaps:
        host = info.get("host") or {}
        uid_map = (host.get("idMappings") or {}).get("uidmap") or ()
        return cls(
            controllers=frozenset(host.get("cgroupControllers") or ()),
            cgroup_version=str(host.get("cgroupVersion", "?")),
            subordinate_ids=sum(
                int(entry.get("size", 0)) for entry in uid_map if entry.get("container_id")
            ),
        )

    def capacity(self, userns_size: int) -> int:
        """Containers of ``userns_size`` IDs that fit in the subordinate IDs at once."""
        return self.subordinate_ids // userns_size


@dataclass(frozen=True, slots=True)
class Containment:
    """A container's limits on one host."""

    #: podman-py ``containers.create`` keyword arguments.
    create: dict[str, Any]
    #: What holds the container in, one phrase each, for doctor and the log.
    enforced: tuple[str, ...]
    #: Settings this host cannot enforce at all.
    skipped: tuple[str, ...] = field(default=())


def _ulimit(name: str, value: int) -> dict[str, Any]:
    return {"Name": name, "Soft": value, "Hard": value}


def containment(settings: ContainerSettings, host: HostCaps) -> Containment:
    """The create arguments for ``settings`` on ``host``, and what they enforce there."""
    create: dict[str, Any] = {}
    enforced: list[str] = []
    skipped: list[str] = []
    own_userns = settings.userns_size > 0
    if own_userns:
        create["userns_mode"] = "auto"
        # podman-py passes idmappings through: the REST API's AutoUserNs options
        size = {"Size": settings.userns_size}
        create["idmappings"] = {"AutoUserNs": True, "AutoUserNsOpts": size}
        enforced.append(f"a user namespace of {settings.userns_size} IDs per container")
    ulimits = [_ulimit("nofile", settings.nofile_limit), _ulimit("core", 0)]
    pids = settings.pids_limit
    by: list[str] = []
    if "pids" in host.controllers:
        create["pids_limit"] = pids
        by.append("pids controller")
    if own_userns:
        ulimits.append(_ulimit("nproc", pids))
        by.append("RLIMIT_NPROC per user in the container")
    if by:
        enforced.append(f"{pids} processes ({', '.join(by)})")
    else:
        skipped.append("pids_limit")
    if settings.memory_limit:
        mib = f"{settings.memory_limit // _MIB} MiB"
        if "memory" in host.controllers:
            create["mem_limit"] = create["memswap_limit"] = settings.memory_limit
            enforced.append(f"{mib} of memory (memory controller)")
        else:
            ulimits.append(_ulimit("data", settings.memory_limit))
            enforced.append(f"{mib} of heap per process (RLIMIT_DATA)")
    if settings.cpu_shares:
        if "cpu" in host.controllers:
            create["cpu_shares"] = settings.cpu_shares
            enforced.append(f"cpu shares {settings.cpu_shares}")
        else:
            skipped.append("cpu_shares")
    enforced.append(f"{settings.nofile_limit} open files per process, no core dumps")
    create["ulimits"] = ulimits
    return Containment(create=create, enforced=tuple(enforced), skipped=tuple(skipped))


def containment_check(settings: ContainerSettings, host: HostCaps) -> HealthCheck:
    """What holds ``settings``' containers in on this host; how many fit at once."""
    plan = containment(settings, host)
    detail = "; ".join(plan.enforced)
    problems: list[str] = []
    fixes: list[str] = []
    ok = True
    if plan.skipped:
        problems.append(f"NOT enforced here: {', '.join(plan.skipped)}")
        fixes.append(_CGROUP_FIX)
    if settings.userns_size <= 0:
        problems.append("containers share the podman user's UID (userns_size = 0)")
        fixes.append("set [container] userns_size (65536 fits any image)")
    else:
        fit = host.capacity(settings.userns_size)
        detail += f"; room for {fit} such containers at once"
        if fit < CAPACITY_WARNING:
            ok = fit > 0
            problems.append(f"the podman user has {host.subordinate_ids} subordinate IDs")
            fixes.append(
                "give the podman user more subordinate IDs (scripts/setup-host.sh allocates"
                " 1024 namespaces' worth), or lower [container] userns_size"
            )
    if "memory" not in host.controllers and settings.memory_limit:
        problems.append("memory is bounded per process, not per container")
        fixes.append(f"memory per container needs {_CGROUP_FIX}")
    return HealthCheck(
        name="containment",
        ok=ok,
        warning=bool(problems),
        detail="; ".join([detail, *problems]),
        fix="; ".join(fixes),
    )


def explained(error: BackendError, settings: ContainerSettings) -> BackendError:
    """``error`` from creating a container, with what it means when containment caused
    it: podman found no free range of ``userns_size`` subordinate IDs."""
    if "enough available IDs" not in str(error):
        return error
    return BackendError(
        f"{error} (no free range of {settings.userns_size} IDs for the container's user"
        " namespace: as many containers run as the podman user's subordinate IDs allow;"
        " see the containment line of `trissh doctor`)"
    )
