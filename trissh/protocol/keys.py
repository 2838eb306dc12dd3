"""Host keys (signing) and client public keys (parsing, verifying, fingerprints).

Key blobs are the SSH wire encodings (RFC 4253 §6.6, RFC 8709 for ed25519, RFC 8332 for
rsa-sha2-*, RFC 5656 for ecdsa, OpenSSH PROTOCOL.u2f for FIDO security keys). Signatures
are checked against the exact blob the client sent, and the signature algorithm must match
the key type.

A security key (``sk-*``) signs, with its ed25519 or P-256 key, not the data itself but
``SHA256(application) || flags || uint32 counter || SHA256(data)``, and the signature blob
carries the flags (user presence, user verification) and the counter after the signature.
Whether the flags satisfy the login's requirements is policy: ``security_key_assertion``
reads them before verification, and ``verify`` proves them, since they are signed.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from trissh.protocol import wire
from trissh.protocol.errors import DecodeError
from trissh.protocol.wire import Reader

#: Smallest RSA modulus we accept from a client (OpenSSH's RequiredRSASize default).
MIN_RSA_BITS = 2048

_ECDSA_CURVES: dict[str, tuple[str, ec.EllipticCurve, hashes.HashAlgorithm]] = {
    "ecdsa-sha2-nistp256": ("nistp256", ec.SECP256R1(), hashes.SHA256()),
    "ecdsa-sha2-nistp384": ("nistp384", ec.SECP384R1(), hashes.SHA384()),
    "ecdsa-sha2-nistp521": ("nistp521", ec.SECP521R1(), hashes.SHA512()),
}
_RSA_SIGNATURE_HASHES: dict[str, hashes.HashAlgorithm] = {
    "rsa-sha2-256": hashes.SHA256(),
    "rsa-sha2-512": hashes.SHA512(),
}

#: FIDO security key types (OpenSSH PROTOCOL.u2f) and the signature algorithm of the key
#: inside, which signs the security key's message.
SECURITY_KEY_TYPES: dict[str, str] = {
    "sk-ssh-ed25519@openssh.com": "ssh-ed25519",
    "sk-ecdsa-sha2-nistp256@openssh.com": "ecdsa-sha2-nistp256",
}
#: Flag bits of a security key signature (OpenSSH sk-api.h).
SK_USER_PRESENCE = 0x01
SK_USER_VERIFICATION = 0x04
#: Longer than any FIDO application ("ssh:..." by convention) a key is made with.
MAX_APPLICATION_BYTES = 1024

#: Signature algorithms we verify for client keys, in the order we announce them
#: (RFC 8308 server-sig-algs). No SHA-1 ``ssh-rsa``.
USER_SIGNATURE_ALGORITHMS: tuple[str, ...] = (
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)


@dataclass(frozen=True, slots=True)
class SecurityKeyAssertion:
    """What a security key said about a signature: its flags and signature counter."""

    flags: int
    counter: int

    @property
    def user_present(self) -> bool:
        return bool(self.flags & SK_USER_PRESENCE)

    @property
    def user_verified(self) -> bool:
        return bool(self.flags & SK_USER_VERIFICATION)


def security_key_assertion(signature_blob: bytes) -> SecurityKeyAssertion | None:
    """The flags and counter of a security key signature blob, *not yet verified*; None
    if the blob is not shaped like one (``string alg, string sig, byte flags, uint32``)."""
    try:
        r = Reader(signature_blob)
        if r.ascii(64) not in SECURITY_KEY_TYPES:
            return None
        r.string(2048)
        assertion = SecurityKeyAssertion(r.byte(), r.uint32())
        r.check_end()
    except DecodeError:
        return None
    return assertion


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint: ``SHA256:`` + unpadded base64 of the blob's digest."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A parsed client public key; ``blob`` is exactly what the client sent."""

    key_type: str
    blob: bytes
    _key: ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey = field(
        repr=False, compare=False
    )
    #: The FIDO application of a security key (``sk-*``) key; None for other keys.
    application: bytes | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    def signature_algorithms(self) -> tuple[str, ...]:
        """Which signature algorithms may be used with this key type."""
        if self.key_type == "ssh-rsa":
            return ("rsa-sha2-512", "rsa-sha2-256")
        return (self.key_type,)

    def verify(self, algorithm: str, signature_blob: bytes, data: bytes) -> bool:
        """Check an SSH signature blob over ``data``; never raises for bad input."""
        if algorithm not in self.signature_algorithms():
            return False
        try:
            r = Reader(signature_blob)
            if r.ascii(64) != algorithm:
                return False
            raw = r.string(2048)
            if self.application is not None:  # PROTOCOL.u2f: the message the key signed
                data = _security_key_message(self.application, r.byte(), r.uint32(), data)
                algorithm = SECURITY_KEY_TYPES[algorithm]
            r.check_end()
            return self._verify_raw(algorithm, raw, data)
        except (InvalidSignature, DecodeError, ValueError):
            return False

    def _verify_raw(self, algorithm: str, raw: bytes, data: bytes) -> bool:
        key = self._key
        if isinstance(key, ed25519.Ed25519PublicKey):
            if len(raw) != 64:
                return False
            key.verify(raw, data)
            return True
        if isinstance(key, rsa.RSAPublicKey):
            if len(raw) > (key.key_size + 7) // 8:
                return False
            key.verify(raw, data, padding.PKCS1v15(), _RSA_SIGNATURE_HASHES[algorithm])
            return True
        r = Reader(raw)
        sig_r, sig_s = r.mpint(80), r.mpint(80)
        r.check_end()
        if sig_r <= 0 or sig_s <= 0:
            return False
        _, _, digest = _ECDSA_CURVES[algorithm]
        key.verify(encode_dss_signature(sig_r, sig_s), data, ec.ECDSA(digest))
        return True


