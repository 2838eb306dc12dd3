"""The forwarding channel kinds (RFC 4254 §7, OpenSSH PROTOCOL §2.4 and PROTOCOL.agent):
how their opens read, and the data of the channels the server opens.

The client opens ``direct-tcpip`` (``ssh -L``, ``-D``, ``-W``) and
``direct-streamlocal@openssh.com`` (``ssh -L`` to a socket path); the server opens
``forwarded-tcpip`` and ``forwarded-streamlocal@openssh.com`` (``ssh -R``),
``auth-agent@openssh.com`` (``ssh -A``) and ``x11``. None of them takes channel requests.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from trissh.protocol.channels import ChannelKind, NoRequests, OpenDetails
from trissh.protocol.errors import DecodeError
from trissh.protocol.events import ForwardTarget, SocketPath, TcpAddress
from trissh.protocol.messages.forwarding import (
    DirectStreamlocalData,
    ForwardedStreamlocalData,
    StreamlocalForwardData,
    TcpipForwardData,
    TcpipOpenData,
)
from trissh.protocol.wire import Reader

DIRECT_TCPIP: Final = "direct-tcpip"
DIRECT_STREAMLOCAL: Final = "direct-streamlocal@openssh.com"
FORWARDED_TCPIP: Final = "forwarded-tcpip"
FORWARDED_STREAMLOCAL: Final = "forwarded-streamlocal@openssh.com"
AUTH_AGENT: Final = "auth-agent@openssh.com"
X11: Final = "x11"

TCPIP_FORWARD: Final = "tcpip-forward"
CANCEL_TCPIP_FORWARD: Final = "cancel-tcpip-forward"
STREAMLOCAL_FORWARD: Final = "streamlocal-forward@openssh.com"
CANCEL_STREAMLOCAL_FORWARD: Final = "cancel-streamlocal-forward@openssh.com"
#: Global requests that ask the server to listen, or to stop.
FORWARD_REQUESTS: Final = frozenset(
    (TCPIP_FORWARD, CANCEL_TCPIP_FORWARD, STREAMLOCAL_FORWARD, CANCEL_STREAMLOCAL_FORWARD)
)


def _read_direct_tcpip(reader: Reader) -> OpenDetails:
    data = TcpipOpenData.decode(reader)
    return OpenDetails(
        target=TcpAddress(host=data.host, port=data.port),
        originator=TcpAddress(host=data.originator_host, port=data.originator_port),
    )


def _read_direct_streamlocal(reader: Reader) -> OpenDetails:
    return OpenDetails(target=SocketPath(path=DirectStreamlocalData.decode(reader).path))


def _refused_from_client(reader: Reader) -> OpenDetails:
    raise AssertionError("the table refuses kinds only a server opens")


@functools.cache
def forwarding_kinds() -> Mapping[str, ChannelKind]:
    """Every forwarding kind; which of them a connection serves is the driver's policy.
    Built once: the kinds hold no state of a connection (building them for each cost ~60K
    instructions, ~0.6 % of a login)."""
    kinds = [
        ChannelKind(DIRECT_TCPIP, True, _read_direct_tcpip, lambda _: NoRequests()),
        ChannelKind(DIRECT_STREAMLOCAL, True, _read_direct_streamlocal, lambda _: NoRequests()),
    ]
    kinds += [
        ChannelKind(name, False, _refused_from_client, lambda _: NoRequests())
        for name in (FORWARDED_TCPIP, FORWARDED_STREAMLOCAL, AUTH_AGENT, X11)
    ]
    return MappingProxyType({kind.name: kind for kind in kinds})


def read_forward_request(name: str, data: bytes) -> ForwardTarget:
    """Where a ``tcpip-forward``-style global request asks to listen (or stop).

    Raises:
        DecodeError: malformed.
    """
    reader = Reader(data)
    if name in (TCPIP_FORWARD, CANCEL_TCPIP_FORWARD):
        request = TcpipForwardData.decode(reader)
        return TcpAddress(host=request.address, port=request.port)
    if name in (STREAMLOCAL_FORWARD, CANCEL_STREAMLOCAL_FORWARD):
        return SocketPath(path=StreamlocalForwardData.decode(reader).path)
    raise DecodeError(f"{name} is not a forwarding request")


def forwarded_tcpip(listened: TcpAddress, originator: TcpAddress) -> bytes:
    """The open data of a connection that arrived at a ``tcpip-forward`` listener."""
    return TcpipOpenData(
        host=listened.host,
        port=listened.port,
        originator_host=originator.host,
        originator_port=originator.port,
    ).encode()


def forwarded_streamlocal(path: str) -> bytes:
    """The open data of a connection that arrived at a ``streamlocal-forward`` listener."""
    return ForwardedStreamlocalData(path=path).encode()
