"""HAProxy PROXY protocol v1 and v2 receiver (sans-IO): the real client behind a balancer.

Spec: haproxy ``doc/proxy-protocol.txt`` ("The PROXY protocol, Versions 1 & 2", 2020/03/05).

Theory of operation
-------------------
:func:`parse_proxy_header` is a pure function of the bytes received so far. It returns
``None`` while the header is incomplete, a :class:`ProxyResult` (with ``consumed``, the
header's length) once it is whole, and raises :class:`ProxyProtocolError` as soon as the
bytes cannot become a valid header: a wrong first byte fails at once, not after a timeout.
Every path is bounded: a v1 line is at most 107 bytes (§2.1) and a v2 header at most
16 + :data:`MAX_V2_LENGTH` bytes, so the caller's buffer never grows past that plus one read.

Only the v1 ``TCP4``/``TCP6``/``UNKNOWN`` lines and the v2 ``LOCAL``/``PROXY`` commands over
``AF_INET``/``AF_INET6``/``AF_UNIX``/``AF_UNSPEC`` with ``STREAM``/``UNSPEC`` transport are
accepted. ``DGRAM`` is refused: SSH over UDP means a misconfigured balancer. When the header
carries no usable address (v2 ``LOCAL``, the balancer's health checks; v1 ``UNKNOWN``; v2
``AF_UNSPEC``/``AF_UNIX``), ``source`` is ``None`` and the spec says to use the socket's own
endpoints (§2.1, §2.2). v2 TLVs (§2.2) are walked with bounds and returned, not interpreted.

How the driver uses it
----------------------
The spec forbids guessing whether a header is present (§2): the header is *required* from
peers in :class:`TrustedNetworks` and *never parsed* from anyone else. So, in ``handle``
(server.py, in outline), before ``serve_connection`` and before the SSH banner is sent::

    peer_ip = stream.socket.getpeername()[0]
    leftover = b""
    if peer_ip in trusted:                                          # [proxy] trusted_networks
        buf = bytearray()
        with trio.move_on_after(settings.proxy.header_timeout):   # e.g. 5 s (spec: >= 3 s)
            while (result := parse_proxy_header(buf)) is None:      # raises ProxyProtocolError
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break                                           # closed before a header
                buf += chunk
        if result is None: reject ("proxy_header_invalid"); close without a banner
        remote = str(result.source) if result.source else real_peer
        leftover = bytes(buf[result.consumed:])                     # the client's SSH bytes
    # serve_connection(..., remote=remote); the driver feeds ``leftover`` to
    # conn.receive_data() before its first socket read.

Why this costs normal clients nothing: untrusted peers (every peer when no network is
trusted) skip the block entirely, so their banner is not delayed at all. For a trusted
balancer the header is the first thing on the connection, sent at once in one segment
(§2, §2.1), so the wait is normally zero; the SSH banner must wait for it anyway ("The
receiver MUST NOT start processing the connection before it receives a complete and valid
PROXY protocol header ... particularly important for protocols where the receiver is
expected to speak first (eg: SMTP, FTP or SSH)", §2). A balancer that forwards the header
only with the client's first bytes is still prompt: SSH clients send their identification
without waiting for the server's (RFC 4253 §4.2). The timeout bounds a broken balancer.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

V1_PREFIX: Final = b"PROXY "
V1_MAX_LINE: Final = 107
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER: Final = 16
#: Largest v2 address-plus-TLV block accepted (the 16-bit field allows 65535).
MAX_V2_LENGTH: Final = 4096

_V1_PROTOCOLS: Final = (b"TCP4 ", b"TCP6 ", b"UNKNOWN")
_IPV4_PART: Final = re.compile(rb"(0|[1-9][0-9]{0,2})")
#: Hex groups, or hex groups ending in a dotted IPv4 (``::ffff:1.2.3.4``, RFC 4291 §2.2).
_IPV6_TEXT: Final = re.compile(rb"[0-9A-Fa-f:]{2,39}|[0-9A-Fa-f:]{2,29}[0-9.]{7,15}")
_PORT: Final = re.compile(rb"(0|[1-9][0-9]{0,4})")
_FAMILY_INET: Final = 0x1
_FAMILY_INET6: Final = 0x2
_FAMILY_UNIX: Final = 0x3
_TRANSPORT_STREAM: Final = 0x1
_TRANSPORT_DGRAM: Final = 0x2
#: Address block length per v2 family (§2.2): two addresses, then two ports for INET.
_ADDRESS_LENGTH: Final = {_FAMILY_INET: 12, _FAMILY_INET6: 36, _FAMILY_UNIX: 216}


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY header; the connection must be dropped (§2.1)."""


