"""Forwarding at the byte level (RFC 4254 §7, OpenSSH PROTOCOL §2.4): the opens the
client makes, the channels the server opens, and global requests answered later but in
order."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sshpeer import ConnectionPair, established_pair, make_config
from trissh.protocol import (
    ChannelDataReceived,
    ChannelId,
    ChannelOpenConfirmed,
    ChannelOpenFailed,
    ChannelOpenFailureReason,
    ChannelOpenRequested,
    GlobalRequestReceived,
    LocalProtocolError,
    RequestRefused,
    SocketPath,
    TcpAddress,
    wire,
)
from trissh.protocol.errors import ChannelLimitReached, UnexpectedMessage
from trissh.protocol.forwarding import forwarded_streamlocal, forwarded_tcpip
from trissh.protocol.global_requests import MAX_PENDING_REPLIES
from trissh.protocol.messages import connection as conn
from trissh.protocol.messages.forwarding import (
    DirectStreamlocalData,
    StreamlocalForwardData,
    TcpipForwardData,
    TcpipOpenData,
)

PEER = 7


def direct_tcpip(host: str = "localhost", port: int = 8080) -> bytes:
    return TcpipOpenData(
        host=host, port=port, originator_host="127.0.0.1", originator_port=50000
    ).encode()


def refusals(events: list[Any]) -> list[tuple[str, str]]:
    return [(e.request, e.reason) for e in events if isinstance(e, RequestRefused)]


# -- channels the client opens --------------------------------------------------------------


def test_direct_tcpip_open_names_its_target_and_originator() -> None:
    pair = established_pair()
    pair.client.open_channel(PEER, channel_type="direct-tcpip", data=direct_tcpip("db", 5432))
    assert pair.transfer() == [
        ChannelOpenRequested(
            channel_id=ChannelId(0),
            channel_type="direct-tcpip",
            target=TcpAddress(host="db", port=5432),
            originator=TcpAddress(host="127.0.0.1", port=50000),
        )
    ]
    pair.server.accept_channel(ChannelId(0))
    pair.transfer()
    [confirmation] = pair.client.take_all()
    assert isinstance(confirmation, conn.ChannelOpenConfirmation)
    pair.client.channel_data(0, b"GET / HTTP/1.0\r\n\r\n")
    assert pair.transfer() == [
        ChannelDataReceived(channel_id=ChannelId(0), data=b"GET / HTTP/1.0\r\n\r\n")
    ]


def test_direct_streamlocal_open_names_its_path() -> None:
    pair = established_pair()
    data = DirectStreamlocalData(path="/run/app.sock").encode()
    pair.client.open_channel(PEER, channel_type="direct-streamlocal@openssh.com", data=data)
    [event] = pair.transfer()
    assert isinstance(event, ChannelOpenRequested)
    assert event.target == SocketPath(path="/run/app.sock")
    assert event.originator is None


@pytest.mark.parametrize(
    ("channel_type", "data"),
    [
        ("direct-tcpip", wire.string("host")),  # no port
        ("direct-tcpip", direct_tcpip(port=70000)),  # not a port
        ("direct-tcpip", direct_tcpip(port=0)),
        ("direct-tcpip", direct_tcpip("h" * 300)),  # over the bound
        ("direct-tcpip", direct_tcpip("bad\nhost")),
        ("direct-tcpip", wire.string(b"\xff\xfe") + direct_tcpip()[4 + 9 :]),  # not UTF-8
        ("direct-tcpip", direct_tcpip() + b"junk"),
        ("direct-streamlocal@openssh.com", wire.string("") + wire.string("") + wire.uint32(0)),
        ("direct-streamlocal@openssh.com",
         wire.string("/a\x00b") + wire.string("") + wire.uint32(0)),
    ],
)  # fmt: skip
def test_a_malformed_open_is_refused_not_raised(channel_type: str, data: bytes) -> None:
    """Bad input from a client ends in OPEN_FAILURE and a line for the operator, and the
    connection goes on."""
    pair = established_pair()
    pair.client.open_channel(PEER, channel_type=channel_type, data=data)
    events = pair.transfer()
    [(request, reason)] = refusals(events)
    assert request == channel_type
    assert reason.startswith(f"malformed {channel_type}")
    [failure] = pair.client.take_all()
    assert isinstance(failure, conn.ChannelOpenFailure)
    assert failure.reason == ChannelOpenFailureReason.CONNECT_FAILED
    assert pair.open_session(PEER + 1) == ChannelId(0)  # the connection still serves


@pytest.mark.parametrize(
    ("channel_type", "reason"),
    [
        ("forwarded-tcpip", ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED),
        ("auth-agent@openssh.com", ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED),
        ("x11", ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED),
        ("made-up@example.org", ChannelOpenFailureReason.UNKNOWN_CHANNEL_TYPE),
    ],
)
def test_kinds_only_a_server_opens_and_unknown_kinds_are_refused(
    channel_type: str, reason: ChannelOpenFailureReason
) -> None:
    pair = established_pair()
    pair.client.open_channel(PEER, channel_type=channel_type)
    assert refusals(pair.transfer()) == [
        (channel_type, f"channel type {channel_type!r} is not supported")
    ]
    [failure] = pair.client.take_all()
    assert isinstance(failure, conn.ChannelOpenFailure)
    assert failure.reason == reason


# -- channels the server opens --------------------------------------------------------------


def open_forwarded(pair: ConnectionPair) -> ChannelId:
    data = forwarded_tcpip(
        TcpAddress(host="localhost", port=9000), TcpAddress(host="10.0.0.2", port=41000)
    )
    channel_id = pair.server.open_channel("forwarded-tcpip", data)
    pair.transfer()
    return channel_id


def test_a_channel_we_open_carries_its_data_and_waits_for_confirmation() -> None:
    pair = established_pair(make_config(channel_window=65536, channel_max_packet=16384))
    cid = open_forwarded(pair)
    [opened] = pair.client.take_all()
    assert opened == conn.ChannelOpen(
        channel_type="forwarded-tcpip",
        sender_channel=cid,
        initial_window=65536,
        max_packet=16384,
        data=TcpipOpenData(
            host="localhost", port=9000, originator_host="10.0.0.2", originator_port=41000
        ).encode(),
    )
    assert pair.server.send_window(cid) is None  # nothing may be sent before confirmation
    pair.client.send(
        conn.ChannelOpenConfirmation(
            recipient_channel=cid, sender_channel=PEER, initial_window=100, max_packet=1024
        )
    )
    assert pair.transfer() == [ChannelOpenConfirmed(channel_id=cid)]
    assert pair.server.send_window(cid) == 100
    assert pair.server.send_channel_data(cid, b"x" * 150) == 100
    pair.transfer()
    [data] = pair.client.take_all()
    assert data == conn.ChannelData(recipient_channel=PEER, data=b"x" * 100)
    pair.client.channel_data(cid, b"reply")
    assert pair.transfer() == [ChannelDataReceived(channel_id=cid, data=b"reply")]


def test_a_refused_open_frees_its_number() -> None:
    pair = established_pair()
    cid = open_forwarded(pair)
    pair.client.take_all()
    pair.client.send(
        conn.ChannelOpenFailure(
            recipient_channel=cid,
            reason=ChannelOpenFailureReason.CONNECT_FAILED,
            description="nobody listens",
        )
    )
    assert pair.transfer() == [
        ChannelOpenFailed(
            channel_id=cid,
            reason=ChannelOpenFailureReason.CONNECT_FAILED,
            description="nobody listens",
        )
    ]
    assert pair.server.open_channel("auth-agent@openssh.com") == cid


def test_a_confirmation_with_a_tiny_packet_size_is_closed_as_failed() -> None:
    pair = established_pair()
    cid = open_forwarded(pair)
    pair.client.take_all()
    pair.client.send(
        conn.ChannelOpenConfirmation(
            recipient_channel=cid, sender_channel=PEER, initial_window=100, max_packet=16
        )
    )
    [failed] = pair.transfer()
    assert isinstance(failed, ChannelOpenFailed)
    assert pair.client.take_all() == [conn.ChannelClose(recipient_channel=PEER)]


@pytest.mark.parametrize("answer", ["confirmation", "failure", "data", "close"])
def test_answers_for_a_channel_not_awaiting_one_are_violations(answer: str) -> None:
    pair = established_pair()
    # open already, or not confirmed yet
    cid = pair.open_session(PEER) if answer in ("confirmation", "failure") else open_forwarded(pair)
    message: object = {
        "confirmation": conn.ChannelOpenConfirmation(
            recipient_channel=cid, sender_channel=PEER, initial_window=1, max_packet=1024
        ),
        "failure": conn.ChannelOpenFailure(recipient_channel=cid, reason=2, description=""),
        "data": conn.ChannelData(recipient_channel=cid, data=b"x"),
        "close": conn.ChannelClose(recipient_channel=cid),
    }[answer]
    pair.client.send(message)  # type: ignore[arg-type]
    with pytest.raises(UnexpectedMessage):
        pair.transfer()


def test_streamlocal_forward_open_data() -> None:
    assert forwarded_streamlocal("/tmp/s") == wire.string("/tmp/s") + wire.string("")


def test_opening_an_unknown_kind_or_too_many_is_a_local_error() -> None:
    pair = established_pair(make_config(max_channels=1))
    with pytest.raises(LocalProtocolError):
        pair.server.open_channel("made-up")
    pair.server.open_channel("auth-agent@openssh.com")
    with pytest.raises(ChannelLimitReached):  # what a listener's caller refuses one for
        pair.server.open_channel("auth-agent@openssh.com")


# -- global requests ------------------------------------------------------------------------


def forward_request(pair: ConnectionPair, port: int, *, want_reply: bool = True) -> None:
    data = TcpipForwardData(address="localhost", port=port).encode()
    pair.client.global_request("tcpip-forward", want_reply=want_reply, data=data)


def test_a_forwarding_request_is_answered_later_with_the_port_it_got() -> None:
    pair = established_pair()
    forward_request(pair, 0)
    [event] = pair.transfer()
    assert isinstance(event, GlobalRequestReceived)
    assert (event.name, event.target, event.want_reply) == (
        "tcpip-forward",
        TcpAddress(host="localhost", port=0),
        True,
    )
    assert pair.client.take_all() == []
    pair.server.reply_global_request(event.request_id, True, port=34567)
    pair.transfer()
    assert pair.client.take_all() == [conn.RequestSuccess(data=wire.uint32(34567))]
    pair.server.reply_global_request(event.request_id, False)  # twice: ignored
    pair.transfer()
    assert pair.client.take_all() == []


def test_replies_leave_in_request_order() -> None:
    """RFC 4254 §4: a keepalive after a pending forward is answered after it."""
    pair = established_pair()
    forward_request(pair, 8080)
    forward_request(pair, 8081)
    pair.client.global_request("keepalive@openssh.com", want_reply=True)
    first, second = pair.transfer()
    assert isinstance(first, GlobalRequestReceived)
    assert isinstance(second, GlobalRequestReceived)
    pair.server.reply_global_request(second.request_id, True)
    pair.transfer()
    assert pair.client.take_all() == []
    pair.server.reply_global_request(first.request_id, False)
    pair.transfer()
    assert pair.client.take_all() == [
        conn.RequestFailure(),
        conn.RequestSuccess(),
        conn.RequestFailure(),
    ]


def test_a_request_without_reply_still_reaches_the_driver_and_sends_nothing() -> None:
    pair = established_pair()
    pair.client.global_request(
        "cancel-streamlocal-forward@openssh.com",
        data=StreamlocalForwardData(path="/tmp/x").encode(),
    )
    [event] = pair.transfer()
    assert isinstance(event, GlobalRequestReceived)
    assert not event.want_reply
    assert event.target == SocketPath(path="/tmp/x")
    pair.server.reply_global_request(event.request_id, True)
    pair.transfer()
    assert pair.client.take_all() == []


def test_malformed_forwarding_requests_are_refused() -> None:
    pair = established_pair()
    pair.client.global_request("tcpip-forward", want_reply=True, data=wire.string("x"))
    assert [r for r, _ in refusals(pair.transfer())] == ["tcpip-forward"]
    assert pair.client.take_all() == [conn.RequestFailure()]


def test_a_client_s_remote_forwards_all_wait_for_their_listeners() -> None:
    """OpenSSH sends every -R at once after login; they are answered once the container
    is up. The 33rd was a protocol error that dropped the connection (sshd takes them all)."""
    pair = established_pair()
    for port in range(1024):
        forward_request(pair, 2000 + port)
    received = [e for e in pair.transfer() if isinstance(e, GlobalRequestReceived)]
    assert len(received) == 1024
    for event in reversed(received):
        pair.server.reply_global_request(event.request_id, False)
    pair.transfer()
    assert pair.client.take_all() == [conn.RequestFailure()] * 1024


def test_pending_global_requests_are_bounded() -> None:
    pair = established_pair()
    for port in range(MAX_PENDING_REPLIES + 1):
        forward_request(pair, 1000 + port)
    with pytest.raises(UnexpectedMessage, match="too many unanswered"):
        pair.transfer()


def test_other_global_requests_are_refused_and_probes_not_logged() -> None:
    pair = established_pair()
    pair.client.global_request("made-up@example.org", want_reply=True)
    pair.client.global_request("keepalive@openssh.com", want_reply=True)
    pair.client.global_request("hostkeys-prove-00@openssh.com", want_reply=False)
    pair.client.send(conn.RequestFailure())  # as if answering our keepalive
    assert refusals(pair.transfer()) == [("made-up@example.org", "not supported")]
    assert pair.client.take_all() == [conn.RequestFailure(), conn.RequestFailure()]
