"""What ``trissh doctor`` and ``/readyz`` learn from the podman service about this host.

Each check says what was found and, when it falls short, how to fix it. The containment
line (:mod:`.containment`) says what holds a container in on this host, cgroup controller
or rlimit; a limit nothing enforces here is a warning, not a failure: DESIGN asks for
limits "where the host's cgroups allow it".
"""

from __future__ import annotations

from typing import Any, Final

from trissh.backend.base import ContainerSettings, HealthCheck
from trissh.backend.errors import BackendError
from trissh.backend.podman.api import PodmanApi
from trissh.backend.podman.containment import HostCaps, containment_check

__all__ = ["check_podman"]

SERVICE_FIX: Final = (
    "run scripts/setup-host.sh as root, or `systemctl --user enable --now podman.socket`"
    " and point CONTAINER_HOST at $XDG_RUNTIME_DIR/podman/podman.sock"
)


async def check_podman(
    api: PodmanApi, settings: ContainerSettings, launch: list[HealthCheck]
) -> list[HealthCheck]:
    """Service, runtime, cgroups, containment (of ``settings``' containers), storage,
    ``launch`` (how programs start and their stdio travel, whether forwarding works: what
    the caller knows) and image, in that order; only a failed service check when podman
    does not answer."""
    image = settings.image
    try:
        version = await api.request("GET", "/version", abandon_on_cancel=True)
        info = await api.request("GET", "/info", abandon_on_cancel=True)
    except BackendError as exc:
        return [HealthCheck(name="service", ok=False, detail=str(exc), fix=SERVICE_FIX)]
    checks = [
        HealthCheck(
            name="service",
            ok=True,
            detail=f"podman {version.get('Version', '?')} at {api.path}",
        ),
        *host_checks(info, settings),
        *launch,
    ]
    try:
        present = await api.request(
            "GET", f"/images/{image}/exists", abandon_on_cancel=True, missing_ok=True
        )  # 204 -> {}, 404 -> None
    except BackendError as exc:
        checks.append(HealthCheck(name="image", ok=False, detail=str(exc)))
        return checks
    found = present is not None
    checks.append(
        HealthCheck(
            name="image",
            ok=found,
            detail=f"{image} {'present' if found else 'not found'}",
            fix=""
            if found
            else "as the podman user: scripts/build-image.sh import for localhost/ images"
            " (scripts/setup-host.sh does it for trissh-podman), else `podman pull` it",
        )
    )
    return checks


def host_checks(info: dict[str, Any], settings: ContainerSettings) -> list[HealthCheck]:
    """Runtime, cgroups, containment and storage, from ``GET /info``."""
    host = info.get("host") or {}
    runtime = host.get("ociRuntime") or {}
    runtime_version = str(runtime.get("version", "")).splitlines()[:1]
    controllers = sorted(host.get("cgroupControllers") or ())
    rootless = bool((host.get("security") or {}).get("rootless"))
    driver = str((info.get("store") or {}).get("graphDriverName", "?"))
    return [
        HealthCheck(
            name="runtime",
            ok=bool(runtime.get("name")) and rootless,
            detail=f"{runtime.get('name', '?')} ({' '.join(runtime_version) or '?'}), "
            f"{'rootless' if rootless else 'ROOTFUL'}",
            fix="" if rootless else "run the podman service as an unprivileged user",
        ),
        HealthCheck(
            name="cgroups",
            ok=True,
            detail=f"cgroup {host.get('cgroupVersion', '?')} ({host.get('cgroupManager', '?')}), "
            f"delegated controllers: {', '.join(controllers) or 'none'}",
        ),
        containment_check(settings, HostCaps.from_info(info)),
        # vfs works, only slower (a copy of the image per container): a warning, not a
        # reason to take the instance out of a balancer's pool.
        HealthCheck(
            name="storage",
            ok=True,
            warning=driver == "vfs",
            detail=f"storage driver {driver}"
            + (": every container copies the whole image" if driver == "vfs" else ""),
            fix=""
            if driver != "vfs"
            else 'set driver = "overlay" in ~/.config/containers/storage.conf of the podman '
            "user, then `podman system reset`",
        ),
    ]
