"""Wiring a ``ServerConnection`` to the test client in memory (h11 ``ConnectionPair``,
aioquic ``transfer()``), plus the deterministic inputs every protocol test shares."""

from __future__ import annotations

import random
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ed25519

from trissh.protocol import (
    Authenticated,
    ChannelId,
    ChannelOpenRequested,
    DisconnectReason,
    Event,
    GlobalRequestReceived,
    HostKey,
    ProtocolConfig,
    PublicKeyAuthRequested,
    ServerConnection,
    SessionRequested,
)
from trissh.protocol.messages.transport import Disconnect
from trissh.protocol.packet import PacketDecoder

from .client import ClientConnection

#: The server's host key, fixed so exchange hashes are reproducible.
HOST_KEY = HostKey(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


class SeededRng:
    """A deterministic ``rng`` for ``ProtocolConfig`` and the client (never for real keys)."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def __call__(self, n: int) -> bytes:
        return self._random.randbytes(n)


def make_config(seed: int = 1, **overrides: Any) -> ProtocolConfig:
    settings: dict[str, Any] = {"host_keys": (HOST_KEY,), "rng": SeededRng(seed)}
    settings.update(overrides)
    return ProtocolConfig(**settings)


class _Endpoint(Protocol):
    def data_to_send(self) -> bytes: ...

    def receive_data(self, data: bytes) -> None: ...


def transfer(sender: _Endpoint, receiver: _Endpoint) -> int:
    """Move pending bytes from one endpoint to the other; never sends the EOF marker ``b""``."""
    data = sender.data_to_send()
    if data:
        receiver.receive_data(data)
    return len(data)


def events_of(server: ServerConnection) -> list[Event]:
    events: list[Event] = []
    while (event := server.next_event()) is not None:
        events.append(event)
    return events


class ConnectionPair:
    """A server and a test client talking through memory."""

    def __init__(
        self,
        config: ProtocolConfig | None = None,
        client: ClientConnection | None = None,
        **client_options: Any,
    ) -> None:
        self.config = make_config() if config is None else config
        self.server = ServerConnection(self.config)
        self.client = client or ClientConnection(rng=SeededRng(1000), **client_options)

    def transfer(self) -> list[Event]:
        """Shuttle bytes both ways until both sides are quiet; return the server's events.

        Decision events are returned unanswered: answer them, then call ``transfer`` again.
        """
        events: list[Event] = []
        while True:
            moved = transfer(self.client, self.server)
            events += events_of(self.server)
            moved += transfer(self.server, self.client)
            if not moved:
                return events

    def handshake(self) -> list[Event]:
        events = self.transfer()
        assert self.client.established, "key exchange did not complete"
        return events

    def authenticate(self) -> list[Event]:
        """ssh-userauth, then a signed ed25519 publickey request that the server accepts."""
        self.client.request_service()
        self.client.auth_publickey()
        requested = self.transfer()
        assert isinstance(requested[-1], PublicKeyAuthRequested), requested
        self.server.accept_auth()
        authenticated = self.transfer()
        assert isinstance(authenticated[-1], Authenticated), authenticated
        assert self.server.authenticated
        self.client.take_all()  # SERVICE_ACCEPT, EXT_INFO, USERAUTH_SUCCESS
        return requested + authenticated

    def open_session(self, sender: int = 0, **options: Any) -> ChannelId:
        """Open and accept a session channel; return the server's id for it."""
        self.client.open_channel(sender, **options)
        events = self.transfer()
        assert len(events) == 1, events
        event = events[0]
        assert isinstance(event, ChannelOpenRequested), event
        self.server.accept_channel(event.channel_id)
        self.transfer()
        self.client.take_all()
        return event.channel_id

    def expect_disconnect(self, reason: DisconnectReason) -> Disconnect:
        """The DISCONNECT must already sit in ``data_to_send()``, as the last message."""
        transfer(self.server, self.client)
        assert self.client.inbox, "no DISCONNECT queued"
        message = self.client.take_all()[-1]
        assert isinstance(message, Disconnect), message
        assert message.reason == reason, (DisconnectReason(message.reason), message.description)
        assert self.server.data_to_send() == b"", "nothing may follow DISCONNECT"
        return message


def established_pair(config: ProtocolConfig | None = None, **client_options: Any) -> ConnectionPair:
    """A pair after key exchange and authentication, with the inbox empty."""
    pair = ConnectionPair(config, **client_options)
    pair.handshake()
    pair.authenticate()
    return pair


def auto_answer(server: ServerConnection, event: Event) -> None:
    """A permissive driver policy: accept every key, channel, session and listen."""
    if isinstance(event, PublicKeyAuthRequested):
        server.accept_auth()
    elif isinstance(event, ChannelOpenRequested):
        server.accept_channel(event.channel_id)
    elif isinstance(event, SessionRequested):
        server.reply_channel_request(event.channel_id, True)
    elif isinstance(event, GlobalRequestReceived):
        server.reply_global_request(event.request_id, True, port=4242)


def parse_plaintext(data: bytes) -> tuple[bytes, list[bytes]]:
    """Split unencrypted server output into its identification line and packet payloads."""
    decoder = PacketDecoder()
    decoder.feed(data)
    end = decoder.find_line_end(len(data))
    line = decoder.take_raw(end + 1)
    payloads: list[bytes] = []
    while (payload := decoder.next_payload()) is not None:
        payloads.append(payload)
    assert decoder.buffered == 0, "trailing bytes after the last packet"
    return line, payloads
