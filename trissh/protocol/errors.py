"""Typed errors of the protocol core.

``LocalProtocolError`` means the driver used the API wrongly (a bug in trissh).
``RemoteProtocolError`` means the peer broke the protocol; it carries the
``DisconnectReason`` that the core has already queued on the wire before raising, so the
driver only has to flush ``data_to_send()`` and close. For any input bytes the core either
succeeds or raises ``RemoteProtocolError``; anything else escaping is a bug.
"""

from __future__ import annotations

from trissh.protocol.constants import DisconnectReason


class SSHError(Exception):
    """Base class of every error the protocol core raises."""


class LocalProtocolError(SSHError):
    """The driver misused the core (for example, answered a request twice)."""


class ChannelLimitReached(LocalProtocolError):
    """A channel to the client cannot be opened: the connection has its maximum open."""


class RemoteProtocolError(SSHError):
    """The peer violated the protocol; the connection is over."""

    reason: DisconnectReason = DisconnectReason.PROTOCOL_ERROR

    def __init__(self, description: str, reason: DisconnectReason | None = None) -> None:
        super().__init__(description)
        self.description = description
        if reason is not None:
            self.reason = reason


class DecodeError(RemoteProtocolError):
    """A field was malformed or a message truncated."""


class NotText(DecodeError):
    """A string field that must be UTF-8 (or a US-ASCII name) holds other bytes."""


class TooLong(DecodeError):
    """A well-framed string field longer than trissh takes there: a refusal of that request
    where the field is a request's (an env value, a command), a protocol error elsewhere."""


class UnexpectedMessage(RemoteProtocolError):
    """A message arrived in a state that does not allow it."""


class KeyExchangeFailed(RemoteProtocolError):
    """No common algorithm, or an invalid key-exchange value."""

    reason = DisconnectReason.KEY_EXCHANGE_FAILED


class MacError(RemoteProtocolError):
    """A packet failed its integrity check."""

    reason = DisconnectReason.MAC_ERROR


class TooManyAuthAttempts(RemoteProtocolError):
    """The client used up its authentication attempts."""

    reason = DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE
