"""Key exchange: every method against published vectors (RFC 7748/8731, RFC 5903, RFC 3526)
and an independent client, the exchange hash and key derivation (RFC 4253 §7.2) against a
hashlib transcription, and a test per invalid-value rule."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from decimal import Decimal, getcontext

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519

from tests.sshpeer import (
    ClientConnection,
    ConnectionPair,
    SeededRng,
    events_of,
    make_config,
    parse_plaintext,
)
from tests.sshpeer.kex import CLIENT_KEX_NAMES, sntrup761_keypair
from trissh.protocol import (
    DisconnectReason,
    KeyExchangeCompleted,
    ServerConnection,
    sntrup761,
    wire,
)
from trissh.protocol.errors import KeyExchangeFailed, UnexpectedMessage
from trissh.protocol.kex import (
    DEFAULT_KEX,
    KEX_METHODS,
    KexContext,
    KexResult,
    KexTranscript,
    derive_key,
    exchange_hash,
)
from trissh.protocol.kex_dh import (
    GEX_GROUPS,
    GROUP14,
    GROUP16,
    GROUP18,
    MODP_2048,
    MODP_3072,
    MODP_4096,
    MODP_6144,
    MODP_8192,
    DhAgreement,
    DhGroup,
    choose_group,
)
from trissh.protocol.kex_ecdh import EcdhAgreement, X25519Agreement
from trissh.protocol.kex_hybrid import KemHybridAgreement, MlKem768, Sntrup761
from trissh.protocol.messages.transport import (
    Disconnect,
    KexDhGexInit,
    KexDhGexRequest,
    KexEcdhInit,
)
from trissh.protocol.wire import Reader

X25519 = X25519Agreement()

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


def fixed(*values: bytes) -> SeededRng:
    """An rng whose draws are ``values`` in turn (the server's ephemeral scalars)."""
    queue = list(values)

    class Fixed(SeededRng):
        def __call__(self, n: int) -> bytes:
            value = queue.pop(0)
            assert n == len(value)
            return value

    return Fixed(0)


# -- curve25519 (RFC 7748, RFC 8731) --------------------------------------------------------


def test_rfc7748_diffie_hellman_vector() -> None:
    """Bob as server, Alice as client: Bob's public value and K from RFC 7748 §6.1."""
    server_public, k = X25519.respond(ALICE_PUBLIC, fixed(BOB_PRIVATE))
    assert server_public == BOB_PUBLIC
    assert k == wire.mpint(int.from_bytes(SHARED, "big"))
    assert k == bytes.fromhex("00000020") + SHARED  # top bit clear: no 00


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
    _, k = X25519.respond(bytes.fromhex(u), fixed(bytes.fromhex(scalar)))
    assert k == wire.mpint_from_unsigned_bytes(bytes.fromhex(output))


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_point_is_refused(point: str) -> None:
    """An all-zero shared secret (RFC 7748 §6.1, RFC 8731 §3) fails the key exchange."""
    with pytest.raises(KeyExchangeFailed) as info:
        X25519.respond(bytes.fromhex(point), SeededRng(1))
    assert info.value.reason == DisconnectReason.KEY_EXCHANGE_FAILED


@pytest.mark.parametrize("size", [0, 31, 33, 65])
def test_wrong_size_public_key_is_refused(size: int) -> None:
    """RFC 8731 §3: the client's value must be exactly 32 bytes."""
    with pytest.raises(KeyExchangeFailed, match="32 bytes"):
        X25519.respond(bytes(range(size)), SeededRng(1))


def _first_kex_message_fails(kex: str, payload: bytes) -> Disconnect:
    """Send ``payload`` as the first kex-method message; the DISCONNECT goes out in plaintext."""
    server = ServerConnection(make_config(kex_algorithms=(kex,)))
    client = ClientConnection(rng=SeededRng(7), kex_algorithms=(kex,))
    client.send_now(payload)
    server.receive_data(client.data_to_send())
    with pytest.raises((KeyExchangeFailed, UnexpectedMessage)):
        events_of(server)
    _, payloads = parse_plaintext(server.data_to_send())
    return Disconnect.decode(Reader(payloads[-1], 1))


@pytest.mark.parametrize("public", [bytes(32), ALICE_PUBLIC[:31]], ids=["zero-point", "31-bytes"])
def test_bad_ecdh_init_disconnects_with_key_exchange_failed(public: bytes) -> None:
    """Through the transport: DISCONNECT(KEY_EXCHANGE_FAILED) is queued, in plaintext."""
    message = _first_kex_message_fails(
        "curve25519-sha256", KexEcdhInit(client_public=public).encode()
    )
    assert message.reason == DisconnectReason.KEY_EXCHANGE_FAILED


# -- the exchange hash and key derivation ---------------------------------------------------


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


TRANSCRIPT = KexTranscript(
    client_version=b"SSH-2.0-c",
    server_version=b"SSH-2.0-s",
    client_kexinit=b"\x14client",
    server_kexinit=b"\x14server",
    host_key=b"hostkey-blob",
)


def test_exchange_hash_matches_rfc_transcription() -> None:
    """exchange_hash is SHA-256 over the RFC's nine fields in order."""
    k = int.from_bytes(SHARED, "big")
    fields = wire.string(ALICE_PUBLIC) + wire.string(BOB_PUBLIC)
    h = exchange_hash("sha256", TRANSCRIPT, fields, wire.mpint(k))
    assert h == rfc_exchange_hash(
        b"SSH-2.0-c", b"SSH-2.0-s", b"\x14client", b"\x14server", b"hostkey-blob",
        ALICE_PUBLIC, BOB_PUBLIC, k,
    )  # fmt: skip


@pytest.mark.parametrize("size", [0, 12, 16, 32, 33, 64, 100])
def test_key_derivation_matches_rfc_transcription(size: int) -> None:
    """derive_key gives HASH(K || H || X || session_id), extended as RFC 4253 §7.2 says."""
    k, h, sid = wire.mpint(int.from_bytes(SHARED, "big")), b"H" * 32, b"S" * 32
    for letter in b"ABCDEF":
        x = bytes((letter,))
        assert derive_key("sha256", k, h, x, sid, size) == rfc_derive(k, h, x, sid, size)


def test_single_round_method_signs_the_rfc_exchange_hash() -> None:
    """The whole server step for curve25519: reply layout, H and the signature over H."""
    signed: list[bytes] = []
    method = KEX_METHODS["curve25519-sha256"]
    context_rng = fixed(BOB_PRIVATE)

    def sign(data: bytes) -> bytes:
        signed.append(data)
        return b"signature"

    exchange = method.start(KexContext(transcript=TRANSCRIPT, sign=sign, rng=context_rng))
    result = exchange.receive(30, KexEcdhInit(client_public=ALICE_PUBLIC).encode())
    assert isinstance(result, KexResult)
    k = int.from_bytes(SHARED, "big")
    expected_h = rfc_exchange_hash(
        b"SSH-2.0-c", b"SSH-2.0-s", b"\x14client", b"\x14server", b"hostkey-blob",
        ALICE_PUBLIC, BOB_PUBLIC, k,
    )  # fmt: skip
    assert result.exchange_hash == expected_h
    assert signed == [expected_h]
    assert result.shared_secret == wire.mpint(k)
    assert result.payload == (
        b"\x1f" + wire.string(b"hostkey-blob") + wire.string(BOB_PUBLIC) + wire.string(b"signature")
    )


# -- NIST curves (RFC 5656, RFC 5903) -------------------------------------------------------

#: RFC 5903 §8.1 (256-bit random ECP group): i, g^i, r, g^r and the x-coordinate of g^ir.
P256_I = bytes.fromhex("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433")
P256_GI = bytes.fromhex(
    "04DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180"
    "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3"
)
P256_R = bytes.fromhex("C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53")
P256_GR = bytes.fromhex(
    "04D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63"
    "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB"
)
P256_GIR_X = bytes.fromhex("D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE")


def test_rfc5903_p256_vector() -> None:
    """Server with scalar r answers g^i with g^r and K = mpint(x of g^ir) (RFC 5656 §4)."""
    server_public, k = EcdhAgreement(ec.SECP256R1()).respond(P256_GI, fixed(P256_R))
    assert server_public == P256_GR
    assert k == wire.mpint_from_unsigned_bytes(P256_GIR_X)
    assert k[4] == 0  # top bit set: the mpint needs a leading zero byte


@pytest.mark.parametrize(
    ("curve", "kex"),
    [
        (ec.SECP256R1(), "ecdh-sha2-nistp256"),
        (ec.SECP384R1(), "ecdh-sha2-nistp384"),
        (ec.SECP521R1(), "ecdh-sha2-nistp521"),
    ],
)
def test_invalid_nist_points_are_refused(curve: ec.EllipticCurve, kex: str) -> None:
    """Off-curve, compressed, truncated and identity encodings: KEY_EXCHANGE_FAILED."""
    size = (curve.key_size + 7) // 8
    point = (
        ec.derive_private_key(5, curve)
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    off_curve = point[:-1] + bytes((point[-1] ^ 1,))
    compressed = (
        ec.derive_private_key(5, curve)
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    )
    agreement = EcdhAgreement(curve)
    for bad in (off_curve, compressed, point[:-1], b"\x00", b"\x04" + bytes(2 * size)):
        with pytest.raises(KeyExchangeFailed):
            agreement.respond(bad, SeededRng(1))
    message = _first_kex_message_fails(kex, KexEcdhInit(client_public=off_curve).encode())
    assert message.reason == DisconnectReason.KEY_EXCHANGE_FAILED


# -- finite-field DH (RFC 3526 groups, RFC 8268, RFC 4419) -----------------------------------


def _pi_times_power_of_two(exponent: int) -> int:
    """floor(2**exponent * pi), from Machin's formula with enough decimal digits."""
    getcontext().prec = exponent * 302 // 1000 + 40

    def arctan_inverse(x: int) -> Decimal:
        x_squared, term, total, n = x * x, Decimal(1) / x, Decimal(0), 1
        sign = 1
        while term > Decimal(10) ** -(getcontext().prec):
            total += sign * term / n
            term /= x_squared
            n += 2
            sign = -sign
        return total

    pi = 4 * (4 * arctan_inverse(5) - arctan_inverse(239))
    return int(pi * (Decimal(2) ** exponent))


@pytest.mark.parametrize(
    ("prime", "bits", "offset"),
    [
        (MODP_2048, 2048, 124476),
        (MODP_3072, 3072, 1690314),
        (MODP_4096, 4096, 240904),
        (MODP_6144, 6144, 929484),
        (MODP_8192, 8192, 4743158),
    ],
    ids=["group14", "group15", "group16", "group17", "group18"],
)
def test_rfc3526_primes_follow_their_definition(prime: int, bits: int, offset: int) -> None:
    """RFC 3526: p = 2^n - 2^(n-64) - 1 + 2^64 * ( [2^(n-130) pi] + offset )."""
    expected = (1 << bits) - (1 << (bits - 64)) - 1
    expected += (1 << 64) * (_pi_times_power_of_two(bits - 130) + offset)
    assert prime == expected


@pytest.mark.parametrize("group", [GROUP14, GROUP16, GROUP18], ids=["14", "16", "18"])
def test_dh_agreement_matches_a_textbook_exchange(group: DhGroup) -> None:
    """f = g^y and K = e^y mod p, with e's and f's mpint bodies on the wire."""
    prime = group.prime
    x = 0x1234567890ABCDEF << 200
    e = pow(2, x, prime)
    f_body, k = DhAgreement(group).respond(wire.mpint(e)[4:], SeededRng(3))
    f = Reader(wire.string(f_body)).mpint()
    assert 1 < f < prime - 1
    assert k == wire.mpint(pow(f, x, prime))


def _dh_values(prime: int) -> list[tuple[str, bytes]]:
    return [
        ("zero", b""),
        ("one", b"\x01"),
        ("p-1", wire.mpint(prime - 1)[4:]),
        ("p", wire.mpint(prime)[4:]),
        ("p+1", wire.mpint(prime + 1)[4:]),
        ("negative", wire.mpint(-5)[4:]),
        ("one bit set", wire.mpint(8)[4:]),
        ("three bits set", wire.mpint(2**1000 + 2**500 + 2)[4:]),
        ("non-minimal", b"\x00\x05"),
        ("too-long", b"\x01" * 600),
    ]


@pytest.mark.parametrize(("name", "value"), _dh_values(MODP_2048), ids=lambda v: str(v)[:12])
def test_dh_e_outside_the_group_is_refused(name: str, value: bytes) -> None:
    """RFC 4253 §8: e must be in [2, p-2] and a well-formed mpint (KEY_EXCHANGE_FAILED); as
    OpenSSH's dh_pub_is_valid, with at least four bits set (for g = 2, log_g of a value
    with one bit set is its bit position)."""
    with pytest.raises(KeyExchangeFailed):
        DhAgreement(GROUP14).respond(value, SeededRng(1))
    message = _first_kex_message_fails(
        "diffie-hellman-group14-sha256", KexEcdhInit(client_public=value).encode()
    )
    assert message.reason == DisconnectReason.KEY_EXCHANGE_FAILED


@pytest.mark.parametrize(
    ("bounds", "bits"),
    [
        ((2048, 2048, 8192), 2048),
        ((2048, 3072, 8192), 3072),
        ((2048, 7680, 8192), 8192),
        ((1024, 2048, 2048), 2048),
        ((1024, 1024, 8192), 2048),  # n clamped up to 2048
        ((2048, 9000, 10000), 8192),  # n and max clamped down
        ((3000, 3500, 5000), 4096),
        ((3000, 6000, 6200), 6144),
        ((2048, 4000, 4000), 3072),  # nothing >= n within max: the largest that fits
    ],
)
def test_gex_group_choice(bounds: tuple[int, int, int], bits: int) -> None:
    """The smallest group >= n within [min, max] (clamped to [2048, 8192]), else the largest."""
    assert choose_group(*bounds).bits == bits


@pytest.mark.parametrize(
    "bounds",
    [
        (4096, 2048, 8192),
        (2048, 8192, 4096),
        (4096, 3072, 3072),
        (1024, 1024, 1536),
        (9000, 9000, 9999),
    ],
    ids=["n<min", "n>max", "max<min", "all-below-2048", "all-above-8192"],
)
def test_gex_bad_bounds_fail(bounds: tuple[int, int, int]) -> None:
    """Inconsistent bounds or no group in range: KEY_EXCHANGE_FAILED (RFC 4419 §3, RFC 8270)."""
    with pytest.raises(KeyExchangeFailed):
        choose_group(*bounds)
    low, preferred, high = bounds
    message = _first_kex_message_fails(
        "diffie-hellman-group-exchange-sha256",
        KexDhGexRequest(min_bits=low, preferred_bits=preferred, max_bits=high).encode(),
    )
    assert message.reason == DisconnectReason.KEY_EXCHANGE_FAILED


def test_gex_request_old_and_out_of_order_init_are_refused() -> None:
    """The pre-RFC REQUEST_OLD (30) is not supported, and INIT before REQUEST is a violation."""
    gex = "diffie-hellman-group-exchange-sha256"
    old = _first_kex_message_fails(gex, bytes((30,)) + wire.uint32(2048))
    assert old.reason == DisconnectReason.PROTOCOL_ERROR
    early = _first_kex_message_fails(gex, KexDhGexInit(e=12345).encode())
    assert early.reason == DisconnectReason.PROTOCOL_ERROR


@pytest.mark.parametrize("e", [0, 1, MODP_2048 - 1, MODP_2048, -3])
def test_gex_e_outside_the_group_is_refused(e: int) -> None:
    """After GROUP(p, g), e must still lie in [2, p-2]."""
    gex = "diffie-hellman-group-exchange-sha256"
    server = ServerConnection(make_config(kex_algorithms=(gex,)))
    client = ClientConnection(rng=SeededRng(7), kex_algorithms=(gex,))
    client.send_now(KexDhGexRequest(min_bits=2048, preferred_bits=2048, max_bits=2048).encode())
    client.send_now(KexDhGexInit(e=e).encode())
    server.receive_data(client.data_to_send())
    with pytest.raises(KeyExchangeFailed):
        events_of(server)
    _, payloads = parse_plaintext(server.data_to_send())
    assert payloads[-2][0] == 31  # the GROUP went out first
    assert Disconnect.decode(Reader(payloads[-1], 1)).reason == DisconnectReason.KEY_EXCHANGE_FAILED


def test_gex_offers_only_rfc3526_groups() -> None:
    assert [group.bits for group in GEX_GROUPS] == [2048, 3072, 4096, 6144, 8192]
    assert all(group.generator == 2 for group in GEX_GROUPS)


# -- ML-KEM-768 hybrid (draft-ietf-sshm-mlkem-hybrid-kex) -----------------------------------


def test_mlkem_hybrid_k_is_a_string_of_sha256_over_both_secrets() -> None:
    """S_REPLY = ciphertext || X25519 key; K = string SHA-256(K_PQ || K_CL): checked by
    decapsulating as the client and with RFC 7748's X25519 vector."""
    client_kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes(range(64)))
    c_init = client_kem.public_key().public_bytes_raw() + ALICE_PUBLIC
    assert len(c_init) == 1216
    agreement = KemHybridAgreement(MlKem768(), "sha256")
    s_reply, k = agreement.respond(c_init, fixed(BOB_PRIVATE))
    assert len(s_reply) == 1088 + 32
    assert s_reply[1088:] == BOB_PUBLIC
    kem_secret = client_kem.decapsulate(s_reply[:1088])
    assert k == wire.string(hashlib.sha256(kem_secret + SHARED).digest())


def _invalid_mlkem_key() -> bytes:
    """An encapsulation key whose first coefficient is 4095 >= q (FIPS 203 §7.2 check)."""
    key = bytearray(
        mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes(64)).public_key().public_bytes_raw()
    )
    key[0] = 0xFF
    key[1] |= 0x0F
    return bytes(key)


