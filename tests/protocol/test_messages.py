"""Every message class encodes and decodes symmetrically; truncations are DecodeErrors."""

from __future__ import annotations

import dataclasses
import inspect
from types import ModuleType
from typing import Any

import pytest

from trissh.protocol import wire
from trissh.protocol.constants import MessageNumber
from trissh.protocol.errors import DecodeError
from trissh.protocol.messages import connection as conn
from trissh.protocol.messages import transport as tr
from trissh.protocol.messages import userauth as ua
from trissh.protocol.wire import Reader

MODULES: tuple[ModuleType, ...] = (tr, ua, conn)

ED25519_BLOB = wire.string("ssh-ed25519") + wire.string(bytes(range(32)))

SAMPLES: list[Any] = [
    # transport (RFC 4253, RFC 8308, RFC 5656)
    tr.Disconnect(reason=2, description="bad packet ✗", language="en"),
    tr.Ignore(data=b"\x00\xffpadding"),
    tr.Unimplemented(sequence_number=0xFFFFFFFF),
    tr.Debug(always_display=True, message="hello", language=""),
    tr.ServiceRequest(service="ssh-userauth"),
    tr.ServiceAccept(service="ssh-userauth"),
    tr.ExtInfo(extensions=(("server-sig-algs", b"ssh-ed25519,rsa-sha2-256"), ("x@y", b""))),
    tr.KexInit(
        cookie=bytes(range(16)),
        kex_algorithms=("curve25519-sha256", "ext-info-c"),
        server_host_key_algorithms=("ssh-ed25519",),
        encryption_client_to_server=("aes128-gcm@openssh.com",),
        encryption_server_to_client=("chacha20-poly1305@openssh.com",),
        mac_client_to_server=(),
        mac_server_to_client=("hmac-sha2-256",),
        compression_client_to_server=("none",),
        compression_server_to_client=("none", "zlib@openssh.com"),
        languages_client_to_server=(),
        languages_server_to_client=("en",),
        first_kex_packet_follows=True,
    ),
    tr.NewKeys(),
    tr.KexEcdhInit(client_public=bytes(range(32))),
    tr.KexEcdhReply(host_key=ED25519_BLOB, server_public=bytes(32), signature=b"sig"),
    tr.KexDhGexRequest(min_bits=2048, preferred_bits=3072, max_bits=8192),
    tr.KexDhGexGroup(prime=(1 << 2047) + 1155, generator=2),
    tr.KexDhGexInit(e=12345678901234567890),
    tr.KexDhGexReply(host_key=ED25519_BLOB, f=(1 << 2040) - 1, signature=b"sig"),
    # userauth (RFC 4252)
    ua.UserauthRequest(username="ålice", service="ssh-connection", method="none"),
    ua.UserauthRequest(
        username="bob",
        service="ssh-connection",
        method="publickey",
        method_data=ua.PublicKeyMethod(algorithm="ssh-ed25519", key_blob=ED25519_BLOB).encode(),
    ),
    ua.UserauthFailure(methods=("publickey", "password"), partial_success=True),
    ua.UserauthSuccess(),
    ua.UserauthBanner(message="welcome\r\n", language="en"),
    ua.UserauthPkOk(algorithm="ssh-ed25519", key_blob=ED25519_BLOB),
    ua.HostboundPublicKeyMethod(
        algorithm="ssh-ed25519", key_blob=ED25519_BLOB, host_key_blob=ED25519_BLOB, signature=b"s"
    ),
    ua.PasswordMethod(password="pässword"),
    ua.PasswordMethod(password="old", new_password="new"),
    ua.KeyboardInteractiveMethod(submethods="pam,totp"),
    ua.UserauthInfoRequest(
        name="trissh", instruction="two factors", prompts=(("Password: ", False), ("Code: ", True))
    ),
    ua.UserauthInfoResponse(responses=("secret", "123456")),
    # connection (RFC 4254)
    conn.GlobalRequest(name="keepalive@openssh.com", want_reply=True, data=b"\x00\x01"),
    conn.RequestSuccess(data=b"\x00\x00\x00\x16"),
    conn.RequestFailure(),
    conn.ChannelOpen(
        channel_type="session", sender_channel=7, initial_window=2**32 - 1, max_packet=32768
    ),
    conn.ChannelOpenConfirmation(
        recipient_channel=7, sender_channel=0, initial_window=1 << 21, max_packet=1 << 16
    ),
    conn.ChannelOpenFailure(recipient_channel=3, reason=4, description="busy", language="en"),
    conn.ChannelWindowAdjust(recipient_channel=1, bytes_to_add=0x80000000),
    conn.ChannelData(recipient_channel=2, data=b"\x00hello\xff"),
    conn.ChannelExtendedData(recipient_channel=2, data_type=1, data=b"oops"),
    conn.ChannelEof(recipient_channel=5),
    conn.ChannelClose(recipient_channel=5),
    conn.ChannelRequest(
        recipient_channel=0,
        request_type="exec",
        want_reply=True,
        data=conn.ExecData(command="ls").encode(),
    ),
    conn.ChannelSuccess(recipient_channel=0),
    conn.ChannelFailure(recipient_channel=9),
    # channel request payloads (RFC 4254 §6)
    conn.PtyRequestData(
        term="xterm-256color", columns=80, rows=24, width_px=640, height_px=480, modes=b"\x35\x00"
    ),
    conn.WindowChangeData(columns=132, rows=43, width_px=0, height_px=0),
    conn.EnvData(name="LANG", value="en_US.UTF-8"),
    conn.ExecData(command="echo 'héllo' | cat"),
    conn.SubsystemData(name="sftp"),
    conn.SignalData(name="TERM"),
    conn.BreakData(length_ms=500),
    conn.ExitStatusData(code=255),
    conn.ExitSignalData(signal="KILL", core_dumped=True, message="killed", language="en"),
    ua.PublicKeyMethod(algorithm="ssh-ed25519", key_blob=ED25519_BLOB),
    ua.PublicKeyMethod(algorithm="ssh-ed25519", key_blob=ED25519_BLOB, signature=b"s" * 83),
]

