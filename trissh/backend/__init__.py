"""Where sessions run: the backend contract and its implementations.

:mod:`.base` is the contract, :mod:`.registry` builds the configured backend, and each
backend is a package: :mod:`.podman` (rootless podman) and :mod:`.memory` (the in-process
fake of the tests). Nothing here imports a backend package, so the contract costs no
podman client to import.
"""

from trissh.backend.base import (
    DEFAULT_IMAGE,
    Backend,
    ContainerSettings,
    ExitStatus,
    FoundSandbox,
    FoundVolume,
    HealthCheck,
    LaunchPath,
    Observe,
    Process,
    ProcessSpec,
    PtySpec,
    Sandbox,
    SandboxListener,
    SandboxSpec,
    SocketAddress,
    TerminalSize,
    Volume,
)
from trissh.backend.errors import (
    BackendError,
    BackendUnavailable,
    ForwardError,
    ForwardReason,
    ImageNotFound,
    ImagePullFailed,
)

__all__ = [
    "DEFAULT_IMAGE",
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "ContainerSettings",
    "ExitStatus",
    "ForwardError",
    "ForwardReason",
    "FoundSandbox",
    "FoundVolume",
    "HealthCheck",
    "ImageNotFound",
    "ImagePullFailed",
    "LaunchPath",
    "Observe",
    "Process",
    "ProcessSpec",
    "PtySpec",
    "Sandbox",
    "SandboxListener",
    "SandboxSpec",
    "SocketAddress",
    "TerminalSize",
    "Volume",
]
