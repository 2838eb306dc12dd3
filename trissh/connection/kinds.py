"""The handlers of each channel kind for one authenticated connection, and what each
needs to know of the login: where the driver's routing ends and the kinds begin.

Containers: sessions get theirs from the execution mode (one per connection, or one per
session); forwards always reach one container that lives as long as the connection — the
connection's own in ``connection`` mode, and in ``session`` mode one kept for forwards
(started by the first forward), since a forward belongs to no session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from trissh.admin.live import LiveSessions
from trissh.backend import Sandbox, SandboxSpec
from trissh.channels.agent_forward import AgentForwarding
from trissh.channels.files import ContainerFiles
from trissh.channels.forward_policy import ForwardPolicy
from trissh.channels.forwards import ForwardContext, ForwardCount, LocalForwards
from trissh.channels.remote_forwards import RemoteForwards
from trissh.channels.session import RecordingMarks, SessionContext
from trissh.channels.sessions import SessionChannels
from trissh.config import container_settings
from trissh.connection.handshake import Login
from trissh.connection.port import ConnectionPort
from trissh.connection.sandboxes import (
    AfterListens,
    ConnectionSandbox,
    SandboxSource,
    SessionSandboxes,
)
from trissh.ops.log_quota import LogQuota
from trissh.server.state import ServerContext
from trissh.server.workspace_source import WorkspaceSource


@dataclass(frozen=True, slots=True)
class ChannelKinds:
    sessions: SessionChannels
    local_forwards: LocalForwards
    remote_forwards: RemoteForwards
    agent: AgentForwarding
    #: Whether the core may grant ``auth-agent-req@openssh.com``.
    agent_allowed: bool
    #: The connection's forwarded connections open now.
    forward_count: ForwardCount

    def busy(self, message: str) -> bool:
        """Does the connection carry anything a stop should give its grace to? Its
        sessions' users read ``message``; forwards and listeners count too."""
        told = self.sessions.tell_busy_users(message)
        return told or self.forward_count.open > 0 or self.remote_forwards.listening


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """Who the connection is, for its handlers."""

    conn_id: str
    remote: str
    #: The server's own ``HOST:PORT`` the client reached (``SSH_CONNECTION``).
    local: str
    login: Login
    port: ConnectionPort
    nursery: trio.Nursery
    #: The driver's bounded log of refused requests: (request, reason, target).
    note_refused: Callable[[str, str, str], None]
    #: The bound on other lines its client's requests cause.
    lines: LogQuota
    #: Its running sessions as operators see them (``trissh sessions``, ``watch``).
    live: LiveSessions | None = None


def channel_kinds(ctx: ServerContext, connection: Connection) -> ChannelKinds:
    login = connection.login
    spec = SandboxSpec(
        conn_id=connection.conn_id,
        username=login.username,
        remote=connection.remote,
        instance=ctx.instance,
        settings=container_settings(login.container),
    )
    files = ContainerFiles()
    sessions_source, forwards_sandbox = _sources(ctx, connection, spec, files.remove_secrets)
    forwarding = login.forwarding
    marks = RecordingMarks()
    forward_ctx = ForwardContext(
        policy=ForwardPolicy(forwarding, login.grant),
        sandbox=forwards_sandbox,
        start_timeout=login.container.start_timeout,
        metrics=ctx.metrics.forwards,
        count=ForwardCount(forwarding.max_channels),
        note_refused=connection.note_refused,
        lines=connection.lines,
        mark=marks.mark,
    )
    port, nursery = connection.port, connection.nursery
    per_session = isinstance(sessions_source, SessionSandboxes)  # a container per session
    agent = AgentForwarding(forward_ctx, port, nursery, connection.conn_id, per_session=per_session)
    remote_forwards = RemoteForwards(forward_ctx, port, nursery, forwarding.max_listeners)
    wanted = ctx.settings.recording.users
    session_ctx = SessionContext(
        conn_id=connection.conn_id,
        username=login.username,
        container=login.container,
        settings=login.session,
        grant=login.grant,
        sandboxes=AfterListens(sessions_source, remote_forwards.settled),
        metrics=ctx.metrics,
        recorder=ctx.recorder if not wanted or login.username in wanted else None,
        agent_socket=agent.socket_in,
        marks=marks,
        live=connection.live,
        remote=connection.remote,
        local=connection.local,
        lines=connection.lines,
        container_files=files,
    )
    return ChannelKinds(
        sessions=SessionChannels(session_ctx, port, nursery),
        local_forwards=LocalForwards(forward_ctx, port, nursery),
        remote_forwards=remote_forwards,
        agent=agent,
        agent_allowed=forward_ctx.policy.refuse_agent() is None,
        forward_count=forward_ctx.count,
    )


def _sources(
    ctx: ServerContext,
    connection: Connection,
    spec: SandboxSpec,
    remove_secrets: Callable[[Sandbox], Awaitable[None]],
) -> tuple[SandboxSource, Callable[[], Awaitable[Sandbox]]]:
    """Where the sessions get their container, and the container forwards reach. A
    workspace outlives the connection: ``remove_secrets`` runs there as it leaves."""
    session = connection.login.session
    workspaces = ctx.state.workspaces
    if session.execution_mode == "workspace" and workspaces is not None:
        start_timeout = connection.login.container.start_timeout
        ttl, nursery = session.workspace_ttl, connection.nursery
        source = WorkspaceSource(workspaces, spec, ttl, start_timeout, nursery)
        source.on_leave = remove_secrets
        return source, source.get
    # (no registry: a driver run outside ``serve``, as its own tests do)
    shared = ConnectionSandbox(ctx.backend, spec, connection.nursery)
    if session.execution_mode == "session":
        return SessionSandboxes(ctx.backend, spec), shared.get
    return shared, shared.get
