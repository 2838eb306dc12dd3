"""A FIDO security key in software, for tests: it signs the way OpenSSH's PROTOCOL.u2f says
a security key does (and as OpenSSH's own test middleware, sk-dummy, does), so protocol
and policy tests can make ``sk-*`` keys and signatures with any flags and counter.

Its output is checked against an independent verifier, ``ssh-keygen -Y verify``, in
tests/protocol/test_security_keys.py, so it cannot share a misreading with trissh.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from trissh.protocol import wire

PRESENCE = 0x01
VERIFICATION = 0x04


class SoftwareSecurityKey:
    def __init__(
        self,
        kind: Literal["ed25519", "ecdsa"] = "ed25519",
        *,
        application: bytes = b"ssh:",
        flags: int = PRESENCE,
        counter: int = 1,
    ) -> None:
        self.kind = kind
        self.application = application
        self.flags = flags
        self.counter = counter
        self._private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
        if kind == "ed25519":
            self._private = ed25519.Ed25519PrivateKey.generate()
            self.key_type = "sk-ssh-ed25519@openssh.com"
            raw = self._private.public_key().public_bytes_raw()
            fields = wire.string(raw)
        else:
            self._private = ec.generate_private_key(ec.SECP256R1())
            self.key_type = "sk-ecdsa-sha2-nistp256@openssh.com"
            point = self._private.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            fields = wire.string("nistp256") + wire.string(point)
        self.public_blob = wire.string(self.key_type) + fields + wire.string(application)

    def openssh_line(self, comment: str = "sk test key") -> str:
        return f"{self.key_type} {base64.b64encode(self.public_blob).decode()} {comment}"

    def sign(self, data: bytes, *, flags: int | None = None, counter: int | None = None) -> bytes:
        """The SSH signature blob a security key returns for ``data``."""
        flags = self.flags if flags is None else flags
        self.counter = self.counter + 1 if counter is None else counter
        message = b"".join(
            [
                hashlib.sha256(self.application).digest(),
                bytes([flags]),
                self.counter.to_bytes(4, "big"),
                hashlib.sha256(data).digest(),
            ]
        )
        if isinstance(self._private, ed25519.Ed25519PrivateKey):
            raw = self._private.sign(message)
        else:
            r, s = decode_dss_signature(self._private.sign(message, ec.ECDSA(hashes.SHA256())))
            raw = wire.mpint(r) + wire.mpint(s)
        return (
            wire.string(self.key_type)
            + wire.string(raw)
            + bytes([flags])
            + wire.uint32(self.counter)
        )
