"""The ssh-userauth service (RFC 4252) with publickey (RFC 4252 §7, RFC 8332, RFC 8709)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.sshpeer import HOST_KEY, USER_KEY, ConnectionPair, ed25519_blob, make_config
from trissh.protocol import (
    Authenticated,
    AuthFailed,
    DisconnectReason,
    LocalProtocolError,
    PublicKeyAuthRequested,
    RemoteProtocolError,
    fingerprint,
    wire,
)
from trissh.protocol.errors import TooManyAuthAttempts, UnexpectedMessage
from trissh.protocol.messages import connection as conn
from trissh.protocol.messages import transport as tr
from trissh.protocol.messages import userauth as ua

FAILURE = ua.UserauthFailure(methods=("publickey",))
#: OpenSSH PROTOCOL §2.5: the host keys follow every successful authentication.
HOSTKEYS_ANNOUNCEMENT = conn.GlobalRequest(
    name="hostkeys-00@openssh.com", want_reply=False, data=wire.string(HOST_KEY.public_blob)
)
KEY_BLOB = ed25519_blob(USER_KEY)
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def rsa_blob(key: rsa.RSAPrivateKey) -> bytes:
    numbers = key.public_key().public_numbers()
    return wire.string("ssh-rsa") + wire.mpint(numbers.e) + wire.mpint(numbers.n)


def keyed_pair(**config: Any) -> ConnectionPair:
    """Key exchange done and ssh-userauth accepted."""
    pair = ConnectionPair(make_config(**config))
    pair.handshake()
    pair.client.request_service()
    assert pair.transfer() == []
    pair.client.expect(tr.ExtInfo)
    assert pair.client.expect(tr.ServiceAccept) == tr.ServiceAccept(service="ssh-userauth")
    return pair


def test_none_lists_publickey_and_the_first_probe_is_free() -> None:
    """none → FAILURE(publickey); only a repeated none counts as a failed attempt."""
    pair = keyed_pair()
    pair.client.auth_none()
    assert pair.transfer() == []
    pair.client.auth_none()
    assert pair.transfer() == [AuthFailed(username="alice", method="none", reason="method none")]
    assert pair.client.take_all() == [FAILURE, FAILURE]


def test_the_banner_comes_once_before_the_first_answer() -> None:
    """RFC 4252 §5.4: USERAUTH_BANNER (message, empty language tag) precedes the answer to
    the first request and is never sent again; bytes checked after the transport."""
    pair = keyed_pair(banner="Authorized use only.\r\nSecond line ✓\r\n")
    pair.client.auth_none()
    pair.transfer()
    pair.client.auth_none()
    pair.transfer()
    banner = ua.UserauthBanner(message="Authorized use only.\r\nSecond line ✓\r\n")
    assert pair.client.take_all() == [banner, FAILURE, FAILURE]
    assert banner.encode() == (
        bytes([53]) + len("Authorized use only.\r\nSecond line ✓\r\n".encode()).to_bytes(4, "big")
        + "Authorized use only.\r\nSecond line ✓\r\n".encode() + b"\x00\x00\x00\x00"
    )  # fmt: skip


def test_no_banner_when_none_is_configured() -> None:
    pair = keyed_pair()
    pair.client.auth_publickey(sign=False)
    pair.transfer()
    pair.server.reject_auth("no")
    pair.transfer()
    assert all(not isinstance(m, ua.UserauthBanner) for m in pair.client.take_all())


def test_query_gets_pk_ok_only_after_accept() -> None:
    """A query is a decision: nothing is sent until accept_auth() sends PK_OK."""
    pair = keyed_pair()
    pair.client.auth_publickey(sign=False)
    [event] = pair.transfer()
    assert isinstance(event, PublicKeyAuthRequested)
    assert not event.signed
    assert event.username == "alice"
    assert event.public_key.blob == KEY_BLOB
    assert event.public_key.fingerprint == fingerprint(KEY_BLOB)
    assert pair.client.take_all() == []
    pair.server.accept_auth()
    assert pair.transfer() == []
    assert pair.client.take_all() == [ua.UserauthPkOk(algorithm="ssh-ed25519", key_blob=KEY_BLOB)]
    assert not pair.server.authenticated


def test_rejected_query_fails() -> None:
    """reject_auth() on a query sends FAILURE and reports AuthFailed."""
    pair = keyed_pair()
    pair.client.auth_publickey(sign=False)
    pair.transfer()
    pair.server.reject_auth("not in authorized_keys")
    assert pair.transfer() == [
        AuthFailed(
            username="alice",
            method="publickey",
            reason="not in authorized_keys",
            key_fingerprint=fingerprint(KEY_BLOB),
        )
    ]
    assert pair.client.take_all() == [FAILURE]


def test_signed_request_accepted_authenticates() -> None:
    """A good signature plus accept_auth() gives SUCCESS and Authenticated."""
    pair = keyed_pair()
    pair.client.auth_publickey()
    [event] = pair.transfer()
    assert isinstance(event, PublicKeyAuthRequested)
    assert event.signed
    pair.server.accept_auth()
    assert pair.transfer() == [
        Authenticated(username="alice", method="publickey", key_fingerprint=fingerprint(KEY_BLOB))
    ]
    assert pair.client.take_all() == [ua.UserauthSuccess(), HOSTKEYS_ANNOUNCEMENT]
    assert pair.server.authenticated


@pytest.mark.parametrize(
    "variant",
    ["zero-signature", "wrong-session-id", "other-key", "other-user", "algorithm-mismatch"],
)
def test_bad_signature_fails_after_accept(variant: str) -> None:
    """The core verifies the signature itself: a bad one → FAILURE and AuthFailed."""
    pair = keyed_pair()
    if variant == "zero-signature":
        pair.client.auth_publickey(signature=wire.string("ssh-ed25519") + wire.string(bytes(64)))
    elif variant == "wrong-session-id":
        pair.client.auth_publickey(session_id=b"\x00" * 32)
    elif variant == "other-key":
        pair.client.user_key = ed25519.Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
        pair.client.auth_publickey(key_blob=KEY_BLOB)
    elif variant == "other-user":
        sid = pair.client.session_id
        assert sid is not None
        signed = ua.publickey_signed_data(sid, "mallory", "ssh-connection", "ssh-ed25519", KEY_BLOB)
        signature = wire.string("ssh-ed25519") + wire.string(USER_KEY.sign(signed))
        pair.client.auth_publickey(signature=signature)
    else:
        good = USER_KEY.sign(b"irrelevant")
        pair.client.auth_publickey(signature=wire.string("ssh-rsa") + wire.string(good))
    [event] = pair.transfer()
    assert isinstance(event, PublicKeyAuthRequested)
    pair.server.accept_auth()
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert failed.reason == "invalid signature"
    assert pair.client.take_all() == [FAILURE]
    assert not pair.server.authenticated


def test_rejected_signed_request_fails() -> None:
    """reject_auth() on a signed request: FAILURE, no verification, not authenticated."""
    pair = keyed_pair()
    pair.client.auth_publickey()
    pair.transfer()
    pair.server.reject_auth()
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert failed.reason == "key not authorized"
    assert pair.client.take_all() == [FAILURE]


def test_too_many_failures_disconnect() -> None:
    """The max_auth_attempts-th failure ends the connection at once, like sshd."""
    pair = keyed_pair(max_auth_attempts=3)
    for _ in range(2):
        pair.client.auth_publickey(sign=False)
        pair.transfer()
        pair.server.reject_auth()
    pair.transfer()
    assert pair.client.take_all() == [FAILURE, FAILURE]
    pair.client.send(
        ua.UserauthRequest(username="alice", service="ssh-connection", method="password")
    )
    with pytest.raises(TooManyAuthAttempts) as info:
        pair.transfer()
    assert info.value.reason == DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE
    disconnect = pair.expect_disconnect(DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE)
    assert pair.client.take_all() == []  # no FAILURE inviting another try before it
    assert disconnect.description == "Too many authentication failures"  # sshd's words


def test_last_attempt_used_up_by_reject_auth_disconnects_at_once() -> None:
    """When reject_auth() spends the last attempt, it raises and DISCONNECT is queued."""
    pair = keyed_pair(max_auth_attempts=2)
    pair.client.auth_publickey()
    pair.transfer()
    pair.server.reject_auth()
    pair.client.auth_publickey()
    pair.transfer()
    with pytest.raises(TooManyAuthAttempts):
        pair.server.reject_auth()
    pair.expect_disconnect(DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE)


def test_last_attempt_used_up_by_a_bad_signature_disconnects_at_once() -> None:
    """accept_auth() of a request whose signature fails counts, and may be the last one."""
    pair = keyed_pair(max_auth_attempts=1)
    pair.client.auth_publickey(session_id=b"not the session id")
    pair.transfer()
    with pytest.raises(TooManyAuthAttempts):
        pair.server.accept_auth()
    pair.expect_disconnect(DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE)


@pytest.mark.parametrize(
    "message",
    [
        conn.ChannelOpen(
            channel_type="session", sender_channel=0, initial_window=1024, max_packet=1024
        ),
        conn.GlobalRequest(name="keepalive@openssh.com", want_reply=True),
        conn.ChannelData(recipient_channel=0, data=b"x"),
    ],
    ids=["open", "global", "data"],
)
def test_connection_messages_before_authentication_disconnect(
    message: conn.ChannelOpen | conn.GlobalRequest | conn.ChannelData,
) -> None:
    """RFC 4252 §6: the connection protocol only runs after successful authentication."""
    pair = keyed_pair()
    pair.client.send(message)
    with pytest.raises(UnexpectedMessage, match="before authentication"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_userauth_before_service_request_disconnects() -> None:
    """USERAUTH_REQUEST needs SERVICE_REQUEST("ssh-userauth") first."""
    pair = ConnectionPair()
    pair.handshake()
    pair.client.auth_none()
    with pytest.raises(UnexpectedMessage, match="service request"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


@pytest.mark.parametrize("twice", [False, True], ids=["unknown-service", "repeated"])
def test_unavailable_service_disconnects(twice: bool) -> None:
    """Only one ssh-userauth SERVICE_REQUEST is served (RFC 4253 §10)."""
    pair = ConnectionPair()
    pair.handshake()
    pair.client.request_service("ssh-userauth" if twice else "ssh-connection")
    if twice:
        pair.client.request_service("ssh-userauth")
    with pytest.raises(RemoteProtocolError) as info:
        pair.transfer()
    assert info.value.reason == DisconnectReason.SERVICE_NOT_AVAILABLE
    pair.expect_disconnect(DisconnectReason.SERVICE_NOT_AVAILABLE)


def test_userauth_for_another_service_disconnects() -> None:
    """The only service after authentication is ssh-connection."""
    pair = keyed_pair()
    pair.client.send(ua.UserauthRequest(username="alice", service="ssh-sftp", method="none"))
    with pytest.raises(RemoteProtocolError) as info:
        pair.transfer()
    assert info.value.reason == DisconnectReason.SERVICE_NOT_AVAILABLE
    pair.expect_disconnect(DisconnectReason.SERVICE_NOT_AVAILABLE)


def test_pipelined_requests_are_answered_in_order() -> None:
    """RFC 4252 §5: later requests wait while a decision is pending; replies keep order."""
    pair = keyed_pair()
    pair.client.auth_publickey(sign=False)
    pair.client.auth_none()
    pair.client.auth_publickey(sign=False)
    pair.client.auth_publickey()
    [first] = pair.transfer()
    assert isinstance(first, PublicKeyAuthRequested)
    assert not first.signed
    assert pair.client.take_all() == []
    pair.server.accept_auth()
    none_failed, second = pair.transfer()  # none is answered in passing; the query waits
    assert isinstance(none_failed, AuthFailed)
    assert none_failed.method == "none"
    assert isinstance(second, PublicKeyAuthRequested)
    assert not second.signed
    pair.server.reject_auth()
    events = pair.transfer()
    assert isinstance(events[0], AuthFailed)
    assert isinstance(events[1], PublicKeyAuthRequested)
    assert events[1].signed
    pair.server.accept_auth()
    assert [type(e) for e in pair.transfer()] == [Authenticated]
    assert pair.client.take_all() == [
        ua.UserauthPkOk(algorithm="ssh-ed25519", key_blob=KEY_BLOB),
        FAILURE,
        FAILURE,
        ua.UserauthSuccess(),
        HOSTKEYS_ANNOUNCEMENT,
    ]


def test_ssh_rsa_sha1_signature_algorithm_is_refused() -> None:
    """ssh-rsa (SHA-1) is refused up front; the same key may use rsa-sha2-256/512."""
    pair = keyed_pair()
    blob = rsa_blob(RSA_KEY)
    pair.client.auth_publickey(sign=False, algorithm="ssh-rsa", key_blob=blob)
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert failed.reason == "signature algorithm ssh-rsa not allowed"
    assert pair.client.take_all() == [FAILURE]
    pair.client.auth_publickey(sign=False, algorithm="rsa-sha2-256", key_blob=blob)
    [event] = pair.transfer()
    assert isinstance(event, PublicKeyAuthRequested)
    assert event.public_key.key_type == "ssh-rsa"


def test_rsa_sha2_512_signature_authenticates() -> None:
    """RFC 8332: an RSA key signing with rsa-sha2-512 logs in."""
    pair = keyed_pair()
    blob = rsa_blob(RSA_KEY)
    sid = pair.client.session_id
    assert sid is not None
    signed = ua.publickey_signed_data(sid, "alice", "ssh-connection", "rsa-sha2-512", blob)
    raw = RSA_KEY.sign(signed, padding.PKCS1v15(), hashes.SHA512())
    signature = wire.string("rsa-sha2-512") + wire.string(raw)
    pair.client.auth_publickey(algorithm="rsa-sha2-512", key_blob=blob, signature=signature)
    pair.transfer()
    pair.server.accept_auth()
    [done] = pair.transfer()
    assert isinstance(done, Authenticated)


@pytest.mark.parametrize(
    ("algorithm", "blob"),
    [
        ("ssh-ed25519", rsa_blob(RSA_KEY)),
        ("rsa-sha2-256", KEY_BLOB),
        ("ssh-dss", wire.string("ssh-dss") + b"\x00" * 16),
        ("ssh-ed25519", wire.string("ssh-ed25519") + wire.string(bytes(31))),
        ("ssh-ed25519", KEY_BLOB + b"trailing"),
        (
            "rsa-sha2-256",
            rsa_blob(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        ),
    ],
    ids=["alg-key-mismatch", "key-alg-mismatch", "dsa", "short-ed25519", "trailing", "rsa-1024"],
)
def test_unusable_key_or_algorithm_fails_without_a_decision(algorithm: str, blob: bytes) -> None:
    """Keys the core cannot or will not verify get FAILURE without asking the driver."""
    pair = keyed_pair()
    pair.client.auth_publickey(sign=False, algorithm=algorithm, key_blob=blob)
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert pair.client.take_all() == [FAILURE]


def test_requests_after_success_are_ignored() -> None:
    """RFC 4252 §5.1: once authenticated, further USERAUTH_REQUESTs get no answer."""
    pair = keyed_pair()
    pair.client.auth_publickey()
    pair.transfer()
    pair.server.accept_auth()
    pair.transfer()
    pair.client.take_all()
    pair.client.auth_none()
    pair.client.auth_publickey(sign=False)
    assert pair.transfer() == []
    assert pair.client.take_all() == []


def test_server_side_userauth_message_from_client_disconnects() -> None:
    """A client may only send USERAUTH_REQUEST in the 50-79 range."""
    pair = keyed_pair()
    pair.client.send(ua.UserauthSuccess())
    with pytest.raises(UnexpectedMessage):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_decision_commands_without_a_pending_decision_are_local_errors() -> None:
    """accept_auth()/reject_auth() out of turn are driver bugs, never sent to the peer."""
    pair = keyed_pair()
    with pytest.raises(LocalProtocolError):
        pair.server.accept_auth()
    with pytest.raises(LocalProtocolError):
        pair.server.reject_auth()
    assert pair.server.data_to_send() == b""


def test_username_is_utf8() -> None:
    """User names are UTF-8 strings (RFC 4252 §5)."""
    pair = keyed_pair()
    pair.client.auth_publickey(sign=False, username="jürgen")
    [event] = pair.transfer()
    assert isinstance(event, PublicKeyAuthRequested)
    assert event.username == "jürgen"


ECDSA_CURVES = [
    ("ecdsa-sha2-nistp256", "nistp256", ec.SECP256R1(), hashes.SHA256()),
    ("ecdsa-sha2-nistp384", "nistp384", ec.SECP384R1(), hashes.SHA384()),
    ("ecdsa-sha2-nistp521", "nistp521", ec.SECP521R1(), hashes.SHA512()),
]


@pytest.mark.parametrize("tamper", [False, True], ids=["good", "bad"])
@pytest.mark.parametrize(
    ("algorithm", "curve_name", "curve", "digest"), ECDSA_CURVES, ids=[c[1] for c in ECDSA_CURVES]
)
def test_ecdsa_signed_request(
    algorithm: str,
    curve_name: str,
    curve: ec.EllipticCurve,
    digest: hashes.HashAlgorithm,
    tamper: bool,
) -> None:
    """RFC 5656 §3.1.2: ECDSA signatures are mpint r, mpint s inside the signature blob."""
    private = ec.derive_private_key(12345, curve)
    point = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    blob = wire.string(algorithm) + wire.string(curve_name) + wire.string(point)
    pair = keyed_pair()
    sid = pair.client.session_id
    assert sid is not None
    signed = ua.publickey_signed_data(sid, "alice", "ssh-connection", algorithm, blob)
    r, s = decode_dss_signature(private.sign(signed, ec.ECDSA(digest)))
    if tamper:
        s += 1
    signature = wire.string(algorithm) + wire.string(wire.mpint(r) + wire.mpint(s))
    pair.client.auth_publickey(algorithm=algorithm, key_blob=blob, signature=signature)
    pair.transfer()
    pair.server.accept_auth()
    [result] = pair.transfer()
    assert isinstance(result, AuthFailed if tamper else Authenticated)
