"""RFC 4819 packets byte by byte (trissh/protocol/publickey_subsystem.py): their layout as
the RFC writes it, framing, and the bounds on everything a client sends."""

from __future__ import annotations

import struct

import pytest

from trissh.protocol import publickey_subsystem as pk
from trissh.protocol.errors import DecodeError


def s(value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(raw)) + raw


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def test_requests_parse_from_the_rfcs_layout() -> None:
    """§3.5 version, §4.1 add (with attributes and their critical flags), §4.2 remove,
    §4.3 list, §4.4 listattributes."""
    assert pk.parse_request(s("version") + u32(2)) == pk.Version(version=2)
    add = s("add") + s("ssh-ed25519") + s(b"BLOB") + b"\x01" + u32(2)
    add += s("comment") + s("laptop") + b"\x00" + s("x509") + s("") + b"\x01"
    assert pk.parse_request(add) == pk.AddRequest(
        algorithm="ssh-ed25519",
        blob=b"BLOB",
        overwrite=True,
        attributes=(
            pk.Attribute(name="comment", value="laptop"),
            pk.Attribute(name="x509", value="", critical=True),
        ),
    )
    assert pk.parse_request(s("remove") + s("ssh-rsa") + s(b"B")) == pk.RemoveRequest(
        algorithm="ssh-rsa", blob=b"B"
    )
    assert pk.parse_request(s("list")) == pk.ListRequest()
    assert pk.parse_request(s("listattributes")) == pk.ListAttributesRequest()
    assert pk.parse_request(s("frobnicate") + b"anything") == pk.UnknownRequest(name="frobnicate")


def test_responses_encode_as_the_rfc_lays_them_out() -> None:
    """§3.3 status, §3.5 version, §4.3 publickey (attributes without a critical flag),
    §4.4 attribute; and each parses back."""
    status = pk.StatusResponse(code=pk.Status.KEY_NOT_FOUND, description="no such key")
    assert status.encode() == s("status") + u32(4) + s("no such key") + s("en")
    assert pk.Version(version=2).encode() == s("version") + u32(2)
    listed = pk.PublicKeyResponse(
        algorithm="ssh-ed25519", blob=b"B", attributes=(pk.Attribute(name="comment", value="c"),)
    )
    assert listed.encode() == s("publickey") + s("ssh-ed25519") + s(b"B") + u32(1) + s(
        "comment"
    ) + s("c")
    attribute = pk.AttributeResponse(name="comment", compulsory=False)
    assert attribute.encode() == s("attribute") + s("comment") + b"\x00"
    assert pk.packet(b"body") == u32(4) + b"body"
    for response in (status, pk.Version(version=2), listed, attribute):
        assert pk.parse_response(response.encode()) == response


def test_status_codes_are_rfc_4819s() -> None:
    assert [int(code) for code in pk.Status] == list(range(10))
    assert int(pk.Status.ATTRIBUTE_NOT_SUPPORTED) == 9
    assert int(pk.Status.REQUEST_NOT_SUPPORTED) == 8


def test_framing_across_chunks_and_the_length_bound() -> None:
    buffer = pk.PacketBuffer()
    stream = pk.packet(s("list")) + pk.packet(s("version") + u32(2))
    for byte in stream[:-1]:
        buffer.feed(bytes((byte,)))
    assert buffer.next_body() == s("list")
    assert buffer.next_body() is None
    buffer.feed(stream[-1:])
    assert buffer.next_body() == s("version") + u32(2)
    assert buffer.buffered == 0
    buffer.feed(u32(pk.MAX_PACKET + 1))
    with pytest.raises(DecodeError, match="exceeds"):
        buffer.next_body()
    exactly = pk.PacketBuffer()
    exactly.feed(u32(pk.MAX_PACKET) + bytes(pk.MAX_PACKET))
    assert exactly.next_body() == bytes(pk.MAX_PACKET)


@pytest.mark.parametrize(
    "body",
    [
        s("add") + s("ssh-ed25519") + s(b"x" * (pk.MAX_KEY_BLOB + 1)) + b"\x00" + u32(0),
        s("add") + s("ssh-ed25519") + s(b"B") + b"\x00" + u32(pk.MAX_ATTRIBUTES + 1),
        s("add")
        + s("ssh-ed25519")
        + s(b"B")
        + b"\x00"
        + u32(1)
        + s("comment")
        + s("x" * (pk.MAX_ATTRIBUTE_VALUE + 1))
        + b"\x00",
        s("add") + s("ssh-ed25519") + s(b"B") + b"\x00" + u32(1) + s("c") + s(b"\xff") + b"\x00",
        s("add") + s("ssh-ed25519"),
        s("list") + b"trailing",
        s("version"),
        s("x" * (pk.MAX_NAME + 1)),
        b"\x00\x00",
    ],
)
def test_malformed_requests_raise_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        pk.parse_request(body)
