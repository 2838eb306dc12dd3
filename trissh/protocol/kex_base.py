"""What every key-exchange method shares: the exchange hash, key derivation, and the
contract between a method and the transport.

Theory of operation
-------------------
A kex *method* (``KexMethod``) is a small immutable object registered under its name. For
each exchange the transport calls ``method.start(context)`` and gets a fresh
``KexExchange``: a tiny state machine that receives the method's client messages (numbers
30-49, RFC 4250 §4.1.2) and answers each with either ``KexReply`` (more to come: RFC 4419's
group) or ``KexResult`` (the final reply, already signed, plus K and H for the keys).

Every method's exchange hash has the same frame (RFC 4253 §8, RFC 4419 §3, RFC 5656 §4,
RFC 8731 §3, draft-ietf-sshm-mlkem-hybrid-kex §2.4)::

    H = HASH(string V_C || string V_S || string I_C || string I_S || string K_S
             || <method fields> || K)

Only the middle and the encoding of K differ: ``string Q_C || string Q_S`` with K an mpint
for ECDH and curve25519, ``mpint e || mpint f`` with K an mpint for finite-field DH (an
mpint is a string whose body is the minimal two's complement, so a validated client value
hashes identically either way), and ``string C_INIT || string S_REPLY`` with K a *string*
for the post-quantum hybrids. ``shared_secret`` always holds K exactly as it is hashed, so
key derivation (RFC 4253 §7.2) needs no per-method knowledge.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from trissh.protocol import wire
from trissh.protocol.constants import MessageNumber
from trissh.protocol.errors import UnexpectedMessage
from trissh.protocol.messages.transport import KexEcdhInit, KexEcdhReply
from trissh.protocol.wire import Reader


@dataclass(frozen=True, slots=True, kw_only=True)
class KexTranscript:
    """The exchange-hash inputs that come before the method's own fields."""

    client_version: bytes
    server_version: bytes
    client_kexinit: bytes
    server_kexinit: bytes
    #: K_S: the public blob of the host key that signs H.
    host_key: bytes

    def encode(self) -> bytes:
        return b"".join(
            wire.string(field)
            for field in (
                self.client_version,
                self.server_version,
                self.client_kexinit,
                self.server_kexinit,
                self.host_key,
            )
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class KexContext:
    """What a method needs for one exchange."""

    transcript: KexTranscript
    #: Signs H with the negotiated host key algorithm; returns the SSH signature blob.
    sign: Callable[[bytes], bytes]
    rng: Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class KexReply:
    """An intermediate server message; the exchange goes on."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class KexResult:
    """The final, signed server message, and K and H for key derivation."""

    payload: bytes
    #: K, encoded exactly as it enters H and the key derivation (mpint or string).
    shared_secret: bytes = b""
    exchange_hash: bytes = b""


class KexExchange(Protocol):
    """One running exchange, server side."""

    def receive(self, number: int, payload: bytes) -> KexReply | KexResult:
        """Handle a client kex-method message (``payload`` includes its number).

        Raises:
            KeyExchangeFailed: an invalid peer value.
            UnexpectedMessage: a message this method does not expect now.
            DecodeError: a malformed message.
        """
        ...


class KexMethod(Protocol):
    """A registered key-exchange method."""

    @property
    def name(self) -> str: ...

    @property
    def hash_name(self) -> str:
        """The ``hashlib`` name of HASH (exchange hash and key derivation)."""
        ...

    def start(self, context: KexContext) -> KexExchange: ...


def exchange_hash(hash_name: str, transcript: KexTranscript, fields: bytes, k: bytes) -> bytes:
    """H over the common prefix, the method's encoded ``fields`` and the encoded K."""
    digest = hashlib.new(hash_name, transcript.encode())
    digest.update(fields)
    digest.update(k)
    return digest.digest()


def derive_key(
    hash_name: str,
    shared_secret: bytes,
    exchange_hash_value: bytes,
    letter: bytes,
    session_id: bytes,
    size: int,
) -> bytes:
    """RFC 4253 §7.2: HASH(K || H || X || session_id), extended with HASH(K || H || K1 ...)."""
    if size == 0:
        return b""
    prefix = shared_secret + exchange_hash_value
    key = hashlib.new(hash_name, prefix + letter + session_id).digest()
    while len(key) < size:
        key += hashlib.new(hash_name, prefix + key).digest()
    return key[:size]


class Agreement(Protocol):
    """The server's half of a one-round key agreement on the wire values' bodies."""

    def respond(self, client_value: bytes, rng: Callable[[int], bytes]) -> tuple[bytes, bytes]:
        """Return the server's value and K, encoded as it enters H.

        Raises:
            KeyExchangeFailed: the client's value is invalid.
        """
        ...


@dataclass(frozen=True, slots=True)
class SingleRoundMethod:
    """A method with one client message and one signed reply (RFC 4253 §8, RFC 5656 §4,
    RFC 8731, the PQ hybrids): ``30 string Q_C`` answered by ``31 string K_S, string Q_S,
    string signature``. A DH mpint travels as the same string, so DH fits too."""

    name: str
    hash_name: str
    agreement: Agreement

    def start(self, context: KexContext) -> KexExchange:
        return _SingleRoundExchange(self, context)


class _SingleRoundExchange:
    __slots__ = ("_context", "_method")

    def __init__(self, method: SingleRoundMethod, context: KexContext) -> None:
        self._method = method
        self._context = context

    def receive(self, number: int, payload: bytes) -> KexReply | KexResult:
        if number != MessageNumber.KEX_ECDH_INIT:
            raise UnexpectedMessage(f"unexpected key exchange message {number}")
        client_value = KexEcdhInit.decode(Reader(payload, 1)).client_public
        context, method = self._context, self._method
        server_value, k = method.agreement.respond(client_value, context.rng)
        fields = wire.string(client_value) + wire.string(server_value)
        h = exchange_hash(method.hash_name, context.transcript, fields, k)
        reply = KexEcdhReply(
            host_key=context.transcript.host_key,
            server_public=server_value,
            signature=context.sign(h),
        )
        return KexResult(reply.encode(), k, h)
