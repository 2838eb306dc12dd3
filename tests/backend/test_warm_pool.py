"""The warm pool: started containers handed to exactly one login each.

The first tests drive :class:`WarmPool` with recording start/remove callables (the podman
calls sit below the thing tested); the ``podman`` ones run it inside a real
``PodmanBackend`` against the real service.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from trissh.backend import ContainerSettings, ProcessSpec, SandboxSpec
from trissh.backend.base import LABEL_INSTANCE, ExitStatus
from trissh.backend.errors import BackendError
from trissh.backend.podman import PodmanBackend
from trissh.backend.podman.starts import StartQueue
from trissh.backend.podman.warm_pool import DEMAND_WINDOW, WarmPool
from trissh.config import load_config
from trissh.ops.metrics import Metrics
from trissh.server.process import metered_backend

from .conformance import run
from .conftest import TEST_SCOPE_LABEL, PodmanHarness, exec_helper, podman_containers

SETTINGS = ContainerSettings()
OTHER = dataclasses.replace(SETTINGS, env={"TEAM": "blue"})


class Recorder:
    """Stands in for podman: names containers, records what was started and removed."""

    def __init__(self, *, fail_first: int = 0) -> None:
        self.started: list[str] = []
        self.removed: list[str] = []
        self.specs: list[SandboxSpec] = []
        self._ids = itertools.count(1)
        self._fail = fail_first

    async def start(self, spec: SandboxSpec) -> str:
        await trio.sleep(0.01)
        if self._fail:
            self._fail -= 1
            raise BackendError("podman is restarting")
        container_id = f"c{next(self._ids)}"
        self.started.append(container_id)
        self.specs.append(spec)
        return container_id

    async def remove(self, container_id: str, spec: SandboxSpec) -> None:
        await trio.sleep(0.01)
        self.removed.append(container_id)


async def wait_ready(pool: WarmPool, count: int, timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while pool.ready < count:
            await trio.sleep(0.005)


@asynccontextmanager
async def running_pool(
    size: int,
    podman: Recorder,
    *,
    template: ContainerSettings | None = SETTINGS,
    idle: int | None = None,
    starts: StartQueue | None = None,
) -> AsyncIterator[WarmPool]:
    """A pool whose ``run`` task lives as long as the block; leaving it shuts the pool down."""
    if starts is None:
        pool = WarmPool(size, start=podman.start, remove=podman.remove, idle=idle)
    else:
        pool = WarmPool(
            size, start=podman.start, remove=podman.remove, idle=idle, turn=starts.spare_turn
        )
    if template is not None:
        pool.set_template(template, "inst")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run)
        yield pool
        nursery.cancel_scope.cancel()


async def test_fills_hands_out_once_and_refills() -> None:
    podman = Recorder()
    async with running_pool(2, podman) as pool:
        await wait_ready(pool, 2)
        first, second = pool.take(SETTINGS), pool.take(SETTINGS)
        assert (first, second) == ("c1", "c2")
        assert pool.take(SETTINGS) is None  # empty until refilled: never reused
        await wait_ready(pool, 2)
        assert podman.started == ["c1", "c2", "c3", "c4"]
    # shutdown removes exactly the unassigned ones; taken ones belong to their sandboxes
    assert sorted(podman.removed) == ["c3", "c4"]
    assert all(spec.pooled and spec.instance == "inst" for spec in podman.specs)
    assert len({spec.conn_id for spec in podman.specs}) == 4  # each its own name


async def test_other_settings_are_not_served_from_the_pool() -> None:
    podman = Recorder()
    async with running_pool(1, podman) as pool:
        await wait_ready(pool, 1)
        assert pool.take(OTHER) is None
        assert pool.take(SETTINGS) == "c1"


async def test_a_new_template_retires_the_ready_containers() -> None:
    podman = Recorder()
    async with running_pool(2, podman) as pool:
        await wait_ready(pool, 2)
        pool.set_template(OTHER, "inst")  # SIGHUP changed [container]
        assert pool.take(SETTINGS) is None
        await wait_ready(pool, 2)
        with trio.fail_after(5):
            while len(podman.removed) < 2:
                await trio.sleep(0.005)
        assert sorted(podman.removed) == ["c1", "c2"]
        assert pool.take(OTHER) == "c3"


async def test_failed_refills_back_off_and_recover(autojump_clock: trio.abc.Clock) -> None:
    podman = Recorder(fail_first=3)
    async with running_pool(1, podman) as pool:
        started = trio.current_time()
        await wait_ready(pool, 1, timeout=60)
        assert trio.current_time() - started >= 1 + 2 + 4  # doubling backoff
        assert pool.take(SETTINGS) == "c1"


class Crashing(Recorder):
    """A start that fails with what is not a BackendError (a bug below the pool)."""

    async def start(self, spec: SandboxSpec) -> str:
        if not self.started and self._fail:
            self._fail -= 1
            await trio.sleep(0.01)
            raise OSError(24, "Too many open files")
        return await super().start(spec)


async def test_a_refill_that_crashes_backs_off_and_the_pool_goes_on(
    autojump_clock: trio.abc.Clock,
) -> None:
    podman = Crashing(fail_first=1)
    async with running_pool(1, podman) as pool:
        await wait_ready(pool, 1, timeout=60)
        assert pool.take(SETTINGS) == "c1"


async def test_a_refill_gets_its_image_before_it_takes_a_start_slot() -> None:
    """A pull may take minutes: a refill holding a start slot meanwhile would make logins
    wait behind it (the slot is the start queue's, shared with them)."""
    podman = Recorder()
    holding = False
    prepared: list[bool] = []

    @asynccontextmanager
    async def turn() -> AsyncIterator[None]:
        nonlocal holding
        holding = True
        try:
            yield
        finally:
            holding = False

    async def prepare(spec: SandboxSpec) -> None:
        await trio.sleep(0.01)
        prepared.append(holding)

    pool = WarmPool(1, start=podman.start, remove=podman.remove, turn=turn, prepare=prepare)
    pool.set_template(SETTINGS, "inst")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run)
        await wait_ready(pool, 1)
        nursery.cancel_scope.cancel()
    assert prepared == [False]


