"""``[auth] revoked_keys``: keys and certificates refused whatever else says yes.

The file is a KRL (``ssh-keygen -k``, told by its magic) or a plain list of public keys
(OpenSSH lines or RFC 4716 blocks; a listed certificate revokes the key it certifies, a
listed CA key every certificate it signed). It is read when the configuration is, so a
SIGHUP picks up a new one; an unreadable or malformed file stops the start (a reload that
fails keeps the previous list), because a revocation that silently failed to load would
let in exactly the keys someone meant to lock out.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Final

import structlog

from trissh.protocol.certificates import is_certificate_type, parse_certificate
from trissh.protocol.errors import DecodeError
from trissh.protocol.keyfile import KeyLine, KeyTextProblem, Rfc4716Key, iter_key_text
from trissh.protocol.krl import RevocationList, is_krl, parse_krl
from trissh.protocol.wire import Reader

log = structlog.get_logger("trissh.auth")

#: Larger than any KRL a CA is likely to publish (OpenSSH's own tests use a few MB).
MAX_REVOKED_KEYS_BYTES: Final = 64 * 1024 * 1024


class RevocationError(Exception):
    """The revoked keys file cannot be used; the message names the file (and line)."""


def load_revoked_keys(path: Path) -> RevocationList:
    """Read ``path`` as a KRL or a plain key list.

    Raises:
        RevocationError: unreadable, too large, or malformed (naming the line of a list).
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_REVOKED_KEYS_BYTES + 1)
    except OSError as exc:
        raise RevocationError(f"{path}: cannot read revoked keys: {exc.strerror}") from None
    if len(data) > MAX_REVOKED_KEYS_BYTES:
        raise RevocationError(f"{path}: larger than {MAX_REVOKED_KEYS_BYTES} bytes")
    if is_krl(data):
        try:
            revoked = parse_krl(data)
        except DecodeError as exc:
            raise RevocationError(f"{path}: invalid KRL: {exc.description}") from None
    else:
        revoked = RevocationList.from_blobs(_key_list(path, data))
    log.info(
        "revoked_keys_loaded", path=str(path), format=revoked.kind, krl_version=revoked.version,
        entries=revoked.entries,
    )  # fmt: skip
    return revoked


def _key_list(path: Path, data: bytes) -> list[bytes]:
    blobs = []
    for item in iter_key_text(data.decode("utf-8", errors="replace")):
        try:
            if isinstance(item, KeyTextProblem):
                raise DecodeError(item.problem)
            blobs.append(_plain_blob(item))
        except DecodeError as exc:
            raise RevocationError(f"{path}:{item.line_number}: {exc.description}") from None
    return blobs


def _plain_blob(item: KeyLine | Rfc4716Key) -> bytes:
    """The key a list entry revokes: its blob, or a certificate's certified key."""
    if isinstance(item, Rfc4716Key):
        blob = item.blob
    else:
        fields = item.text.split()
        try:
            blob = base64.b64decode(fields[1], validate=True) if len(fields) > 1 else b""
        except (binascii.Error, ValueError):
            blob = b""
        if not blob or not blob.startswith(len(fields[0]).to_bytes(4, "big") + fields[0].encode()):
            raise DecodeError("not a public key (KEYTYPE BASE64 [COMMENT])")
    if is_certificate_type(Reader(blob).ascii(64)):
        return parse_certificate(blob).public_key.blob
    return blob
