"""An in-memory SSH test client for the sans-IO server core (see ARCHITECTURE.md §3.1).

It shares wire, packet, cipher and kex code with the server, so it shares their bugs
(asyncssh's self-interop blind spot): the known-answer tests in ``tests/protocol`` and the
OpenSSH interop tests are what catch those.
"""

from .client import USER_KEY, ClientConnection, PeerError, ed25519_blob
from .pair import (
    HOST_KEY,
    ConnectionPair,
    SeededRng,
    auto_answer,
    established_pair,
    events_of,
    make_config,
    parse_plaintext,
    transfer,
)

__all__ = [
    "HOST_KEY",
    "USER_KEY",
    "ClientConnection",
    "ConnectionPair",
    "PeerError",
    "SeededRng",
    "auto_answer",
    "ed25519_blob",
    "established_pair",
    "events_of",
    "make_config",
    "parse_plaintext",
    "transfer",
]
