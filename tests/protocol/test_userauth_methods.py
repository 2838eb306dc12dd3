"""password, keyboard-interactive (RFC 4256) and multi-factor partial success (RFC 4252 §5.1)."""

from __future__ import annotations

import pytest

from tests.sshpeer import ConnectionPair, make_config
from trissh.protocol import (
    Authenticated,
    AuthFailed,
    AuthPartiallySucceeded,
    DisconnectReason,
    KeyboardInteractiveAuthRequested,
    KeyboardInteractiveResponsesReceived,
    PasswordAuthRequested,
    PublicKeyAuthRequested,
)
from trissh.protocol.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    TooManyAuthAttempts,
    UnexpectedMessage,
)
from trissh.protocol.messages import userauth as ua
from trissh.protocol.wire import Reader

ALL = ("publickey", "password", "keyboard-interactive")


def pair_with(*methods: str) -> ConnectionPair:
    pair = ConnectionPair(make_config(auth_methods=methods or ALL))
    pair.handshake()
    pair.client.request_service()
    pair.transfer()
    pair.client.take_all()
    return pair


def password(pair: ConnectionPair, secret: str, new: str | None = None) -> None:
    method = ua.PasswordMethod(password=secret, new_password=new)
    pair.client.send(
        ua.UserauthRequest(
            username="alice", service="ssh-connection", method="password",
            method_data=method.encode(),
        )
    )  # fmt: skip


def keyboard_interactive(pair: ConnectionPair) -> None:
    method = ua.KeyboardInteractiveMethod(submethods="")
    pair.client.send(
        ua.UserauthRequest(
            username="alice", service="ssh-connection", method="keyboard-interactive",
            method_data=method.encode(),
        )
    )  # fmt: skip


def info_request(pair: ConnectionPair) -> ua.UserauthInfoRequest:
    payload = pair.client.inbox.popleft()
    assert payload[0] == 60
    return ua.UserauthInfoRequest.decode(Reader(payload, 1))


def password_then_code_prompt(pair: ConnectionPair, secret: str, *, echo: bool) -> None:
    """keyboard-interactive: a password round answered with ``secret``, then a code
    prompt received and not answered yet."""
    keyboard_interactive(pair)
    pair.transfer()
    pair.server.send_auth_prompts("", "", [("Password: ", False)])
    pair.transfer()
    info_request(pair)
    pair.client.send(ua.UserauthInfoResponse(responses=(secret,)))
    pair.transfer()
    pair.server.send_auth_prompts("", "", [("Code: ", echo)])
    pair.transfer()
    info_request(pair)


def test_password_accepted() -> None:
    """password → PasswordAuthRequested; accept_auth() → SUCCESS and Authenticated."""
    pair = pair_with()
    password(pair, "correct horse")
    assert pair.transfer() == [PasswordAuthRequested(username="alice", password="correct horse")]
    pair.server.accept_auth()
    [event] = pair.transfer()
    assert event == Authenticated(username="alice", method="password")
    assert pair.client.take_all()[0] == ua.UserauthSuccess()  # then the hostkeys-00 notice


def test_password_rejected_counts_as_a_failure() -> None:
    pair = pair_with()
    password(pair, "wrong")
    pair.transfer()
    pair.server.reject_auth("wrong password")
    [failed] = pair.transfer()
    assert failed == AuthFailed(username="alice", method="password", reason="wrong password")
    assert pair.client.take_all() == [ua.UserauthFailure(methods=ALL)]


def test_password_change_requests_are_refused_without_asking() -> None:
    pair = pair_with()
    password(pair, "old", new="new")
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert failed.reason == "password change not supported"


def test_secrets_stay_out_of_reprs() -> None:
    """Events and messages never show a password or a response in their repr."""
    assert "hunter2" not in repr(PasswordAuthRequested(username="a", password="hunter2"))
    assert "424242" not in repr(
        KeyboardInteractiveResponsesReceived(username="a", responses=("424242",))
    )
    assert "hunter2" not in repr(ua.PasswordMethod(password="hunter2"))


def test_methods_not_enabled_are_refused() -> None:
    """A method outside auth_methods fails, and FAILURE lists only the enabled ones."""
    pair = pair_with("publickey")
    password(pair, "x")
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert pair.client.take_all() == [ua.UserauthFailure(methods=("publickey",))]


