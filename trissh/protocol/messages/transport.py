"""Transport-layer messages (RFC 4253, RFC 8308, RFC 5656/8731 ECDH, RFC 4419 group exchange).

One frozen dataclass per message with a symmetric ``encode()`` / ``decode(reader)``.
``decode`` receives a reader positioned just after the message number.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import ClassVar, Self

from trissh.protocol import wire
from trissh.protocol.constants import MessageNumber
from trissh.protocol.errors import DecodeError
from trissh.protocol.wire import Reader

#: Bound on free-text fields (disconnect descriptions, debug messages).
MAX_TEXT = 4096
#: RFC 4251 §6: algorithm names are at most 64 characters.
MAX_ALGORITHM_NAME = 64
#: Bound on the number of RFC 8308 extensions in one EXT_INFO.
MAX_EXTENSIONS = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect:
    NUMBER: ClassVar = MessageNumber.DISCONNECT
    reason: int
    description: str
    language: str = ""

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.byte(self.NUMBER),
                wire.uint32(self.reason),
                wire.string(self.description),
                wire.string(self.language),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        reason = r.uint32()
        description = r.string(MAX_TEXT).decode("utf-8", "replace")
        language = r.string(MAX_TEXT).decode("ascii", "replace")
        return cls(reason=reason, description=description, language=language)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ignore:
    NUMBER: ClassVar = MessageNumber.IGNORE
    data: bytes = b""

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.string(self.data)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(data=r.string())


@dataclass(frozen=True, slots=True, kw_only=True)
class Unimplemented:
    NUMBER: ClassVar = MessageNumber.UNIMPLEMENTED
    sequence_number: int

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.uint32(self.sequence_number)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(sequence_number=r.uint32())


@dataclass(frozen=True, slots=True, kw_only=True)
class Debug:
    NUMBER: ClassVar = MessageNumber.DEBUG
    always_display: bool
    message: str
    language: str = ""

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.byte(self.NUMBER),
                wire.boolean(self.always_display),
                wire.string(self.message),
                wire.string(self.language),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        always = r.boolean()
        message = r.string(MAX_TEXT).decode("utf-8", "replace")
        language = r.string(MAX_TEXT).decode("ascii", "replace")
        return cls(always_display=always, message=message, language=language)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceRequest:
    NUMBER: ClassVar = MessageNumber.SERVICE_REQUEST
    service: str

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.string(self.service)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        service = r.ascii(256)
        r.check_end()
        return cls(service=service)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceAccept:
    NUMBER: ClassVar = MessageNumber.SERVICE_ACCEPT
    service: str

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.string(self.service)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(service=r.ascii(256))


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtInfo:
    """SSH_MSG_EXT_INFO (RFC 8308 §2.3)."""

    NUMBER: ClassVar = MessageNumber.EXT_INFO
    extensions: tuple[tuple[str, bytes], ...]

    def encode(self) -> bytes:
        parts = [wire.byte(self.NUMBER), wire.uint32(len(self.extensions))]
        for name, value in self.extensions:
            parts += (wire.string(name), wire.string(value))
        return b"".join(parts)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        count = r.uint32()
        if count > MAX_EXTENSIONS:
            raise DecodeError("EXT_INFO has too many extensions")
        extensions = tuple((r.ascii(256), r.string(MAX_TEXT * 4)) for _ in range(count))
        return cls(extensions=extensions)


@functools.lru_cache(maxsize=16)
def _encoded_name_lists(lists: tuple[tuple[str, ...], ...]) -> bytes:
    """A server's KEXINITs differ only in their cookie: the ten lists are encoded once."""
    return b"".join(map(wire.name_list, lists))


