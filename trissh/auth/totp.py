"""Time-based one-time passwords (RFC 6238) through pyotp, with replay protection.

A code is accepted for the current 30-second step or the one before or after (clock
drift), and never twice: the last step used per secret is remembered, so a code seen
over someone's shoulder is worthless once used.
"""

from __future__ import annotations

import base64
import binascii
import stat
from pathlib import Path

import pyotp


class TotpError(ValueError):
    """A TOTP secret file is unusable."""


def load_secret(path: Path) -> str:
    """Read a base32 secret (as authenticator apps show it) from ``path``, which no one
    but its owner may read or write (as sshd wants of private keys)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        secret = path.read_text(encoding="ascii").strip().replace(" ", "").upper()
    except (OSError, UnicodeDecodeError) as exc:
        raise TotpError(f"{path}: cannot read TOTP secret ({exc})") from None
    if mode & 0o077:
        raise TotpError(f"{path}: readable or writable by others (mode {mode:04o}): chmod 600 it")
    try:
        if len(base64.b32decode(secret + "=" * (-len(secret) % 8))) < 10:
            raise TotpError(f"{path}: TOTP secret shorter than 80 bits")
    except binascii.Error:
        raise TotpError(f"{path}: TOTP secret is not base32") from None
    return secret


class TotpVerifier:
    """Checks codes for one secret; remembers the last time step accepted."""

    def __init__(self, secret: str) -> None:
        self._totp = pyotp.TOTP(secret)
        self._last_step = -1

    def same_secret(self, other: TotpVerifier) -> bool:
        return pyotp.utils.strings_equal(self._totp.secret, other._totp.secret)

    def verify(self, code: str, now: float) -> bool:
        code = code.strip()
        if len(code) != self._totp.digits or not code.isdigit():
            return False
        step = int(now) // self._totp.interval
        for candidate in (step - 1, step, step + 1):
            if candidate <= self._last_step:
                continue
            if pyotp.utils.strings_equal(code, self._totp.at(candidate * self._totp.interval)):
                self._last_step = candidate
                return True
        return False
