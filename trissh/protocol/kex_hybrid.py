"""Post-quantum hybrid agreements: a KEM combined with X25519.

``mlkem768x25519-sha256`` (draft-ietf-sshm-mlkem-hybrid-kex; OpenSSH 9.9
``kexmlkem768x25519.c``) and ``sntrup761x25519-sha512`` (draft-josefsson-ntruprime-ssh;
OpenSSH 8.5+ as ``...@openssh.com``) share one shape::

    C_INIT  = KEM public key || X25519 public key        (client, message 30)
    S_REPLY = KEM ciphertext || X25519 public key        (server, message 31)
    K       = string HASH(KEM shared secret || X25519 shared secret)

C_INIT and S_REPLY enter H as strings, and K as a *string* (not an mpint), both in H and in
the key derivation. Sizes are checked exactly before anything is computed; the ML-KEM
encapsulation key also passes FIPS 203 §7.2's modulus check inside ``cryptography``.

ML-KEM's encapsulation randomness comes from OpenSSL inside ``cryptography``, which offers
no way to inject it: this is the one place the core's output is not a function of ``rng``
(the X25519 half still is).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import mlkem

from trissh.protocol import sntrup761, wire
from trissh.protocol.errors import KeyExchangeFailed
from trissh.protocol.kex_ecdh import X25519_SIZE, x25519_respond


class Kem(Protocol):
    """The encapsulation side of a key-encapsulation mechanism."""

    @property
    def name(self) -> str: ...

    @property
    def public_key_size(self) -> int: ...

    def encapsulate(self, public_key: bytes, rng: Callable[[int], bytes]) -> tuple[bytes, bytes]:
        """Return ``(ciphertext, shared_secret)``.

        Raises:
            KeyExchangeFailed: the public key is invalid.
        """
        ...


class MlKem768:
    """ML-KEM-768 (FIPS 203) through ``cryptography``: 1184-byte keys, 1088-byte ciphertexts."""

    name = "ML-KEM-768"
    public_key_size = 1184
    ciphertext_size = 1088

    def encapsulate(self, public_key: bytes, rng: Callable[[int], bytes]) -> tuple[bytes, bytes]:
        try:
            key = mlkem.MLKEM768PublicKey.from_public_bytes(public_key)
        except ValueError:
            raise KeyExchangeFailed("ML-KEM-768 public key is invalid") from None
        shared_secret, ciphertext = key.encapsulate()
        return ciphertext, shared_secret


class Sntrup761:
    """Streamlined NTRU Prime 761 (``trissh.protocol.sntrup761``): 1158-byte keys, 1039-byte
    ciphertexts. Any 1158-byte string decodes to a public key, as in the reference code."""

    name = "sntrup761"
    public_key_size = sntrup761.PUBLIC_KEY_SIZE
    ciphertext_size = sntrup761.CIPHERTEXT_SIZE

    def encapsulate(self, public_key: bytes, rng: Callable[[int], bytes]) -> tuple[bytes, bytes]:
        try:
            return sntrup761.encapsulate(public_key, rng)
        except ValueError:
            raise KeyExchangeFailed("sntrup761 public key is invalid") from None


class KemHybridAgreement:
    """A KEM and X25519 side by side; K is HASH of both secrets, as a string."""

    __slots__ = ("_hash_name", "_kem")

    def __init__(self, kem: Kem, hash_name: str) -> None:
        self._kem = kem
        self._hash_name = hash_name

    def respond(self, client_value: bytes, rng: Callable[[int], bytes]) -> tuple[bytes, bytes]:
        kem = self._kem
        if len(client_value) != kem.public_key_size + X25519_SIZE:
            raise KeyExchangeFailed(
                f"{kem.name} hybrid key share must be {kem.public_key_size + X25519_SIZE} bytes"
            )
        kem_public = client_value[: kem.public_key_size]
        x25519_public = client_value[kem.public_key_size :]
        ciphertext, kem_secret = kem.encapsulate(kem_public, rng)
        server_public, x25519_secret = x25519_respond(x25519_public, rng)
        k = hashlib.new(self._hash_name, kem_secret + x25519_secret).digest()
        return ciphertext + server_public, wire.string(k)
