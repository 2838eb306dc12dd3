"""Byte-level tests for the podman stdio demuxer (h11-style feeding)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trissh.backend.podman.stdio_frames import (
    FrameDecoder,
    FrameError,
    StreamType,
    encode_frame,
)

OUT = StreamType.STDOUT
ERR = StreamType.STDERR

STREAM = (
    encode_frame(OUT, b"hello ")
    + encode_frame(OUT, b"world\n")
    + encode_frame(ERR, b"oops\n")
    + encode_frame(OUT, b"")
    + encode_frame(StreamType.SYSTEM_ERROR, b"engine says no")
    + encode_frame(OUT, b"x" * 70000)
)
EXPECTED = [
    (OUT, b"hello world\n"),
    (ERR, b"oops\n"),
    (StreamType.SYSTEM_ERROR, b"engine says no"),
    (OUT, b"x" * 70000),
]


def merged(chunks: list[tuple[StreamType, bytes]]) -> list[tuple[StreamType, bytes]]:
    """Join adjacent same-stream chunks: the canonical form, independent of slicing."""
    out: list[tuple[StreamType, bytes]] = []
    for stream, data in chunks:
        assert data, "empty chunks must never be produced"
        if out and out[-1][0] == stream:
            out[-1] = (stream, out[-1][1] + data)
        else:
            out.append((stream, data))
    return out


def feed_in_pieces(data: bytes, cuts: list[int]) -> list[tuple[StreamType, bytes]]:
    decoder = FrameDecoder()
    chunks: list[tuple[StreamType, bytes]] = []
    last = 0
    for cut in [*sorted(cuts), len(data)]:
        chunks += decoder.feed(data[last:cut])
        last = cut
    decoder.feed_eof()
    return chunks


def test_whole() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(STREAM) == EXPECTED
    decoder.feed_eof()


def test_one_byte_at_a_time() -> None:
    assert merged(feed_in_pieces(STREAM, list(range(len(STREAM))))) == EXPECTED


def test_with_trailing_partial_header_then_rest() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(ERR, b"late")
    assert decoder.feed(STREAM + frame[:3]) == EXPECTED
    assert not decoder.at_boundary
    assert decoder.feed(frame[3:]) == [(ERR, b"late")]
    assert decoder.at_boundary


@pytest.mark.parametrize("cut", range(1, 8))
def test_split_header(cut: int) -> None:
    frame = encode_frame(OUT, b"abc")
    decoder = FrameDecoder()
    assert decoder.feed(frame[:cut]) == []
    assert decoder.feed(frame[cut:]) == [(OUT, b"abc")]


def test_payload_is_streamed_before_the_frame_completes() -> None:
    frame = encode_frame(OUT, b"0123456789")
    decoder = FrameDecoder()
    assert decoder.feed(frame[:12]) == [(OUT, b"0123")]
    assert decoder.feed(frame[12:]) == [(OUT, b"456789")]


def test_zero_length_frames_produce_nothing() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(OUT, b"") * 5) == []
    assert decoder.at_boundary
    assert decoder.feed(encode_frame(ERR, b"") + encode_frame(OUT, b"a")) == [(OUT, b"a")]


def test_stdin_stream_is_reported() -> None:
    assert FrameDecoder().feed(encode_frame(StreamType.STDIN, b"i")) == [(StreamType.STDIN, b"i")]


@pytest.mark.parametrize("kind", [4, 5, 0x7F, 0xFF])
def test_unknown_stream_type_is_rejected(kind: int) -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError, match="invalid frame header"):
        decoder.feed(encode_frame(kind, b"data"))


@pytest.mark.parametrize("pad", [1, 2, 3])
def test_nonzero_padding_is_rejected(pad: int) -> None:
    header = bytearray(encode_frame(OUT, b"data"))
    header[pad] = 1
    with pytest.raises(FrameError):
        FrameDecoder().feed(bytes(header))


def test_tty_output_is_not_mistaken_for_frames() -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"hello world\r\n")


def test_absurd_length_is_rejected() -> None:
    decoder = FrameDecoder(max_frame_length=1024)
    assert decoder.feed(bytes((1, 0, 0, 0)) + (1024).to_bytes(4, "big")) == []
    decoder = FrameDecoder(max_frame_length=1024)
    with pytest.raises(FrameError, match="exceeds"):
        decoder.feed(bytes((1, 0, 0, 0)) + (1025).to_bytes(4, "big"))
    with pytest.raises(FrameError, match="exceeds"):
        FrameDecoder().feed(b"\x01\x00\x00\x00\xff\xff\xff\xff")


@pytest.mark.parametrize("cut", [1, 7, 8, 9, 12])
def test_eof_inside_a_frame_is_an_error(cut: int) -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(OUT, b"abcde")[:cut])
    with pytest.raises(FrameError, match="middle of a frame"):
        decoder.feed_eof()


def test_eof_at_boundary_is_clean() -> None:
    decoder = FrameDecoder()
    decoder.feed_eof()
    decoder.feed(encode_frame(OUT, b"abc"))
    decoder.feed_eof()


def test_accepts_memoryview_and_bytearray() -> None:
    frame = encode_frame(ERR, b"zz")
    assert FrameDecoder().feed(memoryview(frame)) == [(ERR, b"zz")]
    assert FrameDecoder().feed(bytearray(frame)) == [(ERR, b"zz")]


frames = st.lists(st.tuples(st.sampled_from([OUT, ERR]), st.binary(max_size=40)), max_size=12)


@given(frames=frames, cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=20))
def test_any_slicing_gives_the_same_chunks(
    frames: list[tuple[StreamType, bytes]], cuts: list[int]
) -> None:
    data = b"".join(encode_frame(s, p) for s, p in frames)
    cuts = [c for c in cuts if c <= len(data)]
    expected = merged([(s, p) for s, p in frames if p])
    assert merged(feed_in_pieces(data, cuts)) == expected


@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_frame_error(data: bytes) -> None:
    decoder = FrameDecoder(max_frame_length=100)
    try:
        decoder.feed(data)
        decoder.feed_eof()
    except FrameError:
        pass
