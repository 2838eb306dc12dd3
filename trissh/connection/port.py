"""ConnectionPort: the one object channel handlers use to act on their connection.

It implements :class:`~trissh.connection.channel.ChannelPort` on the sans-IO core and the
connection's writer, and keeps the handles of open channels, which the driver feeds.
Handlers of every kind get this and nothing of the driver.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from trissh.connection.channel import ChannelHandle
from trissh.connection.writer import OutputWriter
from trissh.protocol import ChannelId, ChannelOpenFailureReason, ServerConnection


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a channel open is refused, as the client will be told."""

    reason: ChannelOpenFailureReason
    text: str


class ConnectionPort:
    def __init__(self, conn: ServerConnection, writer: OutputWriter) -> None:
        self._conn = conn
        self._writer = writer
        self._handles: dict[ChannelId, ChannelHandle] = {}

    # -- the channel table, for the driver and handlers ------------------------------------

    def accept(self, channel_id: ChannelId) -> ChannelHandle:
        """Confirm a channel the client opens; its handle is fed from now on. A handler may
        answer from its own task (a forward, once connected): the answer leaves at once."""
        self._conn.accept_channel(channel_id)
        handle = self._handles[channel_id] = ChannelHandle(self, channel_id)
        self._writer.flush_now()
        return handle

    def reject(self, channel_id: ChannelId, refusal: Refusal) -> None:
        self._conn.reject_channel(channel_id, refusal.reason, refusal.text)
        self._writer.flush_now()

    def open(self, channel_type: str, data: bytes = b"") -> ChannelHandle:
        """Open a channel to the client; its handle learns the answer (``confirmed``)."""
        channel_id = self._conn.open_channel(channel_type, data)
        handle = self._handles[channel_id] = ChannelHandle(self, channel_id)
        self._writer.flush_now()
        return handle

    def handle(self, channel_id: ChannelId) -> ChannelHandle | None:
        return self._handles.get(channel_id)

    def live_channels(self) -> set[ChannelId]:
        return set(self._handles)

    def answer_open(self, channel_id: ChannelId, refusal: str | None) -> None:
        """The peer answered a channel we opened; a refused one is forgotten, an abandoned
        one closed."""
        handle = self._handles.get(channel_id)
        if refusal is not None:
            self._handles.pop(channel_id, None)
        if handle is not None:
            handle.answer_open(refusal)
            if refusal is None and handle.abandoned:
                self.finish(channel_id)

    def abandon(self, handle: ChannelHandle) -> None:
        """The task that opened ``handle``'s channel is gone before using it: the channel is
        closed once the peer confirms it (now, if it has), not left open until the
        connection ends."""
        if not handle.answered:
            handle.abandoned = True
        elif handle.refusal is None and not handle.peer_closed:  # (else the driver ended it)
            self.finish(handle.id)

    def reply_global_request(self, request_id: int, ok: bool, *, port: int | None = None) -> None:
        self._conn.reply_global_request(request_id, ok, port=port)
        self._writer.flush_now()

    @property
    def handles(self) -> list[ChannelHandle]:
        return list(self._handles.values())

    # -- ChannelPort -----------------------------------------------------------------------

    @property
    def space_changed(self) -> trio.Event:
        return self._writer.space_changed

    def send_room(self, channel_id: ChannelId) -> int:
        return self._writer.send_room(channel_id)

    def send_data(self, channel_id: ChannelId, data: memoryview, *, stderr: bool) -> int:
        return self._conn.send_channel_data(channel_id, data, stderr=stderr)

    def flush(self) -> None:
        self._writer.flush_now()

    def send_eof(self, channel_id: ChannelId) -> None:
        self._conn.send_channel_eof(channel_id)
        self._writer.flush_now()

    def acknowledge(self, channel_id: ChannelId, amount: int) -> None:
        self._conn.acknowledge_channel_data(channel_id, amount)
        self._writer.flush_now()

    def reply_request(self, channel_id: ChannelId, ok: bool, *, again: bool = False) -> None:
        self._conn.reply_channel_request(channel_id, ok, again=again)
        self._writer.flush_now()

    def finish(
        self,
        channel_id: ChannelId,
        *,
        exit_code: int | None = None,
        signal: str | None = None,
        core_dumped: bool = False,
    ) -> None:
        """Exit status, EOF and CLOSE, in sshd's order; then forget the handle.

        The output is already sent: handlers finish only after their output reached EOF.
        """
        conn = self._conn
        if signal is not None:
            conn.send_exit_signal(channel_id, signal, core_dumped=core_dumped)
        elif exit_code is not None:
            conn.send_exit_status(channel_id, exit_code)
        conn.send_channel_eof(channel_id)
        conn.close_channel(channel_id)
        self._handles.pop(channel_id, None)
        self._writer.space_freed()
        self._writer.flush_now()
