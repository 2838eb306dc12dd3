"""A ContainerSSH configuration server's answer as trissh ``[container]`` overrides.

ContainerSSH's ``config.docker.execution`` (Docker Engine API field names, matched
case-insensitively like Go's decoder; ``host.resources.*`` as in its YAML is accepted too)
becomes a ``dict`` of trissh ``[container]`` keys; docs/webhooks.md has the table. Anything
else that asks for something (a non-empty, non-zero value) is noted as ignored, one note per
field; a mapped field of the wrong type is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from trissh.auth.webhook.wire import ConfigResponse, Metadata

_MIB: Final = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigResult:
    """What a configuration server's answer means for trissh (not a wire message)."""

    #: Overrides of trissh ``[container]`` keys, ready to merge over the user's settings.
    container: dict[str, Any]
    #: What the server asked for that trissh cannot honour, one note per field.
    ignored: tuple[str, ...] = ()
    metadata: Metadata = field(default_factory=Metadata)


def config_result(answer: ConfigResponse) -> ConfigResult:
    """The overrides and notes of ``answer``.

    Raises:
        ValueError: a mapped field of the wrong type.
    """
    container, ignored = container_overrides(answer.config)
    return ConfigResult(container=container, ignored=ignored, metadata=answer.metadata)


_NETWORK_MODES: Final = frozenset({"none", "slirp4netns", "pasta"})
_Path = tuple[str, ...]


class _Walker:
    """Case-insensitive lookups (Go's decoder) that remember which fields were used."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.used: set[_Path] = set()

    def get(self, *names: str) -> Any:
        node: Any = self.root
        path: _Path = ()
        for name in names:
            if not isinstance(node, Mapping):
                return None
            key = _key(node, name)
            if key is None:
                return None
            node, path = node[key], (*path, key)
        self.used.add(path)
        return node

    def leftovers(self, node: Mapping[str, Any], path: _Path = ()) -> list[str]:
        notes: list[str] = []
        for key, value in node.items():
            here = (*path, key)
            if here in self.used or value in (None, "", 0, False, [], {}):
                continue
            if isinstance(value, Mapping) and any(u[: len(here)] == here for u in self.used):
                notes += self.leftovers(value, here)
            else:
                notes.append(f"{'.'.join(here)}: not supported by trissh, ignored")
        return notes


def _key(node: Mapping[str, Any], name: str) -> str | None:
    if name in node:
        return name
    return next((k for k in node if isinstance(k, str) and k.lower() == name.lower()), None)


def _typed(value: Any, kind: type[Any], where: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"config.{where}: expected {kind.__name__}")
    return value


def _strings(value: Any, where: str) -> list[str]:
    items = _typed(value, list, where) or []
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"config.{where}: expected a list of strings")
    return list(items)


def container_overrides(config: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Map a ContainerSSH ``config`` object onto trissh ``[container]`` keys.

    Returns:
        The overrides, and one note for every field asked for but not honoured.

    Raises:
        ValueError: a mapped field of the wrong type.
    """
    w = _Walker(config)
    out: dict[str, Any] = {}
    notes: list[str] = []
    backend = _typed(w.get("backend"), str, "backend")
    if backend not in (None, "", "docker"):
        notes.append(f"backend: {backend!r} is not supported, only docker settings map")
    c, h = ("docker", "execution", "container"), ("docker", "execution", "host")
    for name, key in (("image", "image"), ("user", "user"), ("workingdir", "workdir")):
        if value := _typed(w.get(*c, name), str, f"docker.execution.container.{name}"):
            out[key] = value
    _map_env(_strings(w.get(*c, "env"), "docker.execution.container.env"), out, notes)
    labels = _typed(w.get(*c, "labels"), dict, "docker.execution.container.labels") or {}
    for name, value in labels.items():
        if not isinstance(value, str):
            raise ValueError(f"config.docker.execution.container.labels.{name}: expected str")
        if name.startswith("trissh."):
            notes.append(f"docker.execution.container.labels.{name}: reserved, ignored")
        else:
            out.setdefault("labels", {})[name] = value
    mode = _typed(w.get(*h, "networkmode"), str, "docker.execution.host.networkmode")
    if mode in _NETWORK_MODES:
        out["network"] = mode
    elif mode not in (None, "", "default"):
        notes.append(f"docker.execution.host.networkmode: {mode!r} is not supported, ignored")
    if _typed(w.get(*c, "networkdisabled"), bool, "docker.execution.container.networkdisabled"):
        out["network"] = "none"
    _map_binds(_strings(w.get(*h, "binds"), "docker.execution.host.binds"), out, notes)
    _map_resources(w, h, out, notes)
    if (readonly := _typed(w.get(*h, "readonlyrootfs"), bool, "host.readonlyrootfs")) is not None:
        out["read_only"] = readonly
    if shell := _strings(w.get("docker", "execution", "shellcommand"), "shellcommand"):
        out["shell"] = tuple(shell)
    sftp = w.get("docker", "execution", "subsystems", "sftp")
    if sftp := _typed(sftp, str, "docker.execution.subsystems.sftp"):
        out["sftp_server"] = sftp
    return out, (*notes, *w.leftovers(config))


def _map_env(entries: list[str], out: dict[str, Any], notes: list[str]) -> None:
    for entry in entries:
        name, sep, value = entry.partition("=")
        if sep and name:
            out.setdefault("env", {})[name] = value
        else:
            notes.append(f"docker.execution.container.env: {name!r} has no value, ignored")


def _map_binds(binds: list[str], out: dict[str, Any], notes: list[str]) -> None:
    volumes: list[str] = []
    for bind in binds:
        parts = bind.split(":")
        if len(parts) not in (2, 3) or not all(p.startswith("/") for p in parts[:2]):
            notes.append(f"docker.execution.host.binds: {bind!r} is not HOST:CONTAINER, ignored")
            continue
        options = parts[2].split(",") if len(parts) == 3 else []
        if extra := [o for o in options if o not in ("ro", "rw", "")]:
            notes.append(f"docker.execution.host.binds: options {extra} of {bind!r} ignored")
        volumes.append(f"{parts[0]}:{parts[1]}:{'ro' if 'ro' in options else 'rw'}")
    if volumes:
        out["volumes"] = tuple(volumes)


def _map_resources(
    w: _Walker, host: tuple[str, ...], out: dict[str, Any], notes: list[str]
) -> None:
    """Docker's flat HostConfig resource fields, or ``host.resources.*`` as in its YAML."""

    def get(name: str) -> Any:
        flat = w.get(*host, name)
        nested = w.get(*host, "resources", name)
        return _typed(flat if flat is not None else nested, int, f"host.{name}")

    if memory := get("memory"):
        out["memory_limit_mb"] = max(1, memory // _MIB)
    if shares := get("cpushares"):
        out["cpu_shares"] = shares
    pids = get("pidslimit")
    if pids is not None and pids > 0:
        out["pids_limit"] = pids
    elif pids is not None and pids < 0:
        notes.append("docker.execution.host.pidslimit: unlimited is not supported, ignored")
