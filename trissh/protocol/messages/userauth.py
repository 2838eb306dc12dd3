"""User-authentication messages (RFC 4252, RFC 4256).

SSH_MSG_USERAUTH_REQUEST carries a method-specific tail; ``UserauthRequest`` keeps it as
``method_data`` and ``PublicKeyMethod`` parses the publickey form (RFC 4252 §7).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Self

from trissh.protocol import wire
from trissh.protocol.constants import MessageNumber
from trissh.protocol.errors import DecodeError
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


#: OpenSSH's host-bound public key method (PROTOCOL §2.5): the signature also covers the
#: server's host key, so it cannot be forwarded to another server.
PUBLICKEY_HOSTBOUND = "publickey-hostbound-v00@openssh.com"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostboundPublicKeyMethod:
    """``publickey-hostbound-v00@openssh.com``'s fields: publickey's plus the host key."""

    algorithm: str
    key_blob: bytes
    host_key_blob: bytes
    signature: bytes | None = None

    def encode(self) -> bytes:
        parts = [
            wire.boolean(self.signature is not None),
            wire.string(self.algorithm),
            wire.string(self.key_blob),
            wire.string(self.host_key_blob),
        ]
        if self.signature is not None:
            parts.append(wire.string(self.signature))
        return b"".join(parts)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        has_signature = r.boolean()
        algorithm = r.ascii(MAX_NAME)
        key_blob = r.string(MAX_KEY_BLOB)
        host_key_blob = r.string(MAX_KEY_BLOB)
        signature = r.string(MAX_SIGNATURE) if has_signature else None
        r.check_end()
        return cls(
            algorithm=algorithm, key_blob=key_blob, host_key_blob=host_key_blob, signature=signature
        )


def publickey_signed_data(
    session_id: bytes,
    username: str,
    service: str,
    algorithm: str,
    key_blob: bytes,
    *,
    host_key_blob: bytes | None = None,
) -> bytes:
    """What a publickey signature covers (RFC 4252 §7; host-bound: OpenSSH PROTOCOL §2.5)."""
    method = "publickey" if host_key_blob is None else PUBLICKEY_HOSTBOUND
    parts = [
        wire.string(session_id),
        wire.byte(MessageNumber.USERAUTH_REQUEST),
        wire.string(username),
        wire.string(service),
        wire.string(method),
        wire.boolean(True),
        wire.string(algorithm),
        wire.string(key_blob),
    ]
    if host_key_blob is not None:
        parts.append(wire.string(host_key_blob))
    return b"".join(parts)


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


#: Bounds on the password and keyboard-interactive fields a client controls before auth.
MAX_PASSWORD = 1024
MAX_PROMPTS = 16
MAX_RESPONSE = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class PasswordMethod:
    """The password method's fields (RFC 4252 §8); a change request carries a new one."""

    password: str = field(repr=False)
    new_password: str | None = field(default=None, repr=False)

    def encode(self) -> bytes:
        parts = [wire.boolean(self.new_password is not None), wire.string(self.password)]
        if self.new_password is not None:
            parts.append(wire.string(self.new_password))
        return b"".join(parts)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        change = r.boolean()
        password = r.text(MAX_PASSWORD)
        new_password = r.text(MAX_PASSWORD) if change else None
        r.check_end()
        return cls(password=password, new_password=new_password)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyboardInteractiveMethod:
    """RFC 4256 §3.1: a deprecated language tag and the client's submethod hints."""

    submethods: str = ""
    language: str = ""

    def encode(self) -> bytes:
        return wire.string(self.language) + wire.string(self.submethods)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        language = r.ascii(MAX_NAME)
        submethods = r.text(MAX_NAME * 4)
        r.check_end()
        return cls(submethods=submethods, language=language)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserauthInfoRequest:
    """SSH_MSG_USERAUTH_INFO_REQUEST (RFC 4256 §3.2); shares number 60 with PK_OK."""

    NUMBER: ClassVar = MessageNumber.USERAUTH_PK_OK
    name: str
    instruction: str
    prompts: tuple[tuple[str, bool], ...]
    language: str = ""

    def encode(self) -> bytes:
        parts = [
            wire.byte(self.NUMBER),
            wire.string(self.name),
            wire.string(self.instruction),
            wire.string(self.language),
            wire.uint32(len(self.prompts)),
        ]
        for prompt, echo in self.prompts:
            parts += (wire.string(prompt), wire.boolean(echo))
        return b"".join(parts)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        name, instruction, language = r.text(), r.text(), r.ascii()
        count = r.uint32()
        if count > MAX_PROMPTS:
            raise DecodeError("too many prompts")
        prompts = tuple((r.text(), r.boolean()) for _ in range(count))
        return cls(name=name, instruction=instruction, prompts=prompts, language=language)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserauthInfoResponse:
    """SSH_MSG_USERAUTH_INFO_RESPONSE (RFC 4256 §3.4)."""

    NUMBER: ClassVar = MessageNumber.USERAUTH_INFO_RESPONSE
    responses: tuple[str, ...] = field(repr=False)

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.byte(self.NUMBER),
                wire.uint32(len(self.responses)),
                *(wire.string(response) for response in self.responses),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        count = r.uint32()
        if count > MAX_PROMPTS:
            raise DecodeError("too many responses")
        responses = tuple(r.text(MAX_RESPONSE) for _ in range(count))
        r.check_end()
        return cls(responses=responses)
