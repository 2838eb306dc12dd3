"""OpenSSH ``authorized_keys`` files: which keys may log in, with which restrictions.

Format (sshd(8) AUTHORIZED_KEYS FILE FORMAT): ``[options] keytype base64-key [comment]``.
RFC 4716 blocks (``ssh-keygen -e``) may stand among the lines, without options.
The options trissh honours: ``from=``, ``command=``, ``no-pty``/``pty``, ``restrict``,
``environment=``, ``cert-authority`` with ``principals=``, ``expiry-time=``,
``no-port-forwarding``/``port-forwarding``, ``permitopen=``, ``permitlisten=``,
``no-agent-forwarding``/``agent-forwarding``, and for FIDO security keys
``no-touch-required`` and ``verify-required``. Options about X11, user rc files and tunnels
are accepted and have nothing to restrict here (trissh offers none of them). Any other
option makes the line invalid: a restriction we do not understand must not silently grant
more than the operator wrote.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import errno
import grp
import ipaddress
import os
import pwd
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from trissh.auth.patterns import wildcard_matches
from trissh.config.forwarding import parse_permit
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
#: Options that restrict what trissh never offers anyway (X11, rc, tunnels).
_NOTHING_TO_RESTRICT = frozenset(
    (
        "no-X11-forwarding", "X11-forwarding", "no-user-rc", "user-rc", "tunnel",
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
    allow_port_forwarding: bool = True
    allow_agent_forwarding: bool = True
    #: ``permitopen="HOST:PORT"`` entries; empty: no restriction from this key.
    permit_open: tuple[str, ...] = ()
    #: ``permitlisten="[HOST:]PORT"`` entries.
    permit_listen: tuple[str, ...] = ()

    def allows_source(self, address: str) -> bool:
        """``from=``: the connecting IP matches an entry and no negated one, as sshd's
        addr_match_list (networks, else ``*``/``?`` wildcards on the address text)."""
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

    def restricts(self) -> bool:
        """Does this line limit what its logins may do, where they may come from, or until
        when? (A security key's touch and verify options limit only how it signs.)"""
        return bool(
            self.from_patterns
            or self.command is not None
            or not self.allow_pty
            or self.environment
            or self.expires_at is not None
            or not self.allow_port_forwarding
            or not self.allow_agent_forwarding
            or self.permit_open
            or self.permit_listen
        )


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """``entry`` as sshd's addr_pton_cidr reads it: an address, with a decimal prefix
    length or without one; ``None`` when it is no network (then it is a wildcard pattern).

    Raises:
        ValueError: a network sshd calls inconsistent (host bits set, a prefix too long).
    """
    text, slash, length = entry.partition("/")
    if slash and not (length.isascii() and length.isdigit() and int(length) <= 128):
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ipaddress.ip_network(f"{address}/{length or address.max_prefixlen}")


def _address_matches(address: str, pattern: str) -> bool:
    network = _network(pattern)
    if network is not None:
        try:
            return ipaddress.ip_address(address) in network
        except ValueError:
            return False
    return wildcard_matches(pattern.lower(), address.lower())  # sshd: as a host name too


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
    """``YYYYMMDD[HHMM[SS]]`` to epoch seconds, as sshd's parse_absolute_time: in the
    server's time zone, or UTC with a ``Z`` or ``UTC`` suffix (either case)."""
    formats = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    digits = value
    for suffix in ("Z", "UTC"):
        if len(value) > len(suffix) and value.upper().endswith(suffix):
            digits = value[: -len(suffix)]
            break
    if len(digits) not in formats or not digits.isdigit():
        raise OptionError(f"expiry-time {value!r} is not YYYYMMDD[HHMM[SS]][Z|UTC]")
    try:
        parsed = time.strptime(digits, formats[len(digits)])
        return calendar.timegm(parsed) if digits != value else int(time.mktime(parsed))
    except (ValueError, OverflowError):
        raise OptionError(f"expiry-time {value!r} is no date") from None


def parse_options(text: str) -> KeyOptions:
    """Parse the options field of one line.

    Raises:
        OptionError: malformed or unknown option.
    """
    options = _OptionsBuilder()
    for option in _split_options(text):
        name, equals, value = option.partition("=")
        name = name.lower()  # as sshd's strncasecmp
        known = options.value(name, value) if equals else options.flag(name)
        if not known:
            raise OptionError(f"unsupported option {name!r}")
    return options.build()


#: Options sshd refuses a line for when they come twice.
_ONCE_PER_LINE: Final = frozenset(("command", "from", "principals"))


def _from_patterns(value: str) -> list[str]:
    """The entries of ``from=``. One that is no network (a space after the comma, a mask
    that is not a prefix length) is a wildcard pattern that matches nothing, as in sshd.

    Raises:
        OptionError: what sshd's addr_match_list refuses the key for: an empty entry (a
            bare ``!`` too), a network with host bits set or a prefix too long.
    """
    patterns = value.split(",")
    for pattern in patterns:
        bare = pattern.removeprefix("!")
        if not bare:
            raise OptionError(f"from={value!r} has an empty entry")
        try:
            _network(bare)
        except ValueError as exc:
            raise OptionError(f"from= entry {pattern!r}: {exc}") from None
    return patterns


@dataclass(slots=True)
class _OptionsBuilder:
    from_patterns: list[str] = field(default_factory=list)
    environment: list[tuple[str, str]] = field(default_factory=list)
    permit_open: list[str] = field(default_factory=list)
    permit_listen: list[str] = field(default_factory=list)
    command: str | None = None
    principals: tuple[str, ...] | None = None
    expires_at: int | None = None
    allow_pty: bool = True
    allow_port_forwarding: bool = True
    allow_agent_forwarding: bool = True
    cert_authority: bool = False
    touch_required: bool = True
    verify_required: bool = False
    #: The once-per-line options seen so far.
    given: set[str] = field(default_factory=set)

    def flag(self, name: str) -> bool:
        """Apply a flag; False when it is unknown."""
        if name == "restrict":  # off until a later flag turns one back on
            self.allow_pty = self.allow_port_forwarding = self.allow_agent_forwarding = False
        elif name in ("pty", "no-pty"):
            self.allow_pty = name == "pty"
        elif name in ("port-forwarding", "no-port-forwarding"):
            self.allow_port_forwarding = name == "port-forwarding"
        elif name in ("agent-forwarding", "no-agent-forwarding"):
            self.allow_agent_forwarding = name == "agent-forwarding"
        elif name == "cert-authority":
            self.cert_authority = True
        elif name == "no-touch-required":
            self.touch_required = False
        elif name == "verify-required":
            self.verify_required = True
        else:
            return name in _NOTHING_TO_RESTRICT
        return True

    def value(self, name: str, value: str) -> bool:
        """Apply a ``name=value`` option; False when it is unknown."""
        if name in _ONCE_PER_LINE:
            if name in self.given:
                raise OptionError(f"{name}= given twice")
            self.given.add(name)
        if name == "from":
            self.from_patterns = _from_patterns(value)
        elif name == "command":
            self.command = value
        elif name == "environment":
            key, _, env_value = value.partition("=")
            if not key or not key.replace("_", "a").isalnum():
                raise OptionError(f"environment {value!r} is not NAME=value")
            if all(key != given for given, _ in self.environment):  # sshd keeps the first
                self.environment.append((key, env_value))
        elif name == "principals":
            self.principals = tuple(value.split(","))
            if not all(self.principals):  # sshd: an empty list matches nobody
                raise OptionError(f"principals={value!r} has an empty entry")
        elif name == "expiry-time":  # as sshd, the earliest of several
            expires = _expiry(value)
            if self.expires_at is None or expires < self.expires_at:
                self.expires_at = expires
        elif name in ("permitopen", "permitlisten"):
            listen = name == "permitlisten"
            try:
                parse_permit(value, listen=listen)
            except ValueError as exc:
                raise OptionError(f"{name}: {exc}") from None
            (self.permit_listen if listen else self.permit_open).append(value)
        else:
            return False
        return True

    def build(self) -> KeyOptions:
        return KeyOptions(
            from_patterns=tuple(self.from_patterns),
            command=self.command,
            allow_pty=self.allow_pty,
            environment=tuple(self.environment),
            cert_authority=self.cert_authority,
            principals=self.principals,
            expires_at=self.expires_at,
            touch_required=self.touch_required,
            verify_required=self.verify_required,
            allow_port_forwarding=self.allow_port_forwarding,
            allow_agent_forwarding=self.allow_agent_forwarding,
            permit_open=tuple(self.permit_open),
            permit_listen=tuple(self.permit_listen),
        )


def _options_and_fields(line: str) -> tuple[str, list[str]]:
    """The options text, byte for byte, and the fields after it (key type, data, comment):
    as sshd, a line that does not start with a key type has options, which end at the
    first blank outside double quotes (``\\"`` is a quote inside them)."""
    line = line.strip()
    if not line or line.split(None, 1)[0] in _KEY_TYPES:
        return "", line.split()
    quoted, index = False, 0
    while index < len(line) and (quoted or line[index] not in " \t"):
        if line.startswith('\\"', index):
            index += 1
        elif line[index] == '"':
            quoted = not quoted
        index += 1
    if quoted:
        raise OptionError("unterminated quote in the options")
    return line[:index], line[index:].split()


def parse_line(line: str, number: int = 0) -> AuthorizedKey:
    """Parse one non-empty, non-comment line.

    Raises:
        OptionError: bad options, an unknown key type, or invalid key data.
    """
    options_text, fields = _options_and_fields(line)
    if len(fields) < 2 or fields[0] not in _KEY_TYPES:
        raise OptionError("no supported key type found")
    options = parse_options(options_text) if options_text else KeyOptions()
    try:
        blob = base64.b64decode(fields[1], validate=True)
        key = parse_public_key(blob)
    except (binascii.Error, DecodeError) as exc:
        raise OptionError(f"invalid key: {exc}") from None
    if key.key_type != fields[0]:
        raise OptionError("key type does not match the key data")
    comment = " ".join(fields[2:])
    return AuthorizedKey(fields[0], blob, comment, options, number)


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
    """Raises: OSError, also when another user may write the file or its directory."""
    _check_modes(path)
    return parse_authorized_keys(path.read_text(encoding="utf-8", errors="replace"))


def _check_modes(path: Path) -> None:
    """sshd's StrictModes: a key file, and its directory, that only root or trissh's own
    user may write (another user could add a key). As Debian's sshd, group write is
    fine when the group is the owner's private group (umask 002)."""
    kind = path.stat().st_mode
    if stat.S_ISCHR(kind):
        return  # /dev/null: no keys, and nothing anyone could add
    if not stat.S_ISREG(kind):
        raise PermissionError(errno.EPERM, "it is not a regular file, as sshd wants")
    real = path.resolve()  # a link's target and its directory count, and the link's own
    checked = [(real, "it"), (real.parent, f"its directory {real.parent}")]
    if path.parent.resolve() != real.parent:
        checked.append((path.parent, f"the directory of its link {path.parent}"))
    for item, what in checked:
        info = item.stat()
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid not in (0, os.getuid()):
            problem = f"{what} is owned by uid {info.st_uid}, not root or trissh's user"
        elif mode & 0o002 or (mode & 0o020 and not _private_group(info)):
            problem = f"{what} is writable by group or others (mode {mode:04o}): chmod go-w"
        else:
            continue
        raise PermissionError(errno.EPERM, f"{problem}, as sshd's StrictModes wants")


def _private_group(info: os.stat_result) -> bool:
    """Whether the file's group is its owner's own: named as the owner, no other member
    (listed, or another account's primary group)."""
    try:
        owner, group = pwd.getpwuid(info.st_uid), grp.getgrgid(info.st_gid)
    except KeyError:
        return False
    if owner.pw_gid != info.st_gid or group.gr_name != owner.pw_name or group.gr_mem:
        return False
    return all(user.pw_gid != info.st_gid or user.pw_uid == owner.pw_uid for user in pwd.getpwall())