@dataclass(frozen=True, slots=True, kw_only=True)
class KexInit:
    """SSH_MSG_KEXINIT (RFC 4253 §7.1)."""

    NUMBER: ClassVar = MessageNumber.KEXINIT
    cookie: bytes
    kex_algorithms: tuple[str, ...]
    server_host_key_algorithms: tuple[str, ...]
    encryption_client_to_server: tuple[str, ...]
    encryption_server_to_client: tuple[str, ...]
    mac_client_to_server: tuple[str, ...]
    mac_server_to_client: tuple[str, ...]
    compression_client_to_server: tuple[str, ...]
    compression_server_to_client: tuple[str, ...]
    languages_client_to_server: tuple[str, ...] = ()
    languages_server_to_client: tuple[str, ...] = ()
    first_kex_packet_follows: bool = False

    def encode(self) -> bytes:
        lists = _encoded_name_lists(
            (
                self.kex_algorithms,
                self.server_host_key_algorithms,
                self.encryption_client_to_server,
                self.encryption_server_to_client,
                self.mac_client_to_server,
                self.mac_server_to_client,
                self.compression_client_to_server,
                self.compression_server_to_client,
                self.languages_client_to_server,
                self.languages_server_to_client,
            )
        )
        return b"".join(
            (
                wire.byte(self.NUMBER),
                self.cookie,
                lists,
                wire.boolean(self.first_kex_packet_follows),
                wire.uint32(0),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        cookie = r.fixed(16)
        lists = [r.name_list() for _ in range(10)]
        if max(map(len, itertools.chain.from_iterable(lists)), default=0) > MAX_ALGORITHM_NAME:
            raise DecodeError(f"KEXINIT names an algorithm longer than {MAX_ALGORITHM_NAME} bytes")
        follows = r.boolean()
        r.uint32()  # reserved
        return cls(
            cookie=cookie,
            kex_algorithms=lists[0],
            server_host_key_algorithms=lists[1],
            encryption_client_to_server=lists[2],
            encryption_server_to_client=lists[3],
            mac_client_to_server=lists[4],
            mac_server_to_client=lists[5],
            compression_client_to_server=lists[6],
            compression_server_to_client=lists[7],
            languages_client_to_server=lists[8],
            languages_server_to_client=lists[9],
            first_kex_packet_follows=follows,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NewKeys:
    NUMBER: ClassVar = MessageNumber.NEWKEYS

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        r.check_end()
        return cls()


#: Bound on a kex public value (an 8192-bit DH e is 1025 bytes, an ML-KEM share 1216).
MAX_KEX_VALUE = 8192


@dataclass(frozen=True, slots=True, kw_only=True)
class KexEcdhInit:
    """Message 30 of every one-round method: SSH_MSG_KEX_ECDH_INIT (RFC 5656 §4, RFC 8731),
    SSH_MSG_KEXDH_INIT (RFC 4253 §8: its mpint e is a string too) and the hybrids' INIT."""

    NUMBER: ClassVar = MessageNumber.KEX_ECDH_INIT
    client_public: bytes

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.string(self.client_public)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        public = r.string(MAX_KEX_VALUE)
        r.check_end()
        return cls(client_public=public)


@dataclass(frozen=True, slots=True, kw_only=True)
class KexEcdhReply:
    NUMBER: ClassVar = MessageNumber.KEX_ECDH_REPLY
    host_key: bytes
    server_public: bytes
    signature: bytes

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.byte(self.NUMBER),
                wire.string(self.host_key),
                wire.string(self.server_public),
                wire.string(self.signature),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(host_key=r.string(), server_public=r.string(), signature=r.string())


@dataclass(frozen=True, slots=True, kw_only=True)
class KexDhGexRequest:
    """SSH_MSG_KEX_DH_GEX_REQUEST (RFC 4419 §5): bounds on the group size, in bits."""

    NUMBER: ClassVar = MessageNumber.KEX_DH_GEX_REQUEST
    min_bits: int
    preferred_bits: int
    max_bits: int

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.byte(self.NUMBER),
                wire.uint32(self.min_bits),
                wire.uint32(self.preferred_bits),
                wire.uint32(self.max_bits),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        minimum, preferred, maximum = r.uint32(), r.uint32(), r.uint32()
        r.check_end()
        return cls(min_bits=minimum, preferred_bits=preferred, max_bits=maximum)


@dataclass(frozen=True, slots=True, kw_only=True)
class KexDhGexGroup:
    """SSH_MSG_KEX_DH_GEX_GROUP (RFC 4419 §5), number 31 within group exchange."""

    NUMBER: ClassVar = MessageNumber.KEX_ECDH_REPLY
    prime: int
    generator: int

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.mpint(self.prime) + wire.mpint(self.generator)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(prime=r.mpint(MAX_KEX_VALUE), generator=r.mpint(MAX_KEX_VALUE))


@dataclass(frozen=True, slots=True, kw_only=True)
class KexDhGexInit:
    """SSH_MSG_KEX_DH_GEX_INIT (RFC 4419 §5)."""

    NUMBER: ClassVar = MessageNumber.KEX_DH_GEX_INIT
    e: int

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.mpint(self.e)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        e = r.mpint(MAX_KEX_VALUE)
        r.check_end()
        return cls(e=e)


@dataclass(frozen=True, slots=True, kw_only=True)
class KexDhGexReply:
    """SSH_MSG_KEX_DH_GEX_REPLY (RFC 4419 §5)."""

    NUMBER: ClassVar = MessageNumber.KEX_DH_GEX_REPLY
    host_key: bytes
    f: int
    signature: bytes

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.byte(self.NUMBER),
                wire.string(self.host_key),
                wire.mpint(self.f),
                wire.string(self.signature),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(host_key=r.string(), f=r.mpint(MAX_KEX_VALUE), signature=r.string())
