"""OpenSSH ``authorized_keys`` files: which keys may log in, with which restrictions.

Format (sshd(8) AUTHORIZED_KEYS FILE FORMAT): ``[options] keytype base64-key [comment]``.
RFC 4716 blocks (``ssh-keygen -e``) may stand among the lines, without options.
The options trissh honours: ``from=``, ``command=``, ``no-pty``/``pty``, ``restrict``,
``environment=``, ``cert-authority`` with ``principals=``, ``expiry-time=``, and for FIDO
security keys ``no-touch-required`` and ``verify-required``. Options about forwarding,
agents, X11 and user rc files are accepted and have nothing to restrict here (trissh
forwards nothing). Any other option makes the line invalid: a
restriction we do not understand must not silently grant more than the operator wrote.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import fnmatch
import ipaddress
import time
from dataclasses import dataclass, field
from pathlib import Path

from trissh.protocol import parse_public_key
from trissh.protocol.errors import DecodeError
from trissh.protocol.keyfile import KeyLine, KeyTextProblem, Rfc4716Key, iter_key_text

_KEY_TYPES = frozenset(
    (
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    )
)
#: Options that restrict what trissh never offers anyway (forwarding, agent, X11, rc).
_NOTHING_TO_RESTRICT = frozenset(
    (
        "no-port-forwarding", "port-forwarding", "no-agent-forwarding", "agent-forwarding",
        "no-X11-forwarding", "X11-forwarding", "no-user-rc", "user-rc", "permitopen",
        "permitlisten", "tunnel",
    )
)  # fmt: skip


class OptionError(ValueError):
    """An option is malformed or unknown; the whole line is ignored."""


@dataclass(frozen=True, slots=True)
class KeyOptions:
    """The restrictions of one authorized key."""

    from_patterns: tuple[str, ...] = ()
    command: str | None = None
    allow_pty: bool = True
    environment: tuple[tuple[str, str], ...] = ()
    cert_authority: bool = False
    principals: tuple[str, ...] | None = None
    #: Seconds since the epoch after which the key no longer works.
    expires_at: int | None = None
    #: A security key's signature must say the user touched it, unless ``no-touch-required``.
    touch_required: bool = True
    #: ``verify-required``: it must also say the key verified the user (PIN or biometry).
    verify_required: bool = False

    def allows_source(self, address: str) -> bool:
        """``from=``: the connecting IP matches a pattern and no negated one (IPs only)."""
        if not self.from_patterns:
            return True
        allowed = False
        for pattern in self.from_patterns:
            negated = pattern.startswith("!")
            if _address_matches(address, pattern.removeprefix("!")):
                if negated:
                    return False
                allowed = True
        return allowed

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def _address_matches(address: str, pattern: str) -> bool:
    if "/" in pattern:
        try:
            return ipaddress.ip_address(address) in ipaddress.ip_network(pattern, strict=False)
        except ValueError:
            return False
    return fnmatch.fnmatchcase(address, pattern)


@dataclass(frozen=True, slots=True)
class AuthorizedKey:
    key_type: str
    blob: bytes
    comment: str
    options: KeyOptions = field(default_factory=KeyOptions)
    line_number: int = 0


@dataclass(frozen=True, slots=True)
class ParseProblem:
    line_number: int
    problem: str


def _split_options(text: str) -> list[str]:
    """Comma-separated options; double-quoted values may hold commas and \\" escapes."""
    options: list[str] = []
    current: list[str] = []
    quoted = False
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and quoted and index + 1 < len(text) and text[index + 1] == '"':
            current.append('"')
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            options.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    if quoted:
        raise OptionError("unterminated quote")
    options.append("".join(current))
    return options


def _expiry(value: str) -> int:
    """``YYYYMMDD[HHMM[SS]]`` (UTC, as we read it; sshd uses local time) to epoch seconds."""
    formats = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    if len(value) not in formats or not value.isdigit():
        raise OptionError(f"expiry-time {value!r} is not YYYYMMDD[HHMM[SS]]")
    return calendar.timegm(time.strptime(value, formats[len(value)]))


