"""Host key files: load them, or create an ed25519 key where none exists yet (like sshd-keygen)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

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
        loaded = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise HostKeyError(f"{path}: cannot read host key: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise HostKeyError(f"{path}: not an unencrypted OpenSSH private key ({exc})") from None
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise HostKeyError(f"{path}: only ed25519 host keys are supported so far")
    return HostKey(loaded), False
