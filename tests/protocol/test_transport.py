"""The transport layer (RFC 4253) through the façade: handshakes, strict kex, rekeying,
negotiation failures and the gating of upper-layer messages."""

from __future__ import annotations

import struct
from collections import deque
from typing import Any

import pytest

from tests.sshpeer import (
    ClientConnection,
    ConnectionPair,
    SeededRng,
    established_pair,
    events_of,
    make_config,
    transfer,
)
from trissh.protocol import (
    ChannelCloseReceived,
    ChannelDataReceived,
    ChannelEOFReceived,
    ChannelId,
    ConnectionLost,
    DisconnectReason,
    DisconnectReceived,
    KeyExchangeCompleted,
    RemoteProtocolError,
    SessionKind,
    SessionRequested,
    VersionReceived,
    wire,
)
from trissh.protocol.constants import MAX_PACKET_LENGTH
from trissh.protocol.errors import DecodeError, KeyExchangeFailed, UnexpectedMessage
from trissh.protocol.keys import USER_SIGNATURE_ALGORITHMS
from trissh.protocol.messages import connection as conn
from trissh.protocol.messages import transport as tr
from trissh.protocol.messages.connection import ExecData, ExitStatusData

CIPHER_NAMES = ["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
STRICT_KEX_S = "kex-strict-s-v00@openssh.com"


# -- complete handshakes ------------------------------------------------------------------


@pytest.mark.parametrize("cipher", CIPHER_NAMES)
def test_full_session_life_cycle_with_each_cipher(cipher: str) -> None:
    """KEX, auth, exec, data both ways, EOF, exit-status and close all work per cipher."""
    pair = ConnectionPair(ciphers=(cipher,))
    events = pair.handshake()
    assert events[0] == VersionReceived(version="SSH-2.0-sshpeer_1.0")
    completed = events[1]
    assert isinstance(completed, KeyExchangeCompleted)
    assert not completed.is_rekey
    assert completed.algorithms.kex == "curve25519-sha256"
    assert completed.algorithms.host_key == "ssh-ed25519"
    assert completed.algorithms.cipher_client_to_server == cipher
    assert completed.algorithms.cipher_server_to_client == cipher
    assert completed.algorithms.mac_client_to_server is None  # AEAD: no MAC
    assert completed.algorithms.strict_kex
    assert completed.algorithms.ext_info
    assert pair.server.algorithms == completed.algorithms
    pair.authenticate()
    cid = pair.open_session(sender=9)
    pair.client.channel_request(cid, "exec", ExecData(command="cat").encode())
    assert pair.transfer() == [
        SessionRequested(channel_id=cid, kind=SessionKind.EXEC, command="cat")
    ]
    pair.server.reply_channel_request(cid, True)
    pair.client.channel_data(cid, b"ping")
    pair.client.channel_eof(cid)
    assert pair.transfer() == [
        ChannelDataReceived(channel_id=cid, data=b"ping"),
        ChannelEOFReceived(channel_id=cid),
    ]
    assert pair.server.send_channel_data(cid, b"pong") == 4
    pair.server.send_channel_eof(cid)
    pair.server.send_exit_status(cid, 0)
    pair.server.close_channel(cid)
    pair.client.channel_close(cid)
    assert pair.transfer() == []
    assert pair.client.take_all() == [
        conn.ChannelSuccess(recipient_channel=9),
        conn.ChannelData(recipient_channel=9, data=b"pong"),
        conn.ChannelEof(recipient_channel=9),
        conn.ChannelRequest(
            recipient_channel=9,
            request_type="exit-status",
            want_reply=False,
            data=ExitStatusData(code=0).encode(),
        ),
        conn.ChannelClose(recipient_channel=9),
    ]
    assert pair.server.statistics().open_channels == 0


def test_ext_info_follows_the_first_newkeys_only_when_requested() -> None:
    """RFC 8308: EXT_INFO with server-sig-algs is the first encrypted packet, once."""
    pair = ConnectionPair()
    pair.handshake()
    ext = pair.client.expect(tr.ExtInfo)
    assert dict(ext.extensions) == {
        "server-sig-algs": ",".join(USER_SIGNATURE_ALGORITHMS).encode(),
        "publickey-hostbound@openssh.com": b"0",
        "ping@openssh.com": b"0",
    }
    assert b"ssh-rsa" not in ext.extensions[0][1].split(b",")
    pair.authenticate()  # (no re-exchange before login)
    pair.client.start_kex()
    pair.transfer()
    assert pair.client.take_all() == []

    quiet = ConnectionPair(ext_info=False)
    completed = quiet.handshake()[-1]
    assert isinstance(completed, KeyExchangeCompleted)
    assert not completed.algorithms.ext_info
    assert quiet.client.take_all() == []


def test_strict_kex_marker_is_only_in_the_first_kexinit() -> None:
    """kex-strict-s-v00 is meaningful in the initial exchange only."""
    pair = established_pair()
    pair.server.request_rekey()
    pair.transfer()
    first, second = pair.client.server_kexinits
    assert STRICT_KEX_S in first.kex_algorithms
    assert STRICT_KEX_S not in second.kex_algorithms


# -- strict kex (Terrapin, CVE-2023-48795) -------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        tr.Ignore(data=b"x"),
        tr.Debug(always_display=False, message="hi"),
        tr.Unimplemented(sequence_number=0),
    ],
    ids=["ignore", "debug", "unimplemented"],
)
def test_strict_kex_refuses_generic_messages_during_initial_kex(
    message: tr.Ignore | tr.Debug | tr.Unimplemented,
) -> None:
    """With strict kex, even IGNORE/DEBUG/UNIMPLEMENTED before the first NEWKEYS disconnect."""
    pair = ConnectionPair()
    pair.client.send_now(message.encode())  # right after our KEXINIT
    with pytest.raises(UnexpectedMessage, match="strict kex"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_strict_kex_refuses_ignore_between_ecdh_init_and_newkeys() -> None:
    """The ban lasts until the client's NEWKEYS, not just until its KEXINIT."""
    pair = ConnectionPair()
    transfer(pair.client, pair.server)
    events_of(pair.server)
    transfer(pair.server, pair.client)  # the client answers with ECDH_INIT
    pair.client.send_now(tr.Ignore(data=b"").encode())
    with pytest.raises(UnexpectedMessage):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_strict_kex_requires_kexinit_as_the_first_packet() -> None:
    """A packet before the client's KEXINIT (sequence number ≠ 0) ends a strict exchange."""
    client = ClientConnection(rng=SeededRng(1000), start=False)
    client.send_version()
    client.send_now(tr.Ignore(data=b"").encode())
    client.start_kex()
    pair = ConnectionPair(client=client)
    with pytest.raises(KeyExchangeFailed, match="first packet"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.KEY_EXCHANGE_FAILED)


def test_non_strict_kex_tolerates_generic_messages() -> None:
    """Without strict kex, IGNORE and DEBUG may come first and during the exchange."""
    client = ClientConnection(rng=SeededRng(1000), start=False, strict_kex=False)
    client.send_version()
    client.send_now(tr.Ignore(data=b"first").encode())
    client.start_kex()
    client.send_now(tr.Debug(always_display=True, message="hello").encode())
    pair = ConnectionPair(client=client)
    completed = pair.handshake()[-1]
    assert isinstance(completed, KeyExchangeCompleted)
    assert not completed.algorithms.strict_kex


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "non-strict"])
def test_unknown_message_gets_unimplemented_with_its_sequence_number(strict: bool) -> None:
    """RFC 4253 §11.4 sequence numbers; strict kex restarts them at 0 after NEWKEYS."""
    pair = established_pair(strict_kex=strict)
    before_newkeys = 3  # KEXINIT, ECDH_INIT, NEWKEYS
    sequence = pair.client.encoder.sequence
    assert sequence == pair.client.encoder.packets - (before_newkeys if strict else 0)
    for number in (0, 8, 19, 128, 194, 255):  # (192 is PING: ping@openssh.com)
        pair.client.send(bytes((number,)) + b"junk")
        assert pair.transfer() == []
        assert pair.client.take_all() == [tr.Unimplemented(sequence_number=sequence)]
        sequence += 1
    # The server's own counter was reset too, or the client could not have decrypted.
    received = pair.client.decoder
    assert received.sequence == received.packets - (before_newkeys if strict else 0)


