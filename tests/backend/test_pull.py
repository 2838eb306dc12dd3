"""The pull policy on real podman against a real registry on loopback (docker-registry), with
and without credentials; and the in-process backend's model of the same rules."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import trio

from trissh.backend import ContainerSettings, ImageNotFound, ImagePullFailed, SandboxSpec
from trissh.backend.memory import MemoryBackend
from trissh.backend.podman import PodmanBackend
from trissh.backend.podman.images import Registry, registry_of

from ..registry import (
    PASSWORD,
    USER,
    LoopbackRegistry,
    loopback_registry,
    pushed_image,
    remove_local_image,
)
from ..support import capture_module_log
from .conftest import TEST_SCOPE_LABEL

BOUND = 90


def spec(image: str, policy: str) -> SandboxSpec:
    settings = ContainerSettings(image=image, pull_policy=policy)
    return SandboxSpec(
        conn_id="pull", username="alice", remote="", instance="pull-test", settings=settings
    )


def test_registry_of_reads_names_as_podman_does() -> None:
    assert registry_of("127.0.0.1:5000/a/b:1") == "127.0.0.1:5000"
    assert registry_of("quay.io/x/y") == "quay.io"
    assert registry_of("localhost/trissh-base:latest") == "localhost"
    assert registry_of("alpine") == "docker.io"
    assert registry_of("library/alpine:3") == "docker.io"


async def test_the_memory_backend_follows_the_same_rules() -> None:
    backend = MemoryBackend(images={"localhost/here:1"}, pullable={"reg.example/x:1"})
    async with backend.open_sandbox(spec("reg.example/x:1", "if-not-present")):
        pass
    async with backend.open_sandbox(spec("reg.example/x:1", "if-not-present")):
        pass
    async with backend.open_sandbox(spec("reg.example/x:1", "always")):
        pass
    assert backend.pulls == ["reg.example/x:1", "reg.example/x:1"]
    with pytest.raises(ImageNotFound, match="pull_policy is never"):
        async with backend.open_sandbox(spec("reg.example/y:1", "never")):
            pass
    with pytest.raises(ImagePullFailed, match=r"reg\.example/y:1"):
        async with backend.open_sandbox(spec("reg.example/y:1", "always")):
            pass
    with pytest.raises(ImageNotFound, match="never pulled"):
        async with backend.open_sandbox(spec("localhost/gone:1", "always")):
            pass


@pytest.fixture(params=[False, True], ids=["open", "htpasswd"])
async def registry(
    request: pytest.FixtureRequest, podman_available: str, tmp_path: Path
) -> AsyncIterator[LoopbackRegistry]:
    async with loopback_registry(tmp_path, auth=request.param) as running:
        yield running


@pytest.fixture
async def pushed(registry: LoopbackRegistry, podman_available: str) -> AsyncIterator[str]:
    """A fresh tag of the base image in the registry, not in local storage."""
    async with pushed_image(podman_available, registry) as image:
        yield image


def backend(url: str, registry: LoopbackRegistry, *, credentials: bool = True) -> PodmanBackend:
    auth = {"username": USER, "password": PASSWORD} if registry.auth and credentials else {}
    return PodmanBackend(
        url,
        scope_labels={TEST_SCOPE_LABEL: "pull-test"},
        registries={registry.host: Registry(insecure=True, **auth)},
    )


async def run_echo(podman: PodmanBackend, sandbox_spec: SandboxSpec) -> None:
    from trissh.backend import ProcessSpec

    from .conformance import run

    async with (
        podman.open_sandbox(sandbox_spec) as sandbox,
        sandbox.open_process(ProcessSpec(argv=["/bin/sh", "-c", "echo pulled"])) as process,
    ):
        out, _, status = await run(process)
    assert (out, status.code) == (b"pulled\n", 0)


async def test_if_not_present_pulls_once_and_always_pulls_again(
    monkeypatch: pytest.MonkeyPatch, registry: LoopbackRegistry, pushed: str, podman_available: str
) -> None:
    """The image comes from the registry (with the configured credentials when it wants
    them); the log shows the pull's progress and end, and never the password."""
    lines = capture_module_log(monkeypatch, "trissh.backend.podman.images")
    podman = backend(podman_available, registry)
    try:
        with trio.fail_after(BOUND):
            await run_echo(podman, spec(pushed, "if-not-present"))
            await run_echo(podman, spec(pushed, "if-not-present"))
            await run_echo(podman, spec(pushed, "always"))
    finally:
        podman.close()
    events = [line["event"] for line in lines]
    assert events.count("image_pulled") == 2
    assert "image_pull_progress" in events
    assert all(PASSWORD not in repr(line) for line in lines)


async def test_a_failed_pull_says_why_and_never_creates_the_image(
    monkeypatch: pytest.MonkeyPatch, registry: LoopbackRegistry, pushed: str, podman_available: str
) -> None:
    """A tag the registry does not have, or (htpasswd) no credentials: ImagePullFailed
    naming the image and the registry's reason; `never` names the policy."""
    lines = capture_module_log(monkeypatch, "trissh.backend.podman.images")
    podman = backend(podman_available, registry, credentials=False)
    missing_tag = spec(registry.image("no-such-tag"), "if-not-present")
    try:
        with trio.fail_after(BOUND):
            with pytest.raises(ImagePullFailed) as failed:
                await run_echo(podman, missing_tag)
            with pytest.raises(ImageNotFound, match="pull_policy is never"):
                await run_echo(podman, spec(pushed, "never"))
            if registry.auth:
                with pytest.raises(ImagePullFailed, match="unauthorized") as refused:
                    await run_echo(podman, spec(pushed, "if-not-present"))
                assert pushed in str(refused.value)
    finally:
        podman.close()
    message = str(failed.value)
    assert registry.image("no-such-tag") in message
    assert ("unauthorized" if registry.auth else "manifest unknown") in message
    assert [line["event"] for line in lines].count("image_pull_failed") == 1 + registry.auth
    any_line: MutableMapping[str, Any]
    for any_line in lines:
        assert PASSWORD not in repr(any_line)


async def test_an_image_removed_after_its_pull_is_pulled_again_at_the_next_start(
    registry: LoopbackRegistry, pushed: str, podman_available: str
) -> None:
    """The backend remembers an image it saw present; one the operator removed since is
    found missing by the create, pulled again, and the start succeeds."""
    podman = backend(podman_available, registry)
    try:
        with trio.fail_after(BOUND):
            await run_echo(podman, spec(pushed, "if-not-present"))
            await trio.to_thread.run_sync(remove_local_image, podman_available, pushed)
            await run_echo(podman, spec(pushed, "if-not-present"))
    finally:
        podman.close()


async def test_starts_that_find_a_removed_image_together_all_pull_it_again(
    registry: LoopbackRegistry, pushed: str, podman_available: str
) -> None:
    """Two logins start from an image the backend saw present and the operator removed
    since: both creates find it missing; both get it again (one pull, or two), neither
    tells its user the image is not found."""
    podman = backend(podman_available, registry)
    try:
        with trio.fail_after(BOUND):
            await run_echo(podman, spec(pushed, "if-not-present"))
            await trio.to_thread.run_sync(remove_local_image, podman_available, pushed)
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(run_echo, podman, spec(pushed, "if-not-present"))
    finally:
        podman.close()
