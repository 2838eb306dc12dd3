"""ServerConfig: the operator's settings, from a TOML file and command-line flags.

Validated by pydantic into typed, frozen settings: unknown keys are errors, and every
error names the key path (``container.pids_limit: Input should be ...``). Flags are merged
into the TOML data *before* validation, so both are checked by the same rules.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from trissh.addresses import parse_listen
from trissh.config.auth import AuthSection, UserSection
from trissh.config.base import ConfigError, Model, merged
from trissh.config.container import ContainerSection
from trissh.config.forwarding import ForwardingGrant, ForwardingSection
from trissh.config.service import (
    SETUP_HOST_SOCKET,
    AdminSection,
    BackendSection,
    LimitSettings,
    MetricsSection,
    PodmanSettings,
    ProxySection,
    RecordingSection,
    SshSettings,
)
from trissh.config.session import SessionSection
from trissh.config.workspaces import WorkspacesSection


class ServerConfig(Model):
    listen: tuple[str, ...] = ("0.0.0.0:2222",)
    host_keys: tuple[Path, ...] = ()
    #: OpenSSH host certificates (``ssh-keygen -s CA -h``), each for one of ``host_keys``.
    host_certificates: tuple[Path, ...] = ()
    authorized_keys: Path | None = None
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    backend: BackendSection = BackendSection()
    podman: PodmanSettings = PodmanSettings()
    container: ContainerSection = ContainerSection()
    session: SessionSection = SessionSection()
    forwarding: ForwardingSection = ForwardingSection()
    workspaces: WorkspacesSection = WorkspacesSection()
    limits: LimitSettings = LimitSettings()
    auth: AuthSection = AuthSection()
    metrics: MetricsSection = MetricsSection()
    recording: RecordingSection = RecordingSection()
    proxy: ProxySection = ProxySection()
    admin: AdminSection = AdminSection()
    users: dict[str, UserSection] = Field(default_factory=dict)
    ssh: SshSettings = SshSettings()

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one listen address is needed")
        for item in value:
            parse_listen(item)
        return value

    @model_validator(mode="after")
    def _check_users(self) -> ServerConfig:
        rule = self.auth.user_names()
        named = [(f"users.{name!r}", name) for name in self.users]
        named += [(f"recording.users {name!r}", name) for name in self.recording.users]
        for where, name in named:
            if (problem := rule.problem(name)) is not None:
                raise ValueError(f"{where}: no login could use this name ({problem})")
        for name in self.users:
            self.container_for(name)
            self.session_for(name)
            self.forwarding_for(name)
        chains = [
            *(self.auth.authentication_methods or ()),
            *(c for user in self.users.values() for c in user.authentication_methods or ()),
        ]
        if self.auth.kerberos is None and any("gssapi-with-mic" in c for c in chains):
            raise ValueError("gssapi-with-mic in authentication_methods needs [auth.kerberos]")
        return self

    def container_for(self, username: str) -> ContainerSection:
        """The container settings of ``username``: ``[container]`` with their overrides."""
        user = self.users.get(username)
        override = dict(user.container) if user is not None else {}
        if user is not None and user.image is not None:
            override.setdefault("image", user.image)
        return merged(self.container, override, f"users.{username}.container")

    def with_container_overrides(
        self, username: str, overrides: Mapping[str, Any]
    ) -> ContainerSection:
        """``container_for(username)`` with a configuration server's answer on top.

        Raises:
            ValueError: the result is not valid settings (the answer names bad keys).
        """
        return merged(self.container_for(username), overrides, "config_webhook")

    def session_for(self, username: str) -> SessionSection:
        override = self.users[username].session if username in self.users else {}
        if "accept_env" in override:  # the protocol core applies it before any login
            raise ValueError(f"users.{username}.session.accept_env: cannot be set per user")
        return merged(self.session, override, f"users.{username}.session")

    def forwarding_for(self, username: str) -> ForwardingSection:
        override = self.users[username].forwarding if username in self.users else {}
        return merged(self.forwarding, override, f"users.{username}.forwarding")

    def with_forwarding_grant(self, username: str, grant: ForwardingGrant) -> ForwardingSection:
        """``forwarding_for(username)`` as a configuration server's answer changes it.

        Raises:
            ValueError: the answer's values are not valid settings (names the keys).
        """
        return grant.applied(self.forwarding_for(username))

    def channel_limit(self) -> int:
        """The most channels one connection may have open: its sessions plus its forwards,
        for the user with the most (each kind is bounded on its own, per user)."""
        return max(
            self.session_for(name).max_sessions_per_connection
            + self.forwarding_for(name).max_channels
            for name in ("", *self.users)
        )

    def podman_url(self) -> str:
        """The podman service URL, following podman's own lookup order; when the user's
        own socket does not exist, the one ``scripts/setup-host.sh`` starts, if it does."""
        if self.podman.url:
            return self.podman.url
        if os.environ.get("CONTAINER_HOST"):
            return os.environ["CONTAINER_HOST"]
        runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
        own = f"{runtime_dir}/podman/podman.sock"
        if not os.path.exists(own) and os.path.exists(SETUP_HOST_SOCKET):
            return f"unix://{SETUP_HOST_SOCKET}"
        return f"unix://{own}"

    def workspace_state_file(self) -> Path:
        """Where the workspace registry keeps its state (and its lock)."""
        return self.workspaces.state_file or default_state_dir() / "workspaces.json"

    def host_key_paths(self) -> tuple[Path, ...]:
        if self.host_keys:
            return self.host_keys
        return (default_state_dir() / "ssh_host_ed25519_key",)


def default_state_dir() -> Path:
    """Where generated host keys (and the workspace state, users' added keys) live when
    none are configured: systemd's ``StateDirectory=`` if the unit has one (the home of a
    service user is read-only under ``ProtectSystem=strict``), else /var/lib/trissh for
    root, else the user's data directory."""
    if systemd := os.environ.get("STATE_DIRECTORY"):
        return Path(systemd.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/trissh")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "trissh"


def load_config(path: Path | None, overrides: Mapping[str, Any]) -> ServerConfig:
    """Read ``path`` (TOML) if given, apply flag overrides (dotted keys), validate.

    Raises:
        ConfigError: unreadable file, TOML syntax, or invalid values.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{path}: not UTF-8 (byte {exc.start}): TOML files are UTF-8"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    for dotted, value in overrides.items():
        if value is None:
            continue
        section = data
        *parents, leaf = dotted.split(".")
        for depth, parent in enumerate(parents, 1):
            section = section.setdefault(parent, {})
            if not isinstance(section, dict):
                where = ".".join(parents[:depth])
                raise ConfigError(f"{path or 'flags'}: {where}: a table is needed (for {dotted})")
        section[leaf] = value
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        problems = []
        for err in exc.errors():
            message = str(err["msg"]).removeprefix("Value error, ")
            key = ".".join(str(part) for part in err["loc"])
            problems.append(f"{where}{key}: {message}" if key else f"{where}{message}")
        raise ConfigError("\n".join(problems)) from None