def _security_key_message(application: bytes, flags: int, counter: int, data: bytes) -> bytes:
    return b"".join(
        [
            hashlib.sha256(application).digest(),
            wire.byte(flags),
            wire.uint32(counter),
            hashlib.sha256(data).digest(),
        ]
    )


def parse_public_key(blob: bytes) -> PublicKey:
    """Parse a public key blob.

    Raises:
        DecodeError: malformed blob, unsupported type or a weak key.
    """
    r = Reader(blob)
    key_type = r.ascii(64)
    plain_type = SECURITY_KEY_TYPES.get(key_type, key_type)
    try:
        key = _key_fields(plain_type, r)
    except ValueError as exc:
        raise DecodeError(f"invalid {key_type} key") from exc
    application = None
    if key_type in SECURITY_KEY_TYPES:
        application = r.string(MAX_APPLICATION_BYTES)
        if b"\x00" in application:
            raise DecodeError("security key application contains NUL")
    r.check_end()
    return PublicKey(key_type, bytes(blob), key, application)


def _key_fields(
    key_type: str, r: Reader
) -> ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    if key_type == "ssh-ed25519":
        raw = r.string(64)
        if len(raw) != 32:
            raise DecodeError("ed25519 key is not 32 bytes")
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    if key_type == "ssh-rsa":
        e, n = r.mpint(16), r.mpint(2048)
        if n <= 0:  # cryptography would raise OverflowError
            raise DecodeError("RSA modulus is not positive")
        if n.bit_length() < MIN_RSA_BITS or e < 3 or e % 2 == 0:
            raise DecodeError("RSA key is too small or invalid")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if key_type in _ECDSA_CURVES:
        curve_name, curve, _ = _ECDSA_CURVES[key_type]
        if r.ascii(64) != curve_name:
            raise DecodeError("ECDSA curve does not match key type")
        point = r.string(256)
        if point[:1] != b"\x04":  # as sshd: one encoding per key, hence one blob
            raise DecodeError("ECDSA point is not uncompressed")
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    raise DecodeError(f"unsupported key type {key_type!r}")


#: Smallest RSA host key we serve with (3072 bits: 128-bit strength, NIST SP 800-57).
MIN_RSA_HOST_KEY_BITS = 3072

#: Host key signature algorithms in our preference order (RFC 8709, RFC 8332, RFC 5656).
HOST_KEY_ALGORITHMS: tuple[str, ...] = (
    "ssh-ed25519",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)

#: Host certificate algorithms (OpenSSH PROTOCOL.certkeys) and the plain signature algorithm
#: each signs with: K_S is the certificate, the signature over H is the plain key's. No
#: SHA-1 ``ssh-rsa-cert-v01@openssh.com``.
HOST_CERTIFICATE_ALGORITHMS: dict[str, str] = {
    "ssh-ed25519-cert-v01@openssh.com": "ssh-ed25519",
    "rsa-sha2-512-cert-v01@openssh.com": "rsa-sha2-512",
    "rsa-sha2-256-cert-v01@openssh.com": "rsa-sha2-256",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": "ecdsa-sha2-nistp521",
}

#: The certificate key type of each plain host key type.
HOST_CERTIFICATE_TYPES: dict[str, str] = {
    "ssh-ed25519": "ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa": "ssh-rsa-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256": "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384": "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521": "ecdsa-sha2-nistp521-cert-v01@openssh.com",
}

HostPrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_CURVE_KEY_TYPES: dict[str, str] = {
    "secp256r1": "ecdsa-sha2-nistp256",
    "secp384r1": "ecdsa-sha2-nistp384",
    "secp521r1": "ecdsa-sha2-nistp521",
}


