"""gssapi-with-mic (RFC 4462 §3) in the core, byte by byte: the messages, the exchange's
states, the decisions it asks for, and its bounds. The GSS-API itself is the auth layer's
(tests/auth/test_kerberos.py runs it against a real KDC)."""

from __future__ import annotations

import pytest

from tests.sshpeer import ConnectionPair, make_config
from trissh.protocol import (
    Authenticated,
    AuthFailed,
    DisconnectReason,
    GssapiAuthRequested,
    GssapiMicReceived,
    GssapiTokenReceived,
    PublicKeyAuthRequested,
    wire,
)
from trissh.protocol.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from trissh.protocol.messages import gssapi as gss
from trissh.protocol.messages import userauth as ua
from trissh.protocol.userauth import MAX_FREE_GSSAPI_REFUSALS, MAX_GSSAPI_TOKENS
from trissh.protocol.wire import Reader

METHODS = ("gssapi-with-mic", "publickey")
KRB5 = bytes.fromhex("06092a864886f712010202")
#: SPNEGO, 1.3.6.1.5.5.2: offered by some clients besides Kerberos.
SPNEGO = bytes.fromhex("06062b0601050502")


def pair_with(*methods: str) -> ConnectionPair:
    pair = ConnectionPair(make_config(auth_methods=methods or METHODS))
    pair.handshake()
    pair.client.request_service()
    pair.transfer()
    pair.client.take_all()
    return pair


def request(pair: ConnectionPair, *mechanisms: bytes, raw: bytes | None = None) -> None:
    data = raw if raw is not None else gss.GssapiMethod(mechanisms=mechanisms).encode()
    pair.client.send(
        ua.UserauthRequest(
            username="alice", service="ssh-connection", method="gssapi-with-mic",
            method_data=data,
        )
    )  # fmt: skip


def sent(pair: ConnectionPair) -> list[bytes]:
    """The raw payloads the server sent since the last call."""
    payloads = list(pair.client.inbox)
    pair.client.inbox.clear()
    return payloads


def established(pair: ConnectionPair) -> None:
    """Request, mechanism chosen, one token, context established: the MIC comes next."""
    request(pair, KRB5)
    pair.transfer()
    pair.server.accept_gssapi_mechanism(KRB5)
    pair.client.send(gss.UserauthGssapiToken(token=b"ap-req"))
    pair.transfer()
    pair.server.continue_gssapi(b"ap-rep", established=True)
    pair.transfer()
    sent(pair)


def test_messages_encode_as_rfc_4462_lays_them_out() -> None:
    """Each message's bytes, written out from RFC 4462 §3.2-3.9."""
    s = wire.string
    assert gss.GssapiMethod(mechanisms=(KRB5, SPNEGO)).encode() == (
        b"\x00\x00\x00\x02" + s(KRB5) + s(SPNEGO)
    )
    assert gss.UserauthGssapiResponse(mechanism=KRB5).encode() == b"\x3c" + s(KRB5)
    assert gss.UserauthGssapiToken(token=b"tok").encode() == b"\x3d\x00\x00\x00\x03tok"
    assert gss.UserauthGssapiExchangeComplete().encode() == b"\x3f"
    assert gss.UserauthGssapiError(
        major_status=0xD0000, minor_status=7, message="m", language=""
    ).encode() == b"\x40\x00\x0d\x00\x00\x00\x00\x00\x07" + s("m") + s("")
    assert gss.UserauthGssapiErrtok(token=b"e").encode() == b"\x41" + s(b"e")
    assert gss.UserauthGssapiMic(mic=b"mic").encode() == b"\x42" + s(b"mic")
    for message in (
        gss.UserauthGssapiResponse(mechanism=SPNEGO),
        gss.UserauthGssapiToken(token=b"x" * 300),
        gss.UserauthGssapiExchangeComplete(),
        gss.UserauthGssapiError(major_status=1, minor_status=2, message="é", language="en"),
        gss.UserauthGssapiErrtok(token=b""),
        gss.UserauthGssapiMic(mic=b"\x00" * 28),
    ):
        payload = message.encode()
        assert type(message).decode(Reader(payload, 1)) == message