@pytest.mark.parametrize(
    "c_init",
    [
        b"",
        bytes(1215),
        bytes(1217),
        _invalid_mlkem_key() + ALICE_PUBLIC,
        mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes(64)).public_key().public_bytes_raw()
        + bytes(32),
    ],
    ids=["empty", "short", "long", "modulus-check", "x25519-zero"],
)
def test_bad_mlkem_hybrid_share_is_refused(c_init: bytes) -> None:
    """Wrong sizes, an ML-KEM key failing the modulus check, or a low-order X25519 half."""
    with pytest.raises(KeyExchangeFailed):
        KemHybridAgreement(MlKem768(), "sha256").respond(c_init, SeededRng(1))
    message = _first_kex_message_fails(
        "mlkem768x25519-sha256", KexEcdhInit(client_public=c_init).encode()
    )
    assert message.reason == DisconnectReason.KEY_EXCHANGE_FAILED


# -- sntrup761 hybrid (draft-josefsson-ntruprime-ssh, OpenSSH kexsntrup761x25519.c) ----------


@pytest.mark.parametrize("kex", ["sntrup761x25519-sha512", "sntrup761x25519-sha512@openssh.com"])
def test_sntrup761_hybrid_k_is_a_string_of_sha512_over_both_secrets(kex: str) -> None:
    """S_REPLY = ciphertext (1039) || X25519 key; K = string SHA-512(K_PQ || K_CL)."""
    public_key, secret_key = sntrup761_keypair()
    c_init = public_key + ALICE_PUBLIC
    assert len(c_init) == 1190
    method = KEX_METHODS[kex]
    assert method.hash_name == "sha512"
    agreement = KemHybridAgreement(Sntrup761(), "sha512")
    s_reply, k = agreement.respond(c_init, fixed(SeededRng(5)(4 * 761), BOB_PRIVATE))
    assert len(s_reply) == 1039 + 32
    assert s_reply[1039:] == BOB_PUBLIC
    kem_secret = sntrup761.decapsulate(s_reply[:1039], secret_key)
    assert k == wire.string(hashlib.sha512(kem_secret + SHARED).digest())


