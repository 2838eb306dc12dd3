"""ChannelHandle: how queued channel data is handed to the session's reader."""

from __future__ import annotations

import tracemalloc

import pytest
import trio
import trio.testing

from trissh.connection.channel import ChannelHandle, ChannelStream
from trissh.protocol.events import ChannelId


class _Port:
    """A connection that records acknowledgements and has ``room`` to send (a
    ``ChannelPort``: all a channel sees of its connection)."""

    def __init__(self, room: int = 1 << 20) -> None:
        self.acknowledged: list[int] = []
        self.sent: list[bytes] = []
        self.room = room
        self.space_changed = trio.Event()

    def send_room(self, channel_id: ChannelId) -> int:
        return self.room

    def send_data(self, channel_id: ChannelId, data: memoryview, *, stderr: bool) -> int:
        self.sent.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def send_eof(self, channel_id: ChannelId) -> None:
        pass

    def acknowledge(self, channel_id: ChannelId, amount: int) -> None:
        self.acknowledged.append(amount)

    def reply_request(self, channel_id: ChannelId, ok: bool) -> None:
        pass

    def finish(
        self,
        channel_id: ChannelId,
        *,
        exit_code: int | None = None,
        signal: str | None = None,
        core_dumped: bool = False,
    ) -> None:
        pass


def _handle(*chunks: bytes) -> tuple[ChannelHandle, _Port]:
    port = _Port()
    handle = ChannelHandle(port, ChannelId(0))
    for chunk in chunks:
        handle.feed(chunk)
    return handle, port


async def test_queued_packets_come_out_joined_up_to_max_bytes() -> None:
    """One read takes what arrived (one wakeup per socket read, not one per packet), never
    more than asked, and acknowledges exactly what it took."""
    handle, driver = _handle(b"a" * 10, b"b" * 10, b"c" * 10)
    assert handle.take_data(25) == b"a" * 10 + b"b" * 10 + b"c" * 5
    assert handle.take_data(None) == b"c" * 5
    assert not handle.has_data
    assert driver.acknowledged == [25, 5]


async def test_tiny_packets_cost_what_they_carry() -> None:
    """A full window of 1-byte packets (a client sending byte by byte to a program that
    does not read) must cost about the window, not a view and a packet each: ~370 bytes
    per byte queued, 750 MiB for one channel's 2 MiB window."""
    count = 100_000
    packets = [bytes(40) for _ in range(count)]  # decrypted payloads, as the core has them
    tracemalloc.start()
    try:
        handle, _ = _handle()
        before = tracemalloc.get_traced_memory()[0]
        for packet in packets:
            handle.feed(memoryview(packet)[39:])
        del packets
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 4 * count, f"{held} bytes held for {count} bytes of data"
    assert handle.take_data(None) == bytes(count)


async def test_a_packet_larger_than_max_bytes_is_split() -> None:
    big = b"z" * 5000  # queued as it came (small packets are joined on arrival)
    handle, driver = _handle(b"x" * 10, b"y" * 4, big)
    assert handle.take_data(6) == b"x" * 6
    assert handle.take_data(6) == b"x" * 4 + b"y" * 2
    assert handle.take_data(3) == b"y" * 2  # the big one would exceed 3: not split for it
    assert handle.take_data(4000) == big[:4000]
    assert handle.take_data(None) == big[4000:]
    assert driver.acknowledged == [6, 6, 2, 4000, 1000]


async def test_a_second_concurrent_sender_is_refused() -> None:
    """One sender per stream (as trio's own streams): a second is a bug, and says so."""
    handle = ChannelHandle(_Port(room=0), ChannelId(0))  # a peer whose window is shut
    stream = ChannelStream(handle)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, b"first")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await stream.send_all(b"second")
        nursery.cancel_scope.cancel()


async def test_data_wakes_only_the_reader_and_control_only_calls_on_control() -> None:
    """An upload's packets must not start the session's control forwarder, and a resize
    or signal must not wake the reader; CLOSE wakes the reader."""
    handle, _ = _handle()
    woken: list[str] = []

    async def read_wakeups() -> None:
        while True:
            await handle.wait_input()
            woken.append("input")

    handle.feed_control("HUP")  # before the session listens: queued only
    handle.on_control = lambda: woken.append("control")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_wakeups)
        await trio.testing.wait_all_tasks_blocked()
        handle.feed(b"data")
        handle.feed_eof()
        await trio.testing.wait_all_tasks_blocked()
        assert woken == ["input"]
        handle.feed_control("TERM")
        await trio.testing.wait_all_tasks_blocked()
        assert woken == ["input", "control"]
        assert list(handle.control) == ["HUP", "TERM"]
        handle.peer_close()
        await trio.testing.wait_all_tasks_blocked()
        assert woken == ["input", "control", "input"]
        nursery.cancel_scope.cancel()