def test_mic_data_is_rfc_4462_section_3_5() -> None:
    assert gss.gssapi_mic_data(b"SID", "bob", "ssh-connection") == (
        wire.string(b"SID") + b"\x32" + wire.string("bob") + wire.string("ssh-connection")
        + wire.string("gssapi-with-mic")
    )  # fmt: skip


@pytest.mark.parametrize(
    "oid",
    [b"", b"\x06", b"\x06\x00", b"\x05\x02\x2a\x03", b"\x06\x03\x2a\x86", b"\x06\x80" + b"\x01"],
)
def test_malformed_oids_are_refused(oid: bytes) -> None:
    with pytest.raises(DecodeError):
        gss.check_oid(oid)


def test_a_kerberos_login_step_by_step() -> None:
    """request → GssapiAuthRequested; chosen → RESPONSE; tokens both ways; MIC → the
    decision with the exact bytes RFC 4462 §3.5 signs; yes → SUCCESS."""
    pair = pair_with()
    request(pair, SPNEGO, KRB5)
    assert pair.transfer() == [GssapiAuthRequested(username="alice", mechanisms=(SPNEGO, KRB5))]
    pair.server.accept_gssapi_mechanism(KRB5)
    pair.transfer()
    assert sent(pair) == [b"\x3c" + wire.string(KRB5)]
    pair.client.send(gss.UserauthGssapiToken(token=b"first"))
    assert pair.transfer() == [GssapiTokenReceived(username="alice", token=b"first")]
    pair.server.continue_gssapi(b"reply", established=False)
    pair.transfer()
    assert sent(pair) == [b"\x3d" + wire.string(b"reply")]
    pair.client.send(gss.UserauthGssapiToken(token=b"second"))
    assert pair.transfer() == [GssapiTokenReceived(username="alice", token=b"second")]
    pair.server.continue_gssapi(None, established=True)
    pair.transfer()
    assert sent(pair) == []  # nothing to send: the client sends its MIC next
    pair.client.send(gss.UserauthGssapiMic(mic=b"the-mic"))
    [mic] = pair.transfer()
    assert pair.client.session_id is not None
    assert mic == GssapiMicReceived(
        username="alice",
        mic=b"the-mic",
        signed_data=wire.string(pair.client.session_id) + b"\x32" + wire.string("alice")
        + wire.string("ssh-connection") + wire.string("gssapi-with-mic"),
    )  # fmt: skip
    pair.server.accept_auth()
    assert pair.transfer() == [Authenticated(username="alice", method="gssapi-with-mic")]
    assert pair.client.take_all()[0] == ua.UserauthSuccess()


def test_a_refused_mic_is_a_failed_attempt() -> None:
    pair = pair_with()
    established(pair)
    pair.client.send(gss.UserauthGssapiMic(mic=b"bad"))
    pair.transfer()
    pair.server.reject_auth("principal mallory@X may not log in as alice")
    assert pair.transfer() == [
        AuthFailed(
            username="alice",
            method="gssapi-with-mic",
            reason="principal mallory@X may not log in as alice",
        )
    ]
    assert pair.client.take_all() == [ua.UserauthFailure(methods=METHODS)]


def test_a_failed_token_sends_the_error_token_then_failure() -> None:
    pair = pair_with()
    request(pair, KRB5)
    pair.transfer()
    pair.server.accept_gssapi_mechanism(KRB5)
    pair.client.send(gss.UserauthGssapiToken(token=b"garbage"))
    pair.transfer()
    sent(pair)
    pair.server.reject_auth("GSS-API: defective token", error_token=b"KRB-ERROR")
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert sent(pair) == [
        b"\x41" + wire.string(b"KRB-ERROR"),
        ua.UserauthFailure(methods=METHODS).encode(),
    ]


def test_the_clients_error_token_ends_the_exchange_without_failure() -> None:
    """RFC 4462 §3.9 and OpenSSH: after ERRTOK the client goes on with its next request, so
    a FAILURE now would answer that one. It still counts as a failed attempt."""
    pair = pair_with()
    request(pair, KRB5)
    pair.transfer()
    pair.server.accept_gssapi_mechanism(KRB5)
    pair.transfer()
    sent(pair)
    pair.client.send(gss.UserauthGssapiErrtok(token=b"client error"))
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert failed.reason == "the client's GSS-API failed"
    assert sent(pair) == []
    pair.client.auth_publickey()
    assert isinstance(pair.transfer()[-1], PublicKeyAuthRequested)