@pytest.mark.parametrize(
    "c_init",
    [b"", bytes(1189), bytes(1191), bytes(1158) + bytes(32)],
    ids=["empty", "short", "long", "x25519-zero"],
)
def test_bad_sntrup761_hybrid_share_is_refused(c_init: bytes) -> None:
    with pytest.raises(KeyExchangeFailed):
        KemHybridAgreement(Sntrup761(), "sha512").respond(c_init, SeededRng(1))
    message = _first_kex_message_fails(
        "sntrup761x25519-sha512@openssh.com", KexEcdhInit(client_public=c_init).encode()
    )
    assert message.reason == DisconnectReason.KEY_EXCHANGE_FAILED


# -- every method end to end, against the independent client --------------------------------


@pytest.mark.parametrize("name", CLIENT_KEX_NAMES)
def test_every_method_completes_with_the_independent_client(name: str) -> None:
    """Client and server agree on K and H (the client checks the signature over its own H),
    and a rekey with the same method keeps the first H as the session id."""
    config = make_config(kex_algorithms=tuple(KEX_METHODS))
    pair = ConnectionPair(config, kex_algorithms=(name,))
    completed = pair.handshake()[-1]
    assert isinstance(completed, KeyExchangeCompleted)
    assert completed.algorithms.kex == name
    first_h = pair.client.exchange_hash
    pair.authenticate()
    pair.client.start_kex()
    [rekeyed] = pair.transfer()
    assert isinstance(rekeyed, KeyExchangeCompleted)
    assert rekeyed.is_rekey
    assert pair.client.session_id == first_h != pair.client.exchange_hash


