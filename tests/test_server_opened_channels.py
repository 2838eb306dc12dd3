"""Channels the server opens to the client (the agent's, ``-R``'s): what happens when the
task that opened one is gone before the client answered, or the client closes one before
that task ran. The sans-IO test client over memory streams, so the test decides when the
client answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from trissh.backend import SandboxSpec, SocketAddress
from trissh.backend.errors import ForwardError
from trissh.backend.memory import MemoryBackend, MemorySandbox
from trissh.backend.memory.network import MemoryListener
from trissh.connection.driver import serve_connection
from trissh.protocol import wire
from trissh.protocol.messages import connection as conn

from .peer import Peer, exit_status_of, output_of
from .support import make_context
from .test_driver import user_keys

AGENT_SOCKET = "/tmp/trissh-agent-test.sock"  # the connection's id is "test"


class KeptBackend(MemoryBackend):
    """Remembers its sandboxes, so the test can connect inside them."""

    def __init__(self) -> None:
        super().__init__()
        self.sandboxes: list[MemorySandbox] = []

    @asynccontextmanager
    async def open_sandbox(self, spec: SandboxSpec) -> AsyncIterator[MemorySandbox]:
        async with super().open_sandbox(spec) as sandbox:
            self.sandboxes.append(sandbox)
            yield sandbox


@asynccontextmanager
async def agent_channel_opening(
    tmp_path: Path, mode: str
) -> AsyncIterator[tuple[Peer, int, conn.ChannelOpen]]:
    """A connection whose session (``sleep 1000``) asked for the agent, and a program that
    connected to the agent socket: the client, its session and the server's agent open,
    not answered yet."""
    backend = KeptBackend()
    ctx = make_context(
        backend, user_keys(tmp_path), tmp_path / "host_key", **{"session.execution_mode": mode}
    )
    server_end, client_end = trio.testing.memory_stream_pair()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: serve_connection(server_end, ctx, conn_id="test", remote="memory")
            )
            peer = Peer(client_end, answer_keepalives=mode == "connection")
            await peer.login()
            session = await peer.open_session(0)
            peer.client.channel_request(session, "auth-agent-req@openssh.com", b"")
            await peer.exec(session, "sleep 1000")
            await peer.expect(conn.ChannelSuccess)  # the agent request
            await peer.expect(conn.ChannelSuccess)  # the exec
            [sandbox] = backend.sandboxes
            nursery.start_soon(sandbox.connect, SocketAddress(path=AGENT_SOCKET))
            opening = await peer.expect(conn.ChannelOpen)
            assert opening.channel_type == "auth-agent@openssh.com"
            yield peer, session, opening
            await peer.stream.aclose()


def confirm(peer: Peer, opening: conn.ChannelOpen, ours: int) -> None:
    peer.client.send(
        conn.ChannelOpenConfirmation(
            recipient_channel=opening.sender_channel,
            sender_channel=ours,
            initial_window=1 << 20,
            max_packet=32768,
        )
    )


async def test_a_channel_whose_opener_left_is_closed_when_the_client_confirms_it(
    tmp_path: Path,
) -> None:
    """Session mode: the session ends before the client confirms its agent channel. Once
    the client confirms, the server closes that channel (nothing is left to carry it)
    instead of keeping it open until the connection ends."""
    async with agent_channel_opening(tmp_path, "session") as (peer, session, opening):
        peer.client.channel_close(session)  # the session, and its agent socket, end
        await peer.flush()
        assert isinstance(await peer.next_message(), conn.ChannelClose)
        confirm(peer, opening, 7)
        await peer.flush()
        message = await peer.next_message()
        while isinstance(message, conn.ChannelEof):
            message = await peer.next_message()
        assert isinstance(message, conn.ChannelClose), message
        assert message.recipient_channel == 7


async def test_a_channel_closed_before_its_opener_ran_leaves_its_reused_id_alone(
    tmp_path: Path,
) -> None:
    """The client confirms the agent channel and closes it in one flight, then opens a
    session, which gets the freed id. The agent channel's task, running after, must not
    end that session (it closed it: its finish went by the id)."""
    async with agent_channel_opening(tmp_path, "connection") as (peer, _, opening):
        confirm(peer, opening, 7)
        peer.client.channel_close(opening.sender_channel)
        peer.client.open_channel(5, window=1 << 20)
        await peer.flush()
        closed = await peer.expect(conn.ChannelClose)  # the answer to the client's
        assert closed.recipient_channel == 7
        fresh = (await peer.expect(conn.ChannelOpenConfirmation)).sender_channel
        assert fresh == opening.sender_channel  # the freed id, reused
        await peer.exec(fresh, "echo still here")
        events = await peer.until_close(fresh)
        assert output_of(events) == b"still here\n"
        assert exit_status_of(events) == 0


@pytest.mark.parametrize("listener", ["agent", "remote"])
async def test_a_listener_failing_to_accept_leaves_the_connection_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: str
) -> None:
    """accept() on a listener fails (the process out of fds: EMFILE, which trio raises):
    that listener stops, the connection and its session go on (the agent's ended the
    whole connection: its nursery's ExceptionGroup escaped; fwd reviewer)."""

    async def failing_accept(self: MemoryListener) -> object:
        await trio.sleep(0.2)
        raise ForwardError("failed", "cannot accept a connection: [Errno 24] Too many open files")

    monkeypatch.setattr(MemoryListener, "accept", failing_accept)
    ctx = make_context(KeptBackend(), user_keys(tmp_path), tmp_path / "host_key")
    server_end, client_end = trio.testing.memory_stream_pair()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: serve_connection(server_end, ctx, conn_id="test", remote="memory")
            )
            peer = Peer(client_end, answer_keepalives=True)
            await peer.login()
            session = await peer.open_session(0)
            if listener == "agent":
                peer.client.channel_request(session, "auth-agent-req@openssh.com", b"")
            else:
                peer.client.global_request(
                    "tcpip-forward",
                    want_reply=True,
                    data=wire.string("localhost") + wire.uint32(9000),
                )
            await peer.exec(session, "sleep 1; echo alive")
            messages = await peer.until_close(session)
            assert output_of(messages) == b"alive\n"
            assert exit_status_of(messages) == 0
            await peer.stream.aclose()
