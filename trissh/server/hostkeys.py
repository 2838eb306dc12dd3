"""Host key files: load them, or create an ed25519 key where none exists yet (like sshd-keygen).

Accepted: unencrypted ed25519, RSA (at least 3072 bits) and ECDSA P-256/384/521 keys, in
OpenSSH's own format (``ssh-keygen`` default) or PEM (PKCS#8 or the traditional forms).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from trissh.protocol import HostKey


class HostKeyError(Exception):
    """A host key file is unusable; the message says which and why."""


def load_or_create_host_key(path: Path) -> tuple[HostKey, bool]:
    """Return the key at ``path`` and whether it was just created (mode 0600, ``.pub`` beside)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        public = private.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        path.with_name(path.name + ".pub").write_bytes(public + b" trissh host key\n")
        return HostKey(private), True
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HostKeyError(f"{path}: cannot read host key: {exc.strerror}") from None
    loaded: object
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            loaded = serialization.load_ssh_private_key(data, password=None)
        else:
            loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # an encrypted key raises UnsupportedAlgorithm when bcrypt is not installed
        raise HostKeyError(
            f"{path}: not an unencrypted OpenSSH or PEM private key ({exc})"
        ) from None
    if not isinstance(
        loaded, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    ):
        raise HostKeyError(
            f"{path}: {type(loaded).__name__} host keys are not supported "
            "(use ed25519, RSA of at least 3072 bits, or ECDSA P-256/384/521)"
        )
    try:
        return HostKey(loaded), False
    except ValueError as exc:
        raise HostKeyError(f"{path}: {exc}") from None
