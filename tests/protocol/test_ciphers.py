"""Packet ciphers against independent references: a pure-Python chacha20-poly1305@openssh.com
(checked first against RFC 8439's own vectors) and the RFC 5647 AES-GCM nonce rule."""

from __future__ import annotations

import hmac
import struct
import zlib

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.sshpeer import SeededRng, established_pair, make_config, transfer
from trissh.protocol import DisconnectReason
from trissh.protocol.ciphers import (
    CIPHERS,
    MACS,
    AesCtrHmac,
    AesGcm,
    ChaCha20Poly1305,
    PacketCipher,
)
from trissh.protocol.errors import MacError
from trissh.protocol.messages.connection import ChannelData
from trissh.protocol.messages.transport import Disconnect
from trissh.protocol.packet import PacketDecoder, PacketEncoder

# -- a deliberately naive reference (D. J. Bernstein's original 64-bit-nonce ChaCha20) ----


def _rotl(v: int, n: int) -> int:
    return ((v << n) & 0xFFFFFFFF) | (v >> (32 - n))


def _quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF
    s[b] = _rotl(s[b] ^ s[c], 7)


def chacha20_block(key: bytes, counter_and_nonce: bytes) -> bytes:
    """One 64-byte block; the last four state words come from ``counter_and_nonce``."""
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    state += struct.unpack("<8I", key) + struct.unpack("<4I", counter_and_nonce)
    working = list(state)
    for _ in range(10):
        _quarter(working, 0, 4, 8, 12)
        _quarter(working, 1, 5, 9, 13)
        _quarter(working, 2, 6, 10, 14)
        _quarter(working, 3, 7, 11, 15)
        _quarter(working, 0, 5, 10, 15)
        _quarter(working, 1, 6, 11, 12)
        _quarter(working, 2, 7, 8, 13)
        _quarter(working, 3, 4, 9, 14)
    return struct.pack("<16I", *((w + s) & 0xFFFFFFFF for w, s in zip(working, state, strict=True)))


