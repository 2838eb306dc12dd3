"""The publickey subsystem's packets (RFC 4819), without I/O: framing, requests, responses.

Every packet is ``uint32 length`` then ``string name`` and the request's or response's
fields (§3.2). The client opens with ``version`` and the server answers with the version
it will speak (2, this RFC's) or a ``status`` VERSION_NOT_SUPPORTED (§3.5). Then the
client sends one request at a time and waits for its answer (§3.2): ``add``, ``remove``,
``list`` (answered by ``publickey`` packets and a status) and ``listattributes``
(``attribute`` packets and a status). A request this module does not know parses as
``UnknownRequest`` (REQUEST_NOT_SUPPORTED, §3.2); a malformed one raises ``DecodeError``.

Everything is bounded: a packet (``MAX_PACKET``), a key blob, the number of attributes
and each attribute's name and value. Both directions are here so tests can play the
client from the same definitions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Self

from trissh.protocol import wire
from trissh.protocol.errors import DecodeError
from trissh.protocol.wire import Reader

#: The version RFC 4819 describes; version 1 (VanDyke's draft) lays ``add`` out otherwise.
PROTOCOL_VERSION = 2
#: A packet's length field, past which the stream is refused (a 16 KiB key and attributes).
MAX_PACKET = 64 * 1024
MAX_NAME = 64
MAX_KEY_BLOB = 16 * 1024
MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_VALUE = 4096
MAX_DESCRIPTION = 1024


class Status(enum.IntEnum):
    """RFC 4819 §3.3 status codes."""

    SUCCESS = 0
    ACCESS_DENIED = 1
    STORAGE_EXCEEDED = 2
    VERSION_NOT_SUPPORTED = 3
    KEY_NOT_FOUND = 4
    KEY_NOT_SUPPORTED = 5
    KEY_ALREADY_PRESENT = 6
    GENERAL_FAILURE = 7
    REQUEST_NOT_SUPPORTED = 8
    ATTRIBUTE_NOT_SUPPORTED = 9


def packet(body: bytes) -> bytes:
    """Frame one packet: its length, then the body (name and fields)."""
    return wire.uint32(len(body)) + body


class PacketBuffer:
    """Splits the channel's byte stream into packet bodies."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> None:
        self._data += data

    def next_body(self) -> bytes | None:
        """The next whole packet's body, or ``None`` until more bytes arrive.

        Raises:
            DecodeError: the length field exceeds ``MAX_PACKET`` (the stream is unusable).
        """
        if len(self._data) < 4:
            return None
        length = int.from_bytes(self._data[:4], "big")
        if length > MAX_PACKET:
            raise DecodeError(f"packet of {length} bytes exceeds {MAX_PACKET}")
        if len(self._data) < 4 + length:
            return None
        body = bytes(self._data[4 : 4 + length])
        del self._data[: 4 + length]
        return body

    @property
    def buffered(self) -> int:
        return len(self._data)


@dataclass(frozen=True, slots=True, kw_only=True)
class Attribute:
    """A key's attribute (§4.1): ``critical`` ones the server must honour or refuse."""

    name: str
    value: str
    critical: bool = False


