"""What a user sees of the pull policy, through the real OpenSSH client: an image pulled from
a registry on loopback with the configured credentials, and a clear message when the
image cannot be had (no credentials; `never` with a missing image)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from trissh.backend.registry import make_backend
from trissh.config import load_config

from ..registry import PASSWORD, USER, LoopbackRegistry, loopback_registry, pushed_image
from ..support import ClientKey, make_context, needs, run_ssh, start_server

pytestmark = [pytest.mark.podman, needs("ssh")]


@pytest.fixture
async def registry(tmp_path: Path, podman_url: str) -> AsyncIterator[LoopbackRegistry]:
    async with loopback_registry(tmp_path, auth=True) as running:
        yield running


@pytest.fixture
async def pushed(registry: LoopbackRegistry, podman_url: str) -> AsyncIterator[str]:
    async with pushed_image(podman_url, registry) as image:
        yield image


async def login(
    nursery: trio.Nursery,
    tmp_path: Path,
    authorized_keys: Path,
    key: ClientKey,
    podman_url: str,
    **settings: Any,
) -> tuple[int, bytes, bytes]:
    """A server built as `trissh` builds it (the backend from the settings), one login."""
    overrides = {"podman.url": podman_url, **settings}
    backend = make_backend(load_config(None, overrides))
    ctx = make_context(backend, authorized_keys, tmp_path / "host_key", **overrides)
    server = await start_server(nursery, ctx)
    try:
        result = await run_ssh(server.port, key.path, "echo from-the-registry", timeout=120)
    finally:
        await server.stop()
    return result.returncode, result.stdout, result.stderr


async def test_pulled_with_the_configured_credentials(
    nursery: trio.Nursery,
    tmp_path: Path,
    authorized_keys: Path,
    client_key: ClientKey,
    podman_url: str,
    registry: LoopbackRegistry,
    pushed: str,
) -> None:
    creds = {"username": USER, "password": PASSWORD, "insecure": True}
    code, out, err = await login(
        nursery, tmp_path, authorized_keys, client_key, podman_url,
        **{"container.image": pushed, "podman.registries": {registry.host: creds}},
    )  # fmt: skip
    assert (code, out) == (0, b"from-the-registry\n"), err


async def test_a_user_is_told_why_an_image_cannot_be_had(
    nursery: trio.Nursery,
    tmp_path: Path,
    authorized_keys: Path,
    client_key: ClientKey,
    podman_url: str,
    registry: LoopbackRegistry,
    pushed: str,
) -> None:
    """Without credentials the registry refuses: the user reads the image and the reason;
    with `never` a missing image is named with the policy. Exit status 255 both times."""
    insecure = {"podman.registries": {registry.host: {"insecure": True}}}
    code, out, err = await login(
        nursery, tmp_path, authorized_keys, client_key, podman_url,
        **{"container.image": pushed, **insecure},
    )  # fmt: skip
    assert (code, out) == (255, b"")
    assert (
        err
        == (
            f"trissh: container image '{pushed}' could not be pulled:"
            " unauthorized: authentication required\n"
        ).encode()
    )
    code, out, err = await login(
        nursery, tmp_path, authorized_keys, client_key, podman_url,
        **{"container.image": pushed, "container.pull_policy": "never", **insecure},
    )  # fmt: skip
    assert (code, out) == (255, b"")
    assert err == f"trissh: container image '{pushed}' not found (pull_policy is never)\n".encode()
