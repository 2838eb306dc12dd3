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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_IMAGE = "localhost/trissh-base:latest"


class ConfigError(Exception):
    """The configuration is invalid; ``str()`` lists every problem with its key path."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PodmanSettings(_Model):
    #: ``unix:///path.sock``; default: $CONTAINER_HOST, else $XDG_RUNTIME_DIR/podman/podman.sock.
    url: str | None = None
    #: Concurrent lifecycle calls to the podman service.
    max_concurrent_calls: int = Field(8, ge=1, le=256)


class ContainerSection(_Model):
    image: str = DEFAULT_IMAGE
    network: str = "none"
    pids_limit: int = Field(256, ge=8, le=1_000_000)
    memory_limit_mb: int | None = Field(None, ge=16)
    shell: tuple[str, ...] = ("/bin/sh",)
    #: How a session's ``sftp`` subsystem is run inside the image.
    sftp_server: str = "/usr/lib/openssh/sftp-server"
    #: Seconds allowed for creating and starting a container.
    start_timeout: float = Field(60.0, gt=0)


class LimitSettings(_Model):
    #: Seconds an unauthenticated connection may live (sshd's LoginGraceTime).
    login_grace_time: float = Field(120.0, gt=0)
    max_auth_attempts: int = Field(6, ge=1, le=100)
    max_sessions_per_connection: int = Field(10, ge=1, le=1000)
    #: Seconds given to live sessions after SIGTERM before they are cancelled.
    shutdown_grace: float = Field(0.0, ge=0)


class ServerConfig(_Model):
    listen: tuple[str, ...] = ("0.0.0.0:2222",)
    host_keys: tuple[Path, ...] = ()
    authorized_keys: Path | None = None
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: Where a connection's sessions run: one container per connection, or per session.
    execution_mode: Literal["connection"] = "connection"
    podman: PodmanSettings = PodmanSettings()
    container: ContainerSection = ContainerSection()
    limits: LimitSettings = LimitSettings()

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one listen address is needed")
        for item in value:
            parse_listen(item)
        return value

    def podman_url(self) -> str:
        """The podman service URL, following podman's own lookup order."""
        if self.podman.url:
            return self.podman.url
        if os.environ.get("CONTAINER_HOST"):
            return os.environ["CONTAINER_HOST"]
        runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
        return f"unix://{runtime_dir}/podman/podman.sock"

    def host_key_paths(self) -> tuple[Path, ...]:
        if self.host_keys:
            return self.host_keys
        return (default_state_dir() / "ssh_host_ed25519_key",)


def default_state_dir() -> Path:
    """Where generated host keys live when none are configured."""
    if os.geteuid() == 0:
        return Path("/var/lib/trissh")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "trissh"


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` into a host and port."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"listen address {value!r} is not HOST:PORT")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range in {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"listen address {value!r} has no host")
    return host, port


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
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    for dotted, value in overrides.items():
        if value is None:
            continue
        section = data
        *parents, leaf = dotted.split(".")
        for parent in parents:
            section = section.setdefault(parent, {})
        section[leaf] = value
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        problems = [
            f"{where}{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError("\n".join(problems)) from None
