"""``[session]``: how sessions behave and what limits them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trissh.config.base import Model


class SessionSection(Model):
    """Session behaviour and limits; ``[users.NAME.session]`` overrides any key but
    ``accept_env`` and ``execution_mode``."""

    #: ``connection``: one container per connection, each session an exec in it.
    #: ``session``: one container per session channel.
    execution_mode: Literal["connection", "session"] = "connection"
    #: Environment names accepted from clients (``fnmatch`` patterns, like sshd's AcceptEnv).
    #: Names like LD_*, PATH or BASH_ENV are refused whatever this says.
    accept_env: tuple[str, ...] = ("LANG", "LC_*")
    max_sessions_per_connection: int = Field(10, ge=1, le=1000)
    # As in sshd, 0 turns a limit or timer off (TOML has no null).
    #: Concurrent connections one user may hold.
    max_connections_per_user: int = Field(0, ge=0)
    #: End a session after this many seconds without stdio either way.
    idle_timeout: float = Field(0, ge=0)
    #: End a session after this many seconds whatever it does.
    max_session_duration: float = Field(0, ge=0)
    #: Probe a client silent for this many seconds (sshd's ClientAliveInterval).
    client_alive_interval: float = Field(15.0, ge=0)
    #: Unanswered probes before the connection is dropped (ClientAliveCountMax).
    client_alive_count_max: int = Field(3, ge=1, le=100)
