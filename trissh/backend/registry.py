"""Which backend the configuration asks for, and how it is built: the backend seam.

``[backend] kind`` names an entry of :data:`FACTORIES`; its factory reads the settings it
needs (its own section, e.g. ``[podman]``) and returns a
:class:`~trissh.backend.base.Backend`. A new kind of backend is one package beside
:mod:`trissh.backend.podman`, one entry here, and its name added to ``BackendSection.kind``
in :mod:`trissh.config`. Factories import their package only when called, so a server
pays for the backend it runs and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from trissh.backend.base import Backend, Observe

if TYPE_CHECKING:
    from trissh.config import ServerConfig

__all__ = ["FACTORIES", "BackendFactory", "make_backend"]

#: Builds a backend from the server's settings; ``observe`` times container operations.
BackendFactory = Callable[["ServerConfig", Observe | None], Backend]


def _podman(settings: ServerConfig, observe: Observe | None) -> Backend:
    from trissh.backend.podman import PodmanBackend
    from trissh.backend.podman.images import Registry

    section = settings.podman
    registries = {}
    for host, registry in section.registries.items():
        try:
            credentials = registry.credentials()
        except OSError as exc:
            raise ValueError(f"podman.registries.{host}.password_file: {exc.strerror}") from None
        username, password = credentials or (None, None)
        registries[host] = Registry(
            username=username, password=password, insecure=registry.insecure
        )
    return PodmanBackend(
        settings.podman_url(),
        limiter_capacity=section.max_concurrent_calls,
        exec_helper=section.exec_helper or None,
        observe=observe,
        warm_pool=section.warm_pool,
        warm_pool_idle=section.warm_pool_idle,
        max_concurrent_starts=section.max_concurrent_starts,
        direct_stdio=section.direct_stdio,
        exec_agent=section.exec_agent,
        stdio_dir=section.stdio_dir,
        registries=registries,
    )


FACTORIES: Final[Mapping[str, BackendFactory]] = {"podman": _podman}


def make_backend(settings: ServerConfig, observe: Observe | None = None) -> Backend:
    """The backend ``settings.backend.kind`` names, built from ``settings``.

    Raises:
        ValueError: the backend's own settings are unusable (e.g. not a unix-socket URL).
    """
    return FACTORIES[settings.backend.kind](settings, observe)
