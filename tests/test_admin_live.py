"""Live sessions and their watchers (trissh/admin/live.py), without a server."""

from __future__ import annotations

import time

import trio

from trissh.admin.client import format_sessions
from trissh.admin.live import LiveSessions


async def _nothing(message: str) -> None:
    await trio.lowlevel.checkpoint()


async def test_a_watcher_sees_output_and_resizes_from_when_it_started() -> None:
    sessions = LiveSessions()
    live = sessions.open(0, kind="shell", command=None, pty=("xterm", 80, 24), notify=_nothing)
    live.output(b"before")
    with live.watch() as watcher:
        live.input(b"ls\r")
        live.output(b"one")
        live.resize(100, 40)
        live.output(b"two")
        assert await watcher.next_frames() == [
            ("out", b"one"),
            ("size", (100, 40)),
            ("out", b"two"),
        ]
        assert live.watchers == 1
        live.end()
        assert await watcher.next_frames() == []
        assert watcher.ended == "session ended"
    view = live.view()
    assert (view.bytes_in, view.bytes_out, view.size, view.watchers) == (3, 12, (100, 40), 0)
    assert sessions.get(0) is None  # ended sessions are not listed


async def test_a_watcher_that_falls_behind_is_ended_not_waited_for() -> None:
    """Past its bound the watcher is dropped; the session's output calls never block."""
    live = LiveSessions().open(0, kind="exec", command="yes", pty=None, notify=_nothing)
    with live.watch(limit=1000) as slow, live.watch(limit=10_000) as fast:
        for _ in range(20):
            live.output(b"y" * 100)
        assert slow.ended == "watcher too slow"
        assert await slow.next_frames() == []
        frames = await fast.next_frames()
        assert fast.ended is None
        assert b"".join(data for _kind, data in frames if isinstance(data, bytes)) == b"y" * 2000


async def test_next_frames_waits_for_output() -> None:
    live = LiveSessions().open(3, kind="shell", command=None, pty=None, notify=_nothing)
    with live.watch() as watcher:
        got: list[object] = []

        async def read() -> None:
            got.extend(await watcher.next_frames())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.sleep(0.05)
            assert got == []
            live.output(b"late")
        assert got == [("out", b"late")]


def test_the_listing_never_passes_a_clients_control_characters_to_the_terminal() -> None:
    """TERM and the client's version are the client's text: an escape sequence in them
    must not reach the operator's terminal (erase lines, retitle the window)."""
    now = time.time()
    evil = "xterm\x1b[2A\x1b[2K\x1b]0;pwned\x07"
    session = {
        "channel": 0, "kind": "shell", "command": None, "term": evil, "size": [80, 24],
        "container": "c" * 12, "started_at": now, "idle_s": 0, "bytes_in": 0, "bytes_out": 0,
        "watchers": 0,
    }  # fmt: skip
    connection = {
        "conn_id": "a" * 12, "user": "mallory", "remote": "192.0.2.5:5555", "connected_at": now,
        "idle_s": 0, "bytes_in": 1, "bytes_out": 1, "client_version": "SSH-2.0-x\x1b[2K",
        "sessions": [session],
    }  # fmt: skip
    answer = {"instance": "i", "ready": True, "why": "", "connections": [connection]}
    listing = format_sessions(answer, now)
    assert "\x1b" not in listing
    assert "\x07" not in listing
    assert "xterm\\x1b[2A" in listing
