"""User names: the rule a client's name must pass before anything else sees it, and how a
name is written into a log line.

A user name arrives before authentication and then flows into webhook bodies, container
labels, recordings, the environment and every log line of the connection. So the login
conversation (:mod:`.login`) checks it first, in every auth mode: a name the rule refuses
is answered like any failed login (same failure message, same delay), and the operator
gets one ``user_name_refused`` line with the name escaped.

The rule: the name is printable (no control, format or separator characters: no NUL,
newline, escape sequences or bidirectional overrides), at most ``user_name_max_bytes``
bytes of UTF-8, and matches ``user_name_pattern`` as a whole, by default
:data:`DEFAULT_PATTERN`: no whitespace, no ``/``, not starting with ``-`` or ``.``.
Printability cannot be configured away; the pattern and the length can.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_PATTERN", "UserNameRule", "escaped"]

#: No whitespace, no ``/``, not starting with ``-`` or ``.`` (so never ``..``).
DEFAULT_PATTERN: Final = r"[^\s/.-][^\s/]*"
DEFAULT_MAX_BYTES: Final = 64
#: Characters of a refused name a log line shows.
_LOG_CHARS: Final = 96


@dataclass(frozen=True, slots=True)
class UserNameRule:
    pattern: str = DEFAULT_PATTERN
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        re.compile(self.pattern)  # a bad pattern fails at configuration time

    def problem(self, name: str) -> str | None:
        """Why ``name`` is refused, or ``None`` when it passes."""
        if not name:
            return "empty"
        if len(name.encode("utf-8", "surrogatepass")) > self.max_bytes:
            return f"longer than {self.max_bytes} bytes"
        if not name.isprintable():
            return "control or unprintable characters"
        if re.fullmatch(self.pattern, name) is None:
            return "does not match user_name_pattern"
        return None


def escaped(name: str) -> str:
    """``name`` as a log line shows it: printable characters but ``\\`` as they are, the
    rest as Python escapes (``\\x00``, ``\\n``, ``\\u202e``); long names cut with ``...``."""
    shown = name[:_LOG_CHARS]
    text = "".join(
        char if char.isprintable() and not char.isspace() and char != "\\" else _escape(char)
        for char in shown
    )
    return text + ("..." if len(name) > _LOG_CHARS else "")


def _escape(char: str) -> str:
    code = ord(char)
    if char == "\\":
        return "\\\\"
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )
