"""ServerConfig: the operator's settings, from a TOML file and command-line flags.

Validated by pydantic into typed, frozen settings: unknown keys are errors, and every
error names the key path (``container.pids_limit: Input should be ...``). Flags are merged
into the TOML data *before* validation, so both are checked by the same rules.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trissh.addresses import parse_listen
from trissh.backend.base import DEFAULT_IMAGE, ContainerSettings, Volume
from trissh.protocol.ciphers import CIPHERS, MACS
from trissh.protocol.config import check_algorithm_names
from trissh.protocol.kex import KEX_METHODS
from trissh.protocol.keys import HOST_KEY_ALGORITHMS

#: Where scripts/setup-host.sh runs the podman service (its rootless user's socket).
SETUP_HOST_SOCKET = "/run/trissh-podman/podman.sock"


class ConfigError(Exception):
    """The configuration is invalid; ``str()`` lists every problem with its key path."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendSection(_Model):
    """``[backend]``: what runs the sessions (:mod:`trissh.backend.registry`); that
    backend's own section (``[podman]``) configures it."""

    #: Only podman for now. The in-memory fake of the tests is deliberately not a choice:
    #: a typo must never give users a pretend shell.
    kind: Literal["podman"] = "podman"


class PodmanSettings(_Model):
    #: ``unix:///path.sock``; default: $CONTAINER_HOST, else $XDG_RUNTIME_DIR/podman/podman.sock.
    url: str | None = None
    #: Concurrent lifecycle calls to the podman service.
    max_concurrent_calls: int = Field(8, ge=1, le=256)
    #: The static ``trissh-exec`` helper (built by scripts/setup-host.sh), made the parent
    #: of every session's program so deaths by signal are reported as such; "" to disable.
    exec_helper: str = "/usr/local/lib/trissh/trissh-exec"
    #: Containers kept created and started from ``[container]``'s settings, each handed to
    #: exactly one login whose settings match (never reused); 0 turns the pool off.
    warm_pool: int = Field(0, ge=0, le=256)
    #: Programs without a pty get their stdio as pipes handed into the container (through a
    #: per-container directory of unix sockets) instead of podman's exec stream: ~2x the
    #: throughput. Needs ``exec_helper``.
    direct_stdio: bool = True
    #: With direct stdio, each container's main process is ``trissh-exec --agent``, which
    #: starts session programs (pty or not) on trissh's request: no ``podman exec``.
    exec_agent: bool = True
    #: Where those per-container directories go; "" picks $RUNTIME_DIRECTORY, else
    #: $XDG_RUNTIME_DIR (if others may pass through it), else the temp dir. The podman
    #: user must be able to reach it.
    stdio_dir: str = ""