#: Messages whose last field is "the rest of the payload": cutting into that tail yields
#: another valid message, so truncation is only checked up to where the tail starts.
REST_FIELDS: dict[type, str] = {
    conn.GlobalRequest: "data",
    conn.RequestSuccess: "data",
    conn.ChannelOpen: "data",
    conn.ChannelRequest: "data",
    ua.UserauthRequest: "method_data",
}


def _codec_classes() -> set[type]:
    return {
        cls
        for module in MODULES
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__ and hasattr(cls, "decode")
    }


def _decode(cls: Any, encoded: bytes) -> Any:
    numbered = hasattr(cls, "NUMBER")
    reader = Reader(encoded, 1 if numbered else 0)
    value = cls.decode(reader)
    reader.check_end()
    return value


def test_every_message_class_has_a_sample() -> None:
    """A new message class without a round-trip sample fails here."""
    assert _codec_classes() == {type(sample) for sample in SAMPLES}


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_encode_decode_round_trip(message: Any) -> None:
    """decode(encode(m)) == m, and numbered messages start with their message number."""
    encoded = message.encode()
    if hasattr(message, "NUMBER"):
        assert encoded[0] == message.NUMBER
        assert isinstance(message.NUMBER, MessageNumber)
    assert _decode(type(message), encoded) == message


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_truncated_message_raises_decode_error(message: Any) -> None:
    """Every strict prefix of the body (up to a free-form tail) fails to decode."""
    cls = type(message)
    if cls in REST_FIELDS:
        message = dataclasses.replace(message, **{REST_FIELDS[cls]: b""})
    encoded = message.encode()
    start = 1 if hasattr(cls, "NUMBER") else 0
    for cut in range(start, len(encoded)):
        with pytest.raises(DecodeError):
            cls.decode(Reader(encoded[:cut], start))


def test_kexinit_wire_layout() -> None:
    """KEXINIT: cookie, ten name-lists, first_kex_packet_follows, reserved uint32 0."""
    message = SAMPLES[7]
    assert isinstance(message, tr.KexInit)
    encoded = message.encode()
    assert encoded[1:17] == bytes(range(16))
    assert encoded.endswith(b"\x01" + bytes(4))
    assert b"curve25519-sha256,ext-info-c" in encoded


def test_publickey_method_signature_flag() -> None:
    """The publickey boolean is TRUE exactly when a signature follows (RFC 4252 §7)."""
    query = ua.PublicKeyMethod(algorithm="ssh-ed25519", key_blob=ED25519_BLOB)
    signed = dataclasses.replace(query, signature=b"sig")
    assert query.encode()[0] == 0
    assert signed.encode()[0] == 1
    assert signed.encode().endswith(wire.string(b"sig"))


def test_publickey_signed_data_layout() -> None:
    """The signed blob is session id, 50, user, service, "publickey", TRUE, alg, key."""
    data = ua.publickey_signed_data(b"SID", "u", "ssh-connection", "ssh-ed25519", b"KEY")
    assert data == b"".join(
        (
            wire.string(b"SID"),
            b"\x32",
            wire.string("u"),
            wire.string("ssh-connection"),
            wire.string("publickey"),
            b"\x01",
            wire.string("ssh-ed25519"),
            wire.string(b"KEY"),
        )
    )


def test_ext_info_refuses_too_many_extensions() -> None:
    """EXT_INFO's extension count is bounded before any extension is read."""
    with pytest.raises(DecodeError, match="too many"):
        tr.ExtInfo.decode(Reader(wire.uint32(tr.MAX_EXTENSIONS + 1)))


def test_disconnect_tolerates_invalid_utf8_description() -> None:
    """A peer's broken DISCONNECT text still decodes (it is only logged)."""
    payload = wire.uint32(2) + wire.string(b"\xffbad") + wire.string(b"")
    assert tr.Disconnect.decode(Reader(payload)).description == "\ufffdbad"
