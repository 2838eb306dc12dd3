"""GSS-API user authentication messages (RFC 4462 §3: ``gssapi-with-mic``).

The method's USERAUTH_REQUEST tail lists the client's mechanisms as DER-encoded OIDs
(tag 0x06, one length byte, the value: RFC 4462 §3.2 uses the encoding GSS-API gives
them on the wire). Tokens are opaque here; the GSS library in the auth layer reads them.
Every field a client sends before authentication is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from trissh.protocol import wire
from trissh.protocol.constants import MessageNumber
from trissh.protocol.errors import DecodeError
from trissh.protocol.wire import Reader

GSSAPI_WITH_MIC = "gssapi-with-mic"
#: Mechanisms one request may list (OpenSSH sends the one or two it has).
MAX_GSSAPI_MECHANISMS = 16
#: A DER OID: tag, one length byte (short form), at most 127 value bytes.
MAX_GSSAPI_OID = 129
#: A context token: a Kerberos AP-REQ with a large PAC (Active Directory users in many
#: groups) reaches tens of KiB; Windows' MaxTokenSize default is 48,000 bytes.
MAX_GSSAPI_TOKEN = 64 * 1024
#: A MIC token (Kerberos: 28 to ~60 bytes).
MAX_GSSAPI_MIC = 4 * 1024
MAX_GSSAPI_ERROR_MESSAGE = 1024
#: The DER encoding of the Kerberos V5 mechanism, 1.2.840.113554.1.2.2 (RFC 1964).
KRB5_MECHANISM = bytes.fromhex("06092a864886f712010202")


def check_oid(oid: bytes) -> bytes:
    """``oid`` if it is a short-form DER OBJECT IDENTIFIER with a non-empty value."""
    if len(oid) < 3 or oid[0] != 0x06 or oid[1] != len(oid) - 2 or oid[1] > 127:
        raise DecodeError("mechanism is not a DER-encoded OID")
    return oid


@dataclass(frozen=True, slots=True, kw_only=True)
class GssapiMethod:
    """The ``gssapi-with-mic`` request's tail: ``uint32 n`` and ``n`` OIDs (§3.2)."""

    mechanisms: tuple[bytes, ...]

    def encode(self) -> bytes:
        return wire.uint32(len(self.mechanisms)) + b"".join(map(wire.string, self.mechanisms))

    @classmethod
    def decode(cls, r: Reader) -> Self:
        count = r.uint32()
        if count > MAX_GSSAPI_MECHANISMS:
            raise DecodeError(f"more than {MAX_GSSAPI_MECHANISMS} GSS-API mechanisms")
        mechanisms = tuple(check_oid(r.string(MAX_GSSAPI_OID)) for _ in range(count))
        r.check_end()
        return cls(mechanisms=mechanisms)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserauthGssapiResponse:
    """SSH_MSG_USERAUTH_GSSAPI_RESPONSE (60): the mechanism the server chose (§3.3)."""

    NUMBER: ClassVar = MessageNumber.USERAUTH_GSSAPI_RESPONSE
    mechanism: bytes

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.string(self.mechanism)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        mechanism = check_oid(r.string(MAX_GSSAPI_OID))
        r.check_end()
        return cls(mechanism=mechanism)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserauthGssapiToken:
    """SSH_MSG_USERAUTH_GSSAPI_TOKEN (61), both ways: one context-establishment token."""

    NUMBER: ClassVar = MessageNumber.USERAUTH_GSSAPI_TOKEN
    token: bytes

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.string(self.token)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        token = r.string(MAX_GSSAPI_TOKEN)
        r.check_end()
        return cls(token=token)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserauthGssapiExchangeComplete:
    """SSH_MSG_USERAUTH_GSSAPI_EXCHANGE_COMPLETE (63): the client's context has no
    integrity protection, so it sends no MIC (§3.5). trissh refuses such a login."""

    NUMBER: ClassVar = MessageNumber.USERAUTH_GSSAPI_EXCHANGE_COMPLETE

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        r.check_end()
        return cls()


@dataclass(frozen=True, slots=True, kw_only=True)
class UserauthGssapiError:
    """SSH_MSG_USERAUTH_GSSAPI_ERROR (64), server to client, informational (§3.8).

    trissh never sends it: a refused login looks the same to the client whatever the
    GSS-API said (the operator's log has the reason)."""

    NUMBER: ClassVar = MessageNumber.USERAUTH_GSSAPI_ERROR
    major_status: int
    minor_status: int
    message: str
    language: str = ""

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.byte(self.NUMBER),
                wire.uint32(self.major_status),
                wire.uint32(self.minor_status),
                wire.string(self.message),
                wire.string(self.language),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        major, minor = r.uint32(), r.uint32()
        message = r.text(MAX_GSSAPI_ERROR_MESSAGE)
        language = r.ascii(64)
        r.check_end()
        return cls(major_status=major, minor_status=minor, message=message, language=language)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserauthGssapiErrtok:
    """SSH_MSG_USERAUTH_GSSAPI_ERRTOK (65), both ways: the error token a failed context
    step produced (§3.9)."""

    NUMBER: ClassVar = MessageNumber.USERAUTH_GSSAPI_ERRTOK
    token: bytes

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.string(self.token)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        token = r.string(MAX_GSSAPI_TOKEN)
        r.check_end()
        return cls(token=token)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserauthGssapiMic:
    """SSH_MSG_USERAUTH_GSSAPI_MIC (66): the client's MIC over ``gssapi_mic_data``."""

    NUMBER: ClassVar = MessageNumber.USERAUTH_GSSAPI_MIC
    mic: bytes

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.string(self.mic)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        mic = r.string(MAX_GSSAPI_MIC)
        r.check_end()
        return cls(mic=mic)


def gssapi_mic_data(session_id: bytes, username: str, service: str) -> bytes:
    """What the MIC covers (RFC 4462 §3.5): the session id and the request's fields."""
    return b"".join(
        (
            wire.string(session_id),
            wire.byte(MessageNumber.USERAUTH_REQUEST),
            wire.string(username),
            wire.string(service),
            wire.string(GSSAPI_WITH_MIC),
        )
    )