def test_every_implemented_method_has_a_client() -> None:
    """The end-to-end test above covers the whole registry (sntrup761 joins when it lands)."""
    assert set(KEX_METHODS) <= set(CLIENT_KEX_NAMES)


def test_default_kex_is_post_quantum_first_and_sha1_free() -> None:
    assert DEFAULT_KEX[:3] == (
        "mlkem768x25519-sha256",
        "sntrup761x25519-sha512",
        "sntrup761x25519-sha512@openssh.com",
    )
    assert not any("sha1" in name for name in KEX_METHODS)
    assert "diffie-hellman-group14-sha256" not in DEFAULT_KEX  # 112-bit: on request only
    assert not any(
        name.startswith(("ecdh-sha2", "diffie-hellman-group-exchange")) for name in DEFAULT_KEX
    )


def test_client_and_server_derive_the_same_keys() -> None:
    """Server-side agreement and a client-side hand derivation agree on K and all six keys."""
    client_private = x25519.X25519PrivateKey.from_private_bytes(ALICE_PRIVATE)
    server_public, k_server = X25519.respond(ALICE_PUBLIC, SeededRng(42))
    client_k = client_private.exchange(x25519.X25519PublicKey.from_public_bytes(server_public))
    assert k_server == wire.mpint_from_unsigned_bytes(client_k)
    k = int.from_bytes(client_k, "big")
    h = rfc_exchange_hash(b"c", b"s", b"ic", b"is", b"hk", ALICE_PUBLIC, server_public, k)
    transcript = KexTranscript(
        client_version=b"c", server_version=b"s", client_kexinit=b"ic", server_kexinit=b"is",
        host_key=b"hk",
    )  # fmt: skip
    fields = wire.string(ALICE_PUBLIC) + wire.string(server_public)
    h_server = exchange_hash("sha256", transcript, fields, k_server)
    assert h == h_server
    k_mpint = wire.mpint(k)
    for letter in b"ABCDEF":
        x = bytes((letter,))
        assert derive_key("sha256", k_server, h_server, x, h, 64) == rfc_derive(
            k_mpint, h, x, h, 64
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
    pair.authenticate()  # (no re-exchange before login)
    pair.client.start_kex()
    [completed] = pair.transfer()
    assert isinstance(completed, KeyExchangeCompleted)
    assert completed.is_rekey
    assert pair.client.exchange_hash != first_h
    assert pair.client.session_id == first_h
    assert pair.client.completed_kex == 2


def test_server_config_rejects_unknown_kex() -> None:
    """ProtocolConfig validates names once, at construction."""
    with pytest.raises(ValueError, match="unknown kex algorithm"):
        make_config(kex_algorithms=("diffie-hellman-group1-sha1",))
    with pytest.raises(
        ValueError,
        match="choose from: mlkem768x25519-sha256, sntrup761x25519-sha512, ",
    ):
        make_config(kex_algorithms=("nope",))
    assert isinstance(ServerConnection(make_config()), ServerConnection)