def test_keyboard_interactive_conversation() -> None:
    """request → prompts on the wire → responses as an event → accept → SUCCESS."""
    pair = pair_with()
    keyboard_interactive(pair)
    assert pair.transfer() == [KeyboardInteractiveAuthRequested(username="alice", submethods="")]
    pair.server.send_auth_prompts("trissh", "", [("Password: ", False), ("Code: ", True)])
    pair.transfer()
    request = info_request(pair)
    assert request.prompts == (("Password: ", False), ("Code: ", True))
    pair.client.send(ua.UserauthInfoResponse(responses=("pw", "123456")))
    assert pair.transfer() == [
        KeyboardInteractiveResponsesReceived(username="alice", responses=("pw", "123456"))
    ]
    pair.server.accept_auth()
    [event] = pair.transfer()
    assert event == Authenticated(username="alice", method="keyboard-interactive")


def test_keyboard_interactive_several_rounds_then_rejection() -> None:
    pair = pair_with()
    password_then_code_prompt(pair, "pw", echo=True)
    pair.client.send(ua.UserauthInfoResponse(responses=("000000",)))
    pair.transfer()
    pair.server.reject_auth("wrong code")
    [failed] = pair.transfer()
    assert failed == AuthFailed(
        username="alice", method="keyboard-interactive", reason="wrong code"
    )


