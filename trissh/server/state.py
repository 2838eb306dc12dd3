"""ServerContext (what every connection of one configuration shares) and ServerState (the
live numbers of the running server, which outlive a reload).

The context is frozen: a reload (SIGHUP) builds a new one that new connections get, while
live ones keep theirs. Everything that changes while the server runs — connections,
MaxStartups counts, per-user counts, shutting down — is in the one mutable ``ServerState``
that every context of the process shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import trio

from trissh.admin.live import ConnectionView, LiveSession
from trissh.auth.policy import AuthPolicy
from trissh.backend import Backend
from trissh.config import ServerConfig
from trissh.connection.kex_budget import KexBudget
from trissh.ops.metrics import Metrics
from trissh.ops.recording import Recorder
from trissh.protocol import ProtocolConfig
from trissh.server.accept import Refusals

if TYPE_CHECKING:
    from trissh.server.workspaces import Workspaces


class LiveConnection(Protocol):
    @property
    def conn_id(self) -> str: ...

    def shutting_down(self) -> None:
        """The server stops: end now if idle, else tell the users of running sessions."""

    def describe(self) -> ConnectionView:
        """What ``trissh sessions`` lists: who, from where, its sessions, bytes, idle."""
        ...

    def end_by_operator(self) -> None:
        """``trissh kill``: end it as a disconnect would (sessions, containers)."""

    def live_session(self, channel: int) -> LiveSession | None:
        """The running session on ``channel``, for ``trissh watch``."""
        ...


def _count_down(counts: dict[str, int], key: str) -> None:
    """Take one from ``counts[key]``, forgetting the key at zero."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


@dataclass(slots=True)
class ServerState:
    """Live numbers of a running server, for limits, shutdown, the debug statistic and tests."""

    #: Connections not yet authenticated, per source address (MaxStartups).
    unauthenticated_by_source: dict[str, int] = field(default_factory=dict)
    #: Live authenticated connections per user name (``max_connections_per_user``).
    user_connections: dict[str, int] = field(default_factory=dict)
    #: The context new connections get; a reload (SIGHUP) replaces it, live ones keep theirs.
    context: ServerContext | None = None
    #: Live connections, so a shutdown can tell their users and end the idle ones.
    connections: set[LiveConnection] = field(default_factory=set)
    shutting_down: bool = False
    #: Told to stop (SIGTERM, ``trissh drain``): ``/readyz`` answers 503, new connections
    #: are still served for ``limits.drain_time``, then ``shutting_down``.
    draining: bool = False
    #: Why a login could not get a container now, from the last background check
    #: (server/readiness.py); None: it could.
    backend_problem: str | None = "not checked yet"
    #: The nursery that connections run in (set by ``serve``).
    connections_nursery: trio.Nursery | None = None
    #: The task running ``serve_listeners`` (its accept loops are not connection work).
    listener_task: trio.lowlevel.Task | None = None
    #: Users' workspaces (``execution_mode = "workspace"``), set by ``serve``.
    workspaces: Workspaces | None = None
    #: Refused connections still being told why.
    refusals: Refusals = field(default_factory=Refusals)
    #: The loop's time that key exchanges before login may take, all together.
    kex_budget: KexBudget = field(default_factory=KexBudget)

    @property
    def live_connections(self) -> int:
        return len(self.connections)

    @property
    def unauthenticated(self) -> int:
        """Connections not yet authenticated, from every source."""
        return sum(self.unauthenticated_by_source.values())

    def claim_startup(self, source: str) -> None:
        self.unauthenticated_by_source[source] = self.unauthenticated_by_source.get(source, 0) + 1

    def release_startup(self, source: str) -> None:
        _count_down(self.unauthenticated_by_source, source)

    def claim_user(self, username: str, limit: int) -> bool:
        """Count one more connection of ``username``; False (and nothing counted) if it
        already holds ``limit`` (0: no limit)."""
        live = self.user_connections.get(username, 0)
        if limit and live >= limit:
            return False
        self.user_connections[username] = live + 1
        return True

    def release_user(self, username: str) -> None:
        _count_down(self.user_connections, username)

    def statistics(self) -> dict[str, int]:
        """``connections``, and ``tasks``: every task under the connections nursery but
        the listener's. Both are 0 on an idle server: anything else is a leak."""
        tasks = 0
        pending = list(self.connections_nursery.child_tasks) if self.connections_nursery else []
        while pending:
            task = pending.pop()
            if task is self.listener_task:
                continue
            tasks += 1
            for nursery in task.child_nurseries:
                pending.extend(nursery.child_tasks)
        return {"connections": self.live_connections, "tasks": tasks}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerContext:
    """What every connection of one configuration shares."""

    settings: ServerConfig
    protocol: ProtocolConfig
    auth: AuthPolicy
    backend: Backend
    instance: str
    metrics: Metrics = field(default_factory=Metrics)
    #: Session recordings, when ``[recording] enabled``.
    recorder: Recorder | None = None
    state: ServerState = field(default_factory=ServerState)

    @property
    def latest(self) -> ServerContext:
        """The configuration now served: the last reload's (SIGHUP), else this one."""
        return self.state.context or self
