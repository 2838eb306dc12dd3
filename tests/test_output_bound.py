"""A client that never reads cannot make the server queue unbounded output (through real
sockets, with the in-process backend)."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from tests.sshpeer import ClientConnection, SeededRng
from trissh.backend.memory import MemoryBackend
from trissh.connection.driver import ConnectionDriver

from .support import make_context, start_server

#: Messages the client sends without reading; each one gets an UNIMPLEMENTED back.
MESSAGES = 60_000


async def test_a_client_that_never_reads_stops_being_read_before_login(
    nursery: trio.Nursery, tmp_path: Path, authorized_keys: Path
) -> None:
    """Unknown message numbers after the key exchange, each answered with UNIMPLEMENTED,
    from a client that reads nothing: as sshd, the server stops reading until its output
    drains, instead of queueing every answer (megabytes per connection, for the whole
    login grace time, from clients that need no account)."""
    ctx = make_context(MemoryBackend(), authorized_keys, tmp_path / "host_key")
    server = await start_server(nursery, ctx)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", server.port))
    stream = trio.SocketStream(sock)
    client = ClientConnection(rng=SeededRng(3))
    with trio.fail_after(10):
        while not client.established:
            if data := client.data_to_send():
                await stream.send_all(data)
            client.receive_data(bytes(await stream.receive_some(65536)))
    for _ in range(MESSAGES):
        client.send(bytes([200]))
    wire = client.data_to_send()
    with trio.move_on_after(3):
        await stream.send_all(wire)  # blocks once the server stops reading
    await trio.sleep(0.5)
    [driver] = ctx.state.connections
    assert isinstance(driver, ConnectionDriver)
    assert driver.unsent_output < 1024 * 1024
    await stream.aclose()
    await server.stop()
