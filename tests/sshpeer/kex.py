"""The client's half of every kex method, written independently of ``trissh.protocol.kex*``.

Each ``ClientKex`` computes its own key share from the peer's ``rng``, the exchange hash
field by field with ``hashlib`` (RFC 4253 §8, RFC 4419 §3, RFC 5656 §4, RFC 8731 §3, the
hybrid drafts), and K in the method's own encoding. Only the wire helpers and message
classes are shared with the server.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519

from trissh.protocol import kex_dh, sntrup761
from trissh.protocol.constants import MessageNumber
from trissh.protocol.messages import transport as tr
from trissh.protocol.wire import Reader

Rng = Callable[[int], bytes]


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _mpint(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 8) // 8, "big") if value else b""
    return _string(body)


@dataclass(frozen=True)
class KexOutcome:
    """What the final server message yields: K (encoded), H, and what to verify."""

    shared_secret: bytes
    exchange_hash: bytes
    host_key: bytes
    signature: bytes


@dataclass(frozen=True)
class HashPrefix:
    client_version: bytes
    server_version: bytes
    client_kexinit: bytes
    server_kexinit: bytes

    def with_host_key(self, host_key: bytes) -> bytes:
        return b"".join(
            _string(field)
            for field in (
                self.client_version,
                self.server_version,
                self.client_kexinit,
                self.server_kexinit,
                host_key,
            )
        )


# -- key shares --------------------------------------------------------------------------


class Share:
    """A one-round client key share: the value to send and how to finish with the reply."""

    value: bytes

    def finish(self, server_value: bytes) -> bytes:
        """K, encoded for hashing."""
        raise NotImplementedError


class X25519Share(Share):
    def __init__(self, rng: Rng) -> None:
        self._private = x25519.X25519PrivateKey.from_private_bytes(rng(32))
        self.value = self._private.public_key().public_bytes_raw()

    def raw_secret(self, server_value: bytes) -> bytes:
        return self._private.exchange(x25519.X25519PublicKey.from_public_bytes(server_value))

    def finish(self, server_value: bytes) -> bytes:
        return _mpint(int.from_bytes(self.raw_secret(server_value), "big"))


class NistShare(Share):
    def __init__(self, rng: Rng, curve: ec.EllipticCurve) -> None:
        size = (curve.key_size + 7) // 8
        scalar = int.from_bytes(rng(size), "big") % (1 << (curve.key_size - 2)) + 1
        self._private = ec.derive_private_key(scalar, curve)
        self._curve = curve
        self.value = self._private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def finish(self, server_value: bytes) -> bytes:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, server_value)
        return _mpint(int.from_bytes(self._private.exchange(ec.ECDH(), peer), "big"))


class DhShare(Share):
    def __init__(self, rng: Rng, prime: int, generator: int = 2) -> None:
        self._prime = prime
        self._x = int.from_bytes(rng(32), "big") | (1 << 255)
        self.e = pow(generator, self._x, prime)
        self.value = _mpint(self.e)[4:]

    def finish_int(self, f: int) -> int:
        return pow(f, self._x, self._prime)

    def finish(self, server_value: bytes) -> bytes:
        f = Reader(_string(server_value)).mpint()
        return _mpint(self.finish_int(f))


class MlKemShare(Share):
    """mlkem768x25519: C_INIT = ek || X25519; K = string SHA-256(K_PQ || K_CL)."""

    def __init__(self, rng: Rng) -> None:
        self._kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(rng(64))
        self._x25519 = X25519Share(rng)
        self.value = self._kem.public_key().public_bytes_raw() + self._x25519.value

    def finish(self, server_value: bytes) -> bytes:
        ciphertext, server_x25519 = server_value[:1088], server_value[1088:]
        kem_secret = self._kem.decapsulate(ciphertext)
        both = kem_secret + self._x25519.raw_secret(server_x25519)
        return _string(hashlib.sha256(both).digest())


@functools.cache
def sntrup761_keypair() -> tuple[bytes, bytes]:
    """Key generation is slow in pure Python; one client key pair serves every test."""
    return sntrup761.keypair(random.Random(761).randbytes)


class SntrupShare(Share):
    """sntrup761x25519: C_INIT = pk || X25519; K = string SHA-512(K_PQ || K_CL)."""

    def __init__(self, rng: Rng) -> None:
        public_key, self._secret_key = sntrup761_keypair()
        self._x25519 = X25519Share(rng)
        self.value = public_key + self._x25519.value

    def finish(self, server_value: bytes) -> bytes:
        ciphertext, server_x25519 = server_value[:1039], server_value[1039:]
        kem_secret = sntrup761.decapsulate(ciphertext, self._secret_key)
        both = kem_secret + self._x25519.raw_secret(server_x25519)
        return _string(hashlib.sha512(both).digest())


# -- methods -----------------------------------------------------------------------------


class ClientKex:
    """One running exchange, client side."""

    def __init__(self, name: str, hash_name: str, prefix: HashPrefix) -> None:
        self.name = name
        self.hash_name = hash_name
        self.prefix = prefix

    def first_messages(self) -> list[bytes]:
        raise NotImplementedError

    def receive(self, number: int, payload: bytes) -> list[bytes] | KexOutcome:
        raise NotImplementedError


class OneRoundKex(ClientKex):
    def __init__(self, name: str, hash_name: str, prefix: HashPrefix, share: Share) -> None:
        super().__init__(name, hash_name, prefix)
        self.share = share

    def first_messages(self) -> list[bytes]:
        return [tr.KexEcdhInit(client_public=self.share.value).encode()]

    def receive(self, number: int, payload: bytes) -> list[bytes] | KexOutcome:
        assert number == MessageNumber.KEX_ECDH_REPLY, number
        reply = tr.KexEcdhReply.decode(Reader(payload, 1))
        k = self.share.finish(reply.server_public)
        digest = hashlib.new(self.hash_name, self.prefix.with_host_key(reply.host_key))
        digest.update(_string(self.share.value) + _string(reply.server_public) + k)
        return KexOutcome(k, digest.digest(), reply.host_key, reply.signature)


class GexKex(ClientKex):
    """RFC 4419 with fixed bounds (overridable to test the server's checks)."""

    def __init__(
        self,
        name: str,
        hash_name: str,
        prefix: HashPrefix,
        rng: Rng,
        bounds: tuple[int, int, int] = (2048, 3072, 8192),
    ) -> None:
        super().__init__(name, hash_name, prefix)
        self.rng = rng
        self.bounds = bounds
        self.group: tuple[int, int] | None = None
        self.share: DhShare | None = None

    def first_messages(self) -> list[bytes]:
        low, preferred, high = self.bounds
        return [tr.KexDhGexRequest(min_bits=low, preferred_bits=preferred, max_bits=high).encode()]

    def receive(self, number: int, payload: bytes) -> list[bytes] | KexOutcome:
        if self.share is None:
            assert number == 31, number
            group = tr.KexDhGexGroup.decode(Reader(payload, 1))
            self.group = (group.prime, group.generator)
            self.share = DhShare(self.rng, group.prime, group.generator)
            return [tr.KexDhGexInit(e=self.share.e).encode()]
        assert number == MessageNumber.KEX_DH_GEX_REPLY, number
        assert self.group is not None
        reply = tr.KexDhGexReply.decode(Reader(payload, 1))
        k = _mpint(self.share.finish_int(reply.f))
        low, preferred, high = self.bounds
        prime, generator = self.group
        digest = hashlib.new(self.hash_name, self.prefix.with_host_key(reply.host_key))
        digest.update(
            b"".join(
                (
                    low.to_bytes(4, "big"),
                    preferred.to_bytes(4, "big"),
                    high.to_bytes(4, "big"),
                    _mpint(prime),
                    _mpint(generator),
                    _mpint(self.share.e),
                    _mpint(reply.f),
                    k,
                )
            )
        )
        return KexOutcome(k, digest.digest(), reply.host_key, reply.signature)


#: name -> (hash, share factory); GEX is separate.
ONE_ROUND: dict[str, tuple[str, Callable[[Rng], Share]]] = {
    "curve25519-sha256": ("sha256", X25519Share),
    "curve25519-sha256@libssh.org": ("sha256", X25519Share),
    "ecdh-sha2-nistp256": ("sha256", lambda rng: NistShare(rng, ec.SECP256R1())),
    "ecdh-sha2-nistp384": ("sha384", lambda rng: NistShare(rng, ec.SECP384R1())),
    "ecdh-sha2-nistp521": ("sha512", lambda rng: NistShare(rng, ec.SECP521R1())),
    "diffie-hellman-group14-sha256": ("sha256", lambda rng: DhShare(rng, kex_dh.MODP_2048)),
    "diffie-hellman-group16-sha512": ("sha512", lambda rng: DhShare(rng, kex_dh.MODP_4096)),
    "diffie-hellman-group18-sha512": ("sha512", lambda rng: DhShare(rng, kex_dh.MODP_8192)),
    "mlkem768x25519-sha256": ("sha256", MlKemShare),
    "sntrup761x25519-sha512": ("sha512", SntrupShare),
    "sntrup761x25519-sha512@openssh.com": ("sha512", SntrupShare),
}
GEX = "diffie-hellman-group-exchange-sha256"
CLIENT_KEX_NAMES = (*ONE_ROUND, GEX)


def start_client_kex(name: str, prefix: HashPrefix, rng: Rng) -> ClientKex:
    if name == GEX:
        return GexKex(name, "sha256", prefix, rng)
    hash_name, make_share = ONE_ROUND[name]
    return OneRoundKex(name, hash_name, prefix, make_share(rng))
