"""Password hashes: argon2id (RFC 9106) through argon2-cffi.

Verifying costs tens of milliseconds of CPU and 64 MiB of memory on purpose, so it runs
in a worker thread under a small limiter: logins never stall the event loop, and a burst
of password guesses cannot take all the memory. An unknown user is checked against a
dummy hash, so the answer takes as long whether the user exists or not.
"""

from __future__ import annotations

from typing import Final

import argon2
import trio

_HASHER: Final = argon2.PasswordHasher()
#: Verifications at once (each holds ~64 MiB for its duration).
_LIMITER: Final = trio.CapacityLimiter(2)
#: A valid hash of a random, unguessable password, for unknown users.
_DUMMY_HASH: Final = _HASHER.hash("trissh dummy password: this string is never accepted \x00")


def hash_password(password: str) -> str:
    """The string to put in ``password_hash`` (``$argon2id$...``)."""
    return _HASHER.hash(password)


def check_hash(value: str) -> str:
    """Validate a configured hash (argon2id only); return it.

    Raises:
        ValueError: not an argon2id hash string.
    """
    if not value.startswith("$argon2id$"):
        raise ValueError("password_hash must be an argon2id hash (see `trissh hash-password`)")
    try:
        argon2.extract_parameters(value)
    except argon2.exceptions.InvalidHashError:
        raise ValueError("password_hash is not a valid argon2id hash") from None
    return value


def _verify(stored: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


async def verify_password(stored: str | None, password: str) -> bool:
    """Check ``password`` against ``stored`` (``None``: unknown user, always False).

    Cancellation: the thread finishes its (bounded) work; the answer is dropped.
    """
    if stored is None:
        await trio.to_thread.run_sync(_verify, _DUMMY_HASH, password, limiter=_LIMITER)
        return False
    return await trio.to_thread.run_sync(_verify, stored, password, limiter=_LIMITER)
