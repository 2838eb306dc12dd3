"""Sans-IO demuxer for podman's multiplexed (non-tty) attach/exec stream.

Theory of operation
-------------------
Without a tty, podman (like Docker) frames the process output on the hijacked connection::

    [stream: 1 byte][0, 0, 0][length: uint32 big-endian][payload: length bytes]

with stream 0 = stdin, 1 = stdout, 2 = stderr, 3 = "system error" (a message from the
engine itself). :class:`FrameDecoder` turns arbitrary slices of that byte stream into
``(stream, payload)`` chunks. It never buffers a whole frame: a payload is handed out as soon
as any of it has arrived, so memory is bounded by the input slice, not by the frame length
the peer claims. Adjacent chunks of the same stream within one ``feed`` are joined, which
turns many small frames (podman forwards conmon's reads as they come) into few large
chunks for the consumer.

A header with a stream number above 3 or non-zero padding means we are not reading a frame
boundary (a tty stream fed to the demuxer, or a desync); the decoder raises
:class:`FrameError` rather than guess. A claimed length above ``max_frame_length`` is
rejected for the same reason.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["HEADER_LENGTH", "FrameDecoder", "FrameError", "StreamType", "encode_frame"]

HEADER_LENGTH: Final = 8
#: Podman forwards reads of at most a few tens of KiB; anything near this is a desync.
DEFAULT_MAX_FRAME_LENGTH: Final = 16 * 1024 * 1024


class StreamType(enum.IntEnum):
    """The first header byte: which stream a frame's payload belongs to."""

    STDIN = 0
    STDOUT = 1
    STDERR = 2
    #: An error message from the engine rather than from the process.
    SYSTEM_ERROR = 3


class FrameError(Exception):
    """The byte stream is not a valid frame sequence (unknown stream, bad padding, EOF)."""


def encode_frame(stream: StreamType | int, payload: bytes) -> bytes:
    """Build one frame; used by tests and by anything that fakes the engine's side."""
    return bytes((int(stream), 0, 0, 0)) + len(payload).to_bytes(4, "big") + payload


class FrameDecoder:
    """Feed bytes in, get ``(StreamType, bytes)`` chunks out; ``feed_eof`` checks the end."""

    def __init__(self, *, max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH) -> None:
        self._max_frame_length = max_frame_length
        self._header = bytearray()
        #: The current frame's stream while inside a payload, else ``None``.
        self._stream: StreamType | None = None
        self._remaining = 0

    @property
    def at_boundary(self) -> bool:
        """True between frames: EOF here is clean."""
        return self._stream is None and not self._header

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[StreamType, bytes]]:
        """Consume ``data``; return the payload chunks it completed or continued.

        Zero-length frames produce nothing (an empty chunk would look like EOF downstream).

        Raises:
            FrameError: a header is invalid; the decoder must not be used afterwards.
        """
        view = memoryview(data)
        out: list[tuple[StreamType, bytes]] = []
        run_stream: StreamType | None = None
        run: list[memoryview] = []
        pos = 0
        end = len(view)
        while pos < end:
            if self._stream is None:
                need = HEADER_LENGTH - len(self._header)
                if not self._header and end - pos >= HEADER_LENGTH:
                    header = view[pos : pos + HEADER_LENGTH]
                    pos += HEADER_LENGTH
                else:
                    self._header += view[pos : pos + need]
                    pos += min(need, end - pos)
                    if len(self._header) < HEADER_LENGTH:
                        break
                    header = memoryview(bytes(self._header))
                    self._header.clear()
                self._start_frame(header)
                continue
            take = min(self._remaining, end - pos)
            if run_stream is not self._stream and run:
                out.append((_stream(run_stream), _join(run)))
                run = []
            run_stream = self._stream
            run.append(view[pos : pos + take])
            pos += take
            self._remaining -= take
            if self._remaining == 0:
                self._stream = None
        if run:
            out.append((_stream(run_stream), _join(run)))
        return out

    def feed_eof(self) -> None:
        """Check that the stream ended on a frame boundary.

        Raises:
            FrameError: EOF inside a header or a payload (truncated output).
        """
        if not self.at_boundary:
            raise FrameError("stream ended in the middle of a frame")

    def _start_frame(self, header: memoryview) -> None:
        kind = header[0]
        if kind > StreamType.SYSTEM_ERROR or header[1] or header[2] or header[3]:
            raise FrameError(f"invalid frame header {bytes(header).hex()}")
        length = int.from_bytes(header[4:8], "big")
        if length > self._max_frame_length:
            raise FrameError(f"frame length {length} exceeds {self._max_frame_length}")
        if length:
            self._stream = StreamType(kind)
            self._remaining = length


def _stream(stream: StreamType | None) -> StreamType:
    assert stream is not None
    return stream


def _join(parts: list[memoryview]) -> bytes:
    if len(parts) == 1:
        return parts[0].tobytes()
    return b"".join(parts)
