"""The trio driver over memory streams, with the sans-IO test client and the in-process backend.

No sockets and no podman: these tests pin down the nursery tree's behaviour — how a
session ends on the wire, flow control both ways, login grace on the mock clock, and that
every way a connection or channel can end leaves no sandbox or process behind.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.sshpeer import USER_KEY, ed25519_blob
from trissh.backend import BackendUnavailable
from trissh.backend.memory import MemoryBackend
from trissh.connection.driver import REKEY_PACING, serve_connection
from trissh.connection.port import ConnectionPort
from trissh.protocol import DisconnectReason, wire
from trissh.protocol.messages import connection as conn
from trissh.protocol.messages import transport as tr
from trissh.protocol.wire import Reader
from trissh.server.state import ServerContext

from .peer import Peer, exit_status_of, output_of
from .support import capture_module_log, make_context

StreamPair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]
STREAM_PAIRS: dict[str, StreamPair] = {
    "buffered": trio.testing.memory_stream_pair,
    "lockstep": trio.testing.lockstep_stream_pair,
}


def user_keys(tmp_path: Path) -> Path:
    """An authorized_keys file with the test client's key."""
    keys = tmp_path / "authorized_keys"
    keys.write_text("ssh-ed25519 " + base64.b64encode(ed25519_blob(USER_KEY)).decode() + "\n")
    return keys


@pytest.fixture
def ctx(memory_backend: MemoryBackend, tmp_path: Path) -> ServerContext:
    return make_context(memory_backend, user_keys(tmp_path), tmp_path / "host_key")


@asynccontextmanager
async def connected(
    ctx: ServerContext, pair: StreamPair = trio.testing.memory_stream_pair
) -> AsyncIterator[Peer]:
    """Serve one connection in the background; yield the client's end."""
    server_end, client_end = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: serve_connection(server_end, ctx, conn_id="test", remote="memory")
        )
        yield Peer(client_end)


