"""User-authentication messages (RFC 4252, RFC 4256).

SSH_MSG_USERAUTH_REQUEST carries a method-specific tail; ``UserauthRequest`` keeps it as
``method_data`` and ``PublicKeyMethod`` parses the publickey form (RFC 4252 §7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from trissh.protocol import wire
from trissh.protocol.constants import MessageNumber
from trissh.protocol.wire import Reader

#: Bounds on fields a client controls before it is authenticated.
MAX_USERNAME = 256
MAX_NAME = 64
MAX_KEY_BLOB = 16 * 1024
MAX_SIGNATURE = 16 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class UserauthRequest:
    NUMBER: ClassVar = MessageNumber.USERAUTH_REQUEST
    username: str
    service: str
    method: str
    method_data: bytes = b""

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.byte(self.NUMBER),
                wire.string(self.username),
                wire.string(self.service),
                wire.string(self.method),
                self.method_data,
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        username = r.text(MAX_USERNAME)
        service = r.ascii(MAX_NAME)
        method = r.ascii(MAX_NAME)
        return cls(username=username, service=service, method=method, method_data=r.rest())


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicKeyMethod:
    """The publickey method's fields (RFC 4252 §7)."""

    algorithm: str
    key_blob: bytes
    signature: bytes | None = None

    def encode(self) -> bytes:
        parts = [
            wire.boolean(self.signature is not None),
            wire.string(self.algorithm),
            wire.string(self.key_blob),
        ]
        if self.signature is not None:
            parts.append(wire.string(self.signature))
        return b"".join(parts)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        has_signature = r.boolean()
        algorithm = r.ascii(MAX_NAME)
        key_blob = r.string(MAX_KEY_BLOB)
        signature = r.string(MAX_SIGNATURE) if has_signature else None
        r.check_end()
        return cls(algorithm=algorithm, key_blob=key_blob, signature=signature)


def publickey_signed_data(
    session_id: bytes, username: str, service: str, algorithm: str, key_blob: bytes
) -> bytes:
    """What a publickey signature covers (RFC 4252 §7)."""
    return b"".join(
        (
            wire.string(session_id),
            wire.byte(MessageNumber.USERAUTH_REQUEST),
            wire.string(username),
            wire.string(service),
            wire.string("publickey"),
            wire.boolean(True),
            wire.string(algorithm),
            wire.string(key_blob),
        )
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class UserauthFailure:
    NUMBER: ClassVar = MessageNumber.USERAUTH_FAILURE
    methods: tuple[str, ...]
    partial_success: bool = False

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.byte(self.NUMBER),
                wire.name_list(self.methods),
                wire.boolean(self.partial_success),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(methods=r.name_list(), partial_success=r.boolean())


@dataclass(frozen=True, slots=True, kw_only=True)
class UserauthSuccess:
    NUMBER: ClassVar = MessageNumber.USERAUTH_SUCCESS

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls()


@dataclass(frozen=True, slots=True, kw_only=True)
class UserauthBanner:
    NUMBER: ClassVar = MessageNumber.USERAUTH_BANNER
    message: str
    language: str = ""

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.string(self.message) + wire.string(self.language)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(message=r.text(), language=r.ascii())


@dataclass(frozen=True, slots=True, kw_only=True)
class UserauthPkOk:
    NUMBER: ClassVar = MessageNumber.USERAUTH_PK_OK
    algorithm: str
    key_blob: bytes

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.string(self.algorithm) + wire.string(self.key_blob)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(algorithm=r.ascii(), key_blob=r.string())
