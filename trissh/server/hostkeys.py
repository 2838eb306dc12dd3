"""Host key files: load them, or create an ed25519 key where none exists yet (like sshd-keygen);
and host certificates, each attached to the host key it certifies.

Accepted: unencrypted ed25519, RSA (at least 3072 bits) and ECDSA P-256/384/521 keys, in
OpenSSH's own format (``ssh-keygen`` default) or PEM (PKCS#8 or the traditional forms).
Certificates are OpenSSH public key files (``ssh-keygen -s CA -h`` writes ``*-cert.pub``);
one that is expired, not yet valid, for a key we do not have or not a host certificate
stops the start, since every client that trusts its CA would refuse it anyway.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from trissh.protocol import HostKey
from trissh.protocol.certificates import Certificate, check_host_certificate, parse_certificate
from trissh.protocol.errors import DecodeError
from trissh.protocol.keyfile import KeyLine, KeyTextProblem, Rfc4716Key, iter_key_text


class HostKeyError(Exception):
    """A host key file is unusable; the message says which and why."""


def load_or_create_host_key(path: Path) -> tuple[HostKey, bool]:
    """Return the key at ``path`` and whether it was just created (mode 0600, ``.pub`` beside)."""
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HostKeyError(f"host key {path}: cannot create it: {exc.strerror}") from None
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
    return load_host_key(path), False


def load_host_key(path: Path) -> HostKey:
    """The host key at ``path``.

    Raises:
        HostKeyError: missing, unreadable or unusable, naming the file.
    """
    try:
        data = path.read_bytes()
        info = path.stat()
    except OSError as exc:
        raise HostKeyError(f"{path}: cannot read host key: {exc.strerror}") from None
    mode = stat.S_IMODE(info.st_mode)
    # as sshd's sshkey_perm_ok: our own key must be ours alone (another user could
    # impersonate this server); one another user owns may let a group read it
    # (root:trissh 0640), never everyone
    if mode & (0o077 if info.st_uid == os.getuid() else 0o007):
        raise HostKeyError(
            f"{path}: readable or writable by group or others (mode {mode:04o}): chmod 600 it"
        )
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
        return HostKey(loaded)
    except ValueError as exc:
        raise HostKeyError(f"{path}: {exc}") from None


def load_certificate(path: Path) -> Certificate:
    """The OpenSSH certificate in a public key file (one line, or an RFC 4716 block).

    Raises:
        HostKeyError: unreadable, not a certificate, or malformed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HostKeyError(f"{path}: cannot read host certificate: {exc}") from None
    items = list(iter_key_text(text))
    try:
        if len(items) != 1 or isinstance(items[0], KeyTextProblem):
            raise DecodeError(
                items[0].problem
                if items and isinstance(items[0], KeyTextProblem)
                else "not one OpenSSH certificate (KEYTYPE-cert-v01@openssh.com BASE64)"
            )
        return _certificate(items[0])
    except (DecodeError, ValueError) as exc:
        detail = exc.description if isinstance(exc, DecodeError) else "invalid base64"
        raise HostKeyError(f"{path}: {detail}") from None


def _certificate(item: KeyLine | Rfc4716Key) -> Certificate:
    if isinstance(item, Rfc4716Key):
        return parse_certificate(item.blob)
    fields = item.text.split()
    if len(fields) < 2 or not fields[0].endswith("-cert-v01@openssh.com"):
        raise DecodeError("not an OpenSSH certificate (KEYTYPE-cert-v01@openssh.com BASE64)")
    cert = parse_certificate(base64.b64decode(fields[1], validate=True))
    if cert.key_type != fields[0]:
        raise DecodeError("the type before the data does not match the data")
    return cert


def attach_certificates(
    keys: Sequence[HostKey], paths: Sequence[Path], now: float
) -> tuple[tuple[HostKey, ...], list[tuple[Path, Certificate]]]:
    """The host keys with their certificates attached, and what was attached.

    Raises:
        HostKeyError: a certificate that cannot be served, naming the file and why.
    """
    by_blob = {key.public_blob: index for index, key in enumerate(keys)}
    result = list(keys)
    attached: list[tuple[Path, Certificate]] = []
    for path in paths:
        cert = load_certificate(path)
        index = by_blob.get(cert.public_key.blob)
        if index is None:
            raise HostKeyError(
                f"{path}: certifies the {cert.public_key.key_type} key "
                f"{cert.public_key.fingerprint}, which is none of the host keys "
                f"({', '.join(key.fingerprint for key in keys)})"
            )
        if result[index].certificate is not None:
            raise HostKeyError(f"{path}: a second certificate for host key {keys[index]!r}")
        reason = check_host_certificate(cert, host_key=keys[index].public_blob, now=int(now))
        if reason == "expired":
            reason = f"expired at {_utc(cert.valid_before)}"
        elif reason == "not yet valid":
            reason = f"not valid before {_utc(cert.valid_after)}"
        if reason is not None:
            raise HostKeyError(f"{path}: host certificate {cert.key_id!r} unusable: {reason}")
        result[index] = result[index].with_certificate(cert.blob)
        attached.append((path, cert))
    return tuple(result), attached


def _utc(timestamp: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return f"{timestamp} (seconds since 1970)"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


#: SSHFP algorithm numbers (RFC 4255, RFC 6594, RFC 7479); the fingerprint types are 1
#: (SHA-1) and 2 (SHA-256), of the key's wire blob.
SSHFP_ALGORITHMS: dict[str, int] = {
    "ssh-rsa": 1,
    "ecdsa-sha2-nistp256": 3,
    "ecdsa-sha2-nistp384": 3,
    "ecdsa-sha2-nistp521": 3,
    "ssh-ed25519": 4,
}


def sshfp_records(keys: Sequence[HostKey], host: str) -> list[str]:
    """DNS SSHFP records for ``keys``, as ``ssh-keygen -r HOST`` prints them."""
    records = []
    for key in keys:
        number = SSHFP_ALGORITHMS[key.key_type]
        for digest_type, name in ((1, "sha1"), (2, "sha256")):
            digest = hashlib.new(name, key.public_blob).hexdigest()
            records.append(f"{host} IN SSHFP {number} {digest_type} {digest}")
    return records
