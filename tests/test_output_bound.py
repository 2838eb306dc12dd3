"""A client that never reads cannot make the server queue unbounded output (through real
sockets, with the in-process backend)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from tests.sshpeer import ClientConnection, SeededRng
from trissh.backend.memory import MemoryBackend
from trissh.connection.driver import ConnectionDriver, serve_driver
from trissh.protocol.messages import connection as conn
from trissh.protocol.messages import transport as tr

from .peer import Peer
from .support import capture_module_log, make_context, start_server
from .test_driver import user_keys

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


@pytest.mark.parametrize("cipher", ["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com"])
async def test_a_connection_ended_while_its_socket_is_full_still_says_why(
    tmp_path: Path, cipher: str
) -> None:
    """`trissh kill` (or a shutdown) while a download has filled the socket: the client
    reads what was under way, then DISCONNECT with the reason (the write in progress was
    dropped with everything after it, and the client only saw the socket close)."""
    ctx = make_context(MemoryBackend(), user_keys(tmp_path), tmp_path / "host_key")
    ours, theirs = trio.socket.socketpair()
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    driver = ConnectionDriver(trio.SocketStream(ours), ctx, conn_id="full", remote="test")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_driver, driver)
            peer = Peer(trio.SocketStream(theirs))
            # (with AES-GCM a packet's rest is one chunk, the case a plain send_all lost)
            peer.client = ClientConnection(rng=SeededRng(7), ciphers=(cipher,))
            await peer.login()
            channel = await peer.open_session(window=(1 << 32) - 1)
            await peer.exec(channel, "head -c 100000000 /dev/zero")
            await peer.expect(conn.ChannelSuccess)
            while not driver._writer._writing:  # the send loop waits for the full socket
                await trio.sleep(0.01)
            driver.end_by_operator()
            last = None
            while (message := await peer.next_message()) is not None:
                if not isinstance(message, conn.ChannelData):
                    last = message
    assert isinstance(last, tr.Disconnect), last
    assert last.description == "ended by the operator"


async def test_a_second_kill_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``trissh kill`` at once, or one while the connection already ends: one
    ``connection_ended_by_server`` line and the first reason stay (before: two lines, and
    a kill during a client's own disconnect turned client_disconnected into
    ended_by_operator in connection_closed and the metric)."""
    logged = capture_module_log(monkeypatch, "trissh.connection.driver")
    ctx = make_context(MemoryBackend(), user_keys(tmp_path), tmp_path / "host_key")
    ours, theirs = trio.socket.socketpair()
    driver = ConnectionDriver(trio.SocketStream(ours), ctx, conn_id="twice", remote="test")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_driver, driver)
            peer = Peer(trio.SocketStream(theirs))
            await peer.login()
            driver.end_by_operator()
            driver.end_by_operator()
            while await peer.next_message() is not None:
                pass
    ended = [e for e in logged if e["event"] == "connection_ended_by_server"]
    assert len(ended) == 1
    assert driver.close_reason == "ended_by_operator"
