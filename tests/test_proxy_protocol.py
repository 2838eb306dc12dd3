"""PROXY protocol v1/v2 at byte level: whole, byte by byte, with trailing SSH data; fuzz."""

from __future__ import annotations

import ipaddress
import struct

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trissh.server.proxy_protocol import (
    MAX_V2_LENGTH,
    TLV,
    V2_SIGNATURE,
    Endpoint,
    ProxyCommand,
    ProxyProtocolError,
    ProxyResult,
    TrustedNetworks,
    parse_proxy_header,
)

SSH = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"


def v2(command: int = 1, family: int = 0x11, block: bytes = b"", version: int = 2) -> bytes:
    return (
        V2_SIGNATURE
        + bytes([version << 4 | command, family])
        + struct.pack(">H", len(block))
        + block
    )


def inet4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack(">HH", sport, dport)
    )


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack(">HH", sport, dport)
    )


def endpoint(text: str, port: int) -> Endpoint:
    return Endpoint(address=ipaddress.ip_address(text), port=port)


def three_ways(header: bytes) -> ProxyResult:
    """h11's tr(): whole, one byte at a time, and with the client's SSH bytes behind it."""
    whole = parse_proxy_header(header)
    assert whole is not None
    assert whole.consumed == len(header)
    for n in range(len(header)):
        assert parse_proxy_header(header[:n]) is None, n
    trailing = parse_proxy_header(header + SSH)
    assert trailing == whole
    assert (header + SSH)[trailing.consumed :] == SSH
    return whole


VALID = [
    pytest.param(
        b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 22\r\n",
        ProxyResult(
            version=1,
            command=ProxyCommand.PROXY,
            source=endpoint("192.0.2.10", 56324),
            destination=endpoint("198.51.100.1", 22),
            consumed=45,
        ),
        id="v1-tcp4",
    ),
    pytest.param(
        b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n",
        ProxyResult(
            version=1,
            command=ProxyCommand.PROXY,
            source=endpoint("255.255.255.255", 65535),
            destination=endpoint("0.0.0.0", 0),
            consumed=44,
        ),
        id="v1-tcp4-extremes",
    ),
    pytest.param(
        b"PROXY TCP6 2001:db8::1 2001:DB8:0:0:0:0:0:2 1024 2222\r\n",
        ProxyResult(
            version=1,
            command=ProxyCommand.PROXY,
            source=endpoint("2001:db8::1", 1024),
            destination=endpoint("2001:db8::2", 2222),
            consumed=55,
        ),
        id="v1-tcp6",
    ),
    pytest.param(
        b"PROXY UNKNOWN\r\n",
        ProxyResult(
            version=1, command=ProxyCommand.PROXY, source=None, destination=None, consumed=15
        ),
        id="v1-unknown",
    ),
    pytest.param(
        b"PROXY UNKNOWN ffff:f::f:ffff ffff:f::f:ffff 65535 65535\r\n",
        ProxyResult(
            version=1, command=ProxyCommand.PROXY, source=None, destination=None, consumed=57
        ),
        id="v1-unknown-long",
    ),
    pytest.param(
        v2(block=inet4("203.0.113.7", "10.0.0.5", 40000, 22)),
        ProxyResult(
            version=2,
            command=ProxyCommand.PROXY,
            source=endpoint("203.0.113.7", 40000),
            destination=endpoint("10.0.0.5", 22),
            consumed=28,
        ),
        id="v2-tcp4",
    ),
    pytest.param(
        v2(family=0x21, block=inet6("2001:db8::7", "fd00::5", 40000, 22)),
        ProxyResult(
            version=2,
            command=ProxyCommand.PROXY,
            source=endpoint("2001:db8::7", 40000),
            destination=endpoint("fd00::5", 22),
            consumed=52,
        ),
        id="v2-tcp6",
    ),
    pytest.param(
        v2(block=inet4("203.0.113.7", "10.0.0.5", 1, 2) + b"\x05\x00\x03abc" + b"\x04\x00\x00"),
        ProxyResult(
            version=2,
            command=ProxyCommand.PROXY,
            source=endpoint("203.0.113.7", 1),
            destination=endpoint("10.0.0.5", 2),
            consumed=28 + 6 + 3,
            tlvs=(TLV(type=5, value=b"abc"), TLV(type=4, value=b"")),
        ),
        id="v2-tcp4-tlvs",
    ),
    pytest.param(
        v2(command=0, family=0x00),
        ProxyResult(
            version=2, command=ProxyCommand.LOCAL, source=None, destination=None, consumed=16
        ),
        id="v2-local",
    ),
    pytest.param(
        # LOCAL with an address block: the length is honoured, the addresses ignored (§2.2).
        v2(command=0, family=0x11, block=inet4("1.2.3.4", "5.6.7.8", 1, 2)),
        ProxyResult(
            version=2, command=ProxyCommand.LOCAL, source=None, destination=None, consumed=28
        ),
        id="v2-local-with-addresses",
    ),
    pytest.param(
        v2(family=0x00, block=b"ignored"),
        ProxyResult(
            version=2, command=ProxyCommand.PROXY, source=None, destination=None, consumed=23
        ),
        id="v2-unspec",
    ),
    pytest.param(
        v2(family=0x31, block=b"/a".ljust(108, b"\0") + b"/b".ljust(108, b"\0")),
        ProxyResult(
            version=2, command=ProxyCommand.PROXY, source=None, destination=None, consumed=232
        ),
        id="v2-unix-stream",
    ),
    pytest.param(
        # A dual-stack balancer's IPv4 client (inet_ntop's text): the IPv4 address it is.
        b"PROXY TCP6 ::ffff:203.0.113.7 ::ffff:10.0.0.5 1 2\r\n",
        ProxyResult(
            version=1,
            command=ProxyCommand.PROXY,
            source=endpoint("203.0.113.7", 1),
            destination=endpoint("10.0.0.5", 2),
            consumed=51,
        ),
        id="v1-tcp6-ipv4-mapped",
    ),
]


