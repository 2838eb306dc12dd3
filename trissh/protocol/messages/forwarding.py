"""Payloads of the forwarding channels and global requests (RFC 4254 §7, OpenSSH PROTOCOL
§2.4 streamlocal and PROTOCOL.agent): the type-specific data after a CHANNEL_OPEN's common
fields, and the data of ``tcpip-forward``-style global requests.

Hosts are UTF-8 text (names or addresses), socket paths bytes decoded as UTF-8; both are
bounded here, before anything else looks at them. Ports are checked to be ports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from trissh.protocol import wire
from trissh.protocol.errors import DecodeError
from trissh.protocol.wire import Reader

#: Longest host name or address accepted (DNS names are at most 253 bytes).
MAX_HOST = 255
#: Longest socket path accepted (Linux allows 107 bytes in ``sun_path``; abstract names and
#: other systems a little more).
MAX_SOCKET_PATH = 255
MAX_PORT = 65535


def _port(r: Reader, *, zero_ok: bool = False) -> int:
    port = r.uint32()
    if port > MAX_PORT or (port == 0 and not zero_ok):
        raise DecodeError(f"port {port} out of range")
    return port


def _originator_port(r: Reader) -> int:
    """The client's own port for a connection it forwards: any uint32 is tolerated (some
    clients send 0 or junk; it is only reported)."""
    return r.uint32() & 0xFFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpipOpenData:
    """``direct-tcpip`` (to ``host:port``) and ``forwarded-tcpip`` (arrived at the listened
    ``host:port``), each with the address the connection came from."""

    host: str
    port: int
    originator_host: str
    originator_port: int

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.string(self.host),
                wire.uint32(self.port),
                wire.string(self.originator_host),
                wire.uint32(self.originator_port),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        value = cls(
            host=_host(r),
            port=_port(r),
            originator_host=_host(r),
            originator_port=_originator_port(r),
        )
        r.check_end()
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectStreamlocalData:
    """``direct-streamlocal@openssh.com``: a unix socket path, then two reserved fields."""

    path: str

    def encode(self) -> bytes:
        return wire.string(self.path) + wire.string(b"") + wire.uint32(0)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        value = cls(path=_path(r))
        r.string(MAX_HOST)  # reserved
        r.uint32()  # reserved
        r.check_end()
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardedStreamlocalData:
    """``forwarded-streamlocal@openssh.com``: the listened path and a reserved string."""

    path: str

    def encode(self) -> bytes:
        return wire.string(self.path) + wire.string(b"")

    @classmethod
    def decode(cls, r: Reader) -> Self:
        value = cls(path=_path(r))
        r.string(MAX_HOST)
        r.check_end()
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpipForwardData:
    """``tcpip-forward`` / ``cancel-tcpip-forward``: listen on ``address:port`` (port 0:
    any; the reply then carries the port chosen)."""

    address: str
    port: int

    def encode(self) -> bytes:
        return wire.string(self.address) + wire.uint32(self.port)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        value = cls(address=_host(r), port=_port(r, zero_ok=True))
        r.check_end()
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamlocalForwardData:
    """``streamlocal-forward@openssh.com`` / its cancel: listen on a unix socket path."""

    path: str

    def encode(self) -> bytes:
        return wire.string(self.path)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        value = cls(path=_path(r))
        r.check_end()
        return value


def _host(r: Reader) -> str:
    host = r.text(MAX_HOST)
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in host):
        raise DecodeError("host with a control character")
    return host


def _path(r: Reader) -> str:
    path = r.text(MAX_SOCKET_PATH)
    if not path or any(ord(char) < 0x20 or ord(char) == 0x7F for char in path):
        raise DecodeError("empty socket path, or one with a control character")
    return path
