"""What a sandbox container is made of: podman-py's create arguments, its name, its labels.

Theory of operation
-------------------
Every container is hardened the same way: no capabilities, ``no-new-privileges``, the
configured network (``none`` by default), podman's init as PID 1 (``init=True``
bind-mounts catatonit at ``/run/podman-init``), and as main process either
:data:`KEEPALIVE` (catatonit in pause mode: nothing of it has to exist in the image, so
busybox, distro and distroless images all work) or the container's agent
(:mod:`.launch` decides). It is set as the *entrypoint*, so an image's ENTRYPOINT/CMD
cannot replace it. The labels name the connection, user, remote and instance, plus the
owner (:mod:`.owner`) and the backend's scope labels, so a sweep finds exactly its own.

Each container gets a user namespace of its own and resource limits as the host can
enforce them (:mod:`.containment`): cgroup controllers where podman's user has them,
rlimits where it has not (rootless on cgroup v1, as on the development hosts). A setting
nothing can enforce here is left out with one ``resource_limit_skipped`` line.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Final

import structlog
import trio

from trissh.backend._common import sandbox_labels
from trissh.backend.base import ContainerSettings, SandboxSpec
from trissh.backend.podman.api import PodmanApi
from trissh.backend.podman.containment import HostCaps, containment
from trissh.backend.podman.owner import LABEL_OWNER

__all__ = ["KEEPALIVE", "ContainerSpecs", "container_name", "tmpfs_mount"]

log = structlog.get_logger("trissh.backend.podman")

#: The sandbox's main process: catatonit in pause mode, from podman's init mount.
KEEPALIVE: Final = ("/run/podman-init", "-P")


class ContainerSpecs:
    """Builds the create arguments of this backend's containers; learns once (from
    ``podman info``) which resource limits the host can enforce."""

    def __init__(self, api: PodmanApi, *, scope_labels: Mapping[str, str], owner: str) -> None:
        self._api = api
        self._scope_labels = dict(scope_labels)
        self._owner = owner
        self._host: HostCaps | None = None
        self._host_lock = trio.Lock()
        self._warned: set[str] = set()
        self._announced: set[tuple[str, ...]] = set()

    async def create_kwargs(
        self,
        spec: SandboxSpec,
        name: str,
        *,
        entrypoint: Sequence[str],
        mounts: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """podman-py's ``containers.create`` keyword arguments (the image aside);
        ``mounts`` come on top of the settings' own (the launch's helper and stdio)."""
        settings = spec.settings
        kwargs: dict[str, Any] = {
            "name": name,
            "entrypoint": list(entrypoint),
            "command": [],
            "init": True,
            "cap_drop": ["ALL"],
            "no_new_privileges": True,
            "network_mode": settings.network,
            "labels": {
                **self._scope_labels,
                **sandbox_labels(spec),
                **({LABEL_OWNER: self._owner} if self._owner else {}),
            },
            "environment": dict(settings.env),
        }
        if settings.user:
            kwargs["user"] = settings.user
        if settings.workdir:
            kwargs["workdir"] = settings.workdir
        if settings.read_only:
            kwargs["read_only"] = True
        all_mounts = [*_settings_mounts(settings), *mounts]
        if all_mounts:
            kwargs["mounts"] = all_mounts
        named = {
            volume.source: {
                "bind": volume.destination,
                "mode": "ro" if volume.read_only else "rw",
                "extended_mode": ["U"] if volume.owned else [],
            }
            for volume in settings.volumes
            if volume.named
        }
        if named:
            kwargs["volumes"] = named
        kwargs.update(await self._limits(settings))
        return kwargs

    async def _limits(self, settings: ContainerSettings) -> dict[str, Any]:
        """User namespace and resource limits, as this host can enforce them
        (:mod:`.containment`); what is enforced how is logged once per kind of container."""
        plan = containment(settings, await self.host_caps())
        for setting in plan.skipped:
            if setting not in self._warned:
                self._warned.add(setting)
                log.warning(
                    "resource_limit_skipped",
                    setting=setting,
                    cgroup_version=self._host.cgroup_version if self._host else "?",
                    controllers=sorted(self._host.controllers) if self._host else [],
                )
        if plan.enforced not in self._announced:
            self._announced.add(plan.enforced)
            log.info("containment_in_force", enforced=list(plan.enforced))
        return plan.create

    async def host_caps(self) -> HostCaps:
        """What the host's cgroups and the podman user's IDs allow, learnt once."""
        async with self._host_lock:
            if self._host is None:
                info = await self._api.request("GET", "/info", abandon_on_cancel=True)
                self._host = HostCaps.from_info(info)
            return self._host


def _settings_mounts(settings: ContainerSettings) -> list[dict[str, Any]]:
    """The operator's tmpfs mounts and volumes; podman-py builds mount options from these
    keys (size, read_only -> ro)."""
    mounts = [
        tmpfs_mount(destination, f"{size_mb}m") for destination, size_mb in settings.tmpfs.items()
    ]
    mounts += [
        {
            "type": "bind",
            "source": volume.source,
            "target": volume.destination,
            "read_only": volume.read_only,
        }
        for volume in settings.volumes
        if not volume.named
    ]
    return mounts


def tmpfs_mount(target: str, size: str) -> dict[str, Any]:
    """A tmpfs any container user may write (mode 1777)."""
    return {"type": "tmpfs", "source": "tmpfs", "target": target, "size": size, "mode": "1777"}


def container_name(spec: SandboxSpec) -> str:
    """``trissh-USER-CONN-RANDOM`` (``trissh-CONN-RANDOM`` while no user is known: the warm
    pool's): readable in ``podman ps``, unique however conn ids repeat. The user part keeps
    letters, digits and ``_.-``, anything else becomes ``_``."""
    conn = re.sub(r"[^a-zA-Z0-9_.-]", "-", spec.conn_id)[:40].strip("-.") or "conn"
    user = re.sub(r"[^a-zA-Z0-9_.-]", "_", spec.username)[:32]
    return f"trissh-{f'{user}-' if user else ''}{conn}-{secrets.token_hex(4)}"
