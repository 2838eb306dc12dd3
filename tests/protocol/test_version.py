"""The identification exchange (RFC 4253 §4.2), fed three ways as in h11's ``tr()``:
whole, one byte at a time, and followed by the client's next packet in the same chunk."""

from __future__ import annotations

import pytest

from tests.sshpeer import ClientConnection, SeededRng, events_of, make_config, parse_plaintext
from trissh.protocol import (
    ConnectionLost,
    DisconnectReason,
    Event,
    RemoteProtocolError,
    ServerConnection,
    VersionReceived,
)
from trissh.protocol.constants import MAX_PRE_VERSION_LINES, MessageNumber
from trissh.protocol.errors import DecodeError
from trissh.protocol.messages.transport import Disconnect
from trissh.protocol.wire import Reader

MODES = ("whole", "bytewise", "trailing")


def _client_kexinit_packet() -> bytes:
    client = ClientConnection(rng=SeededRng(5), start=False)
    client.start_kex()
    return client.data_to_send()


#: What a client sends right after its identification line.
TRAILER = _client_kexinit_packet()


def feed(server: ServerConnection, data: bytes, mode: str) -> list[Event]:
    if mode == "whole":
        chunks = [data]
    elif mode == "bytewise":
        chunks = [data[i : i + 1] for i in range(len(data))]
    else:
        chunks = [data + TRAILER]
    events: list[Event] = []
    for chunk in chunks:
        server.receive_data(chunk)
        events += events_of(server)
    return events


def queued_disconnect(server: ServerConnection) -> Disconnect:
    _, payloads = parse_plaintext(server.data_to_send())
    assert payloads[-1][0] == MessageNumber.DISCONNECT
    return Disconnect.decode(Reader(payloads[-1], 1))


def test_server_identifies_itself_before_reading_anything() -> None:
    """The server's identification line and KEXINIT are queued at construction."""
    server = ServerConnection(make_config(software_version="trissh_0.1"))
    line, payloads = parse_plaintext(server.data_to_send())
    assert line == b"SSH-2.0-trissh_0.1\r\n"
    assert [p[0] for p in payloads] == [MessageNumber.KEXINIT]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "line",
    [
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n",
        b"SSH-2.0-OpenSSH_9.2p1\n",  # LF only, as some clients send
        b"SSH-1.99-compat\r\n",  # RFC 4253 §5.1: 1.99 means "also 2.0"
        b"SSH-2.0-" + b"x" * (255 - 10) + b"\r\n",  # exactly 255 bytes with CR LF
        b"SSH-2.0-" + b"x" * (255 - 9) + b"\n",  # exactly 255 bytes with LF
    ],
    ids=["openssh", "lf-only", "ssh-1.99", "255-crlf", "255-lf"],
)
def test_valid_identification_line(line: bytes, mode: str) -> None:
    """A valid line yields one VersionReceived without CR/LF, however it is split."""
    server = ServerConnection(make_config())
    events = feed(server, line, mode)
    version = line.rstrip(b"\r\n").decode()
    assert events == [VersionReceived(version=version)]
    assert server.client_version == version


@pytest.mark.parametrize("mode", MODES)
def test_lines_before_identification_are_skipped(mode: str) -> None:
    """RFC 4253 §4.2 lets other lines precede the identification; they are ignored."""
    data = b"hello\r\n\n" * (MAX_PRE_VERSION_LINES // 2) + b"SSH-2.0-late\r\n"
    server = ServerConnection(make_config())
    assert feed(server, data, mode) == [VersionReceived(version="SSH-2.0-late")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (b"SSH-1.5-old\r\n", RemoteProtocolError, DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED),
        (b"SSH-2.0\r\n", RemoteProtocolError, DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED),
        (
            b"SSH-3.0-future\r\n",
            RemoteProtocolError,
            DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED,
        ),
        (b"SSH-2.0-" + b"x" * (256 - 10) + b"\r\n", DecodeError, DisconnectReason.PROTOCOL_ERROR),
        (b"SSH-2.0-" + b"x" * 300, DecodeError, DisconnectReason.PROTOCOL_ERROR),
        (b"x" * 256 + b"\r\nSSH-2.0-a\r\n", DecodeError, DisconnectReason.PROTOCOL_ERROR),
        (
            b"noise\r\n" * (MAX_PRE_VERSION_LINES + 1) + b"SSH-2.0-a\r\n",
            DecodeError,
            DisconnectReason.PROTOCOL_ERROR,
        ),
        (b"SSH-2.0-nul\x00byte\r\n", DecodeError, DisconnectReason.PROTOCOL_ERROR),
        (b"SSH-2.0-del\x7f\r\n", DecodeError, DisconnectReason.PROTOCOL_ERROR),
        (b"SSH-2.0-cr\rinside\r\n", DecodeError, DisconnectReason.PROTOCOL_ERROR),
        (b"SSH-2.0-\xc3\xa9\r\n", DecodeError, DisconnectReason.PROTOCOL_ERROR),
    ],
    ids=[
        "ssh-1.5",
        "no-software-version",
        "ssh-3.0",
        "256-bytes",
        "no-line-end",
        "long-pre-banner-line",
        "too-many-pre-banner-lines",
        "nul",
        "del",
        "bare-cr",
        "non-ascii",
    ],
)
def test_invalid_identification_line(
    data: bytes, error: type[RemoteProtocolError], reason: DisconnectReason, mode: str
) -> None:
    """Each bad line raises with the right reason and DISCONNECT already queued."""
    server = ServerConnection(make_config())
    with pytest.raises(error) as info:
        feed(server, data, mode)
    assert info.value.reason == reason
    assert queued_disconnect(server).reason == reason
    with pytest.raises(error):  # the failure sticks
        server.next_event()


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_partial_line_waits_for_more(mode: str) -> None:
    """Up to 254 bytes without LF are simply buffered."""
    server = ServerConnection(make_config())
    assert feed(server, b"SSH-2.0-" + b"x" * 246, mode) == []
    assert server.client_version is None


def test_eof_before_identification_reports_connection_lost() -> None:
    """``receive_data(b"")`` before any line ends the stream with ConnectionLost, once."""
    server = ServerConnection(make_config())
    server.receive_data(b"SSH-2.")
    server.receive_data(b"")
    assert server.next_event() == ConnectionLost()
    assert server.next_event() is None


def test_trailing_packet_is_processed_after_the_line() -> None:
    """Bytes after the line in the same chunk are the first packet (here KEXINIT)."""
    client = ClientConnection(rng=SeededRng(5))
    server = ServerConnection(make_config())
    server.receive_data(client.data_to_send())
    assert events_of(server) == [VersionReceived(version="SSH-2.0-sshpeer_1.0")]
    _, payloads = parse_plaintext(server.data_to_send())
    assert [p[0] for p in payloads] == [MessageNumber.KEXINIT]
