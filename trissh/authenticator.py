"""Who may log in: the ``Authenticator`` interface the driver awaits, and implementations."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Protocol

import trio

from trissh.protocol import PublicKey


class Authenticator(Protocol):
    async def check_publickey(self, username: str, key: PublicKey, *, remote: str) -> bool:
        """May ``username`` log in with ``key``? Proof of possession is checked elsewhere.

        Cancellation: safe; nothing is granted unless this returns True.
        """


class KeyListAuthenticator:
    """Any user name may log in with any of a fixed set of keys (``--authorized-keys``)."""

    def __init__(self, blobs: Iterable[bytes]) -> None:
        self._blobs = tuple(blobs)

    async def check_publickey(self, username: str, key: PublicKey, *, remote: str) -> bool:
        await trio.lowlevel.checkpoint()
        found = False
        for blob in self._blobs:  # no early exit: the answer takes as long either way
            found |= hmac.compare_digest(blob, key.blob)
        return found
