"""A ContainerSSH configuration server's answer as trissh ``[container]`` overrides and the
login's ``[forwarding]``.

ContainerSSH's ``config.docker`` (Docker Engine API field names, matched case-insensitively
like Go's decoder; ``host.resources.*`` as in its YAML is accepted too) becomes a ``dict`` of
trissh ``[container]`` keys; ``config.security.forwarding``'s switches and trissh's own
``config.trissh.forwarding`` keys become the login's ``[forwarding]``; docs/webhooks.md has
the tables. Every field that asks for something (a non-empty,
non-zero value) is one of three things:

* **applied**: mapped onto a trissh setting (image, env, user, working directory, labels,
  network, binds, memory, CPU shares, pids, read-only root, pull policy, start timeout,
  shell, the sftp subsystem, the forwarding switches);
* **plumbing**: how ContainerSSH itself reaches Docker or keeps its container alive
  (``docker.connection``, ``execution.mode``, ``idleCommand``, the container's ``Cmd``,
  ``Tty``...), or other backends' sections; trissh has its own, so these are noted and
  otherwise left alone;
* **refused**: anything else, since a login must not run with less than it was promised
  (a mount, a capability, a limit, a security rule trissh cannot give): the whole answer
  is refused with a message naming the field (:class:`ConfigRefused`).

A mapped field of the wrong type is an error too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from trissh.auth.webhook.wire import ConfigResponse, Metadata
from trissh.config.forwarding import GRANTABLE, DirectionGrant, ForwardingGrant

_MIB: Final = 1 << 20
_NANOSECONDS: Final = 1e9


class ConfigRefused(ValueError):
    """The answer asks for something trissh cannot apply; the message names the field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigResult:
    """What a configuration server's answer means for trissh (not a wire message)."""

    #: Overrides of trissh ``[container]`` keys, ready to merge over the user's settings.
    container: dict[str, Any]
    #: ``[forwarding]`` for this login, where the answer says (it may grant or refuse).
    forwarding: ForwardingGrant = field(default_factory=ForwardingGrant)
    #: ContainerSSH's own plumbing the answer set, one note per field (nothing to apply).
    ignored: tuple[str, ...] = ()
    metadata: Metadata = field(default_factory=Metadata)
    #: ``exposeAuthMetadataAsEnv``: metadata entries become environment variables too.
    expose_metadata: bool = False


def config_result(answer: ConfigResponse) -> ConfigResult:
    """What ``answer`` means, its metadata included.

    Raises:
        ConfigRefused: it asks for something trissh cannot apply.
        ValueError: a mapped field of the wrong type.
    """
    return dataclasses.replace(mapped_config(answer.config), metadata=answer.metadata)


_NETWORK_MODES: Final = frozenset({"none", "slirp4netns", "pasta"})
_PULL_POLICIES: Final = {"always": "always", "ifnotpresent": "if-not-present", "never": "never"}
_Path = tuple[str, ...]
#: ContainerSSH's plumbing (lower-case paths): noted, never applied, never refused.
_PLUMBING: Final = frozenset(
    {
        ("docker", "connection"),
        ("docker", "execution", "mode"),
        ("docker", "execution", "idlecommand"),
        ("docker", "execution", "disableagent"),
        ("docker", "execution", "agentpath"),
        ("docker", "execution", "containername"),
        ("docker", "timeouts", "containerstop"),
        ("docker", "timeouts", "commandstart"),
        ("docker", "timeouts", "signal"),
        ("docker", "timeouts", "window"),
        ("docker", "timeouts", "http"),
        ("kubernetes",),
        ("sshproxy",),
        ("log",),
        ("metrics",),
        ("health",),
        ("geoip",),
        ("audit",),
        *(
            ("docker", "execution", "container", name)
            for name in (
                "cmd", "entrypoint", "tty", "attachstdin", "attachstdout", "attachstderr",
                "openstdin", "stdinonce", "argsescaped", "stopsignal", "stoptimeout", "shell",
            )
        ),
        *(
            ("docker", "execution", "host", name)
            for name in ("autoremove", "restartpolicy", "logconfig", "init")
        ),
    }
)  # fmt: skip


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

    def leftovers(self, node: Mapping[str, Any], path: _Path = ()) -> list[_Path]:
        """Paths of the fields that ask for something and were not used."""
        found: list[_Path] = []
        for key, value in node.items():
            here = (*path, key)
            if here in self.used or _empty(value):
                continue
            if isinstance(value, Mapping) and not _plumbing(here):
                found += self.leftovers(value, here)
            else:
                found.append(here)
        return found


