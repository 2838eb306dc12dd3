"""RFC 4251 §5 data types: encoders, the bounds-checked ``Reader`` and its limits."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from trissh.protocol import wire
from trissh.protocol.constants import MAX_NAME_LIST_LENGTH, MAX_NAMES
from trissh.protocol.errors import DecodeError
from trissh.protocol.wire import Reader

# (value, encoding, encoder, decoder) rows in the style of asyncssh's tests/test_packet.py.
# The mpint and name-list rows are RFC 4251 §5's own examples, verbatim.
Row = tuple[object, str, Callable[..., bytes], Callable[[Reader], object]]
CODEC_TABLE: list[Row] = [
    (False, "00", wire.boolean, Reader.boolean),
    (True, "01", wire.boolean, Reader.boolean),
    (0x00, "00", wire.byte, Reader.byte),
    (0xFF, "ff", wire.byte, Reader.byte),
    (699921578, "29b7f4aa", wire.uint32, Reader.uint32),  # RFC 4251 §5 uint32 example
    (0xFFFFFFFF, "ffffffff", wire.uint32, Reader.uint32),
    (0x0102030405060708, "0102030405060708", wire.uint64, Reader.uint64),
    (b"", "00000000", wire.string, Reader.string),
    (b"testing", "0000000774657374696e67", wire.string, Reader.string),  # RFC 4251 §5
    (0, "00000000", wire.mpint, Reader.mpint),
    (0x9A378F9B2E332A7, "0000000809a378f9b2e332a7", wire.mpint, Reader.mpint),
    (0x80, "000000020080", wire.mpint, Reader.mpint),
    (-0x1234, "00000002edcc", wire.mpint, Reader.mpint),
    (-0xDEADBEEF, "00000005ff21524111", wire.mpint, Reader.mpint),
    ((), "00000000", wire.name_list, Reader.name_list),
    (("zlib",), "000000047a6c6962", wire.name_list, Reader.name_list),
    (("zlib", "none"), "000000097a6c69622c6e6f6e65", wire.name_list, Reader.name_list),
]


def _id(row: Row) -> str:
    return f"{row[2].__name__}-{row[1]}"


@pytest.mark.parametrize(
    ("value", "encoded", "encode", "decode"), CODEC_TABLE, ids=map(_id, CODEC_TABLE)
)
def test_rfc4251_vectors_encode_and_decode_exactly(
    value: object, encoded: str, encode: Callable[..., bytes], decode: Callable[[Reader], object]
) -> None:
    """Each value encodes to the RFC's bytes and those bytes decode back to the value."""
    assert encode(value).hex() == encoded
    reader = Reader(bytes.fromhex(encoded))
    assert decode(reader) == value
    reader.check_end()


@pytest.mark.parametrize(
    ("value", "encoded", "encode", "decode"), CODEC_TABLE, ids=map(_id, CODEC_TABLE)
)
def test_every_truncation_of_every_encoding_raises_decode_error(
    value: object, encoded: str, encode: Callable[..., bytes], decode: Callable[[Reader], object]
) -> None:
    """Cutting a valid encoding short anywhere is a DecodeError, never an IndexError."""
    data = bytes.fromhex(encoded)
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode(Reader(data[:cut]))


def test_string_accepts_str_bytes_bytearray_and_memoryview() -> None:
    """``wire.string`` encodes text as UTF-8 and binary types as-is."""
    expected = bytes.fromhex("00000002c3a9")
    assert wire.string("é") == expected
    for raw in (b"\xc3\xa9", bytearray(b"\xc3\xa9"), memoryview(b"\xc3\xa9")):
        assert wire.string(raw) == expected


@pytest.mark.parametrize(
    "encoded",
    [
        "0000000100",  # zero must be the empty string (RFC 4251 §5)
        "000000020001",  # 1 with a needless 00
        "00000002007f",
        "00000003000080",  # 0x80 with two zero bytes where one is needed
        "00000002ffff",  # -1 with a needless ff
        "00000002ff80",  # -0x80 with a needless ff
    ],
)
def test_non_minimal_mpint_is_rejected(encoded: str) -> None:
    """RFC 4251 §5: mpints carry no unnecessary leading 00 or ff bytes."""
    with pytest.raises(DecodeError):
        Reader(bytes.fromhex(encoded)).mpint()


