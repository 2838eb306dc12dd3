"""Per-direction packet protection: the only module touching symmetric primitives.

Every cipher seals a complete cleartext packet (``uint32 length || padding_length ||
payload || padding``) into wire bytes and opens wire bytes back, verifying the tag
*before* anything is parsed. The length field is readable before the rest arrives, either
in the clear (AES-GCM, RFC 5647 as OpenSSH does it) or through its own key
(chacha20-poly1305@openssh.com, OpenSSH PROTOCOL.chacha20poly1305).

Cipher objects are built once per key, never per packet.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

from trissh.protocol.errors import MacError

_U32: Final = struct.Struct(">I")
_ZERO_BLOCK: Final = bytes(64)


class PacketCipher(Protocol):
    """One direction of packet protection."""

    #: Padding aligns the packet to this many bytes.
    block_size: int
    #: Bytes of authentication tag after the packet.
    tag_size: int
    #: Whether the length field is part of the aligned region (only without AEAD).
    length_in_alignment: bool

    def seal(self, sequence: int, packet: bytes) -> bytes:
        """Encrypt and authenticate one cleartext packet."""
        ...

    def packet_length(self, sequence: int, header: bytes) -> int:
        """Read ``packet_length`` from the first four wire bytes."""
        ...

    def open(self, sequence: int, data: bytes) -> bytes:
        """Verify and decrypt a whole wire packet; return everything after the length.

        Raises:
            MacError: the tag does not match.
        """
        ...


class PlainCipher:
    """The null cipher in force until the first NEWKEYS (RFC 4253 §6)."""

    block_size = 8
    tag_size = 0
    length_in_alignment = True

    def seal(self, sequence: int, packet: bytes) -> bytes:
        return packet

    def packet_length(self, sequence: int, header: bytes) -> int:
        return int(_U32.unpack_from(header)[0])

    def open(self, sequence: int, data: bytes) -> bytes:
        return data[4:]


class ChaCha20Poly1305:
    """chacha20-poly1305@openssh.com: K_2 (first 32 bytes) for the payload, K_1 for length."""

    block_size = 8
    tag_size = 16
    length_in_alignment = False

    def __init__(self, key: bytes) -> None:
        if len(key) != 64:
            raise ValueError("chacha20-poly1305@openssh.com needs 64 bytes of key")
        self._main_key = key[:32]
        self._header_key = key[32:]

    def _contexts(self, sequence: int) -> tuple[bytes, Callable[[bytes], bytes]]:
        nonce = bytes(8) + sequence.to_bytes(8, "big")
        main = Cipher(algorithms.ChaCha20(self._main_key, nonce), mode=None).encryptor()
        poly_key = main.update(_ZERO_BLOCK)[:32]  # block 0; the payload starts at block 1
        return poly_key, main.update

    def _crypt_length(self, sequence: int, header: bytes) -> bytes:
        nonce = bytes(8) + sequence.to_bytes(8, "big")
        ctx = Cipher(algorithms.ChaCha20(self._header_key, nonce), mode=None).encryptor()
        return ctx.update(header)

    def seal(self, sequence: int, packet: bytes) -> bytes:
        poly_key, crypt = self._contexts(sequence)
        body = self._crypt_length(sequence, packet[:4]) + crypt(packet[4:])
        return body + Poly1305.generate_tag(poly_key, body)

    def packet_length(self, sequence: int, header: bytes) -> int:
        return int(_U32.unpack(self._crypt_length(sequence, header[:4]))[0])

    def open(self, sequence: int, data: bytes) -> bytes:
        poly_key, crypt = self._contexts(sequence)
        body = data[:-16]
        try:
            Poly1305.verify_tag(poly_key, body, data[-16:])
        except InvalidSignature:
            raise MacError("message authentication failed") from None
        return crypt(body[4:])


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

    def seal(self, sequence: int, packet: bytes) -> bytes:
        header = packet[:4]
        return header + self._aead.encrypt(self._next_nonce(), packet[4:], header)

    def packet_length(self, sequence: int, header: bytes) -> int:
        return int(_U32.unpack_from(header)[0])

    def open(self, sequence: int, data: bytes) -> bytes:
        try:
            return self._aead.decrypt(self._next_nonce(), data[4:], data[:4])
        except InvalidTag:
            raise MacError("message authentication failed") from None


@dataclass(frozen=True, slots=True)
class CipherSpec:
    """What the key derivation must produce for a cipher, and how to build it."""

    name: str
    key_size: int
    iv_size: int
    build: Callable[[bytes, bytes], PacketCipher]
    #: Authenticated encryption: no separate MAC is negotiated or used.
    aead: bool = True


CIPHERS: Final[dict[str, CipherSpec]] = {
    spec.name: spec
    for spec in (
        CipherSpec("chacha20-poly1305@openssh.com", 64, 0, lambda k, iv: ChaCha20Poly1305(k)),
        CipherSpec("aes256-gcm@openssh.com", 32, 12, AesGcm),
        CipherSpec("aes128-gcm@openssh.com", 16, 12, AesGcm),
    )
}
