"""``[forwarding]``: what ``ssh -L``, ``-D``, ``-W``, ``-R`` and ``-A`` may do.

Whatever a forward reaches, it reaches from inside the user's own container: its network
namespace, its file system. The settings are sshd's, per user too (``[users.NAME.forwarding]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from trissh.config.base import Model, merged

#: sshd's AllowTcpForwarding / AllowStreamLocalForwarding values.
Direction = Literal["yes", "local", "remote", "no"]
_DIRECTIONS: dict[tuple[bool, bool], Direction] = {
    (True, True): "yes",
    (True, False): "local",
    (False, True): "remote",
    (False, False): "no",
}


@dataclass(frozen=True, slots=True)
class DirectionGrant:
    """A configuration server's say on one kind of forwarding, each way: ``local`` (-L, -D,
    -W) and ``remote`` (-R); ``None`` leaves that way to the settings."""

    local: bool | None = None
    remote: bool | None = None

    def applied(self, setting: Direction) -> Direction:
        """``setting`` with the ways this grant names changed."""
        local = setting in ("yes", "local") if self.local is None else self.local
        remote = setting in ("yes", "remote") if self.remote is None else self.remote
        return _DIRECTIONS[local, remote]


def parse_permit(entry: str, *, listen: bool) -> tuple[str, str]:
    """One PermitOpen ``HOST:PORT`` (or PermitListen ``[HOST:]PORT``) entry as (host, port);
    ``*`` matches any host or port, an IPv6 host goes in brackets.

    Raises:
        ValueError: malformed.
    """
    host, sep, port = entry.rpartition(":")
    if not sep:
        if not listen:
            raise ValueError(f"permit_open entry {entry!r} is not HOST:PORT")
        host, port = "*", entry
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or (port != "*" and not (port.isdigit() and 0 < int(port) <= 65535)):
        kind = "permit_listen" if listen else "permit_open"
        raise ValueError(f"{kind} entry {entry!r}: a host and a port from 1 to 65535, or *")
    return host, port if port == "*" else str(int(port))


def _check_permits(value: tuple[str, ...], *, listen: bool) -> tuple[str, ...]:
    if ("any" in value or "none" in value) and len(value) > 1:
        raise ValueError("'any' and 'none' stand alone")
    for entry in value:
        if entry not in ("any", "none"):
            parse_permit(entry, listen=listen)
    return value


class ForwardingSection(Model):
    """Forwarding policy; ``[users.NAME.forwarding]`` overrides any key."""

    #: sshd's AllowTcpForwarding: ``local`` allows -L/-D/-W only, ``remote`` -R only.
    allow_tcp_forwarding: Direction = "yes"
    #: The same for unix sockets (``ssh -L /path:...``, ``-R /path:...``).
    allow_streamlocal_forwarding: Direction = "yes"
    #: ``ssh -A``: a socket in the container that reaches the client's agent.
    allow_agent_forwarding: bool = True
    #: sshd's PermitOpen: where -L/-D/-W may connect: "any", "none", or HOST:PORT entries.
    permit_open: tuple[str, ...] = ("any",)
    #: sshd's PermitListen: where -R may listen: "any", "none", or [HOST:]PORT entries.
    permit_listen: tuple[str, ...] = ("any",)
    #: Forwarded connections (either way) open at once on one SSH connection.
    max_channels: int = Field(64, ge=0, le=4096)
    #: -R listeners one SSH connection may hold.
    max_listeners: int = Field(16, ge=0, le=1024)

    @field_validator("permit_open")
    @classmethod
    def _check_open(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_permits(value, listen=False)

    @field_validator("permit_listen")
    @classmethod
    def _check_listen(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_permits(value, listen=True)


#: The ``[forwarding]`` keys a configuration server may set for a login; the limits stay
#: the server's (its channel table is sized from them before anyone logs in).
GRANTABLE: frozenset[str] = frozenset(
    {
        "allow_tcp_forwarding",
        "allow_streamlocal_forwarding",
        "allow_agent_forwarding",
        "permit_open",
        "permit_listen",
    }
)


@dataclass(frozen=True, slots=True)
class ForwardingGrant:
    """What a configuration server said about a login's forwarding: trissh's own keys
    (``settings``), then ContainerSSH's switches, each one way of a setting (``ways``)."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    ways: Mapping[str, DirectionGrant] = field(default_factory=dict)

    def merged(self, newer: ForwardingGrant) -> ForwardingGrant:
        """Both answers' say, the newer one's winning key by key."""
        return ForwardingGrant({**self.settings, **newer.settings}, {**self.ways, **newer.ways})

    def applied(self, section: ForwardingSection) -> ForwardingSection:
        """``section`` as this grant changes it.

        Raises:
            ValueError: ``settings`` are not valid ``[forwarding]`` values.
        """
        section = merged(section, self.settings, "config_webhook.trissh.forwarding")
        update = {key: way.applied(getattr(section, key)) for key, way in self.ways.items()}
        return section.model_copy(update=update)
