"""``[container]``: how session containers are built, and the backend's view of it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from trissh.backend.base import DEFAULT_IMAGE, ContainerSettings, Volume
from trissh.config.base import Model


class ContainerSection(Model):
    """How session containers are built; ``[users.NAME.container]`` overrides any key."""

    image: str = DEFAULT_IMAGE
    #: Pull the image before a container is made: ``always``, ``if-not-present`` (when it is
    #: not in local storage) or ``never``. A ``localhost/`` image is never pulled.
    pull_policy: Literal["always", "if-not-present", "never"] = "if-not-present"
    #: ``none`` (default: no network at all), or a rootless network mode.
    network: Literal["none", "slirp4netns", "pasta"] = "none"
    #: Processes (threads count): the pids controller where podman's user has it, and an
    #: rlimit per user inside the container (with ``userns_size``), cgroup v1 included.
    pids_limit: int = Field(256, ge=8, le=1_000_000)
    #: Per container where podman's user has the memory controller (cgroup v2), else the
    #: heap of each process (RLIMIT_DATA); 0 for no limit.
    memory_limit_mb: int | None = Field(1024, ge=0)
    #: Open files per process.
    nofile_limit: int = Field(4096, ge=64, le=1_048_576)
    #: IDs in each container's own user namespace: no two containers share a host UID.
    #: 65536 (podman's default) fits any image's users, nobody (65534) included. 0: no
    #: namespace of its own (container root is the podman user; pids_limit then needs
    #: the pids controller).
    userns_size: int = Field(65536, ge=0, le=1 << 24)
    cpu_shares: int | None = Field(None, ge=2, le=262_144)
    #: Read-only root filesystem; ``/tmp`` then comes from ``tmp_size_mb``.
    read_only: bool = False
    #: Size of a tmpfs on /tmp; 0 for none (default: none unless ``read_only``).
    tmp_size_mb: int | None = Field(None, ge=0, le=65_536)
    user: str | None = None
    workdir: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    #: ``HOST_PATH:CONTAINER_PATH[:ro|rw]``; read-only unless ``:rw``.
    volumes: tuple[str, ...] = ()
    shell: tuple[str, ...] = ("/bin/sh",)
    #: Deprecated, use ``[session] subsystems.sftp``; when set it runs ``sftp`` instead
    #: (the configuration server's ``subsystems.sftp`` arrives here).
    sftp_server: str | None = None
    #: Seconds a session may wait for its container: its turn in the start queue (a login
    #: storm's last users wait for everyone before them) plus podman's create and start.
    start_timeout: float = Field(300.0, gt=0)

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

    @field_validator("memory_limit_mb")
    @classmethod
    def _check_memory(cls, value: int | None) -> int | None:
        # Under a per-process limit the OCI runtime (runc's Go init) needs ~96 MiB to start.
        if value is not None and 0 < value < 128:
            raise ValueError("memory_limit_mb must be 0 (no limit) or at least 128")
        return value

    @field_validator("userns_size")
    @classmethod
    def _check_userns(cls, value: int) -> int:
        if 0 < value < 1024:
            raise ValueError("userns_size must be 0 (none of its own) or at least 1024")
        return value

    @field_validator("shell")
    @classmethod
    def _check_shell(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or not value[0].startswith("/"):
            raise ValueError("shell must start with an absolute path")
        return value


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


def container_settings(section: ContainerSection) -> ContainerSettings:
    """The backend's view of a ``[container]`` section."""
    tmpfs: dict[str, int] = {}
    if section.tmp_size_mb or (section.read_only and section.tmp_size_mb is None):
        tmpfs["/tmp"] = section.tmp_size_mb or 64  # noqa: S108 - inside the container
    return ContainerSettings(
        image=section.image,
        pull_policy=section.pull_policy,
        network=section.network,
        pids_limit=section.pids_limit,
        nofile_limit=section.nofile_limit,
        userns_size=section.userns_size,
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