async def test_the_pool_follows_demand_up_to_its_bound_and_back_to_idle(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Idle it keeps `idle`; logins make it hold as many as they took in the last
    DEMAND_WINDOW seconds, never more than `size`; once they stop it shrinks back and keeps
    no more than `idle`."""
    podman = Recorder()
    async with running_pool(5, podman, idle=1) as pool:
        await wait_ready(pool, 1)
        await trio.sleep(5)
        assert (pool.ready, len(podman.started)) == (1, 1)  # idle: one, and no more
        for _ in range(3):  # three logins: a target of three
            pool.take(SETTINGS)
        await wait_ready(pool, 3)
        for _ in range(10):  # a burst: at most five
            pool.take(SETTINGS)
            await trio.sleep(0.001)
        await wait_ready(pool, 5)
        await trio.sleep(1)
        assert pool.ready == 5
        await trio.sleep(DEMAND_WINDOW + 1)  # quiet: back to one
        assert pool.ready == 1
        assert len(podman.removed) == 4  # the surplus was removed, not kept


async def test_refills_wait_while_a_login_waits_for_a_start(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The pool refills only with a start slot no login wants: with the one slot taken by a
    login's start, and another login queued, no refill starts; when they are done, it does."""
    podman = Recorder()
    starts = StartQueue(1, lambda operation, seconds: None)
    release = trio.Event()

    async def login(conn_id: str) -> None:
        async with starts.turn(conn_id):
            await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(login, "first")
        nursery.start_soon(login, "second")
        await trio.sleep(1)
        assert (starts.running, starts.waiting) == (1, 1)
        async with running_pool(2, podman, starts=starts) as pool:
            await trio.sleep(10)
            assert podman.started == []
            release.set()
            await wait_ready(pool, 2)


async def test_no_template_no_containers() -> None:
    podman = Recorder()
    async with running_pool(3, podman, template=None) as pool:
        await trio.sleep(0.1)
        assert podman.started == []
        assert pool.take(SETTINGS) is None


async def run_until_warm(nursery: trio.Nursery, backend: PodmanBackend, count: int) -> None:
    """The backend's upkeep started in ``nursery``, once its pool holds ``count``."""
    await nursery.start(backend.run)
    while backend.warm_containers < count:
        await trio.sleep(0.05)


@pytest.mark.podman
async def test_podman_login_gets_a_started_container_used_once(
    podman_harness: PodmanHarness,
) -> None:
    h = podman_harness
    backend = PodmanBackend(h.url, scope_labels=h.scope, warm_pool=2)
    backend.keep_warm(h.settings, h.instance)
    seen: list[str] = []
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await run_until_warm(nursery, backend, 2)
                pooled = set(await h.containers(h.instance))
                assert len(pooled) == 2
                for _ in range(3):
                    async with backend.open_sandbox(h.sandbox_spec()) as sandbox:
                        seen.append(sandbox.container_id)
                        spec = ProcessSpec(argv=h.sh("echo hi"))
                        async with sandbox.open_process(spec) as process:
                            out, _, status = await run(process)
                        assert (out, status) == (b"hi\n", ExitStatus(code=0))
                    assert sandbox.container_id not in await h.containers(h.instance)
                assert seen[0] in pooled  # the first login skipped create + start
                assert len(set(seen)) == 3  # never reused
                # settings other than the template: a container of its own, created now
                other = dataclasses.replace(h.settings, env={"TEAM": "blue"})
                async with backend.open_sandbox(h.sandbox_spec(settings=other)) as sandbox:
                    info = await backend._api.request(
                        "GET", f"/containers/{sandbox.container_id}/json"
                    )
                    assert "trissh.pool" not in info["Config"]["Labels"]
                    assert info["Config"]["Labels"]["trissh.user"] == "alice"
                while backend.warm_containers < 2:
                    await trio.sleep(0.05)
                # pooled containers killed while they wait are noticed, not handed out
                dead = await podman_containers(h.url, {**h.scope, "trissh.pool": "true"})
                assert len(dead) == 2
                for container_id in dead:
                    await backend._api.request(
                        "POST", f"/containers/{container_id}/kill", params={"signal": "KILL"}
                    )
                    while (await backend._api.request("GET", f"/containers/{container_id}/json"))[
                        "State"
                    ]["Running"]:
                        await trio.sleep(0.05)
                async with backend.open_sandbox(h.sandbox_spec()) as sandbox:
                    assert sandbox.container_id not in dead
                    spec = ProcessSpec(argv=h.sh("echo alive"))
                    async with sandbox.open_process(spec) as process:
                        out, _, status = await run(process)
                    assert (out, status) == (b"alive\n", ExitStatus(code=0))
                assert not set(dead) & set(await h.containers(h.instance))
                nursery.cancel_scope.cancel()
        # shutdown removed the unassigned ones: nothing of this scope is left
        assert await podman_containers(h.url, {TEST_SCOPE_LABEL: h.instance}) == []
    finally:
        backend.close()


@pytest.mark.podman
async def test_podman_pool_size_is_a_metric(podman_harness: PodmanHarness) -> None:
    """`trissh` wires the pool's ready count to the trissh_warm_containers gauge."""
    h = podman_harness
    metrics = Metrics()
    settings = load_config(None, {"podman.url": h.url, "podman.warm_pool": 1})
    backend = metered_backend(settings, metrics)
    assert isinstance(backend, PodmanBackend)
    instance = f"{h.instance}-metric"
    backend.keep_warm(h.settings, instance)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(backend.run)
                while metrics.registry.get_sample_value("trissh_warm_containers") != 1:
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
        assert metrics.registry.get_sample_value("trissh_warm_containers") == 0
        assert await podman_containers(h.url, {LABEL_INSTANCE: instance}) == []
    finally:
        backend.close()


def _names_matching(url: str, pattern: str) -> list[tuple[str, str]]:
    """(id, name) of the containers ``podman ps -a --filter name=PATTERN`` lists."""
    import podman

    with podman.PodmanClient(base_url=url) as client:
        found = client.containers.list(all=True, filters={"name": pattern})
        return [(str(container.id), str(container.name)) for container in found]


@pytest.mark.podman
async def test_podman_an_assigned_container_is_named_for_its_user(
    podman_harness: PodmanHarness,
) -> None:
    """Labels cannot change on a running container: a pooled one taken by alice is renamed
    ``trissh-alice-CONN-RANDOM`` (in the upkeep task), as a container created for her is
    named, so filtering podman's names by user finds both."""
    h = podman_harness
    backend = PodmanBackend(h.url, scope_labels=h.scope, warm_pool=1)
    backend.keep_warm(h.settings, h.instance)
    spec = dataclasses.replace(h.sandbox_spec(), username="al ice")  # "_" in names
    other = dataclasses.replace(spec, settings=OTHER)  # not the template: created for her
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await run_until_warm(nursery, backend, 1)
                [pooled] = await podman_containers(h.url, {**h.scope, "trissh.pool": "true"})
                async with (
                    backend.open_sandbox(spec) as taken,
                    backend.open_sandbox(other) as created,
                ):
                    assert taken.container_id == pooled
                    pattern = f"^trissh-al_ice-{spec.conn_id}-[0-9a-f]{{8}}$"
                    while len(found := await trio.to_thread.run_sync(
                        _names_matching, h.url, pattern
                    )) < 2:  # fmt: skip
                        await trio.sleep(0.05)
                    assert {cid for cid, _ in found} == {pooled, created.container_id}
                nursery.cancel_scope.cancel()
    finally:
        backend.close()


@pytest.mark.podman
async def test_podman_a_stdio_root_removed_under_the_server_is_made_again(
    podman_harness: PodmanHarness,
) -> None:
    """A temp cleaner removes the stdio root while the pool runs: the next refill and the
    logins after it make a new one (a failure there was an OSError that ended the backend's
    task, and with it the server)."""
    h = podman_harness
    parent = tempfile.mkdtemp(dir=tempfile.gettempdir())
    os.chmod(parent, 0o711)  # the podman user passes through, as in production
    backend = PodmanBackend(
        h.url, scope_labels=h.scope, warm_pool=1, direct_stdio=True, exec_agent=True,
        stdio_dir=parent, exec_helper=exec_helper(),
    )  # fmt: skip
    backend.keep_warm(h.settings, h.instance)
    try:
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                await run_until_warm(nursery, backend, 1)
                for child in os.listdir(parent):  # a temp cleaner
                    shutil.rmtree(os.path.join(parent, child))
                for word in ("pooled", "fresh", "again"):
                    async with backend.open_sandbox(h.sandbox_spec()) as sandbox:
                        spec = ProcessSpec(argv=h.sh(f"echo {word}"))
                        async with sandbox.open_process(spec) as process:
                            out, _, status = await run(process)
                        assert (out, status) == (f"{word}\n".encode(), ExitStatus(code=0))
                while backend.warm_containers < 1:
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
    finally:
        backend.close()
        shutil.rmtree(parent, ignore_errors=True)
