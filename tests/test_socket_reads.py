"""SocketReader: the driver's reads, on real sockets (both ways of reading) and other streams."""

from __future__ import annotations

import socket

import trio
import trio.testing

from trissh.connection.socket_reads import BULK_READ, SocketReader


def _pair() -> tuple[trio.SocketStream, socket.socket]:
    ours, theirs = socket.socketpair()
    return trio.SocketStream(trio.socket.from_stdlib_socket(ours)), theirs


async def test_reads_bulk_then_small_then_end_of_stream() -> None:
    stream, peer = _pair()
    reader = SocketReader(stream)
    bulk = bytes(range(256)) * (4 * BULK_READ // 256)
    peer.sendall(bulk)
    received = bytearray()
    while len(received) < len(bulk):  # large reads: the next one tries recv first
        received += await reader.receive_some(1 << 20)
    assert received == bulk
    for chunk in (b"a", b"bc"):  # small reads: wait for readability first
        peer.sendall(chunk)
        assert await reader.receive_some(1 << 20) == chunk
    peer.close()
    assert await reader.receive_some(1 << 20) == b""
    await stream.aclose()


async def test_every_read_is_a_checkpoint() -> None:
    stream, peer = _pair()
    reader = SocketReader(stream)
    peer.sendall(bytes(2 * BULK_READ))
    for _ in range(2):  # data already there: the recv-first path must still yield
        with trio.testing.assert_checkpoints():
            await reader.receive_some(BULK_READ)
    peer.close()
    await stream.aclose()


async def test_waiting_read_is_cancellable() -> None:
    stream, peer = _pair()
    reader = SocketReader(stream)
    with trio.move_on_after(0.05) as scope:
        await reader.receive_some(100)
    assert scope.cancelled_caught
    peer.sendall(b"later")
    assert await reader.receive_some(100) == b"later"
    peer.close()
    await stream.aclose()


async def test_a_cancelled_read_consumes_nothing() -> None:
    """The driver's clock cancels reads and the connection goes on: a read cancelled on
    either path (recv first after a bulk read, or wait first) must leave the bytes queued."""
    stream, peer = _pair()
    reader = SocketReader(stream)
    bulk = bytes(range(256)) * (BULK_READ // 256)
    peer.sendall(bulk + b"next")
    received = bytearray()
    while len(received) < len(bulk):  # a bulk read: the next read tries recv first
        received += await reader.receive_some(len(bulk) - len(received))
    for _ in range(2):  # recv first, then (after a small read) wait first
        with trio.CancelScope() as scope:
            scope.cancel()
            await reader.receive_some(100)
        assert scope.cancelled_caught
        with trio.fail_after(5):  # dropped bytes would leave this read waiting
            assert await reader.receive_some(100) == b"next"
        peer.sendall(b"next")
    peer.close()
    await stream.aclose()


async def test_other_streams_use_their_own_receive() -> None:
    sender, receiver = trio.testing.memory_stream_pair()
    reader = SocketReader(receiver)
    await sender.send_all(b"hello")
    assert await reader.receive_some(100) == b"hello"
    await sender.aclose()
    assert await reader.receive_some(100) == b""