class ProxyCommand(enum.Enum):
    """``PROXY``: relayed on behalf of a client; ``LOCAL``: the balancer's own connection."""

    PROXY = "proxy"
    LOCAL = "local"


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """An address and port as the balancer saw them."""

    address: IPAddress
    port: int

    def __str__(self) -> str:
        if self.address.version == 6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TLV:
    """One v2 type-length-value vector (§2.2), e.g. ``0x05`` PP2_TYPE_UNIQUE_ID."""

    type: int
    value: bytes


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyResult:
    """A complete, valid header.

    ``source``/``destination`` are ``None`` when the header carries no usable address
    (``LOCAL``, v1 ``UNKNOWN``, v2 ``AF_UNSPEC``/``AF_UNIX``): use the socket's endpoints.
    ``consumed`` bytes of the input were the header; the rest belongs to SSH.
    """

    version: Literal[1, 2]
    command: ProxyCommand
    source: Endpoint | None
    destination: Endpoint | None
    consumed: int
    tlvs: tuple[TLV, ...] = ()

    @property
    def is_local(self) -> bool:
        """A health check or other connection of the balancer's own."""
        return self.command is ProxyCommand.LOCAL


def parse_proxy_header(data: bytes | bytearray | memoryview) -> ProxyResult | None:
    """Parse a PROXY v1 or v2 header at the start of ``data``.

    Args:
        data: everything received so far on the connection (may hold SSH bytes after it).

    Returns:
        ``None`` if more bytes are needed; the parsed header otherwise.

    Raises:
        ProxyProtocolError: ``data`` does not start with a valid header, or cannot.
    """
    data = bytes(data[: V2_HEADER + MAX_V2_LENGTH])
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    if not data:
        return None
    raise ProxyProtocolError(
        f"no PROXY protocol header: connection starts with {data[:16]!r} "
        "(is the balancer sending PROXY v1 or v2?)"
    )


# -- version 1: one line of text (§2.1) ----------------------------------------------------


def _parse_v1(data: bytes) -> ProxyResult | None:
    prefix = data[: len(V1_PREFIX)]
    if not V1_PREFIX.startswith(prefix):
        raise ProxyProtocolError(f"bad PROXY v1 header start {prefix!r}")
    end = data.find(b"\r\n", 0, V1_MAX_LINE)
    if end < 0:
        if len(data) >= V1_MAX_LINE:
            raise ProxyProtocolError(f"PROXY v1 line has no CRLF in {V1_MAX_LINE} bytes")
        _check_v1_partial(data)
        return None
    _check_v1_text(data[:end])
    line = data[len(V1_PREFIX) : end]
    consumed = end + 2
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):  # the rest is ignored (§2.1)
        return ProxyResult(
            version=1, command=ProxyCommand.PROXY, source=None, destination=None, consumed=consumed
        )
    protocol, _, addresses = line.partition(b" ")
    if protocol not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(
            f"PROXY v1 protocol {protocol[:16]!r} is not TCP4, TCP6 or UNKNOWN"
        )
    fields = addresses.split(b" ")
    if len(fields) != 4:
        raise ProxyProtocolError(
            f"PROXY v1 line needs '{protocol.decode()} SRC DST SPORT DPORT', got {line[:64]!r}"
        )
    src, dst, sport, dport = fields
    version = 4 if protocol == b"TCP4" else 6
    return ProxyResult(
        version=1,
        command=ProxyCommand.PROXY,
        source=Endpoint(address=_v1_address(src, version), port=_v1_port(sport)),
        destination=Endpoint(address=_v1_address(dst, version), port=_v1_port(dport)),
        consumed=consumed,
    )


