"""The ssh-connection service (RFC 4254): channels, windows, session requests, replies."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sshpeer import ConnectionPair, established_pair, make_config
from trissh.protocol import (
    ChannelCloseReceived,
    ChannelEOFReceived,
    ChannelId,
    ChannelOpenFailureReason,
    ChannelOpenRequested,
    ChannelWindowAdjusted,
    DisconnectReason,
    LocalProtocolError,
    PtyRequest,
    RemoteProtocolError,
    RequestRefused,
    SessionKind,
    SessionRequested,
    SignalReceived,
    TerminalSize,
    WindowChanged,
    wire,
)
from trissh.protocol.errors import UnexpectedMessage
from trissh.protocol.messages import connection as conn

#: The client's number for its channel; the server's number is what ``open_session`` returns.
PEER = 7

PTY = conn.PtyRequestData(
    term="xterm-256color", columns=80, rows=24, width_px=0, height_px=0, modes=b"\x00"
)


def session(**config: Any) -> tuple[ConnectionPair, ChannelId]:
    pair = established_pair(make_config(**config))
    return pair, pair.open_session(PEER)


def ok(recipient: int = PEER) -> conn.ChannelSuccess:
    return conn.ChannelSuccess(recipient_channel=recipient)


def no(recipient: int = PEER) -> conn.ChannelFailure:
    return conn.ChannelFailure(recipient_channel=recipient)


def refused(events: list[Any]) -> list[tuple[str, str]]:
    """What the core refused on its own, for the operator's log: (request, reason)."""
    return [(e.request, e.reason) for e in events if isinstance(e, RequestRefused)]


def others(events: list[Any]) -> list[Any]:
    return [e for e in events if not isinstance(e, RequestRefused)]


# -- opening --------------------------------------------------------------------------------


def test_open_is_confirmed_with_our_window_and_max_packet() -> None:
    """CHANNEL_OPEN → ChannelOpenRequested; accept_channel() → CONFIRMATION (RFC 4254 §5.1)."""
    pair = established_pair(make_config(channel_window=65536, channel_max_packet=16384))
    pair.client.open_channel(PEER, window=1000, max_packet=600)
    assert pair.transfer() == [
        ChannelOpenRequested(channel_id=ChannelId(0), channel_type="session")
    ]
    assert pair.client.take_all() == []
    assert pair.server.send_window(ChannelId(0)) is None  # not open yet
    pair.server.accept_channel(ChannelId(0))
    pair.transfer()
    assert pair.client.take_all() == [
        conn.ChannelOpenConfirmation(
            recipient_channel=PEER, sender_channel=0, initial_window=65536, max_packet=16384
        )
    ]
    assert pair.server.send_window(ChannelId(0)) == 1000


@pytest.mark.parametrize(
    ("channel_type", "reason"),
    [
        ("forwarded-tcpip", ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED),
        ("x11", ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED),
        ("auth-agent@openssh.com", ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED),
        ("tun@openssh.com", ChannelOpenFailureReason.UNKNOWN_CHANNEL_TYPE),
        ("made-up", ChannelOpenFailureReason.UNKNOWN_CHANNEL_TYPE),
    ],
)
def test_non_session_channel_types_are_refused(
    channel_type: str, reason: ChannelOpenFailureReason
) -> None:
    """Kinds only a server opens are prohibited from a client; others are unknown (the
    kinds a client opens are the driver's to refuse: tests/protocol/test_forwarding.py)."""
    pair = established_pair()
    pair.client.open_channel(PEER, channel_type=channel_type, data=wire.string("x"))
    assert refused(pair.transfer()) == [
        (channel_type, f"channel type {channel_type!r} is not supported")
    ]
    [failure] = pair.client.take_all()
    assert isinstance(failure, conn.ChannelOpenFailure)
    assert (failure.recipient_channel, failure.reason) == (PEER, reason)
    assert channel_type in failure.description


def test_channel_count_is_limited() -> None:
    """Past max_channels the open fails with RESOURCE_SHORTAGE; closing frees a slot."""
    pair = established_pair(make_config(max_channels=2))
    first = pair.open_session(1)
    pair.open_session(2)
    pair.client.open_channel(3)
    assert refused(pair.transfer()) == [("session", "too many open channels")]
    [failure] = pair.client.take_all()
    assert isinstance(failure, conn.ChannelOpenFailure)
    assert failure.reason == ChannelOpenFailureReason.RESOURCE_SHORTAGE
    pair.client.channel_close(first)
    pair.transfer()
    pair.server.close_channel(first)
    assert pair.open_session(4) == first


