"""A real container registry on loopback for the pull tests: Debian's ``docker-registry``
(distribution 2.8) started with a small config file on 127.0.0.1 and a free port, with or
without htpasswd credentials; the local busybox image pushed to it with ``podman push``."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from trissh.backend.base import DEFAULT_IMAGE

from .support import free_port, require_binary

USER = "puller"
PASSWORD = "s3cret-registry-password"


@dataclass(frozen=True)
class LoopbackRegistry:
    host: str  # 127.0.0.1:PORT
    auth: bool

    def image(self, tag: str) -> str:
        return f"{self.host}/trissh-test/base:{tag}"


@asynccontextmanager
async def loopback_registry(tmp: Path, *, auth: bool) -> AsyncIterator[LoopbackRegistry]:
    """The registry, answering on ``/v2/``; stopped (by its pid) afterwards."""
    binary = require_binary("docker-registry")
    port = free_port()
    config = tmp / "registry.yml"
    lines = [
        "version: 0.1",
        "log: {level: error}",
        f"storage: {{filesystem: {{rootdirectory: {tmp / 'data'}}}}}",
        f"http: {{addr: '127.0.0.1:{port}', secret: {uuid.uuid4().hex}}}",
    ]
    if auth:
        htpasswd = tmp / "htpasswd"
        with trio.fail_after(30):
            await trio.run_process(
                [require_binary("htpasswd"), "-Bbc", str(htpasswd), USER, PASSWORD],
                capture_stdout=True, capture_stderr=True,
            )  # fmt: skip
        lines.append(f"auth: {{htpasswd: {{realm: trissh-test, path: {htpasswd}}}}}")
    config.write_text("\n".join(lines) + "\n")
    process = await trio.lowlevel.open_process(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with trio.fail_after(15):
            while True:
                try:
                    async with httpx.AsyncClient() as client:
                        answer = await client.get(f"http://127.0.0.1:{port}/v2/")
                    if answer.status_code in (200, 401):
                        break
                except httpx.TransportError:
                    pass
                assert process.returncode is None, "docker-registry exited"
                await trio.sleep(0.1)
        yield LoopbackRegistry(f"127.0.0.1:{port}", auth)
    finally:
        process.terminate()
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()


async def push(podman_url: str, registry: LoopbackRegistry, tag: str) -> str:
    """``podman push`` the local base image into the registry; its name there."""
    target = registry.image(tag)
    argv = [
        require_binary("podman"), "--remote", "--url", podman_url,
        "push", "--quiet", "--tls-verify=false",
    ]  # fmt: skip
    if registry.auth:
        argv += ["--creds", f"{USER}:{PASSWORD}"]
    with trio.fail_after(60):
        done = await trio.run_process(
            [*argv, DEFAULT_IMAGE, target], capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode()
    return target


def remove_local_image(podman_url: str, image: str) -> None:
    """Drop a pulled image from podman's storage (so the next test pulls again)."""
    import podman

    with podman.PodmanClient(base_url=podman_url) as client:
        response = client.api.delete(f"/images/{image}", params={"force": "true"})
        assert response.status_code in (200, 404), response.text


@asynccontextmanager
async def pushed_image(podman_url: str, registry: LoopbackRegistry) -> AsyncIterator[str]:
    """A fresh tag of the base image in the registry, not in local storage (so using it
    pulls); dropped from local storage again afterwards."""
    image = await push(podman_url, registry, uuid.uuid4().hex[:10])
    await trio.to_thread.run_sync(remove_local_image, podman_url, image)
    yield image
    await trio.to_thread.run_sync(remove_local_image, podman_url, image)