def parse_options(text: str) -> KeyOptions:
    """Parse the options field of one line.

    Raises:
        OptionError: malformed or unknown option.
    """
    from_patterns: list[str] = []
    environment: list[tuple[str, str]] = []
    command: str | None = None
    principals: tuple[str, ...] | None = None
    expires_at: int | None = None
    allow_pty = True
    cert_authority = False
    flags = {"no-touch-required": False, "verify-required": False}
    for option in _split_options(text):
        name, equals, value = option.partition("=")
        match (name, bool(equals)):
            case ("from", True):
                from_patterns += [item for item in value.split(",") if item]
            case ("command", True):
                command = value
            case ("environment", True):
                key, _, env_value = value.partition("=")
                if not key or not key.replace("_", "a").isalnum():
                    raise OptionError(f"environment {value!r} is not NAME=value")
                environment.append((key, env_value))
            case ("principals", True):
                principals = tuple(item for item in value.split(",") if item)
            case ("expiry-time", True):
                expires_at = _expiry(value)
            case ("no-pty" | "restrict", False):
                allow_pty = False  # restrict also forbids what trissh never offers
            case ("pty", False):
                allow_pty = True
            case ("cert-authority", False):
                cert_authority = True
            case ("no-touch-required" | "verify-required", False):
                flags[name] = True
            case _ if name in _NOTHING_TO_RESTRICT:
                continue
            case _:
                raise OptionError(f"unsupported option {name!r}")
    return KeyOptions(
        from_patterns=tuple(from_patterns),
        command=command,
        allow_pty=allow_pty,
        environment=tuple(environment),
        cert_authority=cert_authority,
        principals=principals,
        expires_at=expires_at,
        touch_required=not flags["no-touch-required"],
        verify_required=flags["verify-required"],
    )


def _key_field_index(fields: list[str]) -> int | None:
    """Where the key type is: options come first and may contain spaces inside quotes."""
    for index, item in enumerate(fields):
        if item in _KEY_TYPES:
            return index
    return None


def parse_line(line: str, number: int = 0) -> AuthorizedKey:
    """Parse one non-empty, non-comment line.

    Raises:
        OptionError: bad options, an unknown key type, or invalid key data.
    """
    fields = line.split()
    index = _key_field_index(fields)
    if index is None or index + 1 >= len(fields):
        raise OptionError("no supported key type found")
    options = parse_options(" ".join(fields[:index])) if index else KeyOptions()
    try:
        blob = base64.b64decode(fields[index + 1], validate=True)
        key = parse_public_key(blob)
    except (binascii.Error, DecodeError) as exc:
        raise OptionError(f"invalid key: {exc}") from None
    if key.key_type != fields[index]:
        raise OptionError("key type does not match the key data")
    comment = " ".join(fields[index + 2 :])
    return AuthorizedKey(fields[index], blob, comment, options, number)


def _from_rfc4716(block: Rfc4716Key) -> AuthorizedKey:
    try:
        key = parse_public_key(block.blob)
    except DecodeError as exc:
        raise OptionError(f"invalid key: {exc}") from None
    if key.key_type not in _KEY_TYPES:
        raise OptionError(f"unsupported key type {key.key_type!r}")
    return AuthorizedKey(key.key_type, block.blob, block.comment, KeyOptions(), block.line_number)


def parse_authorized_keys(text: str) -> tuple[list[AuthorizedKey], list[ParseProblem]]:
    """Parse every line and RFC 4716 block; return the keys and the problems skipped."""
    keys: list[AuthorizedKey] = []
    problems: list[ParseProblem] = []
    for item in iter_key_text(text):
        try:
            match item:
                case KeyLine():
                    keys.append(parse_line(item.text, item.line_number))
                case Rfc4716Key():
                    keys.append(_from_rfc4716(item))
                case KeyTextProblem():
                    problems.append(ParseProblem(item.line_number, item.problem))
        except OptionError as exc:
            problems.append(ParseProblem(item.line_number, str(exc)))
    return keys, problems


def parse_entry(text: str) -> AuthorizedKey:
    """One key from a configured list: an OpenSSH line, or a whole RFC 4716 block.

    Raises:
        OptionError: no key, more than one, or a problem (naming its line in the entry).
    """
    keys, problems = parse_authorized_keys(text)
    if problems:
        problem = problems[0]
        where = f"line {problem.line_number}: " if "\n" in text.strip() else ""
        raise OptionError(where + problem.problem)
    if len(keys) != 1:
        raise OptionError("no key" if not keys else "more than one key in one entry")
    return keys[0]


def load_authorized_keys(path: Path) -> tuple[list[AuthorizedKey], list[ParseProblem]]:
    return parse_authorized_keys(path.read_text(encoding="utf-8", errors="replace"))
