"""The binary packet protocol (RFC 4253 §6): framing, padding, sequence numbers.

``PacketDecoder`` owns the receive buffer (one ``bytearray``, trimmed in place) and
``PacketEncoder`` the send side. Each holds the cipher of its direction; the transport
swaps ciphers at NEWKEYS and may reset sequence numbers (strict kex).

Compression (``zlib@openssh.com``, OpenSSH PROTOCOL §1.3) sits between payload and packet:
the encoder deflates each payload with a sync flush; the decoder inflates after the MAC has
been verified, never beyond ``MAX_PAYLOAD_LENGTH`` bytes per packet (a decompression bomb
ends the connection with COMPRESSION_ERROR). The transport decides when either is on.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable
from typing import Final

from trissh.protocol.ciphers import PacketCipher, PlainCipher, WirePieces
from trissh.protocol.constants import MAX_PACKET_LENGTH, MAX_PAYLOAD_LENGTH, DisconnectReason
from trissh.protocol.errors import DecodeError

_U32: Final = struct.Struct(">I")
#: ``byte padding_length`` for each length, made once.
_PADDING_LENGTH_BYTES: Final = tuple(bytes((n,)) for n in range(256))
_PAD_POOL_SIZE: Final = 4096
#: The receive buffer never holds more than this; a peer that outruns the parser is cut off.
MAX_BUFFERED_INPUT: Final = 4 * MAX_PACKET_LENGTH


class PacketDecoder:
    """Turns received bytes into payloads, one packet at a time.

    Consumed packets only move a read offset; the buffer is compacted once per ``feed``
    (moving at most the tail of one partial packet), not once per packet.
    """

    __slots__ = (
        "_buffer",
        "_length",
        "_start",
        "cipher",
        "decompressor",
        "inflated",
        "max_packet_length",
        "packets",
        "sequence",
    )

    def __init__(self, max_packet_length: int = MAX_PACKET_LENGTH) -> None:
        self._buffer = bytearray()
        self._start = 0
        self._length: int | None = None
        self.cipher: PacketCipher = PlainCipher()
        #: A zlib inflater while compression is on in this direction.
        self.decompressor: zlib._Decompress | None = None
        #: Bytes inflated so far (what the work of decompression is measured in).
        self.inflated = 0
        self.sequence = 0
        self.packets = 0
        self.max_packet_length = max_packet_length

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._start

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data
        if len(self._buffer) > MAX_BUFFERED_INPUT:
            raise DecodeError("peer sent more data than the server can buffer")

    def take_raw(self, n: int) -> bytes:
        """Hand buffered bytes to a layer below packets (the version exchange)."""
        start = self._start
        chunk = bytes(self._buffer[start : start + n])
        self._start = start + len(chunk)
        return chunk

    def find_line_end(self, limit: int) -> int:
        """Index of the first LF in the first ``limit`` buffered bytes, or -1."""
        start = self._start
        end = self._buffer.find(b"\n", start, start + limit)
        return end if end < 0 else end - start

    def next_payload(self) -> bytes | None:
        """Return the next payload, or ``None`` until a whole packet has arrived.

        Raises:
            DecodeError: bad length or padding.
            MacError: the packet failed authentication.
        """
        buffer = self._buffer
        start = self._start
        cipher = self.cipher
        length = self._length
        if length is None:
            if len(buffer) - start < 4:
                return None
            length = cipher.packet_length(self.sequence, bytes(buffer[start : start + 4]))
            aligned = length + 4 if cipher.length_in_alignment else length
            if length < 5 or length > self.max_packet_length or aligned % cipher.block_size:
                raise DecodeError(f"bad packet length {length}")
            self._length = length
        end = start + 4 + length + cipher.tag_size
        if len(buffer) < end:
            return None
        with memoryview(buffer) as view:
            plain = cipher.open(self.sequence, view[start:end])
        self._start = end
        self._length = None
        padding_length = plain[0]
        if padding_length < 4 or padding_length > length - 1:
            raise DecodeError(f"bad padding length {padding_length}")
        self.sequence = (self.sequence + 1) & 0xFFFFFFFF
        self.packets += 1
        payload = plain[1 : length - padding_length]
        if self.decompressor is not None:
            payload = _inflate(self.decompressor, payload)
            self.inflated += len(payload)
        return payload


def _inflate(decompressor: zlib._Decompress, data: bytes) -> bytes:
    """Inflate one packet's payload, refusing more than ``MAX_PAYLOAD_LENGTH`` bytes."""
    try:
        payload = decompressor.decompress(data, MAX_PAYLOAD_LENGTH)
    except zlib.error:
        raise DecodeError("invalid compressed data", DisconnectReason.COMPRESSION_ERROR) from None
    if decompressor.unconsumed_tail:
        raise DecodeError(
            f"compressed payload inflates beyond {MAX_PAYLOAD_LENGTH} bytes",
            DisconnectReason.COMPRESSION_ERROR,
        )
    return payload