# -- upper layers before the keys are in place ---------------------------------------------


UPPER_LAYER_MESSAGES = [
    tr.ServiceRequest(service="ssh-userauth").encode(),
    conn.GlobalRequest(name="x", want_reply=True).encode(),
    conn.ChannelOpen(
        channel_type="session", sender_channel=0, initial_window=1, max_packet=1024
    ).encode(),
    b"\x32" + wire.string("u") + wire.string("ssh-connection") + wire.string("none"),
]


@pytest.mark.parametrize("payload", UPPER_LAYER_MESSAGES, ids=["service", "global", "open", "auth"])
def test_service_messages_before_newkeys_disconnect(payload: bytes) -> None:
    """Before the first NEWKEYS only transport messages may arrive (RFC 4253 §7)."""
    pair = ConnectionPair(strict_kex=False)
    pair.client.send_now(payload)
    with pytest.raises(UnexpectedMessage, match="before key exchange completed"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_service_request_before_client_newkeys_disconnects_encrypted() -> None:
    """After our NEWKEYS but before the client's, the DISCONNECT goes out under new keys."""
    pair = ConnectionPair()
    transfer(pair.client, pair.server)
    events_of(pair.server)
    transfer(pair.server, pair.client)  # client sends ECDH_INIT
    pair.client.send_now(tr.ServiceRequest(service="ssh-userauth").encode())
    transfer(pair.client, pair.server)
    with pytest.raises(UnexpectedMessage):
        events_of(pair.server)
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_newkeys_before_ecdh_init_disconnects() -> None:
    """NEWKEYS out of order is a protocol error."""
    pair = ConnectionPair()
    pair.client.send_now(tr.NewKeys().encode())
    with pytest.raises(UnexpectedMessage, match="NEWKEYS"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_second_kexinit_during_kex_disconnects() -> None:
    """A KEXINIT while an exchange is running is refused."""
    pair = ConnectionPair()
    pair.client.send_now(pair.client.kexinit().encode())
    with pytest.raises(UnexpectedMessage, match="KEXINIT during key exchange"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_unknown_kex_method_message_disconnects() -> None:
    """Message numbers 22-29 are not defined for the client; 30-49 must be ECDH_INIT."""
    for number in (22, 29, 31, 49):
        pair = ConnectionPair()
        transfer(pair.client, pair.server)
        events_of(pair.server)
        pair.server.receive_data(b"".join(pair.client.encoder.encode(bytes((number,)))))
        with pytest.raises(UnexpectedMessage):
            events_of(pair.server)
        pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


# -- rekeying ------------------------------------------------------------------------------


def _exec_session(pair: ConnectionPair) -> ChannelId:
    cid = pair.open_session()
    pair.client.channel_request(0, "exec", ExecData(command="cat").encode(), want_reply=False)
    pair.transfer()
    pair.server.reply_channel_request(cid, True)
    return cid


def test_client_rekey_in_the_middle_of_channel_data() -> None:
    """Server output produced during the kex is held and delivered after it, in order."""
    pair = established_pair()
    cid = _exec_session(pair)
    pair.client.channel_data(0, b"a" * 100)
    pair.client.start_kex()
    pair.client.channel_data(0, b"b" * 100)  # the peer holds this until its NEWKEYS
    transfer(pair.client, pair.server)
    assert events_of(pair.server) == [ChannelDataReceived(channel_id=cid, data=b"a" * 100)]
    assert pair.server.send_channel_data(cid, b"1") == 1
    assert pair.server.send_channel_data(cid, b"22") == 2
    pair.server.acknowledge_channel_data(cid, 100)
    assert pair.server.pending_output_size > 0
    transfer(pair.server, pair.client)  # only the server's KEXINIT so far
    assert pair.client.take_all() == []
    events = pair.transfer()
    assert len(events) == 2
    assert isinstance(events[0], KeyExchangeCompleted)
    assert events[0].is_rekey
    assert events[1] == ChannelDataReceived(channel_id=cid, data=b"b" * 100)
    assert pair.client.take_all() == [
        conn.ChannelData(recipient_channel=0, data=b"1"),
        conn.ChannelData(recipient_channel=0, data=b"22"),
    ]
    assert pair.client.completed_kex == 2


def test_server_initiated_rekey_with_data_in_flight() -> None:
    """request_rekey(): client data sent before it saw our KEXINIT is still accepted."""
    pair = established_pair()
    cid = _exec_session(pair)
    pair.server.request_rekey()
    pair.server.request_rekey()  # already running: no second KEXINIT
    pair.client.channel_data(0, b"in flight")
    events = pair.transfer()
    assert events[0] == ChannelDataReceived(channel_id=cid, data=b"in flight")
    assert isinstance(events[1], KeyExchangeCompleted)
    assert events[1].is_rekey
    assert len(pair.client.server_kexinits) == 2
    pair.client.channel_data(0, b"after")
    assert pair.transfer() == [ChannelDataReceived(channel_id=cid, data=b"after")]


def test_request_rekey_before_first_kex_is_a_no_op() -> None:
    """Before the initial exchange finishes there is nothing to re-key."""
    pair = ConnectionPair()
    pair.server.request_rekey()
    completed = pair.handshake()[-1]
    assert isinstance(completed, KeyExchangeCompleted)
    assert not completed.is_rekey
    assert len(pair.client.server_kexinits) == 1


@pytest.mark.parametrize("cipher", CIPHER_NAMES)
def test_repeated_rekeys_keep_the_connection_usable(cipher: str) -> None:
    """Several exchanges in a row, alternating initiators, with data after each."""
    pair = established_pair(ciphers=(cipher,))
    cid = _exec_session(pair)
    for round_ in range(4):
        if round_ % 2:
            pair.server.request_rekey()
        else:
            pair.client.start_kex()
        pair.client.channel_data(0, bytes([round_]) * 10)
        events = pair.transfer()
        assert ChannelDataReceived(channel_id=cid, data=bytes([round_]) * 10) in events
        assert pair.server.send_channel_data(cid, b"ok") == 2
        pair.transfer()
        assert pair.client.take_all() == [conn.ChannelData(recipient_channel=0, data=b"ok")]
    assert pair.client.completed_kex == 5


# -- first_kex_packet_follows (RFC 4253 §7) -------------------------------------------------


@pytest.mark.parametrize("kex", ["mlkem768x25519-sha256", "curve25519-sha256"])
def test_right_guess_is_used(kex: str) -> None:
    """Both sides prefer the same kex and ssh-ed25519: the guessed INIT counts (the client
    sends no second one, so a dropped guess would stall the exchange)."""
    client = ClientConnection(rng=SeededRng(1000), start=False, kex_algorithms=(kex,))
    client.send_version()
    client.start_kex(first_kex_packet_follows=True)
    client.send_ecdh_init()
    pair = ConnectionPair(make_config(kex_algorithms=(kex, "curve25519-sha256@libssh.org")), client)
    completed = pair.handshake()[-1]
    assert isinstance(completed, KeyExchangeCompleted)
    assert completed.algorithms.kex == kex


@pytest.mark.parametrize(
    ("options", "guess"),
    [
        ({"kex_algorithms": ("diffie-hellman-group14-sha256", "curve25519-sha256")}, "bogus"),
        ({"host_key_algorithms": ("rsa-sha2-512", "ssh-ed25519")}, "real"),
        ({"kex_algorithms": ("curve25519-sha256@libssh.org", "curve25519-sha256")}, "real"),
    ],
    ids=["other-kex", "other-host-key", "alias-preferred"],
)
def test_wrong_guess_is_ignored(options: dict[str, Any], guess: str) -> None:
    """When the first kex or host-key preferences differ, the guessed packet is dropped."""
    client = ClientConnection(rng=SeededRng(1000), start=False, **options)
    client.send_version()
    client.start_kex(first_kex_packet_follows=True)
    if guess == "bogus":
        client.send_now(bytes((30,)) + wire.mpint(2**2047 + 12345))  # a DH "e", not an ECDH key
    else:
        client.send_ecdh_init()
    pair = ConnectionPair(client=client)
    completed = pair.handshake()[-1]
    assert isinstance(completed, KeyExchangeCompleted)


# -- negotiation failures ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "category"),
    [
        ({"kex_algorithms": ("diffie-hellman-group14-sha256",)}, "key exchange algorithm"),
        ({"host_key_algorithms": ("rsa-sha2-512",)}, "host key algorithm"),
        ({"ciphers": ("aes128-cbc", "3des-cbc")}, "cipher (client to server)"),
        ({"compression": ("zlib",)}, "compression (client to server)"),
    ],
    ids=["kex", "host-key", "cipher", "compression"],
)
def test_no_common_algorithm_names_the_category(options: dict[str, Any], category: str) -> None:
    """KEY_EXCHANGE_FAILED, and both the exception and DISCONNECT say which list failed."""
    pair = ConnectionPair(**options)
    with pytest.raises(KeyExchangeFailed) as info:
        pair.transfer()
    assert f"no matching {category}" in info.value.description
    message = pair.expect_disconnect(DisconnectReason.KEY_EXCHANGE_FAILED)
    assert f"no matching {category}" in message.description


def test_server_to_client_cipher_is_negotiated_separately() -> None:
    """Each direction takes the client's first choice that the server supports."""
    pair = ConnectionPair(
        ciphers=("aes128-gcm@openssh.com",),
        server_to_client_ciphers=("aes256-gcm@openssh.com", "aes128-gcm@openssh.com"),
    )
    completed = pair.handshake()[-1]
    assert isinstance(completed, KeyExchangeCompleted)
    assert completed.algorithms.cipher_client_to_server == "aes128-gcm@openssh.com"
    assert completed.algorithms.cipher_server_to_client == "aes256-gcm@openssh.com"
    pair.authenticate()  # traffic flows both ways under different ciphers


# -- packets -------------------------------------------------------------------------------


def _after_version(*packets: bytes) -> bytes:
    return b"SSH-2.0-x\r\n" + b"".join(packets)


@pytest.mark.parametrize(
    ("packet", "match"),
    [
        (struct.pack(">I", MAX_PACKET_LENGTH + 8), "bad packet length"),
        (struct.pack(">I", 4) + bytes(4), "bad packet length"),
        (struct.pack(">I", 13) + bytes(13), "bad packet length"),  # 13 + 4 is not a multiple of 8
        (struct.pack(">IB", 12, 3) + bytes(11), "bad padding length"),
        (struct.pack(">IB", 12, 12) + bytes(11), "bad padding length"),
        (struct.pack(">IB", 12, 11) + bytes(11), "empty packet payload"),
    ],
    ids=["too-long", "too-short", "misaligned", "padding<4", "padding>length", "empty-payload"],
)
def test_malformed_packet_framing(packet: bytes, match: str) -> None:
    """Length, alignment and padding are checked before the payload is used."""
    pair = ConnectionPair()
    pair.server.receive_data(_after_version(packet))
    with pytest.raises(DecodeError, match=match):
        events_of(pair.server)
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_receive_buffer_is_bounded() -> None:
    """A peer cannot make the core buffer without limit."""
    pair = ConnectionPair()
    for _ in range(4):
        pair.server.receive_data(bytes(MAX_PACKET_LENGTH))
    with pytest.raises(DecodeError, match="buffer"):
        pair.server.receive_data(b"\x00")
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


# -- ending the connection -----------------------------------------------------------------


def test_disconnect_from_client_is_reported_and_ends_processing() -> None:
    """DISCONNECT yields DisconnectReceived; nothing after it is processed."""
    pair = established_pair()
    pair.client.send(tr.Disconnect(reason=11, description="bye"))
    pair.client.send(conn.GlobalRequest(name="after", want_reply=True))
    assert pair.transfer() == [DisconnectReceived(reason=11, description="bye")]
    assert pair.server.closed
    assert pair.client.take_all() == []
    pair.server.receive_data(b"")
    assert pair.server.next_event() == ConnectionLost()


def test_eof_is_reported_after_buffered_events() -> None:
    """ConnectionLost comes once, after everything already received."""
    pair = established_pair()
    cid = pair.open_session()
    pair.client.channel_close(0)
    transfer(pair.client, pair.server)
    pair.server.receive_data(b"")
    assert events_of(pair.server) == [ChannelCloseReceived(channel_id=cid), ConnectionLost()]
    assert pair.server.next_event() is None


def test_local_disconnect_stops_all_output() -> None:
    """disconnect() queues DISCONNECT, then the core sends nothing more."""
    pair = established_pair()
    cid = _exec_session(pair)
    pair.transfer()
    pair.client.take_all()
    pair.server.disconnect(DisconnectReason.BY_APPLICATION, "shutting down")
    assert pair.server.closed
    pair.server.send_exit_status(cid, 0)
    pair.server.request_rekey()
    message = pair.expect_disconnect(DisconnectReason.BY_APPLICATION)
    assert message.description == "shutting down"


def test_protocol_error_is_sticky() -> None:
    """After a RemoteProtocolError every later call raises it again; nothing more is sent."""
    pair = ConnectionPair()
    pair.server.receive_data(b"SSH-1.5-x\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        events_of(pair.server)
    pair.server.data_to_send()
    with pytest.raises(RemoteProtocolError) as again:
        pair.server.receive_data(b"more")
    assert again.value is info.value
    with pytest.raises(RemoteProtocolError):
        pair.server.next_event()
    assert pair.server.data_to_send() == b""


def test_statistics_count_received_bytes_and_channels() -> None:
    """statistics() reflects the bytes fed in and the open channels."""
    pair = ConnectionPair()
    total = 0
    original = pair.client.data_to_send

    def counting() -> bytes:
        nonlocal total
        data = original()
        total += len(data)
        return data

    pair.client.data_to_send = counting  # type: ignore[method-assign]
    pair.handshake()
    pair.authenticate()
    pair.open_session()
    stats = pair.server.statistics()
    assert stats.bytes_received == total
    assert stats.open_channels == 1
    assert stats.pending_output == 0
    assert stats.bytes_sent > 0


def test_default_config_is_valid_and_server_speaks_first() -> None:
    """A fresh connection has its identification and KEXINIT ready to send."""
    server = ConnectionPair(make_config(seed=9)).server
    assert server.pending_output_size > 0
    assert server.data_to_send().startswith(b"SSH-2.0-trissh\r\n")
    assert server.pending_output_size == 0
    assert not server.authenticated
    assert server.client_version is None


def test_simultaneous_rekey_from_both_sides() -> None:
    """Both sides send KEXINIT at once (RFC 4253 §9): one exchange, no error."""
    pair = established_pair()
    cid = _exec_session(pair)
    pair.server.request_rekey()
    pair.client.start_kex()
    events = pair.transfer()
    assert [type(e) for e in events] == [KeyExchangeCompleted]
    assert pair.client.completed_kex == 2
    assert len(pair.client.server_kexinits) == 2
    pair.client.channel_data(cid, b"still fine")
    assert pair.transfer() == [ChannelDataReceived(channel_id=cid, data=b"still fine")]


def test_upper_layer_message_after_client_kexinit_disconnects() -> None:
    """Between its KEXINIT and its NEWKEYS a client may send only kex messages."""
    pair = established_pair()
    cid = _exec_session(pair)
    pair.client.start_kex()
    pair.client.send_now(conn.ChannelData(recipient_channel=cid, data=b"x").encode())
    with pytest.raises(UnexpectedMessage, match="during key exchange"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_automatic_rekey_after_the_byte_limit() -> None:
    """RFC 4253 §9: the core re-keys by itself once enough bytes went either way."""
    pair = established_pair(make_config(rekey_bytes=1 << 16))
    cid = _exec_session(pair)
    sent = 0
    for i in range(20):
        sent += pair.server.send_channel_data(cid, bytes([i]) * 4000)
        pair.transfer()
    received = b"".join(m.data for m in pair.client.take_all() if isinstance(m, conn.ChannelData))
    assert received == b"".join(bytes([i]) * 4000 for i in range(20))
    assert sent == 80_000
    outbound_rekeys = pair.client.completed_kex - 1
    assert outbound_rekeys >= 1
    events: list[object] = []
    for i in range(20):
        pair.client.channel_data(cid, bytes([i]) * 4000)
        events += pair.transfer()
        pair.server.acknowledge_channel_data(cid, 4000)
    rekeys = [e for e in events if isinstance(e, KeyExchangeCompleted)]
    assert rekeys
    assert all(e.is_rekey for e in rekeys)
    data = b"".join(e.data for e in events if isinstance(e, ChannelDataReceived))
    assert data == b"".join(bytes([i]) * 4000 for i in range(20))


def test_rekey_reports_the_strict_kex_still_in_force() -> None:
    """After a rekey the event still says strict kex and ext-info: they stay in force."""
    pair = established_pair()
    pair.client.start_kex()
    events = pair.transfer()
    [completed] = [e for e in events if isinstance(e, KeyExchangeCompleted)]
    assert completed.is_rekey
    assert completed.algorithms.strict_kex
    assert completed.algorithms.ext_info


def test_statistics_count_the_identification_line_both_ways() -> None:
    """bytes_sent and bytes_received both include the version exchange."""
    server = ConnectionPair(make_config()).server
    first_flight = server.data_to_send()
    assert first_flight.startswith(b"SSH-2.0-")
    assert server.statistics().bytes_sent == len(first_flight)
    server.receive_data(b"SSH-2.0-peer\r\n")
    assert server.statistics().bytes_received == len(b"SSH-2.0-peer\r\n")


def test_no_client_rekey_before_authentication() -> None:
    """A key exchange costs the server tens of ms of CPU (group16 DH: ~20), in the one
    event loop every user shares; before login nobody is accountable for them and only the
    first exchange takes turns with others' (kex_budget), so a client that starts another
    is disconnected (fourth reader: one re-exchange each, sent with its KEXINIT, let a
    flood's connections compute unpaced)."""
    pair = ConnectionPair()
    pair.handshake()
    pair.client.start_kex()
    with pytest.raises(RemoteProtocolError, match="key exchanges before authentication"):
        pair.transfer()
    message = pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)
    assert "key exchanges before authentication" in message.description


def test_client_rekeys_after_authentication_are_not_limited() -> None:
    pair = established_pair()
    for _ in range(4):
        pair.client.start_kex()
        [completed] = pair.transfer()
        assert isinstance(completed, KeyExchangeCompleted)


def test_ping_is_answered_with_pong_once_logged_in() -> None:
    """OpenSSH PROTOCOL §1.9: OpenSSH 9.5+ clients send keystroke-timing chaff as PINGs only
    to a server that says it answers them (they got UNIMPLEMENTED, so the chaff was off).
    As sshd: before login (or while re-keying) a PING gets no answer."""
    ping = bytes((192,)) + wire.string(b"chaff")
    pair = ConnectionPair()
    pair.handshake()
    pair.client.take_all()
    pair.client.send_now(ping)
    pair.transfer()
    assert pair.client.inbox == deque()  # before login: nothing, not UNIMPLEMENTED
    pair.authenticate()
    pair.client.send_now(ping)
    pair.transfer()
    assert list(pair.client.inbox) == [bytes((193,)) + wire.string(b"chaff")]
    pair.client.send_now(bytes((192,)) + b"\x00\x00")  # no string in it
    with pytest.raises(DecodeError):
        pair.transfer()


def test_a_re_exchange_says_who_started_it() -> None:
    """The driver counts client-started re-keys against the connection's quota of log
    lines, never the server's own (hourly, by volume): the event says which it was."""
    pair = established_pair()
    pair.client.start_kex()
    [by_client] = [e for e in pair.transfer() if isinstance(e, KeyExchangeCompleted)]
    pair.server.request_rekey()
    [by_server] = [e for e in pair.transfer() if isinstance(e, KeyExchangeCompleted)]
    assert (by_client.is_rekey, by_client.by_client) == (True, True)
    assert (by_server.is_rekey, by_server.by_client) == (True, False)