def _ecdsa_deterministic() -> bool:
    """RFC 6979 nonces when the OpenSSL below cryptography has them (3.2+)."""
    try:
        probe = ec.derive_private_key(1, ec.SECP256R1())
        probe.sign(b"", ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    except UnsupportedAlgorithm:  # OpenSSL before 3.2
        return False
    return True


_DETERMINISTIC_ECDSA = _ecdsa_deterministic()


class HostKey:
    """A server host key that signs exchange hashes.

    ``ssh-ed25519`` (RFC 8709), RSA as ``rsa-sha2-512``/``rsa-sha2-256`` (RFC 8332; never
    SHA-1 ``ssh-rsa``; at least ``MIN_RSA_HOST_KEY_BITS``), and ``ecdsa-sha2-nistp256/384/521``
    (RFC 5656). ``algorithms`` lists the signature algorithms the key can serve.

    Raises:
        ValueError: an RSA key that is too small, or an unsupported curve or key type.
    """

    __slots__ = ("_private", "algorithms", "certificate", "key_type", "public_blob")

    def __init__(self, private: HostPrivateKey) -> None:
        self._private = private
        #: The OpenSSH host certificate blob for this key, if one is configured.
        self.certificate: bytes | None = None
        if isinstance(private, ed25519.Ed25519PrivateKey):
            self.key_type = "ssh-ed25519"
            self.algorithms: tuple[str, ...] = ("ssh-ed25519",)
            raw = private.public_key().public_bytes_raw()
            self.public_blob = wire.string(self.key_type) + wire.string(raw)
        elif isinstance(private, rsa.RSAPrivateKey):
            if private.key_size < MIN_RSA_HOST_KEY_BITS:
                raise ValueError(
                    f"RSA host key has {private.key_size} bits; "
                    f"at least {MIN_RSA_HOST_KEY_BITS} are required"
                )
            self.key_type = "ssh-rsa"
            self.algorithms = ("rsa-sha2-512", "rsa-sha2-256")
            numbers = private.public_key().public_numbers()
            self.public_blob = (
                wire.string(self.key_type) + wire.mpint(numbers.e) + wire.mpint(numbers.n)
            )
        elif isinstance(private, ec.EllipticCurvePrivateKey):
            key_type = _CURVE_KEY_TYPES.get(private.curve.name)
            if key_type is None:
                raise ValueError(f"ECDSA host keys on curve {private.curve.name} are not supported")
            self.key_type = key_type
            self.algorithms = (key_type,)
            curve_name = _ECDSA_CURVES[key_type][0]
            point = private.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            self.public_blob = wire.string(key_type) + wire.string(curve_name) + wire.string(point)
        else:
            raise ValueError(f"unsupported host key type {type(private).__name__}")

    def __repr__(self) -> str:
        certified = ", certificate" if self.certificate is not None else ""
        return f"HostKey({self.key_type}, {self.fingerprint}{certified})"

    def with_certificate(self, certificate: bytes) -> HostKey:
        """This key, also serving the certificate algorithms with ``certificate``.

        Only the certificate's type is checked here; that it certifies this very key, and
        is valid, is ``certificates.check_host_certificate``'s job.

        Raises:
            ValueError: a certificate of another key type.
        """
        expected = HOST_CERTIFICATE_TYPES[self.key_type]
        if not certificate.startswith(wire.string(expected)):
            raise ValueError(f"a {self.key_type} host key needs a {expected} certificate")
        certified = HostKey(self._private)
        certified.certificate = bytes(certificate)
        plain_algorithms = certified.algorithms
        certified.algorithms = plain_algorithms + tuple(
            name for name, plain in HOST_CERTIFICATE_ALGORITHMS.items() if plain in plain_algorithms
        )
        return certified

    @property
    def blobs(self) -> tuple[bytes, ...]:
        """Every K_S this key can present: the plain blob and the certificate, if any."""
        if self.certificate is None:
            return (self.public_blob,)
        return (self.public_blob, self.certificate)

    def public_blob_for(self, algorithm: str) -> bytes:
        """K_S for a negotiated host key algorithm: the certificate for a certificate one."""
        if algorithm in HOST_CERTIFICATE_ALGORITHMS and self.certificate is not None:
            return self.certificate
        return self.public_blob

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_blob)

    @property
    def bits(self) -> int:
        private = self._private
        if isinstance(private, ed25519.Ed25519PrivateKey):
            return 256
        return private.key_size

    def sign(self, data: bytes, algorithm: str | None = None) -> bytes:
        """Return an SSH signature blob over ``data`` (default: the first of ``algorithms``).

        A certificate algorithm signs with its plain algorithm, whose name the blob carries.
        """
        algorithm = self.algorithms[0] if algorithm is None else algorithm
        if algorithm not in self.algorithms:
            raise ValueError(f"a {self.key_type} key cannot sign with {algorithm}")
        algorithm = HOST_CERTIFICATE_ALGORITHMS.get(algorithm, algorithm)
        private = self._private
        if isinstance(private, ed25519.Ed25519PrivateKey):
            raw = private.sign(data)
        elif isinstance(private, rsa.RSAPrivateKey):
            raw = private.sign(data, padding.PKCS1v15(), _RSA_SIGNATURE_HASHES[algorithm])
        else:
            digest = _ECDSA_CURVES[algorithm][2]
            scheme = (
                ec.ECDSA(digest, deterministic_signing=True)
                if _DETERMINISTIC_ECDSA
                else ec.ECDSA(digest)
            )
            r, s = decode_dss_signature(private.sign(data, scheme))
            raw = wire.mpint(r) + wire.mpint(s)
        return wire.string(algorithm) + wire.string(raw)
