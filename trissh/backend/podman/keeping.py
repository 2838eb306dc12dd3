"""What outlives a trissh process on podman: kept containers found again, and named volumes.

Theory of operation
-------------------
A workspace's container is kept when its server stops (``Sandbox.keep``) and found by its
labels when the next one starts (:func:`find_containers`). Adopting it needs to know how
its programs can start now: its agent answered the trissh that made it and is only a
keepalive since, and its stdio directory was that process's, so programs are ``podman
exec``'d with podman's stream, under the helper when the container has it mounted
(:func:`inspect_for_adoption`).

Named volumes carry the backend's scope labels like containers do, so a deployment (or a
test run) finds only its own. podman refuses to remove a volume a container still mounts;
that is the answer :func:`remove_volume` gives.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from trissh.backend._common import labels_match
from trissh.backend.base import FoundSandbox, FoundVolume
from trissh.backend.errors import BackendError
from trissh.backend.podman.api import PodmanApi
from trissh.backend.podman.exec import HELPER_PATH

__all__ = [
    "archive_of",
    "create_volume",
    "find_containers",
    "find_volumes",
    "inspect_for_adoption",
    "remove_volume",
]


def _filters(labels: Mapping[str, str | None], **more: list[str]) -> dict[str, str]:
    wanted = [key if value is None else f"{key}={value}" for key, value in labels.items()]
    return {"filters": json.dumps({"label": wanted, **more})}


def _epoch(value: Any) -> float:
    """``Created`` as podman lists it: Unix seconds, or an RFC 3339 string."""
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return 0.0


async def find_containers(api: PodmanApi, labels: Mapping[str, str | None]) -> list[FoundSandbox]:
    found = await api.request(
        "GET", "/containers/json", params={"all": "true", **_filters(labels)},
        abandon_on_cancel=True,
    )  # fmt: skip
    out = []
    for item in found or ():
        have = dict(item.get("Labels") or {})
        if not labels_match(have, labels):
            continue
        out.append(
            FoundSandbox(
                container_id=str(item["Id"]),
                labels=have,
                running=item.get("State") == "running",
                created=_epoch(item.get("Created")),
            )
        )
    return out


async def inspect_for_adoption(api: PodmanApi, container_id: str) -> bool:
    """Whether the container has the exec helper mounted.

    Raises:
        BackendError: it is gone or not running.
    """
    info = await api.request("GET", f"/containers/{container_id}/json", missing_ok=True)
    if info is None:
        raise BackendError(f"container {container_id[:12]} is gone")
    if not (info.get("State") or {}).get("Running"):
        raise BackendError(f"container {container_id[:12]} is not running")
    return any(mount.get("Destination") == HELPER_PATH for mount in info.get("Mounts") or ())


async def create_volume(api: PodmanApi, name: str, labels: Mapping[str, str]) -> None:
    exists = await api.request("GET", f"/volumes/{name}/json", missing_ok=True)
    if exists is None:
        await api.request("POST", "/volumes/create", body={"Name": name, "Label": dict(labels)})


async def find_volumes(api: PodmanApi, labels: Mapping[str, str | None]) -> list[FoundVolume]:
    found = await api.request(
        "GET", "/volumes/json", params=_filters(labels), abandon_on_cancel=True
    )
    out = []
    for item in found or ():
        have = dict(item.get("Labels") or {})
        if not labels_match(have, labels):
            continue
        name = str(item["Name"])
        users = await api.request(
            "GET", "/containers/json", params={"all": "true", **_filters({}, volume=[name])},
            abandon_on_cancel=True,
        )  # fmt: skip
        out.append(
            FoundVolume(
                name=name, labels=have, created=_epoch(item.get("CreatedAt")), in_use=bool(users)
            )
        )
    return out


async def remove_volume(api: PodmanApi, name: str) -> bool:
    """Raises: BackendError: a container still mounts it (podman's 409), or podman failed."""
    result = await api.request("DELETE", f"/volumes/{name}", missing_ok=True)
    return result is not None


def archive_of(files: Mapping[str, bytes]) -> bytes:
    """A tar of ``files`` at their absolute paths, with no directory entries: missing
    parents are created on extraction (0755) and existing ones keep their owner and mode.

    Raises:
        BackendError: a path is not absolute or climbs out of ``/``.
    """
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, content in files.items():
            clean = posixpath.normpath(path)
            if not path.startswith("/") or clean in ("/", "//") or "\0" in path:
                raise BackendError(f"file path {path!r} is not an absolute file path")
            info = tarfile.TarInfo(clean.lstrip("/"))
            info.size, info.mode, info.uid, info.gid = len(content), 0o644, 0, 0
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()