def _check_v1_partial(data: bytes) -> None:
    """Fail early on an incomplete line that can no longer become valid."""
    text = data[:-1] if data.endswith(b"\r") else data
    _check_v1_text(text)
    rest = text[len(V1_PREFIX) :]
    if not any(token.startswith(rest[: len(token)]) for token in _V1_PROTOCOLS):
        raise ProxyProtocolError(f"PROXY v1 protocol {rest[:16]!r}... is not TCP4, TCP6 or UNKNOWN")


def _check_v1_text(text: bytes) -> None:
    """The line is US-ASCII text (§2.1): a lone CR or LF or a control byte is invalid."""
    if b"\r" in text or b"\n" in text:
        raise ProxyProtocolError("PROXY v1 line has a lone CR or LF")
    if any(byte < 0x20 or byte > 0x7E for byte in text):
        raise ProxyProtocolError("PROXY v1 line has a byte that is not printable US-ASCII")


def _v1_address(text: bytes, version: int) -> IPAddress:
    if version == 4:
        parts = text.split(b".")
        if len(parts) != 4 or not all(_IPV4_PART.fullmatch(part) for part in parts):
            raise ProxyProtocolError(f"PROXY v1 bad IPv4 address {text[:40]!r}")
        try:
            return ipaddress.IPv4Address(text.decode("ascii"))
        except ValueError:
            raise ProxyProtocolError(f"PROXY v1 bad IPv4 address {text[:40]!r}") from None
    if not _IPV6_TEXT.fullmatch(text):
        raise ProxyProtocolError(f"PROXY v1 bad IPv6 address {text[:40]!r}")
    try:
        return _unmapped(ipaddress.IPv6Address(text.decode("ascii")))
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1 bad IPv6 address {text[:40]!r}") from None


