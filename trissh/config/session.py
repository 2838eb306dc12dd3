"""``[session]``: how sessions behave and what limits them."""

from __future__ import annotations

import re
import shlex
from typing import Final, Literal

from pydantic import Field, field_validator

from trissh.config.base import Model, TimerSeconds

#: What OpenSSH and RFC 4250 allow in a subsystem name (``sftp``, ``netconf``,
#: ``name@domain``).
_SUBSYSTEM_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._+-]{0,63}")
DEFAULT_SUBSYSTEMS: Final = {"sftp": "/usr/lib/openssh/sftp-server"}


def subsystem_command(command: str) -> list[str]:
    """A subsystem's command line as the argv run in the container (no shell).

    Raises:
        ValueError: not shell-style words starting with an absolute path.
    """
    argv = shlex.split(command)
    if not argv or not argv[0].startswith("/"):
        raise ValueError(f"subsystem command {command!r} must start with an absolute path")
    return argv


class SessionSection(Model):
    """Session behaviour and limits; ``[users.NAME.session]`` overrides any key but
    ``accept_env``."""

    #: ``connection``: one container per connection, each session an exec in it.
    #: ``session``: one container per session channel.
    #: ``workspace``: one container per user, shared by all of the user's connections and
    #: kept ``workspace_ttl`` seconds after the last one ends (``[workspaces]``).
    execution_mode: Literal["connection", "session", "workspace"] = "connection"
    #: Seconds a workspace is kept after its user's last connection ended; 0: removed then.
    workspace_ttl: float = Field(600.0, ge=0)
    #: Message of the day: shown at the start of a shell with a terminal, as sshd shows
    #: /etc/motd (not for commands, subsystems or shells without a terminal).
    motd: str = Field("", max_length=65536)
    #: Environment names accepted from clients (``fnmatch`` patterns, like sshd's AcceptEnv).
    #: Names like LD_*, PATH or BASH_ENV, and any name that is not a shell's portable
    #: name ([A-Za-z_][A-Za-z0-9_]*, so no BASH_FUNC_x%%), are refused whatever this says.
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
    client_alive_interval: TimerSeconds = 15.0
    #: Unanswered probes before the connection is dropped (ClientAliveCountMax).
    client_alive_count_max: int = Field(3, ge=1, le=100)
    #: ``ssh -s NAME``: the command each subsystem runs in the container (split into
    #: words like a shell would, run without one). Any other name is refused before a
    #: container is made for it. Per user, the whole table is replaced.
    subsystems: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_SUBSYSTEMS))

    @field_validator("subsystems")
    @classmethod
    def _check_subsystems(cls, value: dict[str, str]) -> dict[str, str]:
        for name, command in value.items():
            if not _SUBSYSTEM_NAME.fullmatch(name):
                raise ValueError(f"subsystem name {name!r}: letters, digits and @._+- only")
            subsystem_command(command)
        return value
