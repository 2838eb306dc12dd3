"""Hostile-peer rules not covered elsewhere: KEXINIT limits, the encrypted length of
encrypt-and-MAC packets, and the server's own rekey triggers (RFC 4344 block limits,
sequence-number wrap)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sshpeer import HOST_KEY, ConnectionPair, SeededRng, established_pair, make_config
from trissh.protocol import DisconnectReason, KeyExchangeCompleted, RemoteProtocolError, wire
from trissh.protocol import transport as transport_module
from trissh.protocol.ciphers import CIPHERS, MACS
from trissh.protocol.constants import MAX_NAME_LIST_LENGTH, MAX_NAMES
from trissh.protocol.errors import DecodeError, MacError
from trissh.protocol.kex import KEX_METHODS, KexContext, KexTranscript
from trissh.protocol.messages import connection as conn
from trissh.protocol.messages import transport as tr


def _kexinit(**lists: tuple[str, ...]) -> tr.KexInit:
    fields: dict[str, tuple[str, ...]] = {
        "kex_algorithms": ("curve25519-sha256",),
        "server_host_key_algorithms": ("ssh-ed25519",),
        "encryption_client_to_server": ("aes128-gcm@openssh.com",),
        "encryption_server_to_client": ("aes128-gcm@openssh.com",),
        "mac_client_to_server": (),
        "mac_server_to_client": (),
        "compression_client_to_server": ("none",),
        "compression_server_to_client": ("none",),
    }
    fields.update(lists)
    return tr.KexInit(cookie=bytes(16), **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lists", "match"),
    [
        ({"kex_algorithms": ("x" * 65,)}, "longer than 64"),
        ({"languages_client_to_server": ("a" * 65,)}, "longer than 64"),
        ({"kex_algorithms": tuple(f"k{i}" for i in range(MAX_NAMES + 1))}, "more than"),
        (
            {"mac_client_to_server": tuple("m" * 60 + f"{i:04}" for i in range(1100))},
            "exceeds the limit",
        ),
    ],
    ids=["long-name", "long-language", "too-many-names", "list-too-long"],
)
def test_kexinit_content_limits(lists: dict[str, tuple[str, ...]], match: str) -> None:
    """RFC 4251 §6 name length, and bounds on names per list and bytes per list."""
    assert len(",".join("m" * 64 for _ in range(1100))) > MAX_NAME_LIST_LENGTH
    pair = ConnectionPair(client=None, start=False)
    pair.client.send_version()
    pair.client.send_now(_kexinit(**lists).encode())
    with pytest.raises(DecodeError, match=match):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


@pytest.mark.parametrize("raw", [b"a,,b", b",a", b"a\xffb"], ids=["empty", "leading", "non-ascii"])
def test_malformed_name_lists_are_refused(raw: bytes) -> None:
    pair = ConnectionPair(client=None, start=False)
    pair.client.send_version()
    encoded = _kexinit().encode()
    marker = b"\x00\x00\x00\x11curve25519-sha256"
    assert marker in encoded
    bad = encoded.replace(marker, len(raw).to_bytes(4, "big") + raw, 1)
    pair.client.send_now(bad)
    with pytest.raises(DecodeError):
        pair.transfer()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


@pytest.mark.parametrize("mac", ["hmac-sha2-256", "hmac-sha2-512"])
def test_encrypted_length_is_bounded_before_the_rest_arrives(mac: str) -> None:
    """Encrypt-and-MAC: the length is decrypted from the first bytes and refused at once if
    it is out of bounds, without waiting for (or buffering) the packet it announces."""
    config = make_config(ciphers=("aes128-ctr",), macs=(mac,))
    pair = established_pair(config, ciphers=("aes128-ctr",), macs=(mac,))
    pair.client.send(conn.ChannelData(recipient_channel=0, data=b"x" * 100))
    sealed = bytearray(pair.client.data_to_send())
    sealed[0] ^= 0x80  # the decrypted length now exceeds 2 GiB
    pair.server.receive_data(bytes(sealed[:16]))
    with pytest.raises(DecodeError, match="bad packet length"):
        pair.server.next_event()
    pair.expect_disconnect(DisconnectReason.PROTOCOL_ERROR)


@pytest.mark.parametrize("mac", sorted(MACS))
def test_mac_is_checked_before_the_payload_is_parsed(mac: str) -> None:
    """A packet whose tag fails is a MAC error, whatever its (garbled) payload would say."""
    config = make_config(ciphers=("aes256-ctr",), macs=(mac,))
    pair = established_pair(config, ciphers=("aes256-ctr",), macs=(mac,))
    pair.client.send(conn.ChannelData(recipient_channel=77, data=b"y" * 64))
    sealed = bytearray(pair.client.data_to_send())
    sealed[-1] ^= 0x01
    pair.server.receive_data(bytes(sealed))
    with pytest.raises(MacError):
        pair.server.next_event()
    pair.expect_disconnect(DisconnectReason.MAC_ERROR)


@pytest.mark.parametrize(
    ("cipher", "rekey_bytes", "limit"),
    [
        ("chacha20-poly1305@openssh.com", 1 << 40, 1 << 30),
        ("aes256-gcm@openssh.com", 1 << 40, 1 << 36),
        ("aes128-ctr", 1 << 20, 1 << 20),
    ],
)
def test_rekey_limit_is_the_lower_of_config_and_rfc4344(
    cipher: str, rekey_bytes: int, limit: int
) -> None:
    config = make_config(ciphers=(cipher,), rekey_bytes=rekey_bytes)
    pair = established_pair(config, ciphers=(cipher,), macs=("hmac-sha2-256-etm@openssh.com",))
    transport = pair.server._transport
    assert transport._rekey_limit_out == transport._rekey_limit_in == limit
    assert CIPHERS[cipher].max_bytes_per_key >= limit


def test_server_rekeys_before_sequence_numbers_could_wrap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenSSH's MAX_PACKETS rule, scaled down: too many packets under one key start a kex."""
    monkeypatch.setattr(transport_module, "MAX_PACKETS_PER_KEY", 5)
    pair = established_pair()
    for _ in range(8):
        pair.client.send(conn.GlobalRequest(name="keepalive@openssh.com", want_reply=False))
    events = pair.transfer()
    assert any(isinstance(e, KeyExchangeCompleted) and e.is_rekey for e in events), events
    assert pair.client.completed_kex >= 2


