"""Public key texts: OpenSSH one-line keys and RFC 4716 blocks, told apart by content.

RFC 4716 ("The Secure Shell (SSH) Public Key File Format") is what ``ssh-keygen -e``,
PuTTYgen and many appliances and Windows tools export::

    ---- BEGIN SSH2 PUBLIC KEY ----
    Comment: "256-bit ED25519, converted by alice@laptop from OpenSSH"
    AAAAC3NzaC1lZDI1NTE5AAAAIBp...
    ---- END SSH2 PUBLIC KEY ----

Headers (``Tag: value``, a value continued on the next line after a trailing backslash)
come first; the base64 body of the key blob follows, over as many lines as it takes.
``iter_key_text`` walks a text and yields each OpenSSH line as it is (whoever reads the
file parses its options), each RFC 4716 block as its blob and headers, and each problem
with the line it is on, so a caller can name the file and line. Lines may be as long as
they like (the RFC's 72 is a writer's rule), but every header is bounded.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

BEGIN: Final = "---- BEGIN SSH2 PUBLIC KEY ----"
END: Final = "---- END SSH2 PUBLIC KEY ----"
MAX_HEADER_TAG: Final = 64
MAX_HEADER_VALUE: Final = 1024
MAX_HEADERS: Final = 64
#: Base64 characters in one block: enough for a 16384-bit RSA key.
MAX_BODY: Final = 8192


@dataclass(frozen=True, slots=True)
class KeyLine:
    """A non-empty line that is not a comment: an OpenSSH key line, options and all."""

    line_number: int
    text: str


@dataclass(frozen=True, slots=True)
class Rfc4716Key:
    """An RFC 4716 block: the key blob and the headers, tags as written."""

    line_number: int
    blob: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def comment(self) -> str:
        """The ``Comment`` header (RFC 4716 §3.3.2), without its surrounding quotes."""
        for tag, value in self.headers:
            if tag.lower() == "comment":
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    return value[1:-1]
                return value
        return ""


@dataclass(frozen=True, slots=True)
class KeyTextProblem:
    line_number: int
    problem: str


KeyTextItem = KeyLine | Rfc4716Key | KeyTextProblem


def iter_key_text(text: str) -> Iterator[KeyTextItem]:
    """Each key line, RFC 4716 block and problem of ``text``, in order.

    A broken block yields one problem and the walk resumes after its END line.
    """
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if line == BEGIN:
            start = index
            end = _end_of_block(lines, start)
            if end is None:
                yield KeyTextProblem(start, "RFC 4716 key without an END line")
                return
            yield _block(lines, start, end)
            index = end + 1
        elif line and not line.startswith("#"):
            yield KeyLine(index, line)


def _end_of_block(lines: list[str], start: int) -> int | None:
    for index in range(start, len(lines)):
        stripped = lines[index].strip()
        if stripped == END:
            return index
        if stripped == BEGIN:
            return None
    return None


def _block(lines: list[str], start: int, end: int) -> Rfc4716Key | KeyTextProblem:
    """Lines ``start`` (after BEGIN) to ``end`` (the END line), zero-based."""
    headers: list[tuple[str, str]] = []
    index = start
    while index < end and ":" in lines[index]:
        number = index + 1
        tag, _, value = lines[index].strip().partition(":")
        value = value.removeprefix(" ")
        while value.endswith("\\") and index + 1 < end:
            index += 1
            value = value[:-1] + lines[index].strip()
            if len(value) > MAX_HEADER_VALUE:
                break
        index += 1
        if not tag or len(tag) > MAX_HEADER_TAG or not tag.isascii() or not tag.isprintable():
            return KeyTextProblem(number, "RFC 4716 key: malformed header tag")
        if len(value) > MAX_HEADER_VALUE:
            return KeyTextProblem(number, f"RFC 4716 key: header {tag!r} is too long")
        if len(headers) == MAX_HEADERS:
            return KeyTextProblem(number, f"RFC 4716 key: more than {MAX_HEADERS} headers")
        headers.append((tag, value))
    body = "".join(line.strip() for line in lines[index:end])
    if not body:
        return KeyTextProblem(start, "RFC 4716 key without key data")
    if len(body) > MAX_BODY:
        return KeyTextProblem(start, "RFC 4716 key data is too long")
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return KeyTextProblem(index + 1, "RFC 4716 key: invalid base64")
    return Rfc4716Key(start, blob, tuple(headers))
