"""SessionChannels: the ``session`` channel kind's handler for one connection.

It decides on opens (the per-connection limit), starts the container early in
``connection`` mode, starts one ``run_session`` task per session request in the
connection nursery, and tells busy users when the server shuts down.
"""

from __future__ import annotations

import trio

from trissh.channels.session import SessionContext, run_session, tell_user
from trissh.connection.port import ConnectionPort, Refusal
from trissh.protocol import (
    ChannelId,
    ChannelOpenFailureReason,
    ChannelOpenRequested,
    SessionRequested,
)


class SessionChannels:
    def __init__(self, ctx: SessionContext, port: ConnectionPort, nursery: trio.Nursery) -> None:
        self._ctx = ctx
        self._port = port
        self._nursery = nursery
        self._open: set[ChannelId] = set()

    def open(self, event: ChannelOpenRequested) -> Refusal | None:
        """Accept a session channel unless the connection holds its maximum."""
        self._open &= self._port.live_channels()
        limit = self._ctx.settings.max_sessions_per_connection
        if len(self._open) >= limit:
            return Refusal(
                ChannelOpenFailureReason.RESOURCE_SHORTAGE,
                f"at most {limit} sessions per connection",
            )
        self._port.accept(event.channel_id)
        self._open.add(event.channel_id)
        # The client sends its request only after our confirmation: start the container
        # now and that round trip hides part of its start.
        self._ctx.sandboxes.prepare(self._ctx.container.start_timeout)
        return None

    def start(self, event: SessionRequested) -> bool:
        """Run the requested program in a task of its own; False if the channel is gone."""
        handle = self._port.handle(event.channel_id)
        if handle is None:
            return False
        handle.started = True
        self._nursery.start_soon(run_session, self._ctx, handle, event)
        return True

    def tell_busy_users(self, message: str) -> bool:
        """Write ``message`` to every running session; False when none runs."""
        busy = [
            handle
            for channel_id in self._open & self._port.live_channels()
            if (handle := self._port.handle(channel_id)) is not None and handle.started
        ]
        for handle in busy:
            self._nursery.start_soon(tell_user, handle, f"\r\ntrissh: {message}\r\n")
        return bool(busy)
