"""What every backend checks of a :class:`~trissh.backend.base.SocketAddress` before making
a socket inside a sandbox, so that all of them refuse the same things the same way."""

from __future__ import annotations

import socket
from typing import Final

from trissh.addresses import join_host_port
from trissh.backend.base import SocketAddress
from trissh.backend.errors import ForwardError

__all__ = ["MAX_HOST", "MAX_PATH", "check_address", "peer_text"]

#: The longest host name DNS allows.
MAX_HOST: Final = 255
#: A unix socket path's bytes (``sun_path`` holds 108 with the terminating NUL).
MAX_PATH: Final = 107


def check_address(address: SocketAddress) -> None:
    """Refuse what no socket can be made for.

    Raises:
        ForwardError: ``unknown_host`` for a host that cannot be a name (NUL, too long),
            ``failed`` for a port out of range or a bad unix socket path.
    """
    if address.path:
        if address.host or address.port:
            raise ForwardError("failed", "a unix socket path with a host or port")
        encoded = address.path.encode("utf-8", "surrogateescape")
        if b"\0" in encoded or len(encoded) > MAX_PATH:
            raise ForwardError(
                "failed", f"unix socket paths hold at most {MAX_PATH} bytes and no NUL"
            )
        return
    if not 0 <= address.port <= 65535:
        raise ForwardError("failed", f"port {address.port} out of range")
    if "\0" in address.host or len(address.host.encode("utf-8", "surrogateescape")) > MAX_HOST:
        raise ForwardError("unknown_host", "not a host name")


def peer_text(family: int, peer: object) -> str:
    """An accepted connection's peer as ``host:port``; ``""`` for a unix socket."""
    if family in (socket.AF_INET, socket.AF_INET6) and isinstance(peer, tuple):
        return join_host_port(str(peer[0]), int(peer[1]))
    return ""