def _unmapped(address: IPAddress) -> IPAddress:
    """A dual-stack balancer (HAProxy's ``bind :::22``) or socket sees IPv4 clients as
    IPv4-mapped IPv6: they are the IPv4 address, for ``from=`` and every per-source rule."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _v1_port(text: bytes) -> int:
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise ProxyProtocolError(f"PROXY v1 bad port {text[:8]!r}")
    return int(text)


# -- version 2: binary (§2.2) ----------------------------------------------------------------


def _parse_v2(data: bytes) -> ProxyResult | None:
    signature = data[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(signature):
        raise ProxyProtocolError(f"bad PROXY v2 signature {signature!r}")
    if len(data) > 12:
        version, command = data[12] >> 4, data[12] & 0x0F
        if version != 2:
            raise ProxyProtocolError(f"PROXY v2 version {version} is not 2")
        if command > 1:
            raise ProxyProtocolError(f"PROXY v2 command {command:#x} is neither LOCAL nor PROXY")
    if len(data) < V2_HEADER:
        return None
    family_transport = data[13]
    length = int.from_bytes(data[14:16], "big")
    if length > MAX_V2_LENGTH:
        raise ProxyProtocolError(f"PROXY v2 length {length} exceeds {MAX_V2_LENGTH}")
    if len(data) < V2_HEADER + length:
        return None
    consumed = V2_HEADER + length
    if data[12] & 0x0F == 0:  # LOCAL: the family and addresses are ignored (§2.2)
        return ProxyResult(
            version=2, command=ProxyCommand.LOCAL, source=None, destination=None, consumed=consumed
        )
    block = data[V2_HEADER:consumed]
    return _v2_proxy(family_transport, block, consumed)


def _v2_proxy(family_transport: int, block: bytes, consumed: int) -> ProxyResult:
    family, transport = family_transport >> 4, family_transport & 0x0F
    if family > _FAMILY_UNIX:
        raise ProxyProtocolError(f"PROXY v2 address family {family:#x} is unassigned")
    if transport > _TRANSPORT_DGRAM:
        raise ProxyProtocolError(f"PROXY v2 transport {transport:#x} is unassigned")
    if transport == _TRANSPORT_DGRAM:
        raise ProxyProtocolError("PROXY v2 DGRAM transport cannot carry SSH")
    if family == 0 or transport == 0:  # UNSPEC: use the real endpoints, skip the block
        return ProxyResult(
            version=2, command=ProxyCommand.PROXY, source=None, destination=None, consumed=consumed
        )
    need = _ADDRESS_LENGTH[family]
    if len(block) < need:
        raise ProxyProtocolError(
            f"PROXY v2 length {len(block)} is shorter than the {need}-byte address block"
        )
    tlvs = _v2_tlvs(block[need:])
    if family == _FAMILY_UNIX:
        return ProxyResult(
            version=2,
            command=ProxyCommand.PROXY,
            source=None,
            destination=None,
            consumed=consumed,
            tlvs=tlvs,
        )
    size = 4 if family == _FAMILY_INET else 16
    make = ipaddress.IPv4Address if family == _FAMILY_INET else ipaddress.IPv6Address
    source, destination = _unmapped(make(block[:size])), _unmapped(make(block[size : 2 * size]))
    ports = block[2 * size : 2 * size + 4]
    return ProxyResult(
        version=2,
        command=ProxyCommand.PROXY,
        source=Endpoint(address=source, port=int.from_bytes(ports[:2], "big")),
        destination=Endpoint(address=destination, port=int.from_bytes(ports[2:], "big")),
        consumed=consumed,
        tlvs=tlvs,
    )


def _v2_tlvs(data: bytes) -> tuple[TLV, ...]:
    """Walk the TLV vectors after the addresses; each must fit inside the header."""
    tlvs: list[TLV] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyProtocolError(f"PROXY v2 truncated TLV at offset {offset}")
        kind, size = data[offset], int.from_bytes(data[offset + 1 : offset + 3], "big")
        start = offset + 3
        if start + size > len(data):
            raise ProxyProtocolError(
                f"PROXY v2 TLV {kind:#04x} of {size} bytes overruns the header at offset {offset}"
            )
        tlvs.append(TLV(type=kind, value=data[start : start + size]))
        offset = start + size
    return tuple(tlvs)


# -- who may send a header ---------------------------------------------------------------


@final
class TrustedNetworks:
    """The balancers' networks: only peers inside may (and must) send a PROXY header.

    Args:
        cidrs: networks such as ``"10.0.0.0/8"`` or ``"2001:db8::/32"``; a bare address
            means that one host. Host bits must be zero (a typo is an error, not a guess).

    Raises:
        ValueError: a network does not parse; the message names it.
    """

    def __init__(self, cidrs: Iterable[str]) -> None:
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for cidr in cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr.strip(), strict=True))
            except ValueError as exc:
                raise ValueError(f"trusted proxy network {cidr!r}: {exc}") from None
        self.networks = tuple(networks)

    def __contains__(self, ip: object) -> bool:
        """Whether ``ip`` (text or address) is trusted; anything unparsable is not."""
        address = _as_address(ip)
        if address is None:
            return False
        return any(address in network for network in self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"TrustedNetworks({[str(network) for network in self.networks]!r})"


def _as_address(ip: object) -> IPAddress | None:
    """An address, with IPv4-mapped IPv6 (dual-stack sockets) seen as the IPv4 it is."""
    address: IPAddress
    if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
        address = ip
    elif isinstance(ip, str):
        try:
            address = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            return None
    else:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
    return _unmapped(address)