def test_rekey_counters_restart_under_new_keys() -> None:
    """Bytes are counted per key: after a rekey the next one waits for a full limit again."""
    pair = established_pair(make_config(rekey_bytes=1 << 16))
    transport = pair.server._transport
    pair.client.start_kex()
    pair.transfer()
    assert transport._encoder.bytes_sent - transport._sent_at_kex < 1024
    assert transport.bytes_received - transport._received_at_kex < 1024


# -- every kex method, fuzzed ---------------------------------------------------------------

_KEX_FUZZ = settings(
    max_examples=1000 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _near_valid(name: str) -> st.SearchStrategy[bytes]:
    """Strings of the sizes each method expects, plus arbitrary ones."""
    sizes = [32, 65, 97, 133, 257, 513, 1025, 1190, 1216, 2049]
    return st.one_of(
        st.binary(max_size=2100),
        st.sampled_from(sizes).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    ).map(lambda value: wire.string(value))


@pytest.mark.parametrize("name", list(KEX_METHODS))
@_KEX_FUZZ
@given(data=st.data())
def test_kex_methods_only_raise_remote_protocol_errors(name: str, data: st.DataObject) -> None:
    """Whatever a client sends as its kex-method messages, a method answers or raises a
    RemoteProtocolError; nothing else escapes (the fuzz invariant, per method)."""
    exchange = KEX_METHODS[name].start(
        KexContext(
            transcript=KexTranscript(
                client_version=b"c",
                server_version=b"s",
                client_kexinit=b"i",
                server_kexinit=b"j",
                host_key=HOST_KEY.public_blob,
            ),
            sign=HOST_KEY.sign,
            rng=SeededRng(3),
        )
    )
    for _ in range(2):
        number = data.draw(st.sampled_from([30, 31, 32, 33, 34, 49]))
        body = data.draw(
            st.one_of(
                _near_valid(name),
                st.binary(max_size=64),
                st.tuples(*[st.integers(0, 2**32 - 1)] * 3).map(
                    lambda t: b"".join(wire.uint32(v) for v in t)
                ),
            )
        )
        try:
            exchange.receive(number, bytes((number,)) + body)
        except RemoteProtocolError:
            return
