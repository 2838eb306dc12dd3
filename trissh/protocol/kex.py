"""Key-exchange mathematics: the server side of each kex, the exchange hash, key derivation.

Stateless functions over bytes; the transport decides when to call them. Randomness comes
from the injected ``rng`` so tests can fix ephemeral keys and check exchange hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric import x25519

from trissh.protocol import wire
from trissh.protocol.errors import KeyExchangeFailed


@dataclass(frozen=True, slots=True)
class KexReply:
    """The server's ephemeral public value and the shared secret K, mpint-encoded."""

    server_public: bytes
    shared_secret: bytes


def curve25519_reply(client_public: bytes, rng: Callable[[int], bytes]) -> KexReply:
    """Server side of curve25519-sha256 (RFC 8731 §3)."""
    if len(client_public) != 32:
        raise KeyExchangeFailed("curve25519 public key must be 32 bytes")
    private = x25519.X25519PrivateKey.from_private_bytes(rng(32))
    try:
        shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(client_public))
    except ValueError:  # cryptography refuses low-order points (all-zero result)
        raise KeyExchangeFailed("curve25519 shared secret is zero") from None
    if not any(shared):
        raise KeyExchangeFailed("curve25519 shared secret is zero")
    return KexReply(
        server_public=private.public_key().public_bytes_raw(),
        shared_secret=wire.mpint_from_unsigned_bytes(shared),
    )


@dataclass(frozen=True, slots=True)
class KexMethod:
    """A key-exchange method: its hash and its server-side computation."""

    name: str
    #: A ``hashlib`` algorithm name.
    hash_name: str
    reply: Callable[[bytes, Callable[[int], bytes]], KexReply]


KEX_METHODS: Final[dict[str, KexMethod]] = {
    method.name: method
    for method in (
        KexMethod("curve25519-sha256", "sha256", curve25519_reply),
        KexMethod("curve25519-sha256@libssh.org", "sha256", curve25519_reply),
    )
}


def exchange_hash(
    method: KexMethod,
    *,
    client_version: bytes,
    server_version: bytes,
    client_kexinit: bytes,
    server_kexinit: bytes,
    host_key: bytes,
    client_public: bytes,
    server_public: bytes,
    shared_secret: bytes,
) -> bytes:
    """H for the ECDH-style exchanges (RFC 5656 §4, RFC 8731 §3)."""
    digest = hashlib.new(method.hash_name)
    for field in (
        client_version,
        server_version,
        client_kexinit,
        server_kexinit,
        host_key,
        client_public,
        server_public,
    ):
        digest.update(wire.string(field))
    digest.update(shared_secret)
    return digest.digest()


def derive_key(
    method: KexMethod,
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
    key = hashlib.new(method.hash_name, prefix + letter + session_id).digest()
    while len(key) < size:
        key += hashlib.new(method.hash_name, prefix + key).digest()
    return key[:size]