@pytest.mark.parametrize("pair", STREAM_PAIRS.values(), ids=STREAM_PAIRS.keys())
async def test_exec_ends_with_data_status_eof_close(
    ctx: ServerContext,
    memory_backend: MemoryBackend,
    pair: StreamPair,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Output, then exit-status, then EOF, then CLOSE: sshd's order. A client that hangs
    up at CLOSE (as ``ssh`` does) still gets its session's end logged."""
    logs = capture_module_log(monkeypatch, "trissh.channels.session")
    finish = ConnectionPort.finish

    def noting_finish(port: ConnectionPort, *args: Any, **kwargs: Any) -> None:
        logs.append({"event": "(channel finished)"})
        finish(port, *args, **kwargs)

    monkeypatch.setattr(ConnectionPort, "finish", noting_finish)
    with trio.fail_after(10):
        async with connected(ctx, pair) as peer:
            await peer.login()
            channel = await peer.open_session()
            await peer.exec(channel, "echo hi; exit 3")
            messages = await peer.until_close(channel)
            kinds = [type(m).__name__ for m in messages]
            assert kinds == [
                "ChannelSuccess", "ChannelData", "ChannelRequest", "ChannelEof", "ChannelClose"
            ]  # fmt: skip
            assert output_of(messages) == b"hi\n"
            assert exit_status_of(messages) == 3
            await peer.stream.aclose()
    assert (memory_backend.live_sandboxes, memory_backend.live_processes) == (0, 0)
    # Logged before the channel's end is sent, so a cancel after it cannot lose the line.
    events = [e["event"] for e in logs]
    assert events[-2:] == ["session_ended", "(channel finished)"]
    assert [e["exit_code"] for e in logs if e["event"] == "session_ended"] == [3]


async def test_small_client_window_is_never_exceeded(ctx: ServerContext) -> None:
    """With a 1000-byte window the server sends only what the client granted, and all of it."""
    with trio.fail_after(20):
        async with connected(ctx) as peer:
            await peer.login()
            channel = await peer.open_session(window=1000)
            await peer.exec(channel, "head -c 300000 /dev/zero")
            granted, received = 1000, 0
            while True:
                message = await peer.next_message()
                if isinstance(message, conn.ChannelData):
                    received += len(message.data)
                    assert received <= granted, "server overran the client's window"
                    peer.client.window_adjust(channel, len(message.data))
                    granted += len(message.data)
                if isinstance(message, conn.ChannelClose):
                    break
            assert received == 300_000
            await peer.stream.aclose()


async def test_upload_is_throttled_by_our_window_and_arrives_whole(ctx: ServerContext) -> None:
    """5 MB of stdin (more than the 2 MiB window) flows through `cat` and back, exactly."""
    data = bytes(range(256)) * (5_000_000 // 256)
    with trio.fail_after(30):
        async with connected(ctx) as peer:
            await peer.login()
            channel = await peer.open_session(window=1 << 30)
            await peer.exec(channel, "cat")
            window = 2 * 1024 * 1024
            sent = 0
            echoed = bytearray()
            while sent < len(data) or len(echoed) < len(data):
                if sent < len(data) and window > 0:
                    chunk = data[sent : sent + min(32768, window)]
                    peer.client.channel_data(channel, chunk)
                    sent += len(chunk)
                    window -= len(chunk)
                    if sent == len(data):
                        peer.client.channel_eof(channel)
                    await peer.flush()
                    continue
                message = await peer.next_message()
                if isinstance(message, conn.ChannelWindowAdjust):
                    window += message.bytes_to_add
                elif isinstance(message, conn.ChannelData):
                    echoed += message.data
            assert bytes(echoed) == data
            await peer.stream.aclose()


async def test_login_grace_time_disconnects_idle_clients(
    ctx: ServerContext, autojump_clock: trio.testing.MockClock
) -> None:
    """No authentication within login_grace_time: DISCONNECT, then the stream closes."""
    async with connected(ctx) as peer:
        start = trio.current_time()
        while not peer.client.established:
            assert await peer._read()
        await peer.expect(tr.ExtInfo)
        message = await peer.next_message()
        assert isinstance(message, tr.Disconnect)
        assert message.reason == DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE
        assert "login grace" in message.description
        assert await peer.next_message() is None
        assert trio.current_time() - start == pytest.approx(120, abs=1)


async def test_client_vanishing_mid_session_cleans_up(
    ctx: ServerContext, memory_backend: MemoryBackend
) -> None:
    """The stream ending while a command runs cancels the session and removes everything."""
    with trio.fail_after(10):
        async with connected(ctx) as peer:
            await peer.login()
            channel = await peer.open_session()
            await peer.exec(channel, "sleep 1000")
            await peer.expect(conn.ChannelSuccess)
            assert memory_backend.live_processes == 1
            await peer.stream.aclose()
    assert (memory_backend.live_sandboxes, memory_backend.live_processes) == (0, 0)


async def test_peer_closing_a_channel_kills_only_that_session(
    ctx: ServerContext, memory_backend: MemoryBackend
) -> None:
    """CLOSE from the client ends its process; the connection and its container live on."""
    with trio.fail_after(10):
        async with connected(ctx) as peer:
            await peer.login()
            first = await peer.open_session(0)
            await peer.exec(first, "sleep 1000")
            await peer.expect(conn.ChannelSuccess)
            peer.client.channel_close(first)
            await peer.flush()
            assert isinstance(await peer.next_message(), conn.ChannelClose)
            assert memory_backend.live_processes == 0
            assert memory_backend.live_sandboxes == 1
            second = await peer.open_session(1)
            await peer.exec(second, "echo again")
            messages = await peer.until_close(second)
            assert output_of(messages) == b"again\n"
            await peer.stream.aclose()
    assert memory_backend.live_sandboxes == 0


async def test_backend_failure_is_told_and_the_connection_stays_usable(
    ctx: ServerContext, memory_backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Podman down: a one-line reason on stderr and exit 255; the next session succeeds.
    The operator's line comes when the start begun at the channel's opening fails."""
    logs = capture_module_log(monkeypatch, "trissh.connection.sandboxes")
    memory_backend.fail_next_sandbox = BackendUnavailable("container backend unavailable")
    with trio.fail_after(10):
        async with connected(ctx) as peer:
            await peer.login()
            channel = await peer.open_session(0)
            await peer.exec(channel, "true")
            messages = await peer.until_close(channel)
            stderr = b"".join(m.data for m in messages if isinstance(m, conn.ChannelExtendedData))
            assert stderr == b"trissh: container backend unavailable\n"
            assert exit_status_of(messages) == 255
            retry = await peer.open_session(1)
            await peer.exec(retry, "echo ok")
            assert output_of(await peer.until_close(retry)) == b"ok\n"
            await peer.stream.aclose()
    assert [(e["event"], e["error"]) for e in logs] == [
        ("container_start_failed", "container backend unavailable")
    ]


async def test_connection_container_starts_with_the_first_session_channel(
    ctx: ServerContext, memory_backend: MemoryBackend
) -> None:
    """connection mode: no container for a login alone; it starts when the first session
    channel opens, before the client's request arrives, and every session uses it."""
    with trio.fail_after(10):
        async with connected(ctx) as peer:
            await peer.login()
            await trio.sleep(0.05)
            assert memory_backend.sandbox_specs == []
            channel = await peer.open_session(0)
            while not memory_backend.live_sandboxes:
                await trio.sleep(0.01)
            assert [spec.username for spec in memory_backend.sandbox_specs] == ["alice"]
            await peer.exec(channel, "echo ok")
            assert output_of(await peer.until_close(channel)) == b"ok\n"
            second = await peer.open_session(1)
            await peer.exec(second, "echo again")
            assert output_of(await peer.until_close(second)) == b"again\n"
            assert len(memory_backend.sandbox_specs) == 1
            await peer.stream.aclose()
    assert (memory_backend.live_sandboxes, memory_backend.containers) == (0, {})


async def test_hung_container_start_is_bounded(
    memory_backend: MemoryBackend,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The start begun when the channel opened hangs: the session waiting for it is told
    after start_timeout, the container is removed, and the next session starts a new one."""
    logs = capture_module_log(monkeypatch, "trissh.connection.sandboxes")
    ctx = make_context(
        memory_backend,
        user_keys(tmp_path),
        tmp_path / "host_key",
        **{"container.start_timeout": 30},
    )
    memory_backend.stall_sandbox_start = True
    async with connected(ctx) as peer:
        await peer.login()
        first = await peer.open_session(0)
        with trio.fail_after(1):  # virtual time: the start begins before the request
            while not memory_backend.containers:
                await trio.sleep(0.01)
        await peer.exec(first, "echo ok")
        messages = await peer.until_close(first)
        stderr = b"".join(m.data for m in messages if isinstance(m, conn.ChannelExtendedData))
        assert stderr == (
            b"trissh: container did not start within 30 s (server busy? try again later)\n"
        )
        assert exit_status_of(messages) == 255
        assert memory_backend.containers == {}
        memory_backend.stall_sandbox_start = False
        second = await peer.open_session(1)
        await peer.exec(second, "echo ok")
        messages = await peer.until_close(second)
        assert output_of(messages) == b"ok\n"
        assert memory_backend.live_sandboxes == 1  # the second session's; the hung ones gone
        await peer.stream.aclose()
    assert (memory_backend.live_sandboxes, memory_backend.containers) == (0, {})
    assert [(e["event"], e["error"]) for e in logs] == [
        ("container_start_failed", "did not start within 30 s")
    ]


async def test_disconnect_while_the_container_is_starting_leaks_nothing(
    ctx: ServerContext, memory_backend: MemoryBackend
) -> None:
    """Cancelled half-way through sandbox creation: the created container is still removed."""
    memory_backend.stall_sandbox_start = True
    with trio.fail_after(10):
        async with connected(ctx) as peer:
            await peer.login()
            channel = await peer.open_session()
            await peer.exec(channel, "true")
            while not memory_backend.containers:
                await trio.sleep(0.01)
            await peer.stream.aclose()
    assert memory_backend.containers == {}
    assert memory_backend.live_sandboxes == 0


async def test_protocol_violation_disconnects_and_cleans_up(
    ctx: ServerContext, memory_backend: MemoryBackend
) -> None:
    """Data beyond our window mid-session: DISCONNECT(PROTOCOL_ERROR), nothing left behind."""
    with trio.fail_after(10):
        async with connected(ctx) as peer:
            await peer.login()
            channel = await peer.open_session()
            await peer.exec(channel, "sleep 1000")
            await peer.expect(conn.ChannelSuccess)
            for _ in range(80):  # 80 x 64 KiB > the 2 MiB window, never acknowledged by `sleep`
                peer.client.channel_data(channel, bytes(65536))
            messages = []
            while (message := await peer.next_message()) is not None:
                messages.append(message)
            [disconnect] = [m for m in messages if isinstance(m, tr.Disconnect)]
            assert disconnect.reason == DisconnectReason.PROTOCOL_ERROR
    assert (memory_backend.live_sandboxes, memory_backend.live_processes) == (0, 0)


async def test_pty_shell_sees_its_size_and_resizes(ctx: ServerContext) -> None:
    """pty-req then shell: `stty size` shows the size, and a window-change updates it."""
    with trio.fail_after(10):
        async with connected(ctx) as peer:
            await peer.login()
            channel = await peer.open_session()
            pty = conn.PtyRequestData(
                term="xterm", columns=80, rows=24, width_px=0, height_px=0, modes=b"\x00"
            )
            peer.client.channel_request(channel, "pty-req", pty.encode())
            peer.client.channel_request(channel, "shell")
            peer.client.channel_data(channel, b"stty size\r")
            await peer.flush()
            screen = b""
            while b"24 80" not in screen:
                message = await peer.next_message()
                if isinstance(message, conn.ChannelData):
                    screen += message.data
            size = conn.WindowChangeData(columns=120, rows=40, width_px=0, height_px=0)
            peer.client.channel_request(channel, "window-change", size.encode(), want_reply=False)
            peer.client.channel_data(channel, b"stty size\rexit 4\r")
            messages = await peer.until_close(channel)
            assert b"40 120" in output_of(messages)
            assert exit_status_of(messages) == 4
            await peer.stream.aclose()


async def test_a_resize_before_the_shell_starts_is_applied(ctx: ServerContext) -> None:
    """window-change between pty-req and shell: queued, and forwarded once the shell runs."""
    with trio.fail_after(10):
        async with connected(ctx) as peer:
            await peer.login()
            channel = await peer.open_session()
            pty = conn.PtyRequestData(
                term="xterm", columns=80, rows=24, width_px=0, height_px=0, modes=b"\x00"
            )
            peer.client.channel_request(channel, "pty-req", pty.encode())
            size = conn.WindowChangeData(columns=132, rows=50, width_px=0, height_px=0)
            peer.client.channel_request(channel, "window-change", size.encode(), want_reply=False)
            peer.client.channel_request(channel, "shell")
            peer.client.channel_data(channel, b"stty size\rexit\r")
            messages = await peer.until_close(channel)
            assert b"50 132" in output_of(messages)
            await peer.stream.aclose()


async def test_signals_are_forwarded_in_order_past_a_bad_one(
    ctx: ServerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A harmless signal, one the backend refuses, then TERM: the session survives the
    first two and TERM ends it with exit-signal (one forwarder, in arrival order)."""
    logs = capture_module_log(monkeypatch, "trissh.channels.session")
    with trio.fail_after(10):
        async with connected(ctx) as peer:
            await peer.login()
            channel = await peer.open_session()
            await peer.exec(channel, "sleep 30")
            for name in ("WINCH", "NOSUCH", "TERM"):
                signal = conn.SignalData(name=name).encode()
                peer.client.channel_request(channel, "signal", signal, want_reply=False)
            await peer.flush()
            messages = await peer.until_close(channel)
            await peer.stream.aclose()
    [exit_signal] = [
        conn.ExitSignalData.decode(Reader(m.data))
        for m in messages
        if isinstance(m, conn.ChannelRequest) and m.request_type == "exit-signal"
    ]
    assert exit_signal.signal == "TERM"
    forwarded = [e["signal"] for e in logs if e["event"] == "signal_forwarded"]
    assert forwarded == ["WINCH", "TERM"]
    assert [e["event"] for e in logs if e["event"] == "control_failed"] == ["control_failed"]


def limited_ctx(memory_backend: MemoryBackend, tmp_path: Path, **session: object) -> ServerContext:
    overrides = {f"session.{key}": value for key, value in session.items()}
    return make_context(memory_backend, user_keys(tmp_path), tmp_path / "host_key", **overrides)


async def test_idle_session_is_told_and_closed(
    memory_backend: MemoryBackend, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """No stdio for idle_timeout: a message on stderr, then the channel closes; activity
    in between postpones it."""
    ctx = limited_ctx(memory_backend, tmp_path, idle_timeout=600, client_alive_interval=0)
    async with connected(ctx) as peer:
        await peer.login()
        channel = await peer.open_session()
        start = trio.current_time()
        await peer.exec(channel, "cat")
        await trio.sleep(500)
        peer.client.channel_data(channel, b"still here\n")
        messages = await peer.until_close(channel)
        assert output_of(messages) == b"still here\n"
        stderr = b"".join(m.data for m in messages if isinstance(m, conn.ChannelExtendedData))
        assert stderr == b"\ntrissh: session idle for 10 min, closing\n"
        assert trio.current_time() - start == pytest.approx(1100, abs=2)
        assert exit_status_of(messages) is None
        await peer.stream.aclose()
    assert memory_backend.live_processes == 0


async def test_session_duration_limit(
    memory_backend: MemoryBackend, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """max_session_duration ends even a busy session, with a message."""
    ctx = limited_ctx(memory_backend, tmp_path, max_session_duration=3600, client_alive_interval=0)
    async with connected(ctx) as peer:
        await peer.login()
        channel = await peer.open_session()
        start = trio.current_time()
        await peer.exec(channel, "sleep 100000")
        messages = await peer.until_close(channel)
        stderr = b"".join(m.data for m in messages if isinstance(m, conn.ChannelExtendedData))
        assert b"session time limit of 1 h" in stderr
        assert trio.current_time() - start == pytest.approx(3600, abs=2)
        await peer.stream.aclose()


async def test_silent_client_is_probed_then_dropped(
    memory_backend: MemoryBackend, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """ClientAlive: probes every 15 s; three unanswered and the connection (and its
    containers) are gone."""
    ctx = limited_ctx(memory_backend, tmp_path)
    async with connected(ctx) as peer:
        await peer.login()
        channel = await peer.open_session()
        await peer.exec(channel, "sleep 100000")
        await peer.expect(conn.ChannelSuccess)
        start = trio.current_time()
        probes = 0
        while (message := await peer.next_message()) is not None:
            if isinstance(message, conn.GlobalRequest):
                assert message.name == "keepalive@openssh.com"
                probes += 1
            else:
                assert isinstance(message, tr.Disconnect), message
                assert "not responding" in message.description
        assert probes == 3
        assert trio.current_time() - start == pytest.approx(60, abs=2)
    assert (memory_backend.live_sandboxes, memory_backend.live_processes) == (0, 0)


async def test_client_answering_probes_stays(
    memory_backend: MemoryBackend, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A client that answers keepalives is kept however long it stays quiet otherwise."""
    ctx = limited_ctx(memory_backend, tmp_path)
    async with connected(ctx) as peer:
        await peer.login()
        start = trio.current_time()
        while trio.current_time() - start < 600:
            message = await peer.next_message()
            assert isinstance(message, conn.GlobalRequest), message
            peer.client.send(conn.RequestFailure())
        channel = await peer.open_session()
        await peer.exec(channel, "echo alive")
        assert output_of(await peer.until_close(channel)) == b"alive\n"
        await peer.stream.aclose()


async def test_connections_per_user_are_limited(
    memory_backend: MemoryBackend, tmp_path: Path
) -> None:
    """max_connections_per_user = 1: a second login of the same user is disconnected with
    TOO_MANY_CONNECTIONS; once the first leaves, logging in works again."""
    ctx = limited_ctx(memory_backend, tmp_path, max_connections_per_user=1)
    with trio.fail_after(10):
        async with connected(ctx) as first:
            await first.login()
            async with connected(ctx) as second:
                await second.login()
                message = await second.next_message()
                assert isinstance(message, tr.Disconnect)
                assert message.reason == DisconnectReason.TOO_MANY_CONNECTIONS
                assert "too many connections for user alice" in message.description
            await first.stream.aclose()
        assert ctx.state.user_connections == {}
        async with connected(ctx) as third:
            await third.login()
            await third.stream.aclose()
    # The results of trissh_connections_total partition TCP connections: the refused login
    # was accepted (it logged in); its end is a disconnect reason.
    connections = ctx.metrics.connections_total
    assert connections.labels(result="accepted")._value.get() == 3
    assert connections.labels(result="rejected_limit")._value.get() == 0
    ends = ctx.metrics.disconnects_total.labels(reason="user_connection_limit")
    assert ends._value.get() == 1


async def test_session_mode_gives_each_session_its_own_container(
    memory_backend: MemoryBackend, tmp_path: Path
) -> None:
    """execution_mode = "session": two sessions, two sandboxes, each gone with its session
    (none for a channel before its request)."""
    ctx = limited_ctx(memory_backend, tmp_path, execution_mode="session")
    with trio.fail_after(10):
        async with connected(ctx) as peer:
            await peer.login()
            first = await peer.open_session(0)
            await trio.sleep(0.05)
            assert memory_backend.sandbox_specs == []  # none for the channel alone
            await peer.exec(first, "sleep 1000")
            await peer.expect(conn.ChannelSuccess)
            second = await peer.open_session(1)
            await peer.exec(second, "echo two")
            assert output_of(await peer.until_close(second)) == b"two\n"
            assert memory_backend.live_sandboxes == 1  # the first session's, still running
            assert len(memory_backend.sandbox_specs) == 2
            peer.client.channel_close(first)
            await peer.flush()
            while memory_backend.live_sandboxes:
                await trio.sleep(0.01)
            await peer.stream.aclose()


async def test_session_mode_exit_status_does_not_wait_for_container_removal(
    memory_backend: MemoryBackend, tmp_path: Path
) -> None:
    """The client gets exit status, EOF and CLOSE as soon as the program ended; removing
    the session's own container (slow with podman) happens after, still owned."""
    ctx = limited_ctx(memory_backend, tmp_path, execution_mode="session")
    memory_backend.hold_removal = trio.Event()
    with trio.fail_after(10):
        async with connected(ctx) as peer:
            await peer.login()
            channel = await peer.open_session(0)
            await peer.exec(channel, "echo done; exit 3")
            events = await peer.until_close(channel)
            assert output_of(events) == b"done\n"
            assert exit_status_of(events) == 3
            assert memory_backend.live_sandboxes == 1  # its removal is still under way
            memory_backend.hold_removal.set()
            while memory_backend.live_sandboxes:
                await trio.sleep(0.01)
            await peer.stream.aclose()


async def test_the_socket_closes_when_the_client_leaves_not_after_the_removal(
    memory_backend: MemoryBackend, tmp_path: Path
) -> None:
    """A client that disconnects sees our side of the socket close at once, while its
    container is still being removed: a balancer in front counts the connection against
    its per-source limits until both sides closed."""
    ctx = limited_ctx(memory_backend, tmp_path)
    memory_backend.hold_removal = trio.Event()
    server_sock, client_sock = trio.socket.socketpair()
    server_end, client_end = trio.SocketStream(server_sock), trio.SocketStream(client_sock)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: serve_connection(server_end, ctx, conn_id="test", remote="socket")
            )
            peer = Peer(client_end)
            await peer.login()
            channel = await peer.open_session(0)
            await peer.exec(channel, "true")
            await peer.until_close(channel)
            peer.client.send(
                tr.Disconnect(reason=DisconnectReason.BY_APPLICATION, description="bye")
            )
            await peer.flush()
            closed = False
            with trio.move_on_after(3):
                while await client_end.receive_some(4096):
                    pass
                closed = True
            assert closed, "our side stayed open while the container was being removed"
            assert memory_backend.live_sandboxes == 1, "the removal should still be held"
            memory_backend.hold_removal.set()
        assert memory_backend.live_sandboxes == 0
        await client_end.aclose()


async def test_keys_are_renewed_every_rekey_interval(
    ctx: ServerContext, autojump_clock: trio.testing.MockClock
) -> None:
    """[ssh] rekey_interval: the server starts a key exchange each hour on its own."""
    async with connected(ctx) as peer:
        peer.answer_keepalives = True
        await peer.login()
        assert peer.client.completed_kex == 1
        start = trio.current_time()
        with trio.fail_after(8000):  # the mock clock's: two intervals and some
            while peer.client.completed_kex < 3:
                with trio.move_on_after(10):
                    await peer.next_message()
        assert trio.current_time() - start == pytest.approx(7200, abs=15)
        channel = await peer.open_session()
        await peer.exec(channel, "echo fresh keys")
        assert output_of(await peer.until_close(channel)) == b"fresh keys\n"
        await peer.stream.aclose()


async def test_shutdown_ends_idle_connections_at_once(
    ctx: ServerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle connection gets DISCONNECT "server shutting down" at once; the log line
    (written from the stopping task, outside the connection's context) says whose."""
    lines = capture_module_log(monkeypatch, "trissh.connection.driver")
    with trio.fail_after(10):
        async with connected(ctx) as peer:
            await peer.login()
            while not ctx.state.connections:
                await trio.sleep(0.01)
            ctx.state.shutting_down = True
            for driver in list(ctx.state.connections):
                driver.shutting_down()
            message = await peer.next_message()
            assert isinstance(message, tr.Disconnect)
            assert message.description == "server shutting down"
    [ended] = [line for line in lines if line["event"] == "connection_ended_by_server"]
    assert ended["reason"] == "server_shutdown"
    assert (ended["conn_id"], ended["remote"]) == ("test", "memory")
    assert ended["user"]


async def test_shutdown_tells_running_sessions_and_refuses_new_ones(ctx: ServerContext) -> None:
    """A connection with a running session: its user reads the notice on stderr, and no
    new channel may open while the grace runs."""
    with trio.fail_after(10):
        async with connected(ctx) as peer:
            await peer.login()
            channel = await peer.open_session(0)
            await peer.exec(channel, "sleep 1000")
            await peer.expect(conn.ChannelSuccess)
            ctx.state.shutting_down = True
            for driver in list(ctx.state.connections):
                driver.shutting_down()
            notice = await peer.expect(conn.ChannelExtendedData)
            assert notice.data == b"\r\ntrissh: server shutting down\r\n"
            peer.client.open_channel(1)
            refused = await peer.expect(conn.ChannelOpenFailure)
            assert refused.description == "server shutting down"
            await peer.stream.aclose()


async def test_a_clients_key_exchanges_are_paced_by_what_they_cost(
    ctx: ServerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each exchange costs the one event loop up to ~100 ms (group18); a logged-in client
    re-keying in a loop held everyone's round trips at ~100 ms. After a re-exchange, its
    connection waits REKEY_PACING times what it cost (whoever started it: a client's bytes
    start the server's). The core's clock is made to say each exchange step cost 0.125 s."""
    ticks = itertools.count()
    monkeypatch.setattr(time, "thread_time", lambda: next(ticks) * 0.125)
    with trio.fail_after(20):
        async with connected(ctx) as peer:
            await peer.login()
            started = trio.current_time()
            for _ in range(3):
                done = peer.client.completed_kex
                peer.client.start_kex()
                while peer.client.completed_kex == done:
                    assert await peer._read(), "the server hung up"
            elapsed = trio.current_time() - started
            await peer.stream.aclose()
    # Two steps a re-exchange (start, then the client's key), 0.125 s each: 0.25 s, so
    # each of the first two re-exchanges holds the connection for REKEY_PACING * 0.25.
    assert elapsed >= 2 * REKEY_PACING * 0.25 - 0.05, elapsed


async def test_every_session_started_gets_one_session_ended_with_its_reason(
    memory_backend: MemoryBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Log pipelines pair the two lines by connection and channel, and channel numbers are
    reused: a session the client closes (or the connection ends) logs its end too (it
    logged nothing, so the next session's end paired with the wrong start)."""
    lines = capture_module_log(monkeypatch, "trissh.channels.session")
    ctx = limited_ctx(memory_backend, tmp_path)
    memory_backend.fail_next_sandbox = BackendUnavailable("podman is down")
    with trio.fail_after(10):
        async with connected(ctx) as peer:
            await peer.login()
            never = await peer.open_session(3)  # its container fails: it never starts
            await peer.exec(never, "true")
            assert exit_status_of(await peer.until_close(never)) is not None
            first = await peer.open_session(0)
            await peer.exec(first, "sleep 1000")
            await peer.expect(conn.ChannelSuccess)
            peer.client.channel_close(first)
            await peer.flush()
            await peer.expect(conn.ChannelClose)
            second = await peer.open_session(1)
            await peer.exec(second, "exit 5")
            assert exit_status_of(await peer.until_close(second)) == 5
            third = await peer.open_session(2)
            await peer.exec(third, "sleep 1000")
            await peer.expect(conn.ChannelSuccess)
            await peer.stream.aclose()  # the connection ends under it
            while memory_backend.live_sandboxes:
                await trio.sleep(0.01)
    ends = [
        (line["exit_code"], line["reason"]) for line in lines if line["event"] == "session_ended"
    ]
    assert ends == [(None, "channel_closed"), (5, "exited"), (None, "cancelled")]
    events = [line["event"] for line in lines]
    assert events.count("session_started") == 3  # and the failed one logged only that
    assert events.count("session_failed") == 1


async def test_a_busy_connections_bytes_reach_the_metric_before_it_closes(
    memory_backend: MemoryBackend, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """``trissh_bytes_total`` moves while a long transfer runs, not in one jump at its
    close (a rate() over it was 0 for the whole transfer)."""
    ctx = limited_ctx(memory_backend, tmp_path, client_alive_interval=0)
    received = ctx.metrics.bytes_total.labels(direction="in")
    before = received._value.get()
    async with connected(ctx) as peer:
        await peer.login()
        channel = await peer.open_session(0)
        await peer.exec(channel, "cat > /dev/null")
        await peer.expect(conn.ChannelSuccess)
        for _ in range(3):
            await trio.sleep(3)
            peer.client.channel_data(channel, b"x" * 1000)
            await peer.flush()
        await trio.sleep(1)
        assert received._value.get() - before > 1000  # the connection is still open
        await peer.stream.aclose()


async def test_a_client_listening_and_cancelling_in_a_loop_writes_a_bounded_log(
    memory_backend: MemoryBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tcpip-forward`` and its cancel, 120 times: the listener lines count against the
    connection's quota of client-caused lines (they were two lines per cycle, unbounded)."""
    lines = capture_module_log(monkeypatch, "trissh.channels.remote_forwards")
    ctx = limited_ctx(memory_backend, tmp_path)
    address = wire.string("localhost") + wire.uint32(9000)
    with trio.fail_after(30):
        async with connected(ctx) as peer:
            await peer.login()
            for _ in range(120):
                peer.client.global_request("tcpip-forward", want_reply=True, data=address)
                await peer.expect(conn.RequestSuccess)
                peer.client.global_request("cancel-tcpip-forward", want_reply=True, data=address)
                await peer.expect(conn.RequestSuccess)
            await peer.stream.aclose()
    events = [line["event"] for line in lines]
    listening, stopped = events.count("forward_listening"), events.count("forward_listen_stopped")
    assert listening == stopped  # whole pairs
    assert 0 < listening <= 100


async def test_a_unix_path_listened_on_again_is_refused_while_its_listener_lives(
    tmp_path: Path,
) -> None:
    """``-R /tmp/a.sock``, the file removed inside the container (``rm``), the same request
    again: the path binds anew, and each listener replaced the one before in the
    connection's table, so max_listeners counted one however many lived, and the replaced
    ones could never be cancelled (fwd reviewer: 10 live with a limit of 2)."""
    from .test_server_opened_channels import KeptBackend

    backend = KeptBackend()
    ctx = make_context(
        backend, user_keys(tmp_path), tmp_path / "host_key", **{"forwarding.max_listeners": 2}
    )
    path = wire.string("/tmp/a.sock")
    with trio.fail_after(30):
        async with connected(ctx) as peer:
            await peer.login()
            answers = []
            for _ in range(4):
                peer.client.global_request(
                    "streamlocal-forward@openssh.com", want_reply=True, data=path
                )
                answers.append(type(await peer.next_message()))
                backend.sandboxes[0].network._unix.pop("/tmp/a.sock", None)  # rm /tmp/a.sock
            assert answers == [conn.RequestSuccess] + [conn.RequestFailure] * 3, answers
            live = ctx.metrics.forwards.listeners_active._value.get()
            assert live == 1
            peer.client.global_request(
                "cancel-streamlocal-forward@openssh.com", want_reply=True, data=path
            )
            await peer.expect(conn.RequestSuccess)
            await trio.sleep(0.1)
            assert ctx.metrics.forwards.listeners_active._value.get() == 0
            await peer.stream.aclose()


async def test_a_client_re_keying_in_a_loop_writes_a_bounded_log(
    ctx: ServerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """110 re-exchanges after login: their ``kex_completed`` lines count against the
    connection's quota (sshd logs re-keys at debug; each was one more info line)."""
    lines = capture_module_log(monkeypatch, "trissh.connection.handshake")
    monkeypatch.setattr(time, "thread_time", lambda: 0.0)  # no pacing: as fast as it goes
    with trio.fail_after(60):
        async with connected(ctx) as peer:
            await peer.login()
            for _ in range(110):
                done = peer.client.completed_kex
                peer.client.start_kex()
                while peer.client.completed_kex == done:
                    assert await peer._read(), "the server hung up"
            await peer.stream.aclose()
    rekeys = [line for line in lines if line["event"] == "kex_completed" and line["rekey"]]
    assert 0 < len(rekeys) <= 100
