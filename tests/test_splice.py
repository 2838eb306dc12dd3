"""splice: a channel joined to a socket; what the peer sent before closing is not lost."""

from __future__ import annotations

import trio
import trio.testing

from trissh.channels.splice import Transferred, splice
from trissh.connection.channel import ChannelHandle
from trissh.ops.metrics import BYTES_REPORT_INTERVAL
from trissh.protocol import ChannelId

from .test_session import RecordingPort


async def test_data_the_peer_sent_before_its_close_still_reaches_the_socket() -> None:
    """DATA, EOF and CLOSE can arrive in one read: the CLOSE ends the direction towards the
    peer, not the delivery of what it already sent."""
    port = RecordingPort()
    handle = ChannelHandle(port, ChannelId(1))
    ours, theirs = trio.testing.memory_stream_pair()
    handle.feed(b"last words")
    handle.feed_eof()
    handle.peer_close()
    counts = Transferred()
    received = b""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(splice, handle, ours, counts)
            while data := await theirs.receive_some(1024):
                received += data
    assert received == b"last words"
    assert counts.into == len(b"last words")


async def test_a_socket_that_breaks_ends_both_directions() -> None:
    """Writing to a socket whose other end is gone ends the forward, although the peer
    has not closed the channel (a mere EOF from the socket would end one direction)."""
    port = RecordingPort()
    handle = ChannelHandle(port, ChannelId(1))
    ours, theirs = trio.testing.memory_stream_pair()
    await theirs.aclose()
    handle.feed(b"to nobody")
    with trio.fail_after(10):
        await splice(handle, ours, Transferred())


async def test_a_long_forwards_bytes_are_reported_while_it_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``trissh_forward_bytes_total`` moves while a tunnel carries data, not in one jump
    when it closes (a day-long -L showed nothing until it ended): the counts report what
    moved since the last report, at most every BYTES_REPORT_INTERVAL s, and at the end."""
    reports: list[tuple[int, int]] = []
    port = RecordingPort()
    handle = ChannelHandle(port, ChannelId(1))
    ours, theirs = trio.testing.memory_stream_pair()
    counts = Transferred(report=lambda into, out: reports.append((into, out)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(splice, handle, ours, counts)
        for _ in range(3):
            handle.feed(b"x" * 1000)
            assert await theirs.receive_some(4096) == b"x" * 1000
            await trio.sleep(BYTES_REPORT_INTERVAL)
        assert sum(into for into, _ in reports) >= 2000  # the forward still runs
        handle.feed_eof()
        await theirs.send_eof()
    counts.flush()
    assert sum(into for into, _ in reports) == 3000