@pytest.mark.parametrize(("header", "expected"), VALID)
def test_valid_headers(header: bytes, expected: ProxyResult) -> None:
    assert three_ways(header) == expected


def test_local_is_a_health_check() -> None:
    result = parse_proxy_header(v2(command=0))
    assert result is not None
    assert result.is_local
    assert not three_ways(b"PROXY UNKNOWN\r\n").is_local


def test_endpoint_text_matches_the_server_peer_format() -> None:
    assert str(endpoint("192.0.2.1", 22)) == "192.0.2.1:22"
    assert str(endpoint("2001:db8::1", 22)) == "[2001:db8::1]:22"


def test_max_v2_length_is_accepted() -> None:
    block = inet4("1.2.3.4", "5.6.7.8", 1, 2)
    padding = MAX_V2_LENGTH - len(block) - 3
    result = three_ways(v2(block=block + b"\x04" + struct.pack(">H", padding) + bytes(padding)))
    assert result.consumed == 16 + MAX_V2_LENGTH


INVALID = [
    # Not a PROXY header at all: a client speaking SSH straight away, TLS, HTTP, nothing.
    (SSH, "no PROXY protocol header"),
    (b"\x16\x03\x01\x02\x00", "no PROXY protocol header"),
    (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
    (b"\x00", "no PROXY protocol header"),
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "no PROXY protocol header"),
    # v1
    (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"),
    (b"PROXX TCP4", "bad PROXY v1 header start"),
    (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"),
    (b"PROXY UNKNOWNX\r\n", "not TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "needs 'TCP4 SRC DST SPORT DPORT'"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "needs 'TCP4 SRC DST SPORT DPORT'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "needs 'TCP4 SRC DST SPORT DPORT'"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "bad IPv4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad IPv6 address"),
    (b"PROXY TCP6 ::ffff:1.2.3.4.5 ::1 1 2\r\n", "bad IPv6 address"),
    (b"PROXY TCP6 ::ffff:1.2.3 ::1 1 2\r\n", "bad IPv6 address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad IPv6 address"),
    (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "bad IPv6 address"),
    (b"PROXY TCP6 1:::2 ::1 1 2\r\n", "bad IPv6 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 022 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "lone CR or LF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "lone CR or LF"),
    (b"PROXY UNKNOWN \x00\r\n", "not printable"),
    (b"PROXY UNKNOWN " + b"a" * 100, "no CRLF in 107 bytes"),
    (b"PROXY UNKNOWN " + b"a" * 92 + b"\r\n", "no CRLF in 107 bytes"),
    # v2
    (V2_SIGNATURE[:5] + b"X", "bad PROXY v2 signature"),
    (v2(version=1), "version 1 is not 2"),
    (v2(version=3), "version 3 is not 2"),
    (v2(command=2), "command 0x2 is neither LOCAL nor PROXY"),
    (v2(family=0x41, block=bytes(12)), "address family 0x4 is unassigned"),
    (v2(family=0x13, block=bytes(12)), "transport 0x3 is unassigned"),
    (v2(family=0x12, block=bytes(12)), "DGRAM transport cannot carry SSH"),
    (v2(family=0x11, block=bytes(11)), "shorter than the 12-byte address block"),
    (v2(family=0x21, block=bytes(12)), "shorter than the 36-byte address block"),
    (v2(family=0x31, block=bytes(215)), "shorter than the 216-byte address block"),
    (v2(block=bytes(12) + b"\x05\x00"), "truncated TLV"),
    (v2(block=bytes(12) + b"\x05\x00\x04abc"), "overruns the header"),
    (v2(block=bytes(MAX_V2_LENGTH + 1)), f"length {MAX_V2_LENGTH + 1} exceeds {MAX_V2_LENGTH}"),
]


@pytest.mark.parametrize(("data", "message"), INVALID)
def test_invalid_headers(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        parse_proxy_header(data)


@pytest.mark.parametrize(("data", "message"), INVALID)
def test_invalid_headers_byte_by_byte_never_succeed(data: bytes, message: str) -> None:
    """Fed in pieces, bad input fails at the latest when whole, never parses."""
    outcomes = [outcome(data[:n]) for n in range(1, len(data) + 1)]
    assert not any(isinstance(item, ProxyResult) for item in outcomes)
    assert outcomes[-1] == "error"


def test_errors_come_early() -> None:
    """Bytes that cannot become a header fail at once, not after a timeout."""
    for early in (b"S", b"PROXY X", b"PROXY TCP4 1.2\n", V2_SIGNATURE + b"\x13", b"\r\n\r\n\x01"):
        with pytest.raises(ProxyProtocolError):
            parse_proxy_header(early)


def test_oversized_v2_fails_on_its_16_byte_head() -> None:
    with pytest.raises(ProxyProtocolError, match="exceeds"):
        parse_proxy_header(v2()[:14] + b"\xff\xff")


def test_truncated_headers_need_more() -> None:
    assert parse_proxy_header(b"") is None
    assert parse_proxy_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r") is None
    assert parse_proxy_header(v2(block=inet4("1.2.3.4", "5.6.7.8", 1, 2))[:-1]) is None


def test_input_types() -> None:
    header = b"PROXY UNKNOWN\r\n"
    assert parse_proxy_header(bytearray(header)) == parse_proxy_header(memoryview(header))


# -- Hypothesis ----------------------------------------------------------------------------


def outcome(data: bytes) -> ProxyResult | str | None:
    try:
        return parse_proxy_header(data)
    except ProxyProtocolError:
        return "error"


prefixes = st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY UNKNOWN", V2_SIGNATURE])


@given(prefix=prefixes, data=st.binary(max_size=600))
def test_fuzz_only_protocol_errors(prefix: bytes, data: bytes) -> None:
    """Whatever arrives, the parser returns None or a result, or raises ProxyProtocolError."""
    result = outcome(prefix + data)
    if isinstance(result, ProxyResult):
        assert 0 < result.consumed <= len(prefix + data)


@given(prefix=prefixes, data=st.binary(max_size=300), extra=st.binary(max_size=50))
def test_fuzz_chunking_invariance(prefix: bytes, data: bytes, extra: bytes) -> None:
    """A complete header's strict prefixes need more bytes; what follows it never matters."""
    stream = prefix + data
    result = outcome(stream)
    if isinstance(result, ProxyResult):
        header = stream[: result.consumed]
        assert outcome(header) == result
        assert outcome(stream + extra) == result
        for n in range(result.consumed):
            assert outcome(header[:n]) is None
    elif result is None:
        for n in range(len(stream)):
            assert outcome(stream[:n]) is None


@given(
    src=st.ip_addresses(v=4),
    dst=st.ip_addresses(v=4),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    text=st.booleans(),
)
def test_fuzz_round_trip_v4(
    src: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    sport: int,
    dport: int,
    text: bool,
) -> None:
    if text:
        header = f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode()
    else:
        header = v2(block=inet4(str(src), str(dst), sport, dport))
    result = parse_proxy_header(header + SSH)
    assert result is not None
    assert (result.source, result.destination) == (
        Endpoint(address=src, port=sport),
        Endpoint(address=dst, port=dport),
    )


@given(src=st.ip_addresses(v=6), dst=st.ip_addresses(v=6), text=st.booleans())
def test_fuzz_round_trip_v6(
    src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, text: bool
) -> None:
    if text:
        header = f"PROXY TCP6 {src.exploded} {dst.compressed} 1 2\r\n".encode()
    else:
        header = v2(family=0x21, block=inet6(str(src), str(dst), 1, 2))
    result = parse_proxy_header(header)
    assert result is not None
    assert result.source is not None
    assert result.destination is not None
    assert (result.source.address, result.destination.address) == (
        src.ipv4_mapped or src,
        dst.ipv4_mapped or dst,
    )


# -- trusted networks ------------------------------------------------------------------------


def test_trusted_networks() -> None:
    trusted = TrustedNetworks(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"])
    assert "10.1.2.3" in trusted
    assert "192.0.2.7" in trusted
    assert "192.0.2.8" not in trusted
    assert "2001:db8::1" in trusted
    assert "[2001:db8::1]" in trusted
    assert "2001:db9::1" not in trusted
    assert ipaddress.ip_address("10.9.9.9") in trusted
    assert "::ffff:10.0.0.1" in trusted  # a dual-stack socket's view of an IPv4 peer
    assert "fe80::1%eth0" not in trusted
    assert "not an address" not in trusted
    assert 167772161 not in trusted  # only text or address objects
    assert trusted
    assert "10.1.2.3" not in TrustedNetworks([])
    assert not TrustedNetworks([])


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("10.0.0.1/8", r"trusted proxy network '10.0.0.1/8': 10.0.0.1/8 has host bits set"),
        ("10.0.0.0/33", r"trusted proxy network '10.0.0.0/33'"),
        ("balancer.example", r"trusted proxy network 'balancer.example'"),
    ],
)
def test_trusted_networks_reject_bad_entries(cidr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrustedNetworks([cidr])


# -- the driver recipe from the module docstring ---------------------------------------------------


async def read_header(
    stream: trio.abc.ReceiveStream, peer: str, trusted: TrustedNetworks
) -> tuple[str, bytes]:
    """The module docstring's recipe: (remote to log, bytes left over for the SSH core)."""
    if peer not in trusted:
        return peer, b""
    buf = bytearray()
    result = None
    with trio.move_on_after(5):
        while (result := parse_proxy_header(buf)) is None:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            buf += chunk
    if result is None:
        raise ProxyProtocolError("no PROXY header in time")
    remote = str(result.source) if result.source else peer
    return remote, bytes(buf[result.consumed :])


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 198.51.100.9 10.0.0.5 50000 22\r\n",
        v2(block=inet4("198.51.100.9", "10.0.0.5", 50000, 22)),
    ],
)
async def test_recipe_trusted_peer_in_trickles(header: bytes) -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    trusted = TrustedNetworks(["10.0.0.0/8"])

    async def balancer() -> None:
        for byte in header + SSH:
            await send.send_all(bytes([byte]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(balancer)
        remote, leftover = await read_header(receive, "10.0.0.2", trusted)
    assert remote == "198.51.100.9:50000"
    rest = bytearray(leftover)
    while len(rest) < len(SSH):
        rest += await receive.receive_some()
    assert rest == SSH


async def test_recipe_untrusted_peer_is_not_read() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(b"PROXY TCP4 198.51.100.9 10.0.0.5 50000 22\r\n")
    remote, leftover = await read_header(receive, "203.0.113.1", TrustedNetworks(["10.0.0.0/8"]))
    # The spoofed header stays in the stream for the SSH core to reject as a bad version line.
    assert (remote, leftover) == ("203.0.113.1", b"")
    assert (await receive.receive_some()).startswith(b"PROXY TCP4")


async def test_recipe_times_out_without_header(autojump_clock: trio.testing.MockClock) -> None:
    _send, receive = trio.testing.memory_stream_one_way_pair()
    with pytest.raises(ProxyProtocolError, match="in time"):
        await read_header(receive, "10.0.0.2", TrustedNetworks(["10.0.0.0/8"]))