class ContainerSection(_Model):
    """How session containers are built; ``[users.NAME.container]`` overrides any key."""

    image: str = DEFAULT_IMAGE
    #: ``none`` (default: no network at all), or a rootless network mode.
    network: Literal["none", "slirp4netns", "pasta"] = "none"
    pids_limit: int = Field(256, ge=8, le=1_000_000)
    memory_limit_mb: int | None = Field(None, ge=16)
    cpu_shares: int | None = Field(None, ge=2, le=262_144)
    #: Read-only root filesystem; ``/tmp`` then comes from ``tmp_size_mb``.
    read_only: bool = False
    #: Size of a tmpfs on /tmp; 0 for none (default: none unless ``read_only``).
    tmp_size_mb: int | None = Field(None, ge=0, le=65_536)
    user: str | None = None
    workdir: str | None = None
    env: dict[str, str] = {}
    labels: dict[str, str] = {}
    #: ``HOST_PATH:CONTAINER_PATH[:ro|rw]``; read-only unless ``:rw``.
    volumes: tuple[str, ...] = ()
    shell: tuple[str, ...] = ("/bin/sh",)
    #: How a session's ``sftp`` subsystem is run inside the image.
    sftp_server: str = "/usr/lib/openssh/sftp-server"
    #: Seconds allowed for creating and starting a container.
    start_timeout: float = Field(60.0, gt=0)

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.startswith("trissh."):
                raise ValueError(f"label {key!r}: the trissh. prefix is reserved")
        return value

    @field_validator("volumes")
    @classmethod
    def _check_volumes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            parse_volume(item)
        return value

    @field_validator("shell")
    @classmethod
    def _check_shell(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or not value[0].startswith("/"):
            raise ValueError("shell must start with an absolute path")
        return value


class SessionSection(_Model):
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


AUTH_METHODS = ("publickey", "password", "keyboard-interactive")


def _check_chains(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    for chain in value or ():
        methods = [part.strip() for part in chain.split(",")]
        unknown = [m for m in methods if m not in AUTH_METHODS]
        if unknown or not all(methods):
            raise ValueError(
                f"chain {chain!r}: methods are comma-separated, from {', '.join(AUTH_METHODS)}"
            )
    return value


class UserSection(_Model):
    """Settings of one user name: credentials, and tables that override the server-wide
    ``[container]`` and ``[session]`` key by key."""

    #: OpenSSH authorized_keys lines (options allowed), in addition to ``authorized_keys``.
    authorized_keys: tuple[str, ...] = ()
    authorized_keys_file: Path | None = None
    #: argon2id hash from ``trissh hash-password``.
    password_hash: str | None = None
    #: File with the user's base32 TOTP secret; keyboard-interactive then asks for a code.
    totp_secret_file: Path | None = None
    #: sshd's AuthenticationMethods: chains like "publickey,keyboard-interactive".
    authentication_methods: tuple[str, ...] | None = None
    #: Shortcut for ``container.image``.
    image: str | None = None
    container: dict[str, Any] = {}
    session: dict[str, Any] = {}

    @field_validator("password_hash")
    @classmethod
    def _check_hash(cls, value: str | None) -> str | None:
        from trissh.auth.passwords import check_hash

        return None if value is None else check_hash(value)

    @field_validator("authentication_methods")
    @classmethod
    def _check_methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _check_chains(value)


class WebhookSection(_Model):
    """An HTTP service trissh asks (ContainerSSH's auth and configuration protocols)."""

    url: str
    #: Seconds per attempt; connection errors, timeouts and 5xx are retried.
    timeout: float = Field(10.0, gt=0, le=300)
    retries: int = Field(2, ge=0, le=10)
    #: PEM file of the CA that signed the server's certificate (default: system CAs).
    ca_file: Path | None = None
    #: PEM client certificate and key, for mutual TLS.
    client_cert: Path | None = None
    client_key: Path | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return value.rstrip("/")


class AuthWebhookSection(WebhookSection):
    """``[auth.webhook]``: ContainerSSH's auth webhook (``/password``, ``/pubkey``)."""

    #: Ask ``/authz`` once a user has passed authentication.
    authz: bool = False
    #: Let ``/keyboard-interactive`` drive the prompts (trissh's extension; MFA services).
    keyboard_interactive: bool = False


class AuthSection(_Model):
    """``[auth]``: server-wide authentication settings."""

    #: Asked for users and keys the local configuration does not accept.
    webhook: AuthWebhookSection | None = None
    #: ContainerSSH's configuration server: its answer overrides ``[container]`` per login.
    config_webhook: WebhookSection | None = None

    #: CA public keys (OpenSSH format) whose user certificates are trusted, for any user
    #: whose name is among the certificate's principals.
    trusted_user_ca_keys: tuple[str, ...] = ()
    trusted_user_ca_keys_file: Path | None = None
    #: Seconds added (randomized between half and 1.5 times) before answering a failed
    #: password, code or signature: guessing gets slower and timing tells nothing.
    failure_delay: float = Field(0.3, ge=0, le=10)
    #: AuthenticationMethods for users without their own; default: any one method the
    #: user has credentials for.
    authentication_methods: tuple[str, ...] | None = None

    @field_validator("authentication_methods")
    @classmethod
    def _check_methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _check_chains(value)


class LimitSettings(_Model):
    #: Seconds an unauthenticated connection may live (sshd's LoginGraceTime).
    login_grace_time: float = Field(120.0, gt=0)
    #: sshd's MaxStartups "start:rate:full" for unauthenticated connections: from ``start``
    #: on, new ones are dropped with probability ``rate`` %, rising to 100 % at ``full``.
    max_startups: str = "10:30:100"
    #: Unauthenticated connections one source address may hold; 0 for no limit.
    max_startups_per_source: int = Field(10, ge=0)
    max_auth_attempts: int = Field(6, ge=1, le=100)
    #: Seconds running sessions get after SIGTERM/SIGINT before they are cancelled (a
    #: second signal cancels at once). Connections without sessions end immediately.
    shutdown_grace: float = Field(10.0, ge=0)

    @field_validator("max_startups")
    @classmethod
    def _check_startups(cls, value: str) -> str:
        parse_max_startups(value)
        return value


def parse_max_startups(value: str) -> tuple[int, int, int]:
    """``"start:rate:full"`` (or a single number: a hard limit) as three integers."""
    parts = value.split(":")
    if len(parts) == 1 and parts[0].isdigit():
        start = int(parts[0])
        return start, 100, start
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise ValueError(f"max_startups {value!r} is not START:RATE:FULL")
    start, rate, full = map(int, parts)
    if not 0 < start <= full or rate > 100:
        raise ValueError(f"max_startups {value!r}: need 0 < start <= full and rate <= 100")
    return start, rate, full


class MetricsSection(_Model):
    """``[metrics]``: Prometheus exposition, /healthz and /readyz on their own address."""

    #: ``HOST:PORT``; none by default (also ``--metrics-listen``).
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value


class RecordingSection(_Model):
    """``[recording]``: pty sessions as asciicast v2, others as timed transcripts."""

    enabled: bool = False
    directory: Path = Path("/var/lib/trissh/recordings")
    #: A recording stops (cleanly, with a marker) at this size; 0 for no cap.
    max_bytes: int = Field(100 * 1024 * 1024, ge=0)
    #: Also record what users type (passwords typed at prompts included!).
    record_input: bool = False
    #: Only these users; empty: everyone.
    users: tuple[str, ...] = ()

    @field_validator("max_bytes")
    @classmethod
    def _check_size(cls, value: int) -> int:
        if 0 < value < 16384:
            raise ValueError("max_bytes must be 0 (no cap) or at least 16384")
        return value


class ProxySection(_Model):
    """``[proxy]``: HAProxy PROXY protocol v1/v2 from trusted balancers only."""

    #: Networks (CIDR) whose connections must start with a PROXY header; others never may.
    trusted_networks: tuple[str, ...] = ()
    #: Seconds a trusted peer has to send its header.
    header_timeout: float = Field(5.0, gt=0, le=60)

    @field_validator("trusted_networks")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:  # as strict as TrustedNetworks: a typo is an error, not a guess
            ipaddress.ip_network(cidr.strip(), strict=True)
        return value


class SshSettings(_Model):
    """``[ssh]``: transport algorithms and rekeying. A list left out keeps trissh's default
    (``trissh.protocol.config``); a list given is the exact offer, in preference order.

    Post-quantum only (no classical key exchange at all)::

        [ssh]
        kex = ["mlkem768x25519-sha256", "sntrup761x25519-sha512",
               "sntrup761x25519-sha512@openssh.com"]
    """

    kex: tuple[str, ...] | None = None
    ciphers: tuple[str, ...] | None = None
    macs: tuple[str, ...] | None = None
    host_key_algorithms: tuple[str, ...] | None = None
    #: Bytes under one key in either direction before the server rekeys (RFC 4253 §9).
    rekey_bytes: int = Field(1 << 30, ge=1 << 16)
    #: Seconds under one key before the server rekeys; 0 turns the timer off.
    rekey_interval: float = Field(3600.0, ge=0)
    #: Offer ``zlib@openssh.com`` (compression after authentication) besides ``none``.
    compression: bool = False

    @field_validator("kex", "ciphers", "macs", "host_key_algorithms")
    @classmethod
    def _check_names(
        cls, value: tuple[str, ...] | None, info: ValidationInfo
    ) -> tuple[str, ...] | None:
        known = {
            "kex": ("kex algorithm", tuple(KEX_METHODS)),
            "ciphers": ("cipher", tuple(CIPHERS)),
            "macs": ("MAC", tuple(MACS)),
            "host_key_algorithms": ("host key algorithm", HOST_KEY_ALGORITHMS),
        }
        if value is not None:
            kind, names = known[str(info.field_name)]
            check_algorithm_names(kind, value, names, allow_empty=kind == "MAC")
        return value

    def protocol_options(self) -> dict[str, Any]:
        """The ``ProtocolConfig`` keyword arguments these settings override."""
        options: dict[str, Any] = {"rekey_bytes": self.rekey_bytes}
        if self.compression:
            options["compression"] = ("none", "zlib@openssh.com")
        for field, option in (
            ("kex", "kex_algorithms"),
            ("ciphers", "ciphers"),
            ("macs", "macs"),
            ("host_key_algorithms", "host_key_algorithms"),
        ):
            value = getattr(self, field)
            if value is not None:
                options[option] = value
        return options


class ServerConfig(_Model):
    listen: tuple[str, ...] = ("0.0.0.0:2222",)
    host_keys: tuple[Path, ...] = ()
    authorized_keys: Path | None = None
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    backend: BackendSection = BackendSection()
    podman: PodmanSettings = PodmanSettings()
    container: ContainerSection = ContainerSection()
    session: SessionSection = SessionSection()
    limits: LimitSettings = LimitSettings()
    auth: AuthSection = AuthSection()
    metrics: MetricsSection = MetricsSection()
    recording: RecordingSection = RecordingSection()
    proxy: ProxySection = ProxySection()
    users: dict[str, UserSection] = {}
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
        for name in self.users:
            self.container_for(name)
            self.session_for(name)
        return self

    def container_for(self, username: str) -> ContainerSection:
        """The container settings of ``username``: ``[container]`` with their overrides."""
        user = self.users.get(username)
        override = dict(user.container) if user is not None else {}
        if user is not None and user.image is not None:
            override.setdefault("image", user.image)
        return _merged(self.container, override, f"users.{username}.container")

    def with_container_overrides(
        self, username: str, overrides: Mapping[str, Any]
    ) -> ContainerSection:
        """``container_for(username)`` with a configuration server's answer on top.

        Raises:
            ValueError: the result is not valid settings (the answer names bad keys).
        """
        return _merged(self.container_for(username), overrides, "config_webhook")

    def session_for(self, username: str) -> SessionSection:
        override = self.users[username].session if username in self.users else {}
        for fixed in ("accept_env", "execution_mode"):
            if fixed in override:
                raise ValueError(f"users.{username}.session.{fixed}: cannot be set per user")
        return _merged(self.session, override, f"users.{username}.session")

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

    def host_key_paths(self) -> tuple[Path, ...]:
        if self.host_keys:
            return self.host_keys
        return (default_state_dir() / "ssh_host_ed25519_key",)


_Section = TypeVar("_Section", ContainerSection, SessionSection)


def _merged(base: _Section, override: Mapping[str, Any], where: str) -> _Section:
    if not override:
        return base
    try:
        return type(base).model_validate({**base.model_dump(), **override})
    except ValidationError as exc:
        problems = "; ".join(
            f"{where}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(problems) from None


def parse_volume(value: str) -> tuple[str, str, bool]:
    """``HOST:CONTAINER[:ro|rw]`` into (host, container, read_only)."""
    parts = value.split(":")
    if len(parts) == 2:
        parts.append("ro")
    if len(parts) != 3 or parts[2] not in ("ro", "rw"):
        raise ValueError(f"volume {value!r} is not HOST_PATH:CONTAINER_PATH[:ro|rw]")
    host, container, mode = parts
    if not host.startswith("/") or not container.startswith("/"):
        raise ValueError(f"volume {value!r}: both paths must be absolute")
    return host, container, mode == "ro"


def default_state_dir() -> Path:
    """Where generated host keys live when none are configured."""
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
        problems = []
        for err in exc.errors():
            message = str(err["msg"]).removeprefix("Value error, ")
            key = ".".join(str(part) for part in err["loc"])
            problems.append(f"{where}{key}: {message}" if key else f"{where}{message}")
        raise ConfigError("\n".join(problems)) from None


def container_settings(section: ContainerSection) -> ContainerSettings:
    """The backend's view of a ``[container]`` section."""
    tmpfs: dict[str, int] = {}
    if section.tmp_size_mb or (section.read_only and section.tmp_size_mb is None):
        tmpfs["/tmp"] = section.tmp_size_mb or 64  # noqa: S108 - inside the container
    return ContainerSettings(
        image=section.image,
        network=section.network,
        pids_limit=section.pids_limit,
        memory_limit=section.memory_limit_mb * 1024 * 1024 if section.memory_limit_mb else None,
        cpu_shares=section.cpu_shares,
        read_only=section.read_only,
        tmpfs=tmpfs,
        volumes=tuple(
            Volume(source=host, destination=container, read_only=read_only)
            for host, container, read_only in map(parse_volume, section.volumes)
        ),
        env=dict(section.env),
        labels=dict(section.labels),
        shell=section.shell,
        user=section.user,
        workdir=section.workdir,
    )