def _empty(value: Any) -> bool:
    """Asks for nothing: null, false, zero, empty (Go's zero values)."""
    if isinstance(value, bool):
        return not value
    return value is None or value in ("", 0, [], {})


def _plumbing(path: _Path) -> bool:
    lower = tuple(part.lower() for part in path)
    return any(lower[: len(p)] == p for p in _PLUMBING)


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


def _refuse(where: str, why: str) -> ConfigRefused:
    return ConfigRefused(f"config.{where}: {why}")


def mapped_config(config: Mapping[str, Any]) -> ConfigResult:
    """Map a ContainerSSH ``config`` object onto trissh settings (no metadata).

    Raises:
        ConfigRefused: a field asks for what trissh cannot apply (the first one found).
        ValueError: a mapped field of the wrong type.
    """
    w = _Walker(config)
    out: dict[str, Any] = {}
    backend = _typed(w.get("backend"), str, "backend")
    if backend not in (None, "", "docker"):
        raise _refuse("backend", f"{backend!r} is not supported, only docker settings map")
    execution = ("docker", "execution")
    c, h = (*execution, "container"), (*execution, "host")
    for name, key in (("image", "image"), ("user", "user"), ("workingdir", "workdir")):
        if value := _typed(w.get(*c, name), str, f"docker.execution.container.{name}"):
            out[key] = value
    _map_env(_strings(w.get(*c, "env"), "docker.execution.container.env"), out)
    _map_labels(_typed(w.get(*c, "labels"), dict, "docker.execution.container.labels"), out)
    _map_network(w, c, h, out)
    _map_binds(_strings(w.get(*h, "binds"), "docker.execution.host.binds"), out)
    _map_resources(w, h, out)
    if (readonly := _typed(w.get(*h, "readonlyrootfs"), bool, "host.readonlyrootfs")) is not None:
        out["read_only"] = readonly
    _map_execution(w, execution, out)
    _map_timeouts(w, out)
    expose = bool(
        _typed(w.get(*execution, "exposeauthmetadataasenv"), bool, "exposeAuthMetadataAsEnv")
    )
    forwarding = _map_forwarding(w)
    notes = []
    for path in w.leftovers(config):
        where = ".".join(path)
        if not _plumbing(path):
            raise _refuse(where, "not supported by trissh")
        notes.append(f"{where}: ContainerSSH's own plumbing, not needed by trissh")
    return ConfigResult(
        container=out, forwarding=forwarding, ignored=tuple(notes), expose_metadata=expose
    )


#: ContainerSSH's forwarding switches: the trissh setting and the way each one decides.
_FORWARDING_SWITCHES: Final = {
    "forwardingMode": ("allow_tcp_forwarding", "local"),
    "reverseForwardingMode": ("allow_tcp_forwarding", "remote"),
    "socketForwardingMode": ("allow_streamlocal_forwarding", "local"),
    "socketListenMode": ("allow_streamlocal_forwarding", "remote"),
}
#: ContainerSSH's execution policies; it has no forwarding filters and refuses on
#: ``filter``, so trissh does too.
_POLICIES: Final = {"enable": True, "filter": False, "disable": False}


def _map_forwarding(w: _Walker) -> ForwardingGrant:
    """``trissh.forwarding``'s keys, then ``security.forwarding``'s switches (an unset switch
    leaves its way to the settings)."""
    own = _typed(w.get("trissh", "forwarding"), dict, "trissh.forwarding") or {}
    if refused := sorted(set(own) - GRANTABLE):
        raise _refuse(f"trissh.forwarding.{refused[0]}", "not a setting an answer may change")
    ways: dict[str, dict[str, bool]] = {}
    for switch, (setting, way) in _FORWARDING_SWITCHES.items():
        allowed = _switch(w, switch)
        if allowed is not None:
            ways.setdefault(setting, {})[way] = allowed
    if _switch(w, "x11ForwardingMode"):
        raise _refuse("security.forwarding.x11ForwardingMode", "X11 forwarding is not supported")
    grants = {setting: DirectionGrant(**named) for setting, named in ways.items()}
    return ForwardingGrant(own, grants)


