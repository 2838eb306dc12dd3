"""Where sessions run: the backend contract and its implementations."""

from trissh.backend.base import (
    Backend,
    ContainerSettings,
    ExitStatus,
    HealthCheck,
    Process,
    ProcessSpec,
    PtySpec,
    Sandbox,
    SandboxSpec,
    TerminalSize,
    Volume,
)
from trissh.backend.errors import BackendError, BackendUnavailable, ImageNotFound

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "ContainerSettings",
    "ExitStatus",
    "HealthCheck",
    "ImageNotFound",
    "Process",
    "ProcessSpec",
    "PtySpec",
    "Sandbox",
    "SandboxSpec",
    "TerminalSize",
    "Volume",
]
