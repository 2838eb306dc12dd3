"""What an operator sees of a running server: live sessions, watchers, and snapshots.

Theory of operation
-------------------
A session's tap (``_Tap`` in channels/session.py, where its recording gets stdio) also
feeds a :class:`LiveSession`: it counts bytes and notes activity (an addition and a clock
read per chunk) and copies output on only while an operator watches. Each connection keeps
its sessions in a :class:`LiveSessions`; ``trissh sessions`` reads them through the
connection's ``describe`` as plain, frozen views.

A :class:`Watcher` is one operator's view of one session: the session's output and resizes
from the moment it started watching, queued in order. Its queue is bounded in bytes, and
the tap never waits for it: a watcher that falls behind (a stalled terminal) is ended, the
session never slowed. Everything here is synchronous but :meth:`Watcher.next_frames`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

import trio

#: Output queued for one watcher before it is ended as too slow.
WATCHER_BUFFER: Final = 1024 * 1024
#: Operators watching one session at once.
MAX_WATCHERS: Final = 4

#: A watcher's frame: ("out", bytes) or ("size", (columns, rows)).
Frame = tuple[str, bytes | tuple[int, int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionView:
    """One session channel, as ``trissh sessions`` lists it."""

    channel: int
    kind: str
    command: str | None
    term: str | None
    size: tuple[int, int] | None
    container: str | None
    started_at: float
    idle_s: float
    bytes_in: int
    bytes_out: int
    watchers: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionView:
    """One connection, as ``trissh sessions`` lists it."""

    conn_id: str
    remote: str
    user: str | None
    client_version: str | None
    connected_at: float
    idle_s: float
    bytes_in: int
    bytes_out: int
    sessions: tuple[SessionView, ...]


class Watcher:
    """One operator's view of a session, from when it started watching."""

    def __init__(self, limit: int = WATCHER_BUFFER) -> None:
        self._frames: deque[Frame] = deque()
        self._queued = 0
        self._limit = limit
        self._changed = trio.Event()
        #: Why the view ended (the session ended, too slow); None while it goes on.
        self.ended: str | None = None

    def _push(self, frame: Frame) -> None:
        if self.ended is not None:
            return
        data = frame[1]
        self._queued += len(data) if isinstance(data, bytes) else 0
        if self._queued > self._limit:
            self._frames.clear()
            self.end("watcher too slow")
            return
        self._frames.append(frame)
        self._changed.set()

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self._changed.set()

    async def next_frames(self) -> list[Frame]:
        """What arrived since the last call, waiting for something; [] once ended."""
        while not self._frames and self.ended is None:
            await self._changed.wait()
            self._changed = trio.Event()
        frames = list(self._frames)
        self._frames.clear()
        self._queued = 0
        return frames


class LiveSession:
    """One running session as the operator sees it, fed by the session's tap."""

    def __init__(
        self,
        channel: int,
        *,
        kind: str,
        command: str | None,
        pty: tuple[str, int, int] | None,
        notify: Callable[[str], Awaitable[None]],
    ) -> None:
        self.channel = channel
        self.kind = kind
        self.command = command
        self.term = pty[0] if pty else None
        self.size = (pty[1], pty[2]) if pty else None
        #: Write a line on the user's terminal (their stderr), bounded; never raises.
        self.notify = notify
        self.container: str | None = None
        self.started_at = time.time()
        self.last_activity = time.monotonic()
        self.bytes_in = 0
        self.bytes_out = 0
        self._watchers: set[Watcher] = set()
        self._registry: LiveSessions | None = None

    # -- fed by the tap --------------------------------------------------------------------

    def input(self, data: bytes | bytearray) -> None:
        self.bytes_in += len(data)
        self.last_activity = time.monotonic()

    def output(self, data: bytes | bytearray) -> None:
        self.bytes_out += len(data)
        self.last_activity = time.monotonic()
        if self._watchers:
            frame: Frame = ("out", bytes(data))
            for watcher in self._watchers:
                watcher._push(frame)

    def resize(self, columns: int, rows: int) -> None:
        self.size = (columns, rows)
        for watcher in self._watchers:
            watcher._push(("size", (columns, rows)))

    def end(self) -> None:
        """The session is over: its watchers are told, its connection forgets it."""
        for watcher in self._watchers:
            watcher.end("session ended")
        if self._registry is not None:
            self._registry.forget(self)
            self._registry = None

    # -- used by the admin socket ----------------------------------------------------------

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    @contextmanager
    def watch(self, limit: int = WATCHER_BUFFER) -> Iterator[Watcher]:
        """A new watcher for as long as the block runs."""
        watcher = Watcher(limit)
        self._watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)

    def view(self) -> SessionView:
        return SessionView(
            channel=self.channel,
            kind=self.kind,
            command=self.command,
            term=self.term,
            size=self.size,
            container=self.container,
            started_at=self.started_at,
            idle_s=round(time.monotonic() - self.last_activity, 1),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            watchers=len(self._watchers),
        )


class LiveSessions:
    """A connection's running sessions, by channel number."""

    def __init__(self) -> None:
        self._sessions: dict[int, LiveSession] = {}

    def open(
        self,
        channel: int,
        *,
        kind: str,
        command: str | None,
        pty: tuple[str, int, int] | None,
        notify: Callable[[str], Awaitable[None]],
    ) -> LiveSession:
        """A session starts; it is listed until its ``end``."""
        session = LiveSession(channel, kind=kind, command=command, pty=pty, notify=notify)
        session._registry = self
        self._sessions[channel] = session
        return session

    def forget(self, session: LiveSession) -> None:
        if self._sessions.get(session.channel) is session:
            del self._sessions[session.channel]

    def get(self, channel: int) -> LiveSession | None:
        return self._sessions.get(channel)

    def views(self) -> tuple[SessionView, ...]:
        return tuple(session.view() for session in self._sessions.values())