def chacha20_djb(key: bytes, nonce8: bytes, counter: int, data: bytes) -> bytes:
    """ChaCha20 with a 64-bit little-endian block counter and a 64-bit nonce (OpenSSH)."""
    out = bytearray()
    for i in range(0, len(data), 64):
        block = chacha20_block(key, struct.pack("<Q", counter + i // 64) + nonce8)
        out += bytes(x ^ y for x, y in zip(data[i : i + 64], block, strict=False))
    return bytes(out)


def poly1305(key: bytes, message: bytes) -> bytes:
    r = int.from_bytes(key[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(key[16:], "little")
    p = (1 << 130) - 5
    acc = 0
    for i in range(0, len(message), 16):
        chunk = message[i : i + 16] + b"\x01"
        acc = (acc + int.from_bytes(chunk, "little")) * r % p
    return ((acc + s) & ((1 << 128) - 1)).to_bytes(16, "little")


def reference_chacha20_poly1305_seal(key: bytes, sequence: int, packet: bytes) -> bytes:
    """OpenSSH PROTOCOL.chacha20poly1305, written from the spec text."""
    k_main, k_header = key[:32], key[32:]
    nonce = sequence.to_bytes(8, "big")
    encrypted_length = chacha20_djb(k_header, nonce, 0, packet[:4])
    poly_key = chacha20_djb(k_main, nonce, 0, bytes(32))
    encrypted_body = chacha20_djb(k_main, nonce, 1, packet[4:])
    body = encrypted_length + encrypted_body
    return body + poly1305(poly_key, body)


def test_reference_chacha20_matches_rfc8439_block_vector() -> None:
    """RFC 8439 §2.3.2: the reference block function is right before it judges anything."""
    key = bytes(range(32))
    block = chacha20_block(key, bytes.fromhex("01000000000000090000004a00000000"))
    assert block.hex() == (
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
    )


def test_reference_poly1305_matches_rfc8439_vector() -> None:
    """RFC 8439 §2.5.2."""
    key = bytes.fromhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
    tag = poly1305(key, b"Cryptographic Forum Research Group")
    assert tag.hex() == "a8061dc1305136c6c22b8baf0c0127a9"


def _seal(cipher: PacketCipher, sequence: int, packet: bytes) -> bytes:
    """The wire bytes of the cleartext ``packet`` (length field included)."""
    return b"".join(cipher.seal(sequence, packet[:4], packet[4:]))


def _packet(payload: bytes, block: int, rng: SeededRng, *, with_length: bool = False) -> bytes:
    """A cleartext packet padded to ``block`` (counting the length field ``with_length``)."""
    padding = block - (len(payload) + (5 if with_length else 1)) % block
    if padding < 4:
        padding += block
    return struct.pack(">IB", len(payload) + padding + 1, padding) + payload + rng(padding)


@pytest.mark.parametrize("sequence", [0, 1, 7, 0xFFFFFFFF])
@pytest.mark.parametrize("size", [1, 27, 64, 200])
def test_chacha20_poly1305_matches_reference(sequence: int, size: int) -> None:
    """seal() equals the independent implementation, and open() inverts it."""
    rng = SeededRng(sequence * 1000 + size)
    key = rng(64)
    packet = _packet(rng(size), 8, rng)
    cipher = ChaCha20Poly1305(key)
    sealed = _seal(cipher, sequence, packet)
    assert sealed == reference_chacha20_poly1305_seal(key, sequence, packet)
    assert cipher.packet_length(sequence, sealed[:4]) == len(packet) - 4
    assert cipher.open(sequence, sealed) == packet[4:]


def test_chacha20_poly1305_depends_on_sequence_number() -> None:
    """The sequence number is the nonce: other numbers give other bytes and fail to open."""
    rng = SeededRng(3)
    cipher = ChaCha20Poly1305(rng(64))
    packet = _packet(b"payload", 8, rng)
    sealed = _seal(cipher, 5, packet)
    assert sealed != _seal(cipher, 6, packet)
    assert cipher.packet_length(6, sealed[:4]) != len(packet) - 4
    with pytest.raises(MacError):
        cipher.open(6, sealed)
    assert cipher.open(5, sealed) == packet[4:]


def test_chacha20_poly1305_halves_of_the_key_have_separate_roles() -> None:
    """K_1 (second half) only encrypts the length; K_2 (first half) the rest and the tag."""
    rng = SeededRng(4)
    key = rng(64)
    packet = _packet(b"payload", 8, rng)
    changed_header_key = _seal(ChaCha20Poly1305(key[:32] + bytes(32)), 0, packet)
    original = _seal(ChaCha20Poly1305(key), 0, packet)
    assert changed_header_key[4:-16] == original[4:-16]
    assert changed_header_key[:4] != original[:4]


def test_aes_gcm_nonce_is_fixed_field_and_invocation_counter() -> None:
    """RFC 5647 §7.1: nonce = iv[:4] || 64-bit counter from iv[4:], +1 per packet."""
    rng = SeededRng(5)
    key, iv = rng(16), bytes.fromhex("0011223300000000000000ff")
    cipher = AesGcm(key, iv)
    reference = AESGCM(key)
    for i in range(3):
        packet = _packet(rng(20 + i), 16, rng)
        sealed = _seal(cipher, 999, packet)
        nonce = iv[:4] + (0xFF + i).to_bytes(8, "big")
        assert sealed[:4] == packet[:4], "the length travels in the clear"
        assert sealed[4:] == reference.encrypt(nonce, packet[4:], packet[:4])


def test_aes_gcm_invocation_counter_wraps_at_64_bits() -> None:
    """The counter is a 64-bit integer modulo 2^64; the fixed field never changes."""
    rng = SeededRng(6)
    key, iv = rng(32), bytes.fromhex("deadbeefffffffffffffffff")
    cipher = AesGcm(key, iv)
    packet = _packet(b"x", 16, rng)
    _seal(cipher, 0, packet)
    sealed = _seal(cipher, 1, packet)
    nonce = bytes.fromhex("deadbeef0000000000000000")
    assert sealed[4:] == AESGCM(key).encrypt(nonce, packet[4:], packet[:4])


def test_aes_gcm_packets_must_be_opened_in_order() -> None:
    """Opening skips no nonce: a replayed or reordered packet fails."""
    rng = SeededRng(7)
    key, iv = rng(16), rng(12)
    sender, receiver = AesGcm(key, iv), AesGcm(key, iv)
    _first, second = (_seal(sender, 0, _packet(p, 16, rng)) for p in (b"one", b"two"))
    with pytest.raises(MacError):
        receiver.open(0, second)


#: Every (cipher, MAC) pair a connection can negotiate: AEAD ciphers ignore the MAC list.
SUITES = [(name, None) for name, spec in CIPHERS.items() if spec.aead] + [
    (name, mac) for name, spec in CIPHERS.items() if not spec.aead for mac in MACS
]
SUITE_IDS = [f"{cipher}+{mac}" if mac else cipher for cipher, mac in SUITES]


def _build(name: str, mac: str | None, rng: SeededRng) -> tuple[PacketCipher, PacketCipher]:
    spec = CIPHERS[name]
    mac_spec = MACS[mac] if mac else None
    key, iv = rng(spec.key_size), rng(spec.iv_size)
    mac_key = rng(mac_spec.key_size) if mac_spec else b""
    return (
        spec.build(key, iv, mac_spec, mac_key),
        spec.build(key, iv, mac_spec, mac_key),
    )


@pytest.mark.parametrize(("name", "mac"), SUITES, ids=SUITE_IDS)
def test_flipping_any_bit_raises_mac_error(name: str, mac: str | None) -> None:
    """Every single-bit change of a sealed packet (length, body or tag) is detected."""
    rng = SeededRng(8)
    sender, _ = _build(name, mac, rng)
    packet = _packet(b"important", sender.block_size, rng, with_length=sender.length_in_alignment)
    sealed = _seal(sender, 3, packet)
    for bit in range(len(sealed) * 8):
        tampered = bytearray(sealed)
        tampered[bit // 8] ^= 1 << (bit % 8)
        _, receiver = _build(name, mac, SeededRng(8))
        receiver.packet_length(3, bytes(tampered[:4]))
        with pytest.raises(MacError):
            receiver.open(3, bytes(tampered))


@pytest.mark.parametrize(("name", "mac"), SUITES, ids=SUITE_IDS)
def test_packet_codec_round_trip_and_alignment(name: str, mac: str | None) -> None:
    """The encoder pads to the block size with ≥4 bytes; the decoder returns the payload."""
    rng = SeededRng(9)
    sender, receiver = _build(name, mac, rng)
    _, lengths = _build(name, mac, SeededRng(9))
    encoder = PacketEncoder(rng)
    decoder = PacketDecoder()
    encoder.cipher, decoder.cipher = sender, receiver
    payloads = [b"\x05", bytes(range(256)), b"\x5e" * 5000]
    for sequence, payload in enumerate(payloads):
        sealed = b"".join(encoder.encode(payload))
        length = lengths.packet_length(sequence, sealed[:4])
        lengths.open(sequence, sealed)  # keeps a CTR keystream in step
        aligned = length if not sender.length_in_alignment else length + 4
        assert aligned % sender.block_size == 0
        assert length - 1 - len(payload) >= 4
        decoder.feed(sealed)
    assert [decoder.next_payload() for _ in payloads] == payloads
    assert decoder.next_payload() is None
    assert decoder.sequence == encoder.sequence == 3


@pytest.mark.parametrize(("name", "mac"), SUITES, ids=SUITE_IDS)
def test_encoder_pieces_are_what_the_cipher_seals(name: str, mac: str | None) -> None:
    """The encoder's pieces, written in order, are the wire bytes of ``seal`` on the
    cleartext (checked against references above). They are bytes of their own, never views
    of the caller's data: the queue holds them until the socket takes them, and the caller's
    buffer (here a view into a larger one) is left as it was."""
    sender, _ = _build(name, mac, SeededRng(10))
    copier, receiver = _build(name, mac, SeededRng(10))
    encoder = PacketEncoder(SeededRng(11))
    encoder.cipher = sender
    source = bytes(SeededRng(12)(40_000))
    total = 0
    for sequence, (start, end) in enumerate([(0, 32_768), (5, 6), (32_768, 40_000)]):
        header = struct.pack(">BII", 94, 0, end - start)  # CHANNEL_DATA's fields before the data
        pieces = encoder.encode(header, memoryview(source)[start:end])
        assert all(type(piece) is bytes for piece in pieces)
        sealed = b"".join(pieces)
        total += len(sealed)
        assert encoder.bytes_sent == total
        length = receiver.packet_length(sequence, sealed[:4])
        cleartext = struct.pack(">I", length) + receiver.open(sequence, sealed)
        assert cleartext[5 : 5 + 9 + end - start] == header + source[start:end]
        assert sealed == _seal(copier, sequence, cleartext)
    assert source == bytes(SeededRng(12)(40_000))


@pytest.mark.parametrize(("name", "mac"), SUITES, ids=SUITE_IDS)
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "zlib"])
def test_encoding_a_batch_is_encoding_each_packet(
    name: str, mac: str | None, compressed: bool
) -> None:
    """encode_each (the bulk path) gives the bytes, sequence numbers and counters of one
    encode per packet, and returns the wire bytes it appended."""
    parts = [(struct.pack(">BII", 94, 0, n), bytes(SeededRng(n)(n))) for n in (1, 300, 32_768, 7)]
    one_by_one, batched = PacketEncoder(SeededRng(13)), PacketEncoder(SeededRng(13))
    for encoder in (one_by_one, batched):
        encoder.cipher = _build(name, mac, SeededRng(14))[0]
        encoder.compressor = zlib.compressobj(6) if compressed else None
    expected = b"".join(b"".join(one_by_one.encode(header, data)) for header, data in parts)
    out: list[bytes] = [b"queued before"]
    assert batched.encode_each(parts, out) == len(expected)
    assert out[0] == b"queued before"
    assert b"".join(out[1:]) == expected
    assert (batched.sequence, batched.packets, batched.bytes_sent) == (
        one_by_one.sequence,
        one_by_one.packets,
        one_by_one.bytes_sent,
    )


@pytest.mark.parametrize(("cipher", "mac"), SUITES, ids=SUITE_IDS)
def test_tampered_packet_disconnects_with_mac_error(cipher: str, mac: str | None) -> None:
    """A flipped bit in a live connection raises MacError with DISCONNECT(MAC_ERROR) queued."""
    config = make_config(ciphers=(cipher,), macs=tuple(MACS))
    pair = established_pair(config, ciphers=(cipher,), macs=(mac,) if mac else ())
    assert pair.server.algorithms is not None
    assert pair.server.algorithms.mac_client_to_server == mac
    pair.client.send(ChannelData(recipient_channel=0, data=b"x" * 40))
    wire_bytes = bytearray(pair.client.data_to_send())
    wire_bytes[-1 if mac and not MACS[mac].etm else 20] ^= 0x01
    pair.server.receive_data(bytes(wire_bytes))
    with pytest.raises(MacError) as info:
        pair.server.next_event()
    assert info.value.reason == DisconnectReason.MAC_ERROR
    transfer(pair.server, pair.client)
    [message] = pair.client.take_all()
    assert isinstance(message, Disconnect)
    assert message.reason == DisconnectReason.MAC_ERROR


# -- AES-CTR and HMAC (RFC 4344 §4, RFC 6668, OpenSSH PROTOCOL §1.5) ------------------------

#: NIST SP 800-38A F.5.1 CTR-AES128.Encrypt.
SP800_38A_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
SP800_38A_COUNTER = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
SP800_38A_PLAIN = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)
SP800_38A_CIPHER = bytes.fromhex(
    "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
    "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee"
)


def test_aes_ctr_matches_sp800_38a_across_packets() -> None:
    """The keystream runs on across packets: two 32-byte packets give the NIST vector."""
    mac_key = bytes(32)
    cipher = AesCtrHmac(SP800_38A_KEY, SP800_38A_COUNTER, MACS["hmac-sha2-256"], mac_key)
    first = _seal(cipher, 0, SP800_38A_PLAIN[:32])
    second = _seal(cipher, 1, SP800_38A_PLAIN[32:])
    assert first[:32] + second[:32] == SP800_38A_CIPHER


def _hmac(name: str, key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, name).digest()


@pytest.mark.parametrize("mac", sorted(MACS))
def test_hmac_construction_matches_the_specification(mac: str) -> None:
    """Encrypt-and-MAC: HMAC(seq || cleartext packet) after the ciphertext (RFC 4253 §6.4).
    Encrypt-then-MAC: clear length, ciphertext, HMAC(seq || length || ciphertext)."""
    spec = MACS[mac]
    rng = SeededRng(11)
    key, iv, mac_key = rng(16), rng(16), rng(spec.key_size)
    packet = _packet(b"payload bytes", 16, rng, with_length=not spec.etm)
    sealed = _seal(AesCtrHmac(key, iv, spec, mac_key), 77, packet)
    stream = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    seq = (77).to_bytes(4, "big")
    if spec.etm:
        body = packet[:4] + stream.update(packet[4:])
        assert sealed == body + _hmac(spec.digest, mac_key, seq + body)
    else:
        assert sealed == stream.update(packet) + _hmac(spec.digest, mac_key, seq + packet)
    assert len(sealed) - len(packet) == spec.tag_size == spec.key_size


@pytest.mark.parametrize(("name", "mac"), [s for s in SUITES if s[1]], ids=SUITE_IDS[3:])
def test_ctr_round_trip_over_many_packets(name: str, mac: str) -> None:
    """Sequence numbers and one long-lived CTR context per direction stay in step."""
    rng = SeededRng(12)
    sender, receiver = _build(name, mac, rng)
    for sequence in range(50):
        packet = _packet(rng(sequence * 7 + 1), 16, rng, with_length=sender.length_in_alignment)
        sealed = _seal(sender, sequence, packet)
        assert receiver.packet_length(sequence, sealed[:4]) == len(packet) - 4
        assert receiver.open(sequence, sealed) == packet[4:]


def test_rfc4344_rekey_limits() -> None:
    """2**(L/4) blocks for L-bit blocks (AES: 2**32 blocks, 64 GiB); chacha (8-byte blocks)
    1 GiB, as OpenSSH."""
    assert CIPHERS["aes128-ctr"].max_bytes_per_key == 1 << 36
    assert CIPHERS["aes256-gcm@openssh.com"].max_bytes_per_key == 1 << 36
    assert CIPHERS["chacha20-poly1305@openssh.com"].max_bytes_per_key == 1 << 30