def _switch(w: _Walker, name: str) -> bool | None:
    where = f"security.forwarding.{name}"
    mode = _typed(w.get("security", "forwarding", name), str, where)
    if not mode:
        return None
    if mode not in _POLICIES:
        raise _refuse(where, f"{mode!r} is not enable, filter or disable")
    return _POLICIES[mode]


def _map_env(entries: list[str], out: dict[str, Any]) -> None:
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not (sep and name):
            raise _refuse("docker.execution.container.env", f"{name!r} has no value")
        out.setdefault("env", {})[name] = value


def _map_labels(labels: Mapping[str, Any] | None, out: dict[str, Any]) -> None:
    for name, value in (labels or {}).items():
        where = f"docker.execution.container.labels.{name}"
        if not isinstance(value, str):
            raise ValueError(f"config.{where}: expected str")
        if name.startswith("trissh."):
            raise _refuse(where, "the trissh. prefix is reserved")
        out.setdefault("labels", {})[name] = value


def _map_network(w: _Walker, c: _Path, h: _Path, out: dict[str, Any]) -> None:
    mode = _typed(w.get(*h, "networkmode"), str, "docker.execution.host.networkmode")
    if mode in _NETWORK_MODES:
        out["network"] = mode
    elif mode not in (None, "", "default"):
        raise _refuse("docker.execution.host.networkmode", f"{mode!r} is not supported")
    if _typed(w.get(*c, "networkdisabled"), bool, "docker.execution.container.networkdisabled"):
        out["network"] = "none"


def _map_binds(binds: list[str], out: dict[str, Any]) -> None:
    volumes: list[str] = []
    for bind in binds:
        parts = bind.split(":")
        if len(parts) not in (2, 3) or not all(p.startswith("/") for p in parts[:2]):
            raise _refuse("docker.execution.host.binds", f"{bind!r} is not HOST:CONTAINER")
        options = parts[2].split(",") if len(parts) == 3 else []
        if extra := [o for o in options if o not in ("ro", "rw", "")]:
            raise _refuse("docker.execution.host.binds", f"options {extra} of {bind!r}")
        volumes.append(f"{parts[0]}:{parts[1]}:{'ro' if 'ro' in options else 'rw'}")
    if volumes:
        out["volumes"] = tuple(volumes)


def _map_resources(w: _Walker, host: _Path, out: dict[str, Any]) -> None:
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
        raise _refuse("docker.execution.host.pidslimit", "unlimited is not supported")


def _map_execution(w: _Walker, execution: _Path, out: dict[str, Any]) -> None:
    if shell := _strings(w.get(*execution, "shellcommand"), "shellcommand"):
        out["shell"] = tuple(shell)
    sftp = w.get(*execution, "subsystems", "sftp")
    if sftp := _typed(sftp, str, "docker.execution.subsystems.sftp"):
        out["sftp_server"] = sftp
    policy = _typed(w.get(*execution, "imagepullpolicy"), str, "imagePullPolicy")
    if policy:
        if policy.lower() not in _PULL_POLICIES:
            raise _refuse("docker.execution.imagePullPolicy", f"{policy!r} is not a policy")
        out["pull_policy"] = _PULL_POLICIES[policy.lower()]


def _map_timeouts(w: _Walker, out: dict[str, Any]) -> None:
    """``containerStart`` as Go writes a Duration: nanoseconds, or ``"30s"`` in YAML style."""
    value = w.get("docker", "timeouts", "containerstart")
    if value in (None, "", 0):
        return
    where = "docker.timeouts.containerStart"
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value / _NANOSECONDS
    elif isinstance(value, str):
        seconds = _duration(value, where)
    else:
        raise ValueError(f"config.{where}: expected a duration")
    out["start_timeout"] = seconds


def _duration(text: str, where: str) -> float:
    """Go's ``time.ParseDuration`` for the units ContainerSSH's examples use."""
    units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        number = text.removesuffix(unit)
        if number != text:
            try:
                return float(number) * units[unit]
            except ValueError:
                break
    raise ValueError(f"config.{where}: {text!r} is not a duration like 30s")
