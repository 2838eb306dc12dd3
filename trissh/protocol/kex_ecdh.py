"""Elliptic-curve agreements: X25519 (RFC 8731) and ECDH on the NIST curves (RFC 5656).

Both put ``string Q_C || string Q_S`` into H and K as an mpint (RFC 8731 §3: the 32 bytes of
X25519 read as a big-endian unsigned number; RFC 5656 §4: the x-coordinate). Ephemeral
scalars come from the injected ``rng``.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from trissh.protocol import wire
from trissh.protocol.errors import KeyExchangeFailed, LocalProtocolError

X25519_SIZE = 32


def x25519_respond(client_public: bytes, rng: Callable[[int], bytes]) -> tuple[bytes, bytes]:
    """X25519 with a fresh scalar: our public value and the raw 32-byte shared secret.

    Raises:
        KeyExchangeFailed: wrong size, or a low-order point (all-zero secret, RFC 7748 §6.1).
    """
    if len(client_public) != X25519_SIZE:
        raise KeyExchangeFailed("curve25519 public key must be 32 bytes")
    private = x25519.X25519PrivateKey.from_private_bytes(rng(X25519_SIZE))
    try:
        shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(client_public))
    except ValueError:  # cryptography refuses low-order points (all-zero result)
        raise KeyExchangeFailed("curve25519 shared secret is zero") from None
    if not any(shared):
        raise KeyExchangeFailed("curve25519 shared secret is zero")
    return private.public_key().public_bytes_raw(), shared


class X25519Agreement:
    """curve25519-sha256 and its libssh.org alias (RFC 8731 §3)."""

    def respond(self, client_value: bytes, rng: Callable[[int], bytes]) -> tuple[bytes, bytes]:
        server_public, shared = x25519_respond(client_value, rng)
        return server_public, wire.mpint_from_unsigned_bytes(shared)


class EcdhAgreement:
    """ecdh-sha2-nistp256/384/521 (RFC 5656 §4, §7.1): uncompressed points only, as OpenSSH.

    ``from_encoded_point`` refuses points that are not on the curve (RFC 5656 §4 requires
    the check; SEC 1 §3.2.2.1), and the identity has no uncompressed encoding.
    """

    __slots__ = ("_coordinate_size", "_curve")

    def __init__(self, curve: ec.EllipticCurve) -> None:
        self._curve = curve
        self._coordinate_size = (curve.key_size + 7) // 8

    def _ephemeral(self, rng: Callable[[int], bytes]) -> ec.EllipticCurvePrivateKey:
        """A uniform scalar in [1, n-1] by rejection sampling (FIPS 186-5 A.2.2): draw the
        curve's bit length; ``derive_private_key`` refuses 0 and anything >= n."""
        mask = (1 << self._curve.key_size) - 1
        for _ in range(64):  # the orders are within 2**-32 of 2**bits: ~never loops
            scalar = int.from_bytes(rng(self._coordinate_size), "big") & mask
            try:
                return ec.derive_private_key(scalar, self._curve)
            except ValueError:
                continue
        raise LocalProtocolError("rng produced no valid ECDH scalar in 64 draws")

    def respond(self, client_value: bytes, rng: Callable[[int], bytes]) -> tuple[bytes, bytes]:
        if len(client_value) != 1 + 2 * self._coordinate_size or client_value[0] != 0x04:
            raise KeyExchangeFailed(
                f"ECDH public key is not an uncompressed {self._curve.name} point"
            )
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, client_value)
        except ValueError:
            raise KeyExchangeFailed("ECDH public key is not on the curve") from None
        private = self._ephemeral(rng)
        shared = private.exchange(ec.ECDH(), peer)
        server_public = private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return server_public, wire.mpint_from_unsigned_bytes(shared)
