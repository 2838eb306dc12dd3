"""RFC 4251 §5 data types: a bounds-checked reader and encoders.

Every read checks the remaining length first, so malformed input can only raise
``DecodeError``. Encoders return ``bytes``; callers join them once per message.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Final

from trissh.protocol.constants import MAX_NAME_LIST_LENGTH, MAX_NAMES
from trissh.protocol.errors import DecodeError, NotText, TooLong

_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")


class Reader:
    """A cursor over one message payload."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0) -> None:
        self._data = bytes(data)
        self._pos = pos

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise DecodeError("message truncated")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def fixed(self, n: int) -> bytes:
        """A fixed-size field (the KEXINIT cookie)."""
        return self._take(n)

    def byte(self) -> int:
        if self._pos >= len(self._data):
            raise DecodeError("message truncated")
        value = self._data[self._pos]
        self._pos += 1
        return value

    def boolean(self) -> bool:
        return self.byte() != 0

    def uint32(self) -> int:
        if self._pos + 4 > len(self._data):
            raise DecodeError("message truncated")
        (value,) = _U32.unpack_from(self._data, self._pos)
        self._pos += 4
        return int(value)

    def uint64(self) -> int:
        if self._pos + 8 > len(self._data):
            raise DecodeError("message truncated")
        (value,) = _U64.unpack_from(self._data, self._pos)
        self._pos += 8
        return int(value)

    def string(self, max_length: int | None = None) -> bytes:
        length = self.uint32()
        if max_length is not None and length > max_length:
            if self._pos + length > len(self._data):
                raise DecodeError("message truncated")
            raise TooLong(f"string of {length} bytes exceeds the limit of {max_length}")
        return self._take(length)

    def text(self, max_length: int | None = None) -> str:
        """A string field that must be UTF-8 (RFC 4251 §5: ISO-10646 UTF-8)."""
        raw = self.string(max_length)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise NotText("string is not valid UTF-8") from None

    def ascii(self, max_length: int | None = None) -> str:
        """A US-ASCII name (algorithm, method, request type; RFC 4251 §6)."""
        raw = self.string(max_length)
        if not raw.isascii():
            raise NotText("name is not US-ASCII")
        return raw.decode("ascii")

    def mpint(self, max_length: int = 16384) -> int:
        raw = self.string(max_length)
        if raw == b"\x00":
            raise DecodeError("mpint zero must have no value bytes")
        if len(raw) > 1 and (
            (raw[0] == 0 and raw[1] < 0x80) or (raw[0] == 0xFF and raw[1] >= 0x80)
        ):
            raise DecodeError("mpint has unnecessary leading bytes")
        return int.from_bytes(raw, "big", signed=True)

    def name_list(self) -> tuple[str, ...]:
        raw = self.string(MAX_NAME_LIST_LENGTH)
        if not raw:
            return ()
        if not raw.isascii():
            raise DecodeError("name-list is not US-ASCII")
        names = raw.decode("ascii").split(",")
        if len(names) > MAX_NAMES:
            raise DecodeError(f"name-list has more than {MAX_NAMES} names")
        if "" in names:
            raise DecodeError("name-list contains an empty name")
        return tuple(names)

    def rest(self) -> bytes:
        """Everything left (for payloads whose layout depends on an earlier field)."""
        return self._take(self.remaining)

    def check_end(self) -> None:
        """RFC 4251 leaves no room for trailing garbage in the messages we parse strictly."""
        if self._pos != len(self._data):
            raise DecodeError("unexpected data after the end of the message")


def byte(value: int) -> bytes:
    return bytes((value,))


def boolean(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def uint32(value: int) -> bytes:
    return _U32.pack(value)


def uint64(value: int) -> bytes:
    return _U64.pack(value)


def string(value: bytes | bytearray | memoryview | str) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return _U32.pack(len(raw)) + raw


def mpint(value: int) -> bytes:
    if value == 0:
        return _U32.pack(0)
    magnitude = value if value > 0 else ~value  # ~v == -v - 1 fits the same bytes as v
    length = (magnitude.bit_length() + 8) // 8  # one spare bit for the sign
    raw = value.to_bytes(length, "big", signed=True)
    return _U32.pack(len(raw)) + raw


def mpint_from_unsigned_bytes(raw: bytes) -> bytes:
    """Encode big-endian unsigned bytes as an mpint (how RFC 8731 encodes K)."""
    return mpint(int.from_bytes(raw, "big"))


def name_list(names: Sequence[str] | Iterable[str]) -> bytes:
    return string(",".join(names).encode("ascii"))
