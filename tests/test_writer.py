"""OutputWriter on a real socketpair, below the core (a stand-in that only queues chunks):
what a write cut short by the connection's end leaves, and what the last flush sends."""

from __future__ import annotations

import os
import socket
from typing import cast

import pytest
import trio

from trissh.connection.writer import OutputWriter
from trissh.protocol import ServerConnection

PACKET = b"P" * 200_000


class QueuedOutput:
    """The two things the writer asks of the core: how much is queued, and take it."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    @property
    def pending_output_size(self) -> int:
        return sum(map(len, self.chunks))

    def take_output(self) -> list[bytes]:
        chunks, self.chunks = self.chunks, []
        return chunks


@pytest.mark.parametrize("socket_full", [False, True], ids=["under-way", "not-started"])
async def test_the_last_flush_sends_the_rest_of_a_single_chunk_write_first(
    socket_full: bool,
) -> None:
    """The send loop holds one chunk (with AES-GCM a packet's rest is one) when the end
    cancels it: the last flush sends that rest, then the DISCONNECT, so the client can
    read both (it sent the DISCONNECT after a cut packet: a MAC error, or nothing)."""
    ours, theirs = trio.socket.socketpair()
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    core = QueuedOutput()
    writer = OutputWriter(trio.SocketStream(ours), cast("ServerConnection", core))
    filler = 0
    if socket_full:
        while True:
            try:
                filler += os.write(ours.fileno(), b"F" * 1024)
            except BlockingIOError:
                break
    async with trio.open_nursery() as nursery:
        writer.attach(nursery)
        core.chunks = [PACKET]
        writer.ring()
        await trio.sleep(0.2)  # the send loop waits for the full socket
        nursery.cancel_scope.cancel()
    core.chunks = [b"<DISCONNECT>"]
    received = bytearray()

    async def read() -> None:
        while data := await theirs.recv(65536):
            received.extend(data)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await writer.flush_and_close()
    assert bytes(received) == b"F" * filler + PACKET + b"<DISCONNECT>"