def test_wrong_number_of_responses_disconnects() -> None:
    pair = pair_with()
    keyboard_interactive(pair)
    pair.transfer()
    pair.server.send_auth_prompts("", "", [("a", True), ("b", True)])
    pair.transfer()
    info_request(pair)
    pair.client.send(ua.UserauthInfoResponse(responses=("only one",)))
    with pytest.raises(RemoteProtocolError, match="1 responses to 2 prompts"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_info_response_without_prompts_disconnects() -> None:
    pair = pair_with()
    pair.client.send(ua.UserauthInfoResponse(responses=()))
    with pytest.raises(UnexpectedMessage):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def test_new_request_abandons_a_conversation() -> None:
    """RFC 4256 §3.3: a new USERAUTH_REQUEST ends the keyboard-interactive exchange."""
    pair = pair_with()
    keyboard_interactive(pair)
    pair.transfer()
    pair.server.send_auth_prompts("", "", [("Password: ", False)])
    pair.transfer()
    info_request(pair)
    password(pair, "instead")
    # The first abandoned conversation is free (asyncssh leaves one it cannot answer).
    assert pair.transfer() == [PasswordAuthRequested(username="alice", password="instead")]


def test_an_abandoned_conversation_counts_as_a_failed_attempt() -> None:
    """Each keyboard-interactive start is a decision (with a webhook, a remote call): a
    client restarting it without ever answering must still run out of attempts."""
    pair = pair_with()

    def restarts() -> None:
        for _ in range(20):
            keyboard_interactive(pair)
            for event in pair.transfer():
                assert isinstance(event, KeyboardInteractiveAuthRequested | AuthFailed)
                if isinstance(event, KeyboardInteractiveAuthRequested):
                    pair.server.send_auth_prompts("", "", [("Code: ", False)])

    with pytest.raises(TooManyAuthAttempts):
        restarts()
    pair.expect_disconnect(DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE)


def test_a_conversation_answered_in_part_is_never_free() -> None:
    """Password then a code: a client that answers the first round and leaves at the
    second has had its password checked; that costs an attempt even the first time."""
    pair = pair_with()
    password_then_code_prompt(pair, "guess", echo=False)
    password(pair, "instead")
    assert pair.transfer()[0] == AuthFailed(
        username="alice", method="keyboard-interactive", reason="conversation abandoned"
    )


def test_prompts_only_answer_keyboard_interactive() -> None:
    pair = pair_with()
    password(pair, "x")
    pair.transfer()
    with pytest.raises(LocalProtocolError):
        pair.server.send_auth_prompts("", "", [("?", True)])


def test_partial_success_then_the_second_factor() -> None:
    """publickey accepted with keyboard-interactive remaining: FAILURE with partial success
    listing only that method; publickey is no longer accepted; the second factor succeeds."""
    pair = pair_with()
    pair.client.auth_publickey()
    [asked] = pair.transfer()
    assert isinstance(asked, PublicKeyAuthRequested)
    pair.server.accept_auth(remaining=("keyboard-interactive",))
    [partial] = pair.transfer()
    assert isinstance(partial, AuthPartiallySucceeded)
    assert partial.remaining == ("keyboard-interactive",)
    assert partial.key_fingerprint is not None
    assert pair.client.take_all() == [
        ua.UserauthFailure(methods=("keyboard-interactive",), partial_success=True)
    ]
    assert not pair.server.authenticated
    pair.client.auth_publickey()
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert failed.reason == "method publickey not available"
    keyboard_interactive(pair)
    pair.transfer()
    pair.server.accept_auth()
    [done] = pair.transfer()
    assert done == Authenticated(username="alice", method="keyboard-interactive")
    assert pair.server.authenticated


def test_remaining_methods_must_be_enabled() -> None:
    pair = pair_with("publickey", "password")
    password(pair, "pw")
    pair.transfer()
    with pytest.raises(LocalProtocolError):
        pair.server.accept_auth(remaining=("keyboard-interactive",))


def test_none_after_partial_success_lists_the_remaining_methods() -> None:
    pair = pair_with()
    password(pair, "pw")
    pair.transfer()
    pair.server.accept_auth(remaining=("publickey",))
    pair.transfer()
    pair.client.take_all()
    pair.client.auth_none()
    pair.transfer()
    assert pair.client.take_all() == [ua.UserauthFailure(methods=("publickey",))]


def test_user_name_cannot_change_between_attempts() -> None:
    """A factor passed as alice must never count for bob: a new name disconnects (sshd)."""
    pair = pair_with()
    password(pair, "pw")
    pair.transfer()
    pair.server.accept_auth(remaining=("publickey",))
    pair.transfer()
    pair.client.auth_publickey(username="bob")
    with pytest.raises(RemoteProtocolError, match="change of user name"):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


def hostbound(pair: ConnectionPair, host_key_blob: bytes) -> None:
    """A signed publickey-hostbound-v00@openssh.com request (OpenSSH PROTOCOL §2.5)."""
    from tests.sshpeer import USER_KEY, ed25519_blob
    from trissh.protocol import wire

    blob = ed25519_blob(USER_KEY)
    assert pair.client.session_id is not None
    signed = ua.publickey_signed_data(
        pair.client.session_id, "alice", "ssh-connection", "ssh-ed25519", blob,
        host_key_blob=host_key_blob,
    )  # fmt: skip
    signature = wire.string("ssh-ed25519") + wire.string(USER_KEY.sign(signed))
    method = ua.HostboundPublicKeyMethod(
        algorithm="ssh-ed25519", key_blob=blob, host_key_blob=host_key_blob, signature=signature
    )
    pair.client.send(
        ua.UserauthRequest(
            username="alice", service="ssh-connection", method=ua.PUBLICKEY_HOSTBOUND,
            method_data=method.encode(),
        )
    )  # fmt: skip


def test_hostbound_publickey_signs_our_host_key() -> None:
    """A signature covering our host key authenticates, reported as method publickey."""
    from tests.sshpeer import HOST_KEY

    pair = pair_with()
    hostbound(pair, HOST_KEY.public_blob)
    [asked] = pair.transfer()
    assert isinstance(asked, PublicKeyAuthRequested)
    pair.server.accept_auth()
    [done] = pair.transfer()
    assert isinstance(done, Authenticated)
    assert done.method == "publickey"


def test_hostbound_to_another_server_is_refused() -> None:
    """A signature bound to a different host key (a forwarded login) fails outright."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from tests.sshpeer import ed25519_blob

    pair = pair_with()
    hostbound(pair, ed25519_blob(ed25519.Ed25519PrivateKey.generate()))
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert "another server" in failed.reason


def test_hostbound_to_our_other_host_key_is_refused() -> None:
    """As sshd (auth2-pubkey.c): the signature must bind the host key of the first key
    exchange, not any key this server has."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.sshpeer import HOST_KEY
    from trissh.protocol import HostKey

    other = HostKey(ec.generate_private_key(ec.SECP256R1()))
    pair = ConnectionPair(make_config(auth_methods=ALL, host_keys=(HOST_KEY, other)))
    pair.handshake()
    pair.client.request_service()
    pair.transfer()
    pair.client.take_all()
    hostbound(pair, other.public_blob)
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert "another server" in failed.reason


def test_client_sent_userauth_success_ends_the_connection() -> None:
    """Only servers send USERAUTH_SUCCESS; from a client it is a protocol violation."""
    pair = pair_with()
    pair.client.send(ua.UserauthSuccess())
    with pytest.raises(UnexpectedMessage):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)
