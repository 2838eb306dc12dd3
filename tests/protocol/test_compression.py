"""zlib@openssh.com (OpenSSH PROTOCOL §1.3): off by default, on only after authentication,
one stream per direction restarted at every NEWKEYS, and a hard cap on what one packet may
inflate to."""

from __future__ import annotations

import zlib

import pytest

from tests.sshpeer import ConnectionPair, established_pair, make_config
from tests.sshpeer.pair import transfer
from trissh.protocol import (
    ChannelDataReceived,
    ChannelOpenRequested,
    DisconnectReason,
    InputPaused,
    KeyExchangeCompleted,
)
from trissh.protocol.constants import INFLATE_SLICE, MAX_PAYLOAD_LENGTH
from trissh.protocol.errors import DecodeError
from trissh.protocol.messages import connection as conn
from trissh.protocol.messages import transport as tr

ZLIB = ("zlib@openssh.com", "none")


def _zlib_pair() -> ConnectionPair:
    return established_pair(make_config(compression=ZLIB), compression=ZLIB)


def _compressing(pair: ConnectionPair) -> bool:
    transport = pair.server._transport
    return transport._encoder.compressor is not None and transport._decoder.decompressor is not None


def test_off_by_default_and_validated() -> None:
    pair = ConnectionPair(compression=ZLIB)
    completed = pair.handshake()[-1]
    assert isinstance(completed, KeyExchangeCompleted)
    assert completed.algorithms.compression_client_to_server == "none"
    with pytest.raises(ValueError, match="unknown compression 'zlib'"):
        make_config(compression=("zlib",))


def test_compression_starts_after_authentication_and_shrinks_traffic() -> None:
    pair = ConnectionPair(make_config(compression=ZLIB), compression=ZLIB)
    completed = pair.handshake()[-1]
    assert isinstance(completed, KeyExchangeCompleted)
    assert completed.algorithms.compression_server_to_client == "zlib@openssh.com"
    assert not _compressing(pair)  # not before authentication
    pair.authenticate()
    assert _compressing(pair)
    cid = pair.open_session()
    pair.client.channel_request(cid, "exec", b"\x00\x00\x00\x03cat", want_reply=False)
    pair.transfer()
    before = pair.server.statistics().bytes_received
    pair.client.channel_data(cid, b"a" * 30_000)
    events = pair.transfer()
    assert events[-1] == ChannelDataReceived(channel_id=cid, data=b"a" * 30_000)
    assert pair.server.statistics().bytes_received - before < 1_000
    sent = pair.server.statistics().bytes_sent
    assert pair.server.send_channel_data(cid, b"b" * 30_000) == 30_000
    pair.transfer()
    assert pair.server.statistics().bytes_sent - sent < 1_000
    [data] = pair.client.take_all()
    assert data == conn.ChannelData(recipient_channel=cid, data=b"b" * 30_000)


def test_streams_restart_at_each_rekey() -> None:
    """Both sides start a new zlib stream at every NEWKEYS; data keeps flowing."""
    pair = _zlib_pair()
    cid = pair.open_session()
    for round_ in range(3):
        pair.client.start_kex()
        pair.transfer()
        pair.client.channel_data(cid, bytes([round_]) * 5000)
        events = pair.transfer()
        assert events[-1] == ChannelDataReceived(channel_id=cid, data=bytes([round_]) * 5000)
        pair.server.acknowledge_channel_data(cid, 5000)
    assert pair.client.completed_kex == 4


def test_decompression_bomb_is_refused() -> None:
    """A payload inflating past the packet limit ends the connection: COMPRESSION_ERROR."""
    pair = _zlib_pair()
    bomb = conn.ChannelData(recipient_channel=0, data=bytes(MAX_PAYLOAD_LENGTH)).encode()
    compressor = pair.client.encoder.compressor
    assert compressor is not None
    pair.client.encoder.compressor = None  # send our own deflate stream instead
    pair.client.send_now(compressor.compress(bomb) + compressor.flush(zlib.Z_SYNC_FLUSH))
    with pytest.raises(DecodeError, match="inflates beyond"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.COMPRESSION_ERROR)


def test_garbage_compressed_data_is_refused() -> None:
    pair = _zlib_pair()
    pair.client.encoder.compressor = None
    pair.client.send_now(b"\xff\xfe not deflate")
    with pytest.raises(DecodeError, match="invalid compressed data"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.COMPRESSION_ERROR)


def test_a_flood_of_inflating_packets_is_decoded_in_slices() -> None:
    """A logged-in client's IGNOREs of 200 KB of zeros each arrive as ~200 wire bytes: one
    read held ~900x its size in inflating work, done in one go while every other
    connection waited. The core now stops after INFLATE_SLICE inflated bytes with
    InputPaused (the driver lets others run), and goes on at the next call."""
    pair = _zlib_pair()
    for _ in range(40):
        pair.client.send(tr.Ignore(data=bytes(200_000)))
    assert transfer(pair.client, pair.server) < 100_000
    slices = 0
    while (event := pair.server.next_event()) is not None:
        assert isinstance(event, InputPaused), event
        slices += 1
    assert slices >= 40 * 200_000 // INFLATE_SLICE - 1
    assert pair.server._transport._decoder.buffered == 0  # all of it, in the end


def test_the_server_starts_no_re_exchange_before_authentication() -> None:
    """Past ``rekey_bytes`` before login (a client's IGNOREs here; large prompts or GSSAPI
    tokens in life), the server waits for the login to re-key, as sshd does ("client can't
    cope with rekeying pre-auth"). With compression a re-exchange under way at
    USERAUTH_SUCCESS switched inflating on before the client's uncompressed NEWKEYS, and
    the login ended in a protocol error."""
    pair = ConnectionPair(make_config(compression=ZLIB, rekey_bytes=65536), compression=ZLIB)
    pair.handshake()
    for _ in range(20):
        pair.client.send(tr.Ignore(data=bytes(5000)))
    pair.transfer()
    assert pair.client.completed_kex == 1  # no second exchange yet
    pair.authenticate()
    assert _compressing(pair)
    pair.client.open_channel(0)  # the client's next message: now the server re-keys
    events = pair.transfer()
    assert pair.client.completed_kex == 2
    assert {type(event) for event in events} == {KeyExchangeCompleted, ChannelOpenRequested}
