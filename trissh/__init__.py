"""trissh: an SSH server on trio that drops every session into a rootless podman container."""

__version__ = "0.1.0"
