"""ForwardPolicy: may this login forward there? sshd's rules, from ``[forwarding]`` (with
the user's overrides) narrowed by the login's key or certificate options.

Matching is textual, as sshd's: PermitOpen compares the host the client wrote with the
entry's (``*`` matches any), PermitListen matches the lowercased host against the entry's
as a pattern (``*``, ``?``); no name resolution: what a name means is decided inside the
container, which is the only place a forward can reach anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from trissh.auth.patterns import wildcard_matches
from trissh.auth.policy import Grant
from trissh.config import ForwardingSection, parse_permit
from trissh.protocol import ForwardTarget, SocketPath, TcpAddress


def _matches(entries: tuple[str, ...], target: ForwardTarget, *, listen: bool) -> bool:
    """sshd's ``open_match``: a unix socket path is a host with no port, so only an entry
    with any port (``*``) and that host or ``*`` matches it."""
    if entries == ("any",):
        return True
    for entry in entries:
        if entry == "none":
            return False
        host, port = parse_permit(entry, listen=listen)
        if isinstance(target, SocketPath):
            if port == "*" and host in ("*", target.path):
                return True
        elif port in ("*", str(target.port)) and (
            wildcard_matches(host.lower(), target.host.lower())
            if listen
            else host in ("*", target.host)
        ):
            return True
    return False


@dataclass(frozen=True, slots=True)
class ForwardPolicy:
    settings: ForwardingSection
    grant: Grant

    def _direction_allows(self, target: ForwardTarget, direction: str) -> str | None:
        if not self.grant.allow_port_forwarding:
            return "port forwarding is not allowed for this key"
        if isinstance(target, SocketPath):
            allowed, what = self.settings.allow_streamlocal_forwarding, "unix socket forwarding"
        else:
            allowed, what = self.settings.allow_tcp_forwarding, "TCP forwarding"
        if allowed not in ("yes", direction):
            return f"{what} ({direction}) is not allowed"
        return None

    def refuse_open(self, target: ForwardTarget) -> str | None:
        """Why ``-L``/``-D``/``-W`` to ``target`` is refused, or ``None``."""
        refusal = self._direction_allows(target, "local")
        if refusal is None:  # unix sockets too, as sshd
            lists = (self.settings.permit_open, *self.grant.permit_open)
            if not all(_matches(entries, target, listen=False) for entries in lists):
                refusal = f"{target} is not in permit_open"
        return refusal

    def refuse_listen(self, target: ForwardTarget) -> str | None:
        """Why ``-R`` on ``target`` is refused, or ``None``."""
        refusal = self._direction_allows(target, "remote")
        if refusal is None and isinstance(target, TcpAddress):
            lists = (self.settings.permit_listen, *self.grant.permit_listen)
            if not all(_matches(entries, target, listen=True) for entries in lists):
                refusal = f"{target} is not in permit_listen"
        return refusal

    def refuse_agent(self) -> str | None:
        if not self.settings.allow_agent_forwarding:
            return "agent forwarding is not allowed"
        if not self.grant.allow_agent_forwarding:
            return "agent forwarding is not allowed for this key"
        return None
