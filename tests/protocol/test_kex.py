"""curve25519-sha256 (RFC 8731 on RFC 7748), the exchange hash and key derivation (RFC 4253
§7.2), checked against published vectors and an independent hashlib transcription."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from tests.sshpeer import (
    ClientConnection,
    ConnectionPair,
    SeededRng,
    events_of,
    make_config,
    parse_plaintext,
)
from trissh.protocol import DisconnectReason, KeyExchangeCompleted, ServerConnection, wire
from trissh.protocol import kex as kexmath
from trissh.protocol.errors import KeyExchangeFailed
from trissh.protocol.messages.transport import Disconnect, KexEcdhInit
from trissh.protocol.wire import Reader

CURVE25519 = kexmath.KEX_METHODS["curve25519-sha256"]

# RFC 7748 §6.1
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

#: Points whose product with any clamped scalar is zero (RFC 7748 §6.1's check, libsodium's
#: blocklist): 0, 1, two points of order 8, and p-1, p, p+1 as non-canonical encodings.
LOW_ORDER_POINTS = [
    "00" * 32,
    "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ec" + "ff" * 30 + "7f",
    "ed" + "ff" * 30 + "7f",
    "ee" + "ff" * 30 + "7f",
]


def fixed(value: bytes) -> SeededRng:
    """An rng whose next 32-byte draw is ``value`` (the server's ephemeral scalar)."""

    class Fixed(SeededRng):
        def __call__(self, n: int) -> bytes:
            assert n == len(value)
            return value

    return Fixed(0)


def test_rfc7748_diffie_hellman_vector() -> None:
    """Bob as server, Alice as client: Bob's public value and K from RFC 7748 §6.1."""
    reply = kexmath.curve25519_reply(ALICE_PUBLIC, fixed(BOB_PRIVATE))
    assert reply.server_public == BOB_PUBLIC
    assert reply.shared_secret == wire.mpint(int.from_bytes(SHARED, "big"))
    assert reply.shared_secret == bytes.fromhex("00000020") + SHARED  # top bit clear: no 00


@pytest.mark.parametrize(
    ("scalar", "u", "output"),
    [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ],
)
def test_rfc7748_x25519_function_vectors(scalar: str, u: str, output: str) -> None:
    """RFC 7748 §5.2: K is X25519(our scalar, client's u), read big-endian as an mpint."""
    reply = kexmath.curve25519_reply(bytes.fromhex(u), fixed(bytes.fromhex(scalar)))
    assert reply.shared_secret == wire.mpint_from_unsigned_bytes(bytes.fromhex(output))


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_point_is_refused(point: str) -> None:
    """An all-zero shared secret (RFC 7748 §6.1, RFC 8731 §3) fails the key exchange."""
    with pytest.raises(KeyExchangeFailed) as info:
        kexmath.curve25519_reply(bytes.fromhex(point), SeededRng(1))
    assert info.value.reason == DisconnectReason.KEY_EXCHANGE_FAILED


@pytest.mark.parametrize("size", [0, 31, 33, 65])
def test_wrong_size_public_key_is_refused(size: int) -> None:
    """RFC 8731 §3: the client's value must be exactly 32 bytes."""
    with pytest.raises(KeyExchangeFailed, match="32 bytes"):
        kexmath.curve25519_reply(bytes(range(size)), SeededRng(1))


@pytest.mark.parametrize("public", [bytes(32), ALICE_PUBLIC[:31]], ids=["zero-point", "31-bytes"])
def test_bad_ecdh_init_disconnects_with_key_exchange_failed(public: bytes) -> None:
    """Through the transport: DISCONNECT(KEY_EXCHANGE_FAILED) is queued, in plaintext."""
    server = ServerConnection(make_config())
    client = ClientConnection(rng=SeededRng(7))
    client.send_now(KexEcdhInit(client_public=public).encode())
    server.receive_data(client.data_to_send())
    with pytest.raises(KeyExchangeFailed):
        events_of(server)
    _, payloads = parse_plaintext(server.data_to_send())
    message = Disconnect.decode(Reader(payloads[-1], 1))
    assert message.reason == DisconnectReason.KEY_EXCHANGE_FAILED


def rfc_exchange_hash(
    client_version: bytes,
    server_version: bytes,
    client_kexinit: bytes,
    server_kexinit: bytes,
    host_key: bytes,
    q_c: bytes,
    q_s: bytes,
    k: int,
) -> bytes:
    """RFC 5656 §4 / RFC 8731 §3, field by field, with struct-level encoding done by hand."""

    def string(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    k_bytes = k.to_bytes((k.bit_length() + 8) // 8, "big")
    return hashlib.sha256(
        string(client_version)
        + string(server_version)
        + string(client_kexinit)
        + string(server_kexinit)
        + string(host_key)
        + string(q_c)
        + string(q_s)
        + string(k_bytes)
    ).digest()


def rfc_derive(k: bytes, h: bytes, letter: bytes, session_id: bytes, size: int) -> bytes:
    """RFC 4253 §7.2, including the K1 || K2 || ... extension."""
    key = hashlib.sha256(k + h + letter + session_id).digest()
    while len(key) < size:
        key += hashlib.sha256(k + h + key).digest()
    return key[:size]


def test_exchange_hash_matches_rfc_transcription() -> None:
    """kexmath.exchange_hash is SHA-256 over the RFC's nine fields in order."""
    fields = (b"SSH-2.0-c", b"SSH-2.0-s", b"\x14client", b"\x14server", b"hostkey-blob")
    k = int.from_bytes(SHARED, "big")
    h = kexmath.exchange_hash(
        CURVE25519,
        client_version=fields[0],
        server_version=fields[1],
        client_kexinit=fields[2],
        server_kexinit=fields[3],
        host_key=fields[4],
        client_public=ALICE_PUBLIC,
        server_public=BOB_PUBLIC,
        shared_secret=wire.mpint(k),
    )
    assert h == rfc_exchange_hash(*fields, ALICE_PUBLIC, BOB_PUBLIC, k)


@pytest.mark.parametrize("size", [0, 12, 16, 32, 33, 64, 100])
def test_key_derivation_matches_rfc_transcription(size: int) -> None:
    """derive_key gives HASH(K || H || X || session_id), extended as RFC 4253 §7.2 says."""
    k, h, sid = wire.mpint(int.from_bytes(SHARED, "big")), b"H" * 32, b"S" * 32
    for letter in b"ABCDEF":
        x = bytes((letter,))
        assert kexmath.derive_key(CURVE25519, k, h, x, sid, size) == rfc_derive(k, h, x, sid, size)


def test_client_and_server_derive_the_same_keys() -> None:
    """Server-side kexmath and a client-side hand derivation agree on K and all six keys."""
    client_private = x25519.X25519PrivateKey.from_private_bytes(ALICE_PRIVATE)
    reply = kexmath.curve25519_reply(ALICE_PUBLIC, SeededRng(42))
    client_k = client_private.exchange(
        x25519.X25519PublicKey.from_public_bytes(reply.server_public)
    )
    assert reply.shared_secret == wire.mpint_from_unsigned_bytes(client_k)
    k = int.from_bytes(client_k, "big")
    h = rfc_exchange_hash(b"c", b"s", b"ic", b"is", b"hk", ALICE_PUBLIC, reply.server_public, k)
    h_server = kexmath.exchange_hash(
        CURVE25519,
        client_version=b"c",
        server_version=b"s",
        client_kexinit=b"ic",
        server_kexinit=b"is",
        host_key=b"hk",
        client_public=ALICE_PUBLIC,
        server_public=reply.server_public,
        shared_secret=reply.shared_secret,
    )
    assert h == h_server
    k_mpint = wire.mpint(k)
    for letter in b"ABCDEF":
        x = bytes((letter,))
        assert kexmath.derive_key(CURVE25519, reply.shared_secret, h_server, x, h, 64) == (
            rfc_derive(k_mpint, h, x, h, 64)
        )


def _record_handshake(server_seed: int, client_seed: int) -> tuple[bytes, bytes, bytes]:
    """Run a key exchange; return H and every byte each side sent."""
    client = ClientConnection(rng=SeededRng(client_seed))
    pair = ConnectionPair(make_config(seed=server_seed), client)
    sent: dict[str, bytearray] = {"client": bytearray(), "server": bytearray()}
    for name, endpoint in (("client", client), ("server", pair.server)):
        original = endpoint.data_to_send

        def recording(original: Callable[[], bytes] = original, name: str = name) -> bytes:
            data = original()
            sent[name] += data
            return data

        endpoint.data_to_send = recording  # type: ignore[method-assign]
    pair.handshake()
    assert client.exchange_hash is not None
    return client.exchange_hash, bytes(sent["client"]), bytes(sent["server"])


def test_handshake_is_deterministic_with_a_fixed_rng() -> None:
    """Same seeds give the same H and byte-identical streams; another seed changes H."""
    first = _record_handshake(1, 1000)
    assert first == _record_handshake(1, 1000)
    assert _record_handshake(2, 1000)[0] != first[0]


def test_host_key_signs_the_exchange_hash_the_client_computed() -> None:
    """The client verifies the server's ed25519 signature over its own H (RFC 8709)."""
    pair = ConnectionPair()
    events = pair.handshake()
    assert pair.client.host_key == make_config().host_keys[0].public_blob
    assert pair.client.session_id == pair.client.exchange_hash
    assert isinstance(events[-1], KeyExchangeCompleted)


def test_session_id_survives_rekey_while_exchange_hash_changes() -> None:
    """RFC 4253 §7.2: the session id is the first H forever; later keys use it."""
    pair = ConnectionPair()
    pair.handshake()
    first_h = pair.client.exchange_hash
    pair.client.start_kex()
    [completed] = pair.transfer()
    assert isinstance(completed, KeyExchangeCompleted)
    assert completed.is_rekey
    assert pair.client.exchange_hash != first_h
    assert pair.client.session_id == first_h
    assert pair.client.completed_kex == 2


@pytest.mark.parametrize("name", ["curve25519-sha256", "curve25519-sha256@libssh.org"])
def test_both_curve25519_names_complete(name: str) -> None:
    """The pre-RFC libssh.org alias is the same method under another name."""
    pair = ConnectionPair(kex_algorithms=(name,))
    events = pair.handshake()
    completed = events[-1]
    assert isinstance(completed, KeyExchangeCompleted)
    assert completed.algorithms.kex == name


def test_server_config_rejects_unknown_kex() -> None:
    """ProtocolConfig validates names once, at construction."""
    with pytest.raises(ValueError, match="unknown kex algorithm"):
        make_config(kex_algorithms=("diffie-hellman-group1-sha1",))
    assert isinstance(ServerConnection(make_config()), ServerConnection)
