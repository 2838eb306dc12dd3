"""OpenSSH ``authorized_keys`` files: which public keys may log in.

Format (sshd(8) AUTHORIZED_KEYS FILE FORMAT): ``[options] keytype base64-key [comment]``.
Options are recognised so that lines carrying them still parse; honouring them belongs to
the authentication issue, and a line with options is skipped with a warning until then
rather than granting more than the operator wrote.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

from trissh.protocol import parse_public_key
from trissh.protocol.errors import DecodeError

_KEY_TYPES = frozenset(
    (
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
    )
)


@dataclass(frozen=True, slots=True)
class AuthorizedKey:
    key_type: str
    blob: bytes
    comment: str
    options: str
    line_number: int


@dataclass(frozen=True, slots=True)
class ParseProblem:
    line_number: int
    problem: str


def parse_authorized_keys(text: str) -> tuple[list[AuthorizedKey], list[ParseProblem]]:
    """Parse every line; return the keys and a list of the lines that were skipped."""
    keys: list[AuthorizedKey] = []
    problems: list[ParseProblem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        index = next((i for i, f in enumerate(fields) if f in _KEY_TYPES), None)
        if index is None or index + 1 >= len(fields):
            problems.append(ParseProblem(number, "no supported key type found"))
            continue
        options = " ".join(fields[:index])
        try:
            blob = base64.b64decode(fields[index + 1], validate=True)
            key = parse_public_key(blob)
        except (binascii.Error, DecodeError) as exc:
            problems.append(ParseProblem(number, f"invalid key: {exc}"))
            continue
        if key.key_type != fields[index]:
            problems.append(ParseProblem(number, "key type does not match the key data"))
            continue
        if options:
            problems.append(ParseProblem(number, f"options not supported yet: {options}"))
            continue
        comment = " ".join(fields[index + 2 :])
        keys.append(AuthorizedKey(fields[index], blob, comment, options, number))
    return keys, problems


def load_authorized_keys(path: Path) -> tuple[list[AuthorizedKey], list[ParseProblem]]:
    return parse_authorized_keys(path.read_text(encoding="utf-8", errors="replace"))