def test_exchange_complete_without_a_mic_is_refused() -> None:
    pair = pair_with()
    established(pair)
    pair.client.send(gss.UserauthGssapiExchangeComplete())
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert "no MIC" in failed.reason
    assert pair.client.take_all() == [ua.UserauthFailure(methods=METHODS)]


def test_only_the_mic_decision_can_log_in() -> None:
    """accept_auth() on the mechanism or a token would skip the MIC: refused."""
    pair = pair_with()
    request(pair, KRB5)
    pair.transfer()
    with pytest.raises(LocalProtocolError):
        pair.server.accept_auth()
    pair.server.accept_gssapi_mechanism(KRB5)
    pair.client.send(gss.UserauthGssapiToken(token=b"t"))
    pair.transfer()
    with pytest.raises(LocalProtocolError):
        pair.server.accept_auth()
    with pytest.raises(LocalProtocolError):
        pair.server.accept_gssapi_mechanism(KRB5)
    assert not pair.server.authenticated


def test_commands_out_of_turn_are_refused() -> None:
    pair = pair_with()
    request(pair, KRB5)
    pair.transfer()
    with pytest.raises(LocalProtocolError, match="did not offer"):
        pair.server.accept_gssapi_mechanism(SPNEGO)
    with pytest.raises(LocalProtocolError):
        pair.server.continue_gssapi(b"x", established=False)
    with pytest.raises(LocalProtocolError, match="error token"):
        pair.server.reject_auth("no", error_token=b"e")
    pair.client.auth_publickey()
    pair.server.reject_auth("no mechanism")
    pair.transfer()
    with pytest.raises(LocalProtocolError):
        pair.server.continue_gssapi(None, established=True)


def test_no_mechanism_is_a_failure() -> None:
    pair = pair_with()
    request(pair)
    [failed] = pair.transfer()
    assert failed == AuthFailed(
        username="alice", method="gssapi-with-mic", reason="no GSS-API mechanism offered"
    )


def test_not_enabled_means_not_asked() -> None:
    pair = pair_with("publickey")
    request(pair, KRB5)
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert pair.client.take_all() == [ua.UserauthFailure(methods=("publickey",))]


def test_a_new_request_abandons_the_exchange() -> None:
    pair = pair_with()
    established(pair)
    pair.client.auth_publickey()
    assert isinstance(pair.transfer()[-1], PublicKeyAuthRequested)
    pair.server.reject_auth()
    pair.transfer()
    pair.client.send(gss.UserauthGssapiMic(mic=b"late"))
    with pytest.raises(RemoteProtocolError):
        pair.transfer()  # no exchange any more: 66 is not a message the server expects


@pytest.mark.parametrize(
    ("message", "when"),
    [
        (gss.UserauthGssapiMic(mic=b"early"), "tokens"),
        (gss.UserauthGssapiExchangeComplete(), "tokens"),
        (gss.UserauthGssapiToken(token=b"late"), "mic"),
        (gss.UserauthGssapiErrtok(token=b"late"), "mic"),
        (gss.UserauthGssapiError(major_status=1, minor_status=1, message=""), "tokens"),
        (gss.UserauthGssapiResponse(mechanism=KRB5), "mic"),
    ],
)
def test_messages_out_of_order_disconnect(message: object, when: str) -> None:
    pair = pair_with()
    if when == "mic":
        established(pair)
    else:
        request(pair, KRB5)
        pair.transfer()
        pair.server.accept_gssapi_mechanism(KRB5)
        pair.transfer()
        sent(pair)
    pair.client.send(message)  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


