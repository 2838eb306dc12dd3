"""The sans-IO SSH server core: bytes in, events out, bytes to send.

Imports only the standard library and ``cryptography``; never trio, sockets, clocks,
files or logging (a test enforces it).
"""

from trissh.protocol.config import ProtocolConfig
from trissh.protocol.connection import ServerConnection, Statistics
from trissh.protocol.constants import ChannelOpenFailureReason, DisconnectReason
from trissh.protocol.errors import LocalProtocolError, RemoteProtocolError, SSHError
from trissh.protocol.events import (
    Authenticated,
    AuthFailed,
    AuthPartiallySucceeded,
    ChannelCloseReceived,
    ChannelDataReceived,
    ChannelEOFReceived,
    ChannelId,
    ChannelOpenRequested,
    ChannelWindowAdjusted,
    ConnectionLost,
    DisconnectReceived,
    Event,
    KeyboardInteractiveAuthRequested,
    KeyboardInteractiveResponsesReceived,
    KeyExchangeCompleted,
    NegotiatedAlgorithms,
    PasswordAuthRequested,
    PtyRequest,
    PublicKeyAuthRequested,
    SessionKind,
    SessionRequested,
    SignalReceived,
    TerminalSize,
    VersionReceived,
    WindowChanged,
)
from trissh.protocol.keys import HostKey, PublicKey, fingerprint, parse_public_key

__all__ = [
    "AuthFailed",
    "AuthPartiallySucceeded",
    "Authenticated",
    "ChannelCloseReceived",
    "ChannelDataReceived",
    "ChannelEOFReceived",
    "ChannelId",
    "ChannelOpenFailureReason",
    "ChannelOpenRequested",
    "ChannelWindowAdjusted",
    "ConnectionLost",
    "DisconnectReason",
    "DisconnectReceived",
    "Event",
    "HostKey",
    "KeyExchangeCompleted",
    "KeyboardInteractiveAuthRequested",
    "KeyboardInteractiveResponsesReceived",
    "LocalProtocolError",
    "NegotiatedAlgorithms",
    "PasswordAuthRequested",
    "ProtocolConfig",
    "PtyRequest",
    "PublicKey",
    "PublicKeyAuthRequested",
    "RemoteProtocolError",
    "SSHError",
    "ServerConnection",
    "SessionKind",
    "SessionRequested",
    "SignalReceived",
    "Statistics",
    "TerminalSize",
    "VersionReceived",
    "WindowChanged",
    "fingerprint",
    "parse_public_key",
]