class PacketEncoder:
    """Turns payloads into wire packets with random padding."""

    __slots__ = (
        "_pad_pool",
        "_pad_pos",
        "_rng",
        "bytes_sent",
        "cipher",
        "compressor",
        "packets",
        "sequence",
    )

    def __init__(self, rng: Callable[[int], bytes]) -> None:
        self._rng = rng
        self._pad_pool = b""
        self._pad_pos = 0
        self.cipher: PacketCipher = PlainCipher()
        #: A zlib deflater while compression is on in this direction.
        self.compressor: zlib._Compress | None = None
        self.sequence = 0
        self.packets = 0
        self.bytes_sent = 0

    def encode(self, payload: bytes, tail: bytes | memoryview = b"") -> WirePieces:
        """Frame ``payload + tail`` into one wire packet, as the pieces the cipher seals it
        into (a scatter-gather write takes them as they are; ``b"".join`` makes the packet).
        """
        pieces: list[bytes] = []
        self.encode_each(((payload, tail),), pieces)
        return tuple(pieces)

    def encode_each(
        self, parts: Iterable[tuple[bytes, bytes | memoryview]], out: list[bytes]
    ) -> int:
        """Frame each ``payload + tail`` of ``parts`` into a wire packet, appending its pieces
        to ``out``; return how many bytes that added.

        ``tail`` spares the caller a join: for channel data the message header is
        ``payload`` and the data ``tail``, joined once here with the padding. One loop for
        many packets, with what it needs in locals, because bulk transfer is bound by the
        Python work per packet.
        """
        cipher = self.cipher
        seal = cipher.seal
        block = cipher.block_size
        # What the padding aligns besides the payload: padding_length, and packet_length
        # unless the cipher keeps it out (AEAD, -etm MACs).
        framing = 5 if cipher.length_in_alignment else 1
        compressor = self.compressor
        pool, position = self._pad_pool, self._pad_pos
        sequence = self.sequence
        packets = body_bytes = 0
        for payload, tail in parts:
            if compressor is not None:
                payload = compressor.compress(payload + tail)
                payload += compressor.flush(zlib.Z_SYNC_FLUSH)
                tail = b""
            padding_length = block - (len(payload) + len(tail) + framing) % block
            if padding_length < 4:
                padding_length += block
            if position + padding_length > len(pool):
                pool, position = self._rng(_PAD_POOL_SIZE), 0
            body = b"".join(
                (
                    _PADDING_LENGTH_BYTES[padding_length],
                    payload,
                    tail,
                    pool[position : position + padding_length],
                )
            )
            position += padding_length
            out += seal(sequence, _U32.pack(len(body)), body)
            sequence = (sequence + 1) & 0xFFFFFFFF
            packets += 1
            body_bytes += len(body)
        self._pad_pool, self._pad_pos = pool, position
        self.sequence = sequence
        self.packets += packets
        wire_bytes = body_bytes + packets * (4 + cipher.tag_size)
        self.bytes_sent += wire_bytes
        return wire_bytes