@pytest.mark.parametrize(
    "raw",
    [
        wire.uint32(17) + wire.string(KRB5) * 17,  # too many mechanisms
        wire.uint32(1) + wire.string(b"\x06\x02\x2a"),  # length byte disagrees
        wire.uint32(1) + wire.string(b"\x06\x81\x80" + b"\x01" * 128),  # long form
        wire.uint32(2) + wire.string(KRB5),  # truncated
        wire.uint32(1) + wire.string(KRB5) + b"trailing",
    ],
)
def test_malformed_requests_disconnect(raw: bytes) -> None:
    pair = pair_with()
    request(pair, raw=raw)
    with pytest.raises(RemoteProtocolError):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_the_longest_oid_and_the_most_mechanisms_pass() -> None:
    longest = b"\x06\x7f" + b"\x01" * 127
    pair = pair_with()
    request(pair, *([longest] * gss.MAX_GSSAPI_MECHANISMS))
    [asked] = pair.transfer()
    assert isinstance(asked, GssapiAuthRequested)
    assert asked.mechanisms == (longest,) * gss.MAX_GSSAPI_MECHANISMS


def test_tokens_and_mics_are_bounded() -> None:
    pair = pair_with()
    request(pair, KRB5)
    pair.transfer()
    pair.server.accept_gssapi_mechanism(KRB5)
    pair.client.send(gss.UserauthGssapiToken(token=b"x" * (gss.MAX_GSSAPI_TOKEN + 1)))
    with pytest.raises(DecodeError, match="exceeds the limit"):
        pair.transfer()
    pair = pair_with()
    established(pair)
    pair.client.send(gss.UserauthGssapiMic(mic=b"x" * (gss.MAX_GSSAPI_MIC + 1)))
    with pytest.raises(DecodeError, match="exceeds the limit"):
        pair.transfer()


def test_the_number_of_tokens_is_bounded() -> None:
    """A mechanism that never completes ends as a failed attempt after the bound."""
    pair = pair_with()
    request(pair, KRB5)
    pair.transfer()
    pair.server.accept_gssapi_mechanism(KRB5)
    for _ in range(MAX_GSSAPI_TOKENS):
        pair.client.send(gss.UserauthGssapiToken(token=b"more"))
        [token] = pair.transfer()
        assert isinstance(token, GssapiTokenReceived)
        pair.server.continue_gssapi(b"again", established=False)
    pair.transfer()
    sent(pair)
    pair.client.send(gss.UserauthGssapiToken(token=b"more"))
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert failed.reason == f"more than {MAX_GSSAPI_TOKENS} GSS-API tokens"
    assert pair.client.take_all() == [ua.UserauthFailure(methods=METHODS)]


def test_repeated_client_error_tokens_use_up_the_attempts() -> None:
    """ERRTOK sends no FAILURE but counts: a client looping on it is disconnected."""
    pair = ConnectionPair(make_config(auth_methods=METHODS, max_auth_attempts=3))
    pair.handshake()
    pair.client.request_service()
    pair.transfer()
    for attempt in range(3):
        request(pair, KRB5)
        pair.transfer()
        pair.server.accept_gssapi_mechanism(KRB5)
        pair.transfer()
        sent(pair)
        pair.client.send(gss.UserauthGssapiErrtok(token=b"e"))
        if attempt < 2:
            pair.transfer()
            assert sent(pair) == []
    with pytest.raises(RemoteProtocolError, match="Too many"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE)


def test_refused_mechanisms_are_free_up_to_a_bound() -> None:
    """OpenSSH asks with each of its mechanisms in turn; like sshd, a mechanism the server
    lacks is not the client's failed attempt (no AuthFailed, a FAILURE only), until
    MAX_FREE_GSSAPI_REFUSALS of them on one connection."""
    pair = ConnectionPair(make_config(auth_methods=METHODS, max_auth_attempts=2))
    pair.handshake()
    pair.client.request_service()
    pair.transfer()
    pair.client.take_all()
    for _ in range(MAX_FREE_GSSAPI_REFUSALS):
        request(pair, SPNEGO)
        pair.transfer()
        pair.server.reject_auth("no mechanism in common")
        assert pair.transfer() == []
        assert pair.client.take_all() == [ua.UserauthFailure(methods=METHODS)]
    request(pair, SPNEGO)
    pair.transfer()
    pair.server.reject_auth("no mechanism in common")
    [failed] = pair.transfer()
    assert failed == AuthFailed(
        username="alice", method="gssapi-with-mic", reason="no mechanism in common"
    )
