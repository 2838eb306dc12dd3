"""SessionChannels: the ``session`` channel kind's handler for one connection.

It decides on opens (the per-connection limit), starts the container early in
``connection`` mode, refuses a subsystem nobody configured (CHANNEL_FAILURE, as sshd: no
session task, no container of its own), starts one ``run_session`` task per other session
request in the connection nursery, and tells busy users when the server shuts down.
"""

from __future__ import annotations

import structlog
import trio

from trissh.auth.names import escaped
from trissh.channels import publickey
from trissh.channels.session import SessionContext, run_session, subsystem_argv, tell_user
from trissh.connection.port import ConnectionPort, Refusal
from trissh.protocol import (
    ChannelId,
    ChannelOpenFailureReason,
    ChannelOpenRequested,
    SessionKind,
    SessionRequested,
)

log = structlog.get_logger("trissh.channels.sessions")


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
        """Run the requested program in a task of its own, or refuse an unknown subsystem;
        False if the channel is gone."""
        handle = self._port.handle(event.channel_id)
        if handle is None:
            return False
        run = run_session
        if publickey.serves(self._ctx, event):  # trissh's own, not the container's
            if not publickey.allowed(self._ctx):
                return False
            run = publickey.run_publickey_subsystem
        elif self._unknown_subsystem(event):
            if self._ctx.lines.take():
                log.info(
                    "subsystem_refused", channel=int(event.channel_id),
                    subsystem=escaped(event.subsystem or ""),
                )  # fmt: skip
            self._port.reply_request(event.channel_id, False, again=True)  # exec may follow
            return True
        handle.started = True
        self._nursery.start_soon(run, self._ctx, handle, event)
        return True

    def _unknown_subsystem(self, event: SessionRequested) -> bool:
        """A subsystem not configured: refused even with a forced command, as sshd."""
        return (
            event.kind is SessionKind.SUBSYSTEM
            and subsystem_argv(self._ctx, event.subsystem or "") is None
        )

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
