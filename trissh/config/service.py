"""The server's own sections: backend, podman, limits, metrics, recording, PROXY, SSH."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from trissh.addresses import parse_listen
from trissh.config.base import Model, TimerSeconds
from trissh.protocol.ciphers import CIPHERS, MACS
from trissh.protocol.config import DEFAULT_HOST_KEY_ALGORITHMS, check_algorithm_names
from trissh.protocol.kex import KEX_METHODS

#: Where scripts/setup-host.sh runs the podman service (its rootless user's socket).
SETUP_HOST_SOCKET = "/run/trissh-podman/podman.sock"


class BackendSection(Model):
    """``[backend]``: what runs the sessions (:mod:`trissh.backend.registry`); that
    backend's own section (``[podman]``) configures it."""

    #: Only podman for now. The in-memory fake of the tests is deliberately not a choice:
    #: a typo must never give users a pretend shell.
    kind: Literal["podman"] = "podman"


class RegistrySettings(Model):
    """``[podman.registries."HOST[:PORT]"]``: how images are pulled from one registry."""

    username: str | None = None
    #: Never logged; ``password_file`` keeps it out of the configuration.
    password: SecretStr | None = None
    password_file: Path | None = None
    #: Plain HTTP, or HTTPS without verifying the certificate (a registry on loopback).
    insecure: bool = False

    @model_validator(mode="after")
    def _check_password(self) -> RegistrySettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) != bool(self.username):
            raise ValueError("username and a password (or password_file) go together")
        return self

    def credentials(self) -> tuple[str, str] | None:
        """(username, password), reading ``password_file`` now.

        Raises:
            OSError: the password file cannot be read.
        """
        if not self.username:
            return None
        if self.password_file is not None:
            return self.username, self.password_file.read_text(encoding="utf-8").strip()
        assert self.password is not None
        return self.username, self.password.get_secret_value()


class PodmanSettings(Model):
    #: ``unix:///path.sock``; default: $CONTAINER_HOST, else $XDG_RUNTIME_DIR/podman/podman.sock.
    url: str | None = None
    #: Concurrent requests to the podman service (each a connection to its socket).
    max_concurrent_calls: int = Field(16, ge=1, le=256)
    #: Containers created and started at once; more wait their turn in a FIFO queue
    #: (``trissh_container_starts_waiting``). Past ~8 podman gets no faster here, each
    #: start only slower.
    max_concurrent_starts: int = Field(8, ge=1, le=256)
    #: The static ``trissh-exec`` helper (built by scripts/setup-host.sh), made the parent
    #: of every session's program so deaths by signal are reported as such; "" to disable.
    exec_helper: str = "/usr/local/lib/trissh/trissh-exec"
    #: The most containers kept created and started from ``[container]``'s settings, each
    #: handed to exactly one login whose settings match (never reused); 0 turns the pool
    #: off. The pool holds as many as logins took in the last 30 s, within
    #: ``warm_pool_idle`` and this.
    warm_pool: int = Field(16, ge=0, le=256)
    #: The fewest kept, when no one logs in: a login on a quiet server skips podman.
    warm_pool_idle: int = Field(2, ge=0, le=256)
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
    #: Credentials and TLS of the registries images are pulled from, by ``HOST[:PORT]`` as
    #: in the image's name (``docker.io`` for names without one).
    registries: dict[str, RegistrySettings] = Field(default_factory=dict)


class LimitSettings(Model):
    #: Seconds an unauthenticated connection may live (sshd's LoginGraceTime).
    login_grace_time: float = Field(120.0, gt=0)
    #: sshd's MaxStartups "start:rate:full" for unauthenticated connections: from ``start``
    #: on, new ones are dropped with probability ``rate`` %, rising to 100 % at ``full``.
    max_startups: str = "10:30:100"
    #: Unauthenticated connections one source address may hold; 0 for no limit.
    max_startups_per_source: int = Field(10, ge=0)
    max_auth_attempts: int = Field(6, ge=1, le=100)
    #: Seconds running sessions get once the server stops accepting (SIGTERM/SIGINT, then
    #: ``drain_time``) before they are cancelled (a second signal cancels at once).
    #: Connections without sessions end immediately.
    shutdown_grace: float = Field(10.0, ge=0)
    #: Seconds between SIGTERM (or ``trissh drain``) and the listener's closing, during
    #: which ``/readyz`` answers 503 but new connections are still served: a load
    #: balancer's lame-duck time. Longer than its check interval times its fall count.
    drain_time: float = Field(0.0, ge=0, le=3600)

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
        if start == 0:
            raise ValueError(f"max_startups {value!r}: 0 would refuse every connection")
        return start, 100, start
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise ValueError(f"max_startups {value!r} is not START:RATE:FULL")
    start, rate, full = map(int, parts)
    if not 0 < start <= full or rate > 100:
        raise ValueError(f"max_startups {value!r}: need 0 < start <= full and rate <= 100")
    return start, rate, full


class MetricsSection(Model):
    """``[metrics]``: Prometheus exposition, /healthz and /readyz on their own address."""

    #: ``HOST:PORT``; none by default (also ``--metrics-listen``).
    listen: str | None = None
    #: Seconds between the background checks (podman answers, the image exists) that
    #: ``/readyz`` answers from.
    ready_check_interval: float = Field(1.0, ge=0.05, le=60)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value


#: sun_path's 107 bytes, less the temporary name's ``.NAME.XXXXXXXX`` (admin/server.py).
MAX_ADMIN_SOCKET_PATH: Final = 107 - 10


class AdminSection(Model):
    """``[admin]``: the local socket of ``trissh sessions``, ``kill``, ``watch``, ``drain``."""

    #: Unix socket path; "" (the default): none. Made mode 0600, and only its owner (the
    #: user trissh runs as) and root may use it. Also ``--admin-socket``.
    socket: str = ""
    #: Tell users when an operator starts watching their session, whatever ``trissh
    #: watch`` asks.
    notify_watched: bool = False

    @field_validator("socket")
    @classmethod
    def _check_socket(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError("socket must be an absolute path")
        if len(value.encode()) > MAX_ADMIN_SOCKET_PATH:
            raise ValueError(
                f"socket path is longer than {MAX_ADMIN_SOCKET_PATH} bytes (a unix socket's"
                " path holds 107, and trissh binds a name 10 bytes longer first, then renames)"
            )
        return value


class RecordingSection(Model):
    """``[recording]``: pty sessions as asciicast v2, others as timed transcripts."""

    enabled: bool = False
    directory: Path = Path("/var/lib/trissh/recordings")
    #: A recording stops (cleanly, with a marker) at this size; 0 for no cap.
    max_bytes: int = Field(100 * 1024 * 1024, ge=0)
    #: No recording starts, and running ones stop, where the file system holding them has
    #: less free than this (MiB): one user's output must not fill the server's disk.
    min_free_mb: int = Field(256, ge=0)
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


class ProxySection(Model):
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


class SshSettings(Model):
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
    rekey_interval: TimerSeconds = 3600.0
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
            "host_key_algorithms": ("host key algorithm", DEFAULT_HOST_KEY_ALGORITHMS),
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