def _attributes(r: Reader, *, with_critical: bool) -> tuple[Attribute, ...]:
    count = r.uint32()
    if count > MAX_ATTRIBUTES:
        raise DecodeError(f"more than {MAX_ATTRIBUTES} attributes")
    return tuple(
        Attribute(
            name=r.ascii(MAX_NAME),
            value=r.text(MAX_ATTRIBUTE_VALUE),
            critical=r.boolean() if with_critical else False,
        )
        for _ in range(count)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Version:
    """``version`` (§3.5), both ways."""

    NAME: ClassVar = "version"
    version: int

    def encode(self) -> bytes:
        return wire.string(self.NAME) + wire.uint32(self.version)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(version=r.uint32())


@dataclass(frozen=True, slots=True, kw_only=True)
class AddRequest:
    """``add`` (§4.1): a key, whether it may replace the same key, its attributes."""

    NAME: ClassVar = "add"
    algorithm: str
    blob: bytes
    overwrite: bool = False
    attributes: tuple[Attribute, ...] = ()

    def encode(self) -> bytes:
        parts = [
            wire.string(self.NAME),
            wire.string(self.algorithm),
            wire.string(self.blob),
            wire.boolean(self.overwrite),
            wire.uint32(len(self.attributes)),
        ]
        for a in self.attributes:
            parts += (wire.string(a.name), wire.string(a.value), wire.boolean(a.critical))
        return b"".join(parts)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        algorithm = r.ascii(MAX_NAME)
        blob = r.string(MAX_KEY_BLOB)
        overwrite = r.boolean()
        attributes = _attributes(r, with_critical=True)
        return cls(algorithm=algorithm, blob=blob, overwrite=overwrite, attributes=attributes)


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveRequest:
    """``remove`` (§4.2)."""

    NAME: ClassVar = "remove"
    algorithm: str
    blob: bytes

    def encode(self) -> bytes:
        return wire.string(self.NAME) + wire.string(self.algorithm) + wire.string(self.blob)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(algorithm=r.ascii(MAX_NAME), blob=r.string(MAX_KEY_BLOB))


@dataclass(frozen=True, slots=True, kw_only=True)
class ListRequest:
    """``list`` (§4.3)."""

    NAME: ClassVar = "list"

    def encode(self) -> bytes:
        return wire.string(self.NAME)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls()


@dataclass(frozen=True, slots=True, kw_only=True)
class ListAttributesRequest:
    """``listattributes`` (§4.4)."""

    NAME: ClassVar = "listattributes"

    def encode(self) -> bytes:
        return wire.string(self.NAME)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls()


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownRequest:
    name: str


Request = Version | AddRequest | RemoveRequest | ListRequest | ListAttributesRequest
_REQUESTS: dict[str, type[Request]] = {
    cls.NAME: cls
    for cls in (Version, AddRequest, RemoveRequest, ListRequest, ListAttributesRequest)
}


def parse_request(body: bytes) -> Request | UnknownRequest:
    """One client packet's body.

    Raises:
        DecodeError: a known request with missing, oversized or trailing fields.
    """
    r = Reader(body)
    name = r.ascii(MAX_NAME)
    cls = _REQUESTS.get(name)
    if cls is None:
        return UnknownRequest(name=name)
    request = cls.decode(r)
    r.check_end()
    return request


# -- responses -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusResponse:
    """``status`` (§3.3)."""

    NAME: ClassVar = "status"
    code: int
    description: str = ""
    language: str = "en"

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.string(self.NAME),
                wire.uint32(self.code),
                wire.string(self.description),
                wire.string(self.language),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(code=r.uint32(), description=r.text(MAX_DESCRIPTION), language=r.ascii(64))


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicKeyResponse:
    """``publickey`` (§4.3): one stored key and its attributes, answering ``list``."""

    NAME: ClassVar = "publickey"
    algorithm: str
    blob: bytes
    attributes: tuple[Attribute, ...] = ()

    def encode(self) -> bytes:
        parts = [
            wire.string(self.NAME),
            wire.string(self.algorithm),
            wire.string(self.blob),
            wire.uint32(len(self.attributes)),
        ]
        for a in self.attributes:
            parts += (wire.string(a.name), wire.string(a.value))
        return b"".join(parts)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        algorithm = r.ascii(MAX_NAME)
        blob = r.string(MAX_KEY_BLOB)
        return cls(algorithm=algorithm, blob=blob, attributes=_attributes(r, with_critical=False))


@dataclass(frozen=True, slots=True, kw_only=True)
class AttributeResponse:
    """``attribute`` (§4.4): one attribute the server supports, answering ``listattributes``."""

    NAME: ClassVar = "attribute"
    name: str
    compulsory: bool = False

    def encode(self) -> bytes:
        return wire.string(self.NAME) + wire.string(self.name) + wire.boolean(self.compulsory)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(name=r.ascii(MAX_NAME), compulsory=r.boolean())


Response = Version | StatusResponse | PublicKeyResponse | AttributeResponse
_RESPONSES: dict[str, type[Response]] = {
    cls.NAME: cls for cls in (Version, StatusResponse, PublicKeyResponse, AttributeResponse)
}


def parse_response(body: bytes) -> Response:
    """One server packet's body (for clients and tests).

    Raises:
        DecodeError: unknown or malformed.
    """
    r = Reader(body)
    name = r.ascii(MAX_NAME)
    cls = _RESPONSES.get(name)
    if cls is None:
        raise DecodeError(f"unknown response {name!r}")
    response = cls.decode(r)
    r.check_end()
    return response
