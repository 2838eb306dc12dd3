"""Per-direction packet protection: the only module touching symmetric primitives.

Every cipher seals a cleartext packet, given as its ``uint32 packet_length`` field and the
body after it (``padding_length || payload || padding``), into the pieces that make the wire
packet, and opens wire bytes back, verifying the tag *before* anything is parsed. The length
field is readable before the rest arrives, either in the clear (AES-GCM, RFC 5647 as OpenSSH
does it; AES-CTR with an encrypt-then-MAC ``-etm@openssh.com`` MAC), through its own key
(chacha20-poly1305@openssh.com, OpenSSH PROTOCOL.chacha20poly1305), or, for AES-CTR with a
classic encrypt-and-MAC HMAC (RFC 4253 §6.4, RFC 6668), by decrypting the first four bytes;
the decoder bounds that length before it waits for the rest, and the MAC is still checked
before any byte of the payload is used.

Cipher objects are built once per key, never per packet: AES-CTR keeps one long-lived
keystream context per direction (RFC 4344 §4), HMAC one keyed template that is copied.
MAC tags are compared in constant time (``hmac.compare_digest``).

Sealing returns pieces rather than one buffer because the writer hands them to ``writev``
as they are: joining the clear length, the ciphertext the primitive returns and the tag
would copy every byte once more, and encrypting into a pre-made buffer would zero it
first. Nothing here encrypts in place: ``cryptography`` (from 51) rejects input and output
buffers that overlap.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

from trissh.protocol.errors import MacError

_U32: Final = struct.Struct(">I")
_ZERO_BLOCK: Final = bytes(64)


#: What a cipher reads: a whole packet from the encoder, or a slice of the receive buffer.
Readable = bytes | bytearray | memoryview
#: A sealed packet: the pieces that, written in order, make its wire bytes.
WirePieces = tuple[bytes, ...]


class PacketCipher(Protocol):
    """One direction of packet protection."""

    #: Padding aligns the packet to this many bytes.
    block_size: int
    #: Bytes of authentication tag after the packet.
    tag_size: int
    #: Whether the length field is part of the aligned region (only without AEAD).
    length_in_alignment: bool

    def seal(self, sequence: int, length: bytes, body: Readable) -> WirePieces:
        """Seal one packet: ``length`` is its four-byte ``packet_length`` field, ``body``
        the rest of it in the clear. ``body`` is only read, never kept."""
        ...

    def packet_length(self, sequence: int, header: Readable) -> int:
        """Read ``packet_length`` from the first four wire bytes."""
        ...

    def open(self, sequence: int, data: Readable) -> bytes:
        """Verify and decrypt a whole wire packet; return everything after the length.

        ``data`` may be a view of the receive buffer: the result never refers to it.

        Raises:
            MacError: the tag does not match.
        """
        ...


class PlainCipher:
    """The null cipher in force until the first NEWKEYS (RFC 4253 §6)."""

    block_size = 8
    tag_size = 0
    length_in_alignment = True

    def seal(self, sequence: int, length: bytes, body: Readable) -> WirePieces:
        return length, bytes(body)

    def packet_length(self, sequence: int, header: Readable) -> int:
        return int(_U32.unpack_from(header)[0])

    def open(self, sequence: int, data: Readable) -> bytes:
        return bytes(data[4:])


#: chacha20-poly1305@openssh.com's nonce is the sequence number; ``cryptography`` wants it
#: as 16 bytes with the block counter first (zero here).
_CHACHA_NONCE: Final = struct.Struct(">8xQ")


class ChaCha20Poly1305:
    """chacha20-poly1305@openssh.com: K_2 (first 32 bytes) for the payload, K_1 for length.

    Both ChaCha20 contexts live as long as the key; each packet only resets their nonce.
    """

    block_size = 8
    tag_size = 16
    length_in_alignment = False

    def __init__(self, key: bytes) -> None:
        if len(key) != 64:
            raise ValueError("chacha20-poly1305@openssh.com needs 64 bytes of key")
        self._main = Cipher(algorithms.ChaCha20(key[:32], bytes(16)), mode=None).encryptor()
        self._length = Cipher(algorithms.ChaCha20(key[32:], bytes(16)), mode=None).encryptor()

    def _start(self, sequence: int) -> bytes:
        """Point both contexts at this packet; return its Poly1305 key (keystream block 0,
        so the payload starts at block 1)."""
        nonce = _CHACHA_NONCE.pack(sequence)
        self._length.reset_nonce(nonce)
        self._main.reset_nonce(nonce)
        return self._main.update(_ZERO_BLOCK)[:32]

    def seal(self, sequence: int, length: bytes, body: Readable) -> WirePieces:
        mac = Poly1305(self._start(sequence))
        sealed_length = self._length.update(length)
        ciphertext = self._main.update(body)
        mac.update(sealed_length)
        mac.update(ciphertext)
        return sealed_length, ciphertext, mac.finalize()

    def packet_length(self, sequence: int, header: Readable) -> int:
        self._length.reset_nonce(_CHACHA_NONCE.pack(sequence))
        return int(_U32.unpack(self._length.update(header[:4]))[0])

    def open(self, sequence: int, data: Readable) -> bytes:
        poly_key = self._start(sequence)
        view = memoryview(data)
        try:
            Poly1305.verify_tag(poly_key, view[:-16], bytes(view[-16:]))
        except InvalidSignature:
            raise MacError("message authentication failed") from None
        return self._main.update(view[4:-16])


class AesGcm:
    """aes128-gcm@openssh.com / aes256-gcm@openssh.com (RFC 5647 §7 with OpenSSH naming)."""

    block_size = 16
    tag_size = 16
    length_in_alignment = False

    def __init__(self, key: bytes, iv: bytes) -> None:
        if len(iv) != 12:
            raise ValueError("AES-GCM needs a 12-byte IV")
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:], "big")

    def _next_nonce(self) -> bytes:
        nonce = self._fixed + self._counter.to_bytes(8, "big")
        self._counter = (self._counter + 1) & 0xFFFF_FFFF_FFFF_FFFF
        return nonce

    def seal(self, sequence: int, length: bytes, body: Readable) -> WirePieces:
        # The length is associated data: in the clear, covered by the tag.
        return length, self._aead.encrypt(self._next_nonce(), body, length)

    def packet_length(self, sequence: int, header: Readable) -> int:
        return int(_U32.unpack_from(header)[0])

    def open(self, sequence: int, data: Readable) -> bytes:
        view = memoryview(data)
        try:
            return self._aead.decrypt(self._next_nonce(), view[4:], view[:4])
        except InvalidTag:
            raise MacError("message authentication failed") from None


@dataclass(frozen=True, slots=True)
class MacSpec:
    """An HMAC for the non-AEAD ciphers (RFC 6668; OpenSSH PROTOCOL §1.5 for ``-etm``)."""

    name: str
    #: A ``hashlib`` algorithm name.
    digest: str
    key_size: int
    #: Encrypt-then-MAC: the length travels in the clear and the MAC covers the ciphertext.
    etm: bool

    @property
    def tag_size(self) -> int:
        return self.key_size  # HMAC-SHA2-n: n-bit key, n-bit tag (RFC 6668 §2)


MACS: Final[dict[str, MacSpec]] = {
    spec.name: spec
    for spec in (
        MacSpec("hmac-sha2-256-etm@openssh.com", "sha256", 32, etm=True),
        MacSpec("hmac-sha2-512-etm@openssh.com", "sha512", 64, etm=True),
        MacSpec("hmac-sha2-256", "sha256", 32, etm=False),
        MacSpec("hmac-sha2-512", "sha512", 64, etm=False),
    )
}


class AesCtrHmac:
    """aes128/192/256-ctr (RFC 4344 §4) with an HMAC, either encrypt-then-MAC or classic.

    One object serves one direction, so a single CTR context is both encryptor and
    decryptor: its counter runs on across packets, exactly as the RFC's stream does.
    """

    block_size = 16

    def __init__(self, key: bytes, iv: bytes, mac: MacSpec, mac_key: bytes) -> None:
        if len(iv) != 16:
            raise ValueError("AES-CTR needs a 16-byte IV")
        if len(mac_key) != mac.key_size:
            raise ValueError(f"{mac.name} needs {mac.key_size} bytes of key")
        self._ctr = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
        self._mac = hmac.new(mac_key, digestmod=mac.digest)
        self._etm = mac.etm
        self.tag_size = mac.tag_size
        self.length_in_alignment = not mac.etm
        self._header = b""

    def _tag(self, sequence: int, *parts: Readable) -> bytes:
        mac = self._mac.copy()
        mac.update(_U32.pack(sequence))
        for part in parts:
            mac.update(part)
        return mac.digest()

    def seal(self, sequence: int, length: bytes, body: Readable) -> WirePieces:
        if self._etm:
            ciphertext = self._ctr.update(body)
            return length, ciphertext, self._tag(sequence, length, ciphertext)
        tag = self._tag(sequence, length, body)  # over the cleartext
        return self._ctr.update(length), self._ctr.update(body), tag

    def packet_length(self, sequence: int, header: Readable) -> int:
        if self._etm:
            return int(_U32.unpack_from(header)[0])
        self._header = self._ctr.update(header[:4])
        return int(_U32.unpack(self._header)[0])

    def open(self, sequence: int, data: Readable) -> bytes:
        size = self.tag_size
        view = memoryview(data)
        body, tag = view[:-size], view[-size:]
        if self._etm:
            if not hmac.compare_digest(self._tag(sequence, body), tag):
                raise MacError("message authentication failed")
            return self._ctr.update(body[4:])
        plain = self._ctr.update(body[4:])
        if not hmac.compare_digest(self._tag(sequence, self._header, plain), tag):
            raise MacError("message authentication failed")
        return plain


def _chacha(key: bytes, iv: bytes, mac: MacSpec | None, mac_key: bytes) -> PacketCipher:
    return ChaCha20Poly1305(key)


def _gcm(key: bytes, iv: bytes, mac: MacSpec | None, mac_key: bytes) -> PacketCipher:
    return AesGcm(key, iv)


def _ctr(key: bytes, iv: bytes, mac: MacSpec | None, mac_key: bytes) -> PacketCipher:
    if mac is None:
        raise ValueError("AES-CTR needs a MAC")
    return AesCtrHmac(key, iv, mac, mac_key)


@dataclass(frozen=True, slots=True)
class CipherSpec:
    """What the key derivation must produce for a cipher, and how to build it."""

    name: str
    key_size: int
    iv_size: int
    #: The cipher's block size in bytes (for padding and RFC 4344 §3.2 rekey limits).
    block_size: int
    #: ``build(key, iv, mac, mac_key)``; AEAD ciphers ignore the MAC arguments.
    build: Callable[[bytes, bytes, MacSpec | None, bytes], PacketCipher]
    #: Authenticated encryption: no separate MAC is negotiated or used.
    aead: bool = True

    @property
    def max_bytes_per_key(self) -> int:
        """RFC 4344 §3.2: rekey after 2**(L/4) blocks of L bits, as OpenSSH applies it
        (ciphers with 8-byte blocks, like chacha20-poly1305: 2**30 bytes)."""
        if self.block_size >= 16:
            return (1 << (self.block_size * 2)) * self.block_size
        return 1 << 30


CIPHERS: Final[dict[str, CipherSpec]] = {
    spec.name: spec
    for spec in (
        CipherSpec("chacha20-poly1305@openssh.com", 64, 0, 8, _chacha),
        CipherSpec("aes256-gcm@openssh.com", 32, 12, 16, _gcm),
        CipherSpec("aes128-gcm@openssh.com", 16, 12, 16, _gcm),
        CipherSpec("aes256-ctr", 32, 16, 16, _ctr, aead=False),
        CipherSpec("aes192-ctr", 24, 16, 16, _ctr, aead=False),
        CipherSpec("aes128-ctr", 16, 16, 16, _ctr, aead=False),
    )
}