@pytest.mark.parametrize("value", [1, -1, 0x7F, 0x80, -0x80, -0x81, 0xFF, 0x100, 2**255, -(2**255)])
def test_mpint_round_trips_at_sign_boundaries(value: int) -> None:
    """Values around byte and sign boundaries survive encode/decode with a minimal length."""
    encoded = wire.mpint(value)
    assert Reader(encoded).mpint() == value
    if value:
        body = encoded[4:]
        assert len(body) == 1 or not (
            (body[0] == 0 and body[1] < 0x80) or (body[0] == 0xFF and body[1] >= 0x80)
        )


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        (bytes(32), "00000000"),
        (b"\x00\x00\x01", "0000000101"),
        (b"\x80" + bytes(31), "0000002100" + "80" + "00" * 31),
        (b"\x7f\xff", "000000027fff"),
    ],
)
def test_mpint_from_unsigned_bytes(raw: bytes, encoded: str) -> None:
    """RFC 8731 §3: K is the X25519 output read as a big-endian unsigned integer."""
    assert wire.mpint_from_unsigned_bytes(raw).hex() == encoded


def test_mpint_length_limit() -> None:
    """An mpint longer than the caller's bound is refused before it is converted."""
    encoded = wire.mpint(2**1000)
    assert Reader(encoded).mpint(max_length=126) == 2**1000
    with pytest.raises(DecodeError, match="exceeds the limit"):
        Reader(encoded).mpint(max_length=125)


def test_string_length_limit_and_overlong_length_field() -> None:
    """A length above the bound, or above what is buffered, is a DecodeError."""
    with pytest.raises(DecodeError, match="exceeds the limit"):
        Reader(wire.string(b"abcd")).string(max_length=3)
    with pytest.raises(DecodeError):
        Reader(b"\xff\xff\xff\xffabc").string()


@pytest.mark.parametrize("raw", [b",", b"zlib,", b",zlib", b"zlib,,none"])
def test_name_list_with_empty_name_is_rejected(raw: bytes) -> None:
    """RFC 4251 §5: a name in a name-list must have non-zero length."""
    with pytest.raises(DecodeError, match="empty name"):
        Reader(wire.string(raw)).name_list()


def test_name_list_must_be_ascii() -> None:
    """Names are US-ASCII (RFC 4251 §6)."""
    with pytest.raises(DecodeError, match="US-ASCII"):
        Reader(wire.string("zlib,nöne")).name_list()


def test_name_list_limits() -> None:
    """Both the byte length and the number of names of a name-list are bounded."""
    names = tuple(f"n{i}" for i in range(MAX_NAMES))
    assert Reader(wire.name_list(names)).name_list() == names
    with pytest.raises(DecodeError, match="more than"):
        Reader(wire.name_list((*names, "one-more"))).name_list()
    long_name = "x" * (MAX_NAME_LIST_LENGTH + 1)
    with pytest.raises(DecodeError, match="exceeds the limit"):
        Reader(wire.name_list((long_name,))).name_list()


def test_text_requires_utf8_and_ascii_requires_ascii() -> None:
    """``text`` fields are UTF-8 (RFC 4251 §5); ``ascii`` names are US-ASCII."""
    assert Reader(wire.string("é")).text() == "é"
    with pytest.raises(DecodeError, match="UTF-8"):
        Reader(wire.string(b"\xff")).text()
    with pytest.raises(DecodeError, match="US-ASCII"):
        Reader(wire.string("é")).ascii()


def test_check_end_and_rest() -> None:
    """Trailing bytes are visible through ``remaining`` and refused by ``check_end``."""
    reader = Reader(b"\x01\x02\x03")
    assert reader.byte() == 1
    assert reader.remaining == 2
    with pytest.raises(DecodeError, match="after the end"):
        reader.check_end()
    assert reader.rest() == b"\x02\x03"
    reader.check_end()
    assert reader.rest() == b""


def test_fixed_field_and_reader_offset() -> None:
    """``fixed`` reads exactly n bytes; a reader may start inside a payload."""
    reader = Reader(b"\x14" + bytes(range(16)), 1)
    assert reader.fixed(16) == bytes(range(16))
    with pytest.raises(DecodeError):
        Reader(bytes(15)).fixed(16)