def test_tiny_peer_max_packet_is_refused() -> None:
    """A maximum packet below 512 bytes would only cost CPU: RESOURCE_SHORTAGE."""
    pair = established_pair()
    pair.client.open_channel(PEER, max_packet=511)
    assert refused(pair.transfer()) == [("session", "maximum packet size too small")]
    [failure] = pair.client.take_all()
    assert isinstance(failure, conn.ChannelOpenFailure)
    assert failure.reason == ChannelOpenFailureReason.RESOURCE_SHORTAGE


def test_rejected_open_sends_failure_with_the_drivers_reason() -> None:
    """reject_channel() answers with the given reason and text."""
    pair = established_pair()
    pair.client.open_channel(PEER)
    [event] = pair.transfer()
    assert isinstance(event, ChannelOpenRequested)
    pair.server.reject_channel(event.channel_id, ChannelOpenFailureReason.CONNECT_FAILED, "no")
    pair.transfer()
    assert pair.client.take_all() == [
        conn.ChannelOpenFailure(recipient_channel=PEER, reason=2, description="no")
    ]
    with pytest.raises(LocalProtocolError):
        pair.server.accept_channel(event.channel_id)


def test_messages_on_a_channel_not_yet_confirmed_disconnect() -> None:
    """Data or requests for a channel still being opened are protocol errors."""
    pair = established_pair()
    pair.client.open_channel(PEER)
    pair.transfer()
    pair.client.channel_data(0, b"early")
    with pytest.raises(UnexpectedMessage, match="not open yet"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


@pytest.mark.parametrize("kind", ["data", "request", "eof", "close", "adjust", "success"])
def test_messages_for_unknown_channels_disconnect(kind: str) -> None:
    """Every channel message must name an existing channel."""
    pair, _ = session()
    if kind == "data":
        pair.client.channel_data(5, b"x")
    elif kind == "request":
        pair.client.channel_request(5, "shell")
    elif kind == "eof":
        pair.client.channel_eof(5)
    elif kind == "close":
        pair.client.channel_close(5)
    elif kind == "adjust":
        pair.client.window_adjust(5, 1)
    else:
        pair.client.send(conn.ChannelSuccess(recipient_channel=5))
    with pytest.raises(UnexpectedMessage, match="unknown channel"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


# -- windows (RFC 4254 §5.2) ---------------------------------------------------------------


def test_data_beyond_the_window_disconnects() -> None:
    """The client may not send more than the window we granted."""
    pair, cid = session(channel_window=2048, channel_max_packet=1024)
    pair.client.channel_data(cid, b"a" * 1024)
    pair.client.channel_data(cid, b"b" * 1024)
    assert len(pair.transfer()) == 2
    pair.client.channel_data(cid, b"c")
    with pytest.raises(UnexpectedMessage, match="exceeded the window"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_data_packet_larger_than_our_max_packet_disconnects() -> None:
    """Each data packet must fit the maximum packet size we announced."""
    pair, cid = session(channel_window=8192, channel_max_packet=1024)
    pair.client.channel_data(cid, b"a" * 1025)
    with pytest.raises(UnexpectedMessage, match="larger than allowed"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_window_adjust_after_half_the_window_is_acknowledged() -> None:
    """WINDOW_ADJUST goes out once the driver has consumed half the window (h2 heuristic)."""
    pair, cid = session(channel_window=4096, channel_max_packet=1024)
    for _ in range(4):
        pair.client.channel_data(cid, b"x" * 1024)
    assert len(pair.transfer()) == 4
    pair.server.acknowledge_channel_data(cid, 2047)
    pair.transfer()
    assert pair.client.take_all() == []
    pair.server.acknowledge_channel_data(cid, 1)
    pair.transfer()
    assert pair.client.take_all() == [
        conn.ChannelWindowAdjust(recipient_channel=PEER, bytes_to_add=2048)
    ]
    pair.client.channel_data(cid, b"y" * 1024)
    pair.client.channel_data(cid, b"y" * 1024)
    assert len(pair.transfer()) == 2
    pair.client.channel_data(cid, b"z")
    with pytest.raises(UnexpectedMessage):
        pair.transfer()


def test_client_extended_data_uses_window_without_an_event() -> None:
    """Client stderr has no meaning for a server; it is charged and acknowledged silently."""
    pair, cid = session(channel_window=2048, channel_max_packet=1024)
    for _ in range(3):
        pair.client.send(
            conn.ChannelExtendedData(recipient_channel=cid, data_type=1, data=b"e" * 1024)
        )
    assert pair.transfer() == []
    assert (
        pair.client.take_all()
        == [conn.ChannelWindowAdjust(recipient_channel=PEER, bytes_to_add=1024)] * 3
    )


def test_send_respects_peer_window_and_max_packet() -> None:
    """send_channel_data splits by the peer's max packet and stops at its window."""
    pair = established_pair()
    cid = pair.open_session(PEER, window=2500, max_packet=1000)
    assert pair.server.send_channel_data(cid, b"d" * 4000) == 2500
    assert pair.server.send_window(cid) == 0
    assert pair.server.send_channel_data(cid, b"more") == 0
    pair.transfer()
    assert [len(m.data) for m in pair.client.take_all() if isinstance(m, conn.ChannelData)] == [
        1000,
        1000,
        500,
    ]
    pair.client.window_adjust(cid, 1500)
    assert pair.transfer() == [ChannelWindowAdjusted(channel_id=cid)]
    assert pair.server.send_window(cid) == 1500
    assert pair.server.send_channel_data(cid, memoryview(b"e" * 10), stderr=True) == 10
    pair.transfer()
    assert pair.client.take_all() == [
        conn.ChannelExtendedData(recipient_channel=PEER, data_type=1, data=b"e" * 10)
    ]


def test_send_chunks_are_capped_whatever_the_peer_allows() -> None:
    """A huge peer max packet is capped so packets stay within our packet limit."""
    pair = established_pair()
    cid = pair.open_session(PEER, window=2**32 - 1, max_packet=2**32 - 1)
    assert pair.server.send_channel_data(cid, bytes(300_000)) == 300_000
    pair.transfer()
    sizes = [len(m.data) for m in pair.client.take_all() if isinstance(m, conn.ChannelData)]
    assert sum(sizes) == 300_000
    assert max(sizes) <= 128 * 1024


def test_window_adjust_beyond_2_32_disconnects() -> None:
    """RFC 4254 §5.2: a window may not be increased above 2^32 - 1 bytes."""
    pair = established_pair()
    cid = pair.open_session(PEER, window=2**32 - 10)
    pair.client.window_adjust(cid, 10)
    pair.client.window_adjust(cid, 1)
    with pytest.raises(UnexpectedMessage, match="2\\^32"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


# -- session requests (RFC 4254 §6) --------------------------------------------------------


def test_pty_and_env_fold_into_session_requested() -> None:
    """pty-req and env requests before exec arrive as fields of one SessionRequested."""
    pair, cid = session()
    pair.client.channel_request(cid, "pty-req", PTY.encode())
    pair.client.channel_request(cid, "env", conn.EnvData(name="LANG", value="C.UTF-8").encode())
    pair.client.channel_request(cid, "exec", conn.ExecData(command="uname -a").encode())
    assert pair.transfer() == [
        SessionRequested(
            channel_id=cid,
            kind=SessionKind.EXEC,
            command="uname -a",
            pty=PtyRequest(
                term="xterm-256color", size=TerminalSize(columns=80, rows=24), modes=b"\x00"
            ),
            env={"LANG": "C.UTF-8"},
        )
    ]
    assert pair.client.take_all() == [ok(), ok()]
    pair.server.reply_channel_request(cid, True)
    pair.transfer()
    assert pair.client.take_all() == [ok()]


def test_env_allow_list() -> None:
    """Only names matching accept_env (LANG, LC_*) are kept; others get FAILURE."""
    pair, cid = session()
    for name in ("LANG", "LC_ALL", "LC_CTYPE", "LD_PRELOAD", "PATH", "lang"):
        pair.client.channel_request(cid, "env", conn.EnvData(name=name, value="v").encode())
    pair.client.channel_request(cid, "shell")
    events = pair.transfer()
    [event] = others(events)
    assert isinstance(event, SessionRequested)
    assert event.kind is SessionKind.SHELL
    assert event.env == {"LANG": "v", "LC_ALL": "v", "LC_CTYPE": "v"}
    assert refused(events) == [
        ("env", "LD_PRELOAD is not in accept_env"),
        ("env", "PATH is not in accept_env"),
        ("env", "lang is not in accept_env"),
    ]
    assert pair.client.take_all() == [ok(), ok(), ok(), no(), no(), no()]


def test_env_count_is_limited() -> None:
    """At most max_env_vars variables are accepted per channel."""
    pair, cid = session(max_env_vars=2, accept_env=("*",))
    for i in range(3):
        pair.client.channel_request(cid, "env", conn.EnvData(name=f"V{i}", value="v").encode())
    pair.transfer()
    assert pair.client.take_all() == [ok(), ok(), no()]


def test_replies_leave_in_request_order_while_the_session_reply_is_pending() -> None:
    """RFC 4254 §5.4: a later request's answer waits for the pending exec answer."""
    pair, cid = session()
    pair.client.channel_request(cid, "pty-req", PTY.encode())
    pair.client.channel_request(cid, "exec", conn.ExecData(command="top").encode())
    pair.client.channel_request(
        cid,
        "window-change",
        conn.WindowChangeData(columns=100, rows=30, width_px=0, height_px=0).encode(),
    )
    pair.client.channel_request(cid, "made-up@example.com")
    events = pair.transfer()
    assert isinstance(events[0], SessionRequested)
    assert events[1] == WindowChanged(channel_id=cid, size=TerminalSize(columns=100, rows=30))
    assert pair.client.take_all() == [ok()]  # pty-req only; exec is undecided
    pair.server.reply_channel_request(cid, False)
    pair.transfer()
    assert pair.client.take_all() == [no(), ok(), no()]
    with pytest.raises(AssertionError):
        pair.client.expect(conn.ChannelSuccess)


def test_second_session_request_is_refused() -> None:
    """One program per channel: a second exec, shell or subsystem gets FAILURE."""
    pair, cid = session()
    pair.client.channel_request(cid, "exec", conn.ExecData(command="true").encode())
    pair.client.channel_request(cid, "exec", conn.ExecData(command="false").encode())
    pair.client.channel_request(cid, "shell")
    pair.client.channel_request(cid, "subsystem", conn.SubsystemData(name="sftp").encode())
    pair.client.channel_request(cid, "pty-req", PTY.encode())
    pair.client.channel_request(cid, "env", conn.EnvData(name="LANG", value="C").encode())
    events = pair.transfer()
    [event] = others(events)
    assert isinstance(event, SessionRequested)
    assert event.command == "true"
    assert [request for request, _ in refused(events)] == [
        "exec", "shell", "subsystem", "pty-req", "env"
    ]  # fmt: skip
    pair.server.reply_channel_request(cid, True)
    pair.transfer()
    assert pair.client.take_all() == [ok(), no(), no(), no(), no(), no()]


def test_subsystem_request() -> None:
    """subsystem → SessionRequested(kind=SUBSYSTEM, subsystem=name)."""
    pair, cid = session()
    pair.client.channel_request(cid, "subsystem", conn.SubsystemData(name="sftp").encode())
    assert pair.transfer() == [
        SessionRequested(channel_id=cid, kind=SessionKind.SUBSYSTEM, subsystem="sftp")
    ]


def test_session_request_without_want_reply_sends_no_reply() -> None:
    """want_reply=False: reply_channel_request() records the answer but sends nothing."""
    pair, cid = session()
    pair.client.channel_request(cid, "shell", want_reply=False)
    assert len(pair.transfer()) == 1
    pair.server.reply_channel_request(cid, True)
    pair.transfer()
    assert pair.client.take_all() == []


def test_window_change_needs_a_pty_and_signal_needs_a_session() -> None:
    """window-change without pty-req and signal before exec are refused."""
    pair, cid = session()
    size = conn.WindowChangeData(columns=1, rows=1, width_px=0, height_px=0).encode()
    pair.client.channel_request(cid, "window-change", size)
    pair.client.channel_request(cid, "signal", conn.SignalData(name="INT").encode())
    assert refused(pair.transfer()) == [
        ("window-change", "no terminal to resize"),
        ("signal", "no program to signal yet"),
    ]
    assert pair.client.take_all() == [no(), no()]
    pair.client.channel_request(cid, "shell", want_reply=False)
    pair.client.channel_request(
        cid, "signal", conn.SignalData(name="INT").encode(), want_reply=False
    )
    events = pair.transfer()
    assert events[1] == SignalReceived(channel_id=cid, signal="INT")


@pytest.mark.parametrize(
    ("request_type", "data"),
    [
        ("exec", b""),
        ("exec", conn.ExecData(command="x").encode() + b"extra"),
        ("shell", b"extra"),
        ("pty-req", PTY.encode()[:-1]),
        ("env", wire.string("LANG")),
    ],
    ids=[
        "exec-empty",
        "exec-trailing",
        "shell-trailing",
        "pty-short",
        "env-short",
    ],
)
def test_malformed_request_data_disconnects(request_type: str, data: bytes) -> None:
    """Request-specific data is parsed strictly."""
    pair, cid = session()
    pair.client.channel_request(cid, request_type, data)
    with pytest.raises(RemoteProtocolError):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


# -- output requests and their encodings ----------------------------------------------------


def test_exit_status_eof_close_encodings() -> None:
    """The exact bytes of exit-status, exit-signal, EOF and CLOSE (RFC 4254 §5.3, §6.10)."""
    pair, cid = session()
    pair.server.send_exit_status(cid, 3)
    pair.server.send_exit_status(cid, -1)  # truncated to uint32
    pair.server.send_exit_signal(cid, "KILL", core_dumped=True, message="killed")
    pair.server.send_channel_eof(cid)
    pair.server.send_channel_eof(cid)  # idempotent
    pair.server.close_channel(cid)
    pair.server.close_channel(cid)  # idempotent
    pair.transfer()
    recipient = PEER.to_bytes(4, "big")
    assert list(pair.client.inbox) == [
        b"\x62" + recipient + wire.string("exit-status") + b"\x00" + (3).to_bytes(4, "big"),
        b"\x62" + recipient + wire.string("exit-status") + b"\x00" + b"\xff\xff\xff\xff",
        b"\x62"
        + recipient
        + wire.string("exit-signal")
        + b"\x00"
        + wire.string("KILL")
        + b"\x01"
        + wire.string("killed")
        + wire.string(""),
        b"\x60" + recipient,
        b"\x61" + recipient,
    ]
    assert pair.server.send_window(cid) is None
    with pytest.raises(LocalProtocolError):
        pair.server.send_channel_data(cid, b"too late")


# -- closing ---------------------------------------------------------------------------------


def test_we_close_first_then_peer_confirms_and_the_id_is_reused() -> None:
    """Our CLOSE, then theirs: the channel is forgotten and its number free again."""
    pair, cid = session()
    pair.server.close_channel(cid)
    pair.transfer()
    assert pair.client.take_all() == [conn.ChannelClose(recipient_channel=PEER)]
    assert pair.open_session(8) == cid + 1  # still in use until the peer's CLOSE
    pair.client.channel_data(cid, b"late data is dropped")
    pair.client.channel_request(cid, "shell")
    pair.client.channel_close(cid)
    assert pair.transfer() == []
    assert pair.client.take_all() == []
    assert pair.open_session(9) == cid


def test_peer_closes_first_then_we_close_and_the_id_is_reused() -> None:
    """Their CLOSE → ChannelCloseReceived; close_channel() answers and frees the number."""
    pair, cid = session()
    pair.client.channel_eof(cid)
    pair.client.channel_close(cid)
    assert pair.transfer() == [
        ChannelEOFReceived(channel_id=cid),
        ChannelCloseReceived(channel_id=cid),
    ]
    pair.server.send_exit_status(cid, 0)  # too late: dropped
    pair.server.close_channel(cid)
    pair.transfer()
    assert pair.client.take_all() == [conn.ChannelClose(recipient_channel=PEER)]
    assert pair.open_session(8) == cid


def test_double_close_from_peer_disconnects() -> None:
    """A second CLOSE for a channel the peer already closed is a protocol error."""
    pair, cid = session()
    pair.client.channel_close(cid)
    pair.client.channel_close(cid)
    with pytest.raises(UnexpectedMessage, match="closed twice"):
        pair.transfer()


def test_closing_with_an_undecided_session_request_answers_it_first() -> None:
    """close_channel() resolves a pending exec with FAILURE before CLOSE."""
    pair, cid = session()
    pair.client.channel_request(cid, "exec", conn.ExecData(command="sleep 1").encode())
    pair.transfer()
    pair.server.close_channel(cid)
    pair.server.reply_channel_request(cid, True)  # too late; ignored
    pair.transfer()
    assert pair.client.take_all() == [no(), conn.ChannelClose(recipient_channel=PEER)]


def test_close_of_a_channel_being_opened_is_a_local_error() -> None:
    """An unanswered open must be rejected, not closed."""
    pair = established_pair()
    pair.client.open_channel(PEER)
    [event] = pair.transfer()
    assert isinstance(event, ChannelOpenRequested)
    with pytest.raises(LocalProtocolError):
        pair.server.close_channel(event.channel_id)


# -- global requests -------------------------------------------------------------------------


def test_no_more_sessions_refuses_later_session_opens() -> None:
    """no-more-sessions@openssh.com: later session opens are ADMINISTRATIVELY_PROHIBITED."""
    pair, _ = session()
    pair.client.global_request("no-more-sessions@openssh.com")
    pair.client.open_channel(8)
    assert refused(pair.transfer()) == [("session", "no more sessions allowed on this connection")]
    [failure] = pair.client.take_all()
    assert isinstance(failure, conn.ChannelOpenFailure)
    assert failure.reason == ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED


# -- odd but legal, and malformed -----------------------------------------------------------


@pytest.mark.parametrize("extended", [False, True], ids=["data", "extended"])
@pytest.mark.parametrize("mismatch", [-1, 1, "short"])
def test_data_length_must_match_the_packet(extended: bool, mismatch: int | str) -> None:
    """The data string must end exactly at the end of the payload."""
    pair, cid = session()
    header = bytes((95 if extended else 94,)) + cid.to_bytes(4, "big")
    if extended:
        header += (1).to_bytes(4, "big")
    if mismatch == "short":
        payload = header[:-2]
    else:
        assert isinstance(mismatch, int)
        payload = header + (3 + mismatch).to_bytes(4, "big") + b"abc"
    pair.client.send(payload)
    with pytest.raises(RemoteProtocolError):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_data_after_eof_is_dropped_but_charged() -> None:
    """Data after the peer's EOF is not delivered; a second EOF is harmless."""
    pair, cid = session(channel_window=2048, channel_max_packet=1024)
    pair.client.channel_eof(cid)
    pair.client.channel_eof(cid)
    pair.client.channel_data(cid, b"x" * 1024)
    pair.client.channel_data(cid, b"x" * 1024)
    assert pair.transfer() == [ChannelEOFReceived(channel_id=cid)]
    pair.client.channel_data(cid, b"x")
    with pytest.raises(UnexpectedMessage, match="window"):
        pair.transfer()


def test_unanswered_requests_are_bounded() -> None:
    """A client cannot queue want_reply requests without limit behind a pending exec."""
    pair, cid = session()
    pair.client.channel_request(cid, "exec", conn.ExecData(command="x").encode())
    for _ in range(40):
        pair.client.channel_request(cid, "made-up")
    with pytest.raises(UnexpectedMessage, match="too many unanswered"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_requests_on_a_closing_channel_get_no_answer() -> None:
    """After our CLOSE, requests are dropped silently (RFC 4254 §5.3)."""
    pair, cid = session()
    pair.server.close_channel(cid)
    pair.client.channel_request(cid, "shell")
    pair.client.send(conn.ChannelExtendedData(recipient_channel=cid, data_type=1, data=b"e"))
    pair.client.window_adjust(cid, 5)
    pair.client.channel_eof(cid)
    assert pair.transfer() == []
    assert pair.client.take_all() == [conn.ChannelClose(recipient_channel=PEER)]


def test_peer_close_of_a_channel_never_confirmed_is_a_protocol_error() -> None:
    """The peer cannot know our number before confirmation; a CLOSE for it is a violation."""
    pair = established_pair()
    pair.client.open_channel(PEER)
    [event] = pair.transfer()
    assert isinstance(event, ChannelOpenRequested)
    pair.client.channel_close(event.channel_id)
    with pytest.raises(UnexpectedMessage):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_reject_of_an_open_channel_is_a_local_error() -> None:
    """reject_channel() is only for channels still being opened."""
    pair, cid = session()
    with pytest.raises(LocalProtocolError):
        pair.server.reject_channel(cid, ChannelOpenFailureReason.CONNECT_FAILED, "no")


# -- what the operator is told about refusals -----------------------------------------------


def test_probes_are_refused_without_telling_the_operator() -> None:
    """PuTTY's window probe and keepalives expect a FAILURE; a log line each would flood."""
    pair, cid = session()
    pair.client.channel_request(cid, "winadj@putty.projects.tartarus.org")
    pair.client.channel_request(cid, "keepalive@openssh.com")
    pair.client.channel_request(cid, "x11-req")
    assert refused(pair.transfer()) == [("x11-req", "not supported")]
    assert pair.client.take_all() == [no(), no(), no()]


def test_a_login_without_a_terminal_says_why_a_pty_is_refused() -> None:
    pair, cid = session()
    pair.server.forbid_pty()
    pair.client.channel_request(cid, "pty-req", PTY.encode())
    assert pair.transfer() == [
        RequestRefused(request="pty-req", reason="no terminal for this login", channel_id=cid)
    ]
