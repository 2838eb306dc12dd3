"""The CA keys of ``[auth] trusted_user_ca_keys`` and ``trusted_user_ca_keys_file``
(OpenSSH lines or RFC 4716 blocks): bare keys, as sshd's TrustedUserCAKeys. Unlike an
authorized_keys file, any bad entry stops the start."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trissh.auth.authorized_keys import (
    AuthorizedKey,
    KeyOptions,
    OptionError,
    load_authorized_keys,
    parse_entry,
)


class CaKeysError(Exception):
    """An entry or the file cannot be used; the message names which."""


def load_trusted_cas(entries: Sequence[str], path: Path | None) -> set[bytes]:
    """The blobs of the CA keys in ``entries`` and the file at ``path``.

    Raises:
        CaKeysError: a bad entry or line, one with options, or a file that cannot be read.
    """
    cas: set[bytes] = set()
    for number, entry in enumerate(entries, start=1):
        where = f"auth.trusted_user_ca_keys[{number}]"
        try:
            cas.add(_bare(parse_entry(entry), where))
        except OptionError as exc:
            raise CaKeysError(f"{where}: {exc}") from None
    if path is not None:
        try:
            keys, problems = load_authorized_keys(path)
        except OSError as exc:
            raise CaKeysError(f"{path}: {exc.strerror}") from None
        if problems:
            raise CaKeysError(f"{path}:{problems[0].line_number}: {problems[0].problem}")
        cas.update(_bare(key, f"{path}:{key.line_number}") for key in keys)
    return cas


def _bare(key: AuthorizedKey, where: str) -> bytes:
    """A trusted CA's blob. Options there would be dropped (sshd trusts no line with
    options), so they stop the start instead."""
    if key.options != KeyOptions():
        raise CaKeysError(
            f"{where}: options are not taken on a trusted CA key; restrict a CA with a"
            " cert-authority line in authorized_keys"
        )
    return key.blob
