"""Workspace mode over the in-process backend and the real OpenSSH client: one container per
user, shared by their connections, kept for the TTL, adopted or discarded at start-up, home
volumes and their expiry. (tests/e2e/test_workspaces.py does the same on real podman.)"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trissh.backend import SocketAddress
from trissh.backend.base import LABEL_WORKSPACE, FoundSandbox, FoundVolume, SandboxSpec
from trissh.backend.errors import BackendError, BackendUnavailable
from trissh.backend.memory import MemoryBackend
from trissh.backend.memory.backend import MemorySandbox
from trissh.config import ServerConfig, load_config
from trissh.ops.metrics import Metrics
from trissh.ops.workspaces_cli import list_workspaces, remove_workspace
from trissh.server import workspaces
from trissh.server.build import reload_context
from trissh.server.workspace_recipe import (
    LABEL_HOME,
    LABEL_STATE,
    home_volume_name,
    legacy_home_volume_name,
    state_label,
)
from trissh.server.workspace_source import WorkspaceSource
from trissh.server.workspace_state import WorkspaceState, server_running
from trissh.server.workspaces import Workspaces

from .auth.http_server import Received, start
from .support import (
    ClientKey,
    RunningServer,
    make_context,
    needs_ssh,
    require_binary,
    run_ssh,
    ssh_argv,
    start_server,
)

pytestmark = needs_ssh

ServerFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def make_server(
    nursery: trio.Nursery, authorized_keys: Path, tmp_path: Path
) -> AsyncIterator[ServerFactory]:
    """Servers in workspace mode (TTL 30 s unless said), sharing one state file."""
    started: list[RunningServer] = []

    async def make(backend: MemoryBackend, **overrides: Any) -> RunningServer:
        settings = {
            "session.execution_mode": "workspace",
            "session.workspace_ttl": 30,
            "workspaces.state_file": str(tmp_path / "workspaces.json"),
            **overrides,
        }
        ctx = make_context(backend, authorized_keys, tmp_path / "host_key", **settings)
        server = await start_server(nursery, ctx)
        started.append(server)
        return server

    yield make
    for server in started:
        if not server.done.is_set():
            await server.stop()


def workspaces_of(backend: MemoryBackend, user: str) -> list[str]:
    return [
        cid for cid, labels in backend.containers.items() if labels.get(LABEL_WORKSPACE) == user
    ]


async def start_master(
    nursery: trio.Nursery, argv: list[str], control: str, env: dict[str, str] | None = None
) -> None:
    """Start an ``ssh -M -S control -N`` master in ``nursery``; return once it listens."""
    nursery.start_soon(partial(trio.run_process, argv, check=False, capture_stderr=True, env=env))
    with trio.fail_after(30):
        while not await trio.Path(control).exists():
            await trio.sleep(0.05)


async def test_connections_of_one_user_share_one_container(
    make_server: ServerFactory, client_key: ClientKey
) -> None:
    """Two concurrent connections and a later one of alice: one container, made once; bob
    gets his own."""
    backend = MemoryBackend()
    server = await make_server(backend)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_ssh, server.port, client_key.path, "sleep 2")
        with trio.fail_after(10):
            while not workspaces_of(backend, "alice"):
                await trio.sleep(0.02)
        result = await run_ssh(server.port, client_key.path, "echo second")
        assert result.stdout == b"second\n"
    assert (await run_ssh(server.port, client_key.path, "echo third")).returncode == 0
    await run_ssh(server.port, client_key.path, "true", user="bob")
    assert len(workspaces_of(backend, "alice")) == 1
    assert len(workspaces_of(backend, "bob")) == 1
    assert [s.username for s in backend.sandbox_specs] == ["alice", "bob"]
    metric = server.ctx.metrics.workspace_attaches_total
    assert metric.labels(outcome="new")._value.get() == 2
    assert metric.labels(outcome="reattached")._value.get() == 2


async def test_the_ttl_removes_an_idle_workspace_and_the_next_login_starts_fresh(
    make_server: ServerFactory, client_key: ClientKey
) -> None:
    """While a connection is attached the TTL does not run; once none is, it does."""
    backend = MemoryBackend()
    server = await make_server(backend, **{"session.workspace_ttl": 0.3})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_ssh, server.port, client_key.path, "sleep 1.5")
        with trio.fail_after(10):
            while not workspaces_of(backend, "alice"):
                await trio.sleep(0.02)
        [first] = workspaces_of(backend, "alice")
        await trio.sleep(1)  # past the TTL, still attached
        assert workspaces_of(backend, "alice") == [first]
    with trio.fail_after(10):
        while workspaces_of(backend, "alice"):
            await trio.sleep(0.05)
    await run_ssh(server.port, client_key.path, "true")
    [second] = workspaces_of(backend, "alice")
    assert second != first
    assert server.ctx.state.workspaces is not None
    assert list(server.ctx.state.workspaces.live) == ["alice"]


async def test_a_workspace_removed_by_an_operator_is_replaced_at_the_next_login(
    make_server: ServerFactory, client_key: ClientKey
) -> None:
    """`trissh workspaces remove` while the server holds it: the next login finds it gone
    and gets a new one (not an error)."""
    backend = MemoryBackend()
    server = await make_server(backend)
    await run_ssh(server.port, client_key.path, "true")
    [first] = workspaces_of(backend, "alice")
    assert await backend.remove_sandbox(first)
    result = await run_ssh(server.port, client_key.path, "echo fresh")
    assert result.stdout == b"fresh\n", result.stderr
    [second] = workspaces_of(backend, "alice")
    assert second != first


async def test_the_maximum_refuses_a_new_user_with_a_message(
    make_server: ServerFactory, client_key: ClientKey
) -> None:
    backend = MemoryBackend()
    server = await make_server(backend, **{"workspaces.max_workspaces": 1})
    await run_ssh(server.port, client_key.path, "true")
    result = await run_ssh(server.port, client_key.path, "echo never", user="bob")
    assert result.returncode == 255
    assert b"maximum of 1 workspaces" in result.stderr
    assert result.stdout == b""
    assert workspaces_of(backend, "bob") == []


async def test_a_restart_adopts_kept_workspaces_and_discards_changed_ones(
    make_server: ServerFactory, client_key: ClientKey, tmp_path: Path
) -> None:
    """on_shutdown = keep: the stop leaves the containers; the next server (same backend,
    same state) adopts alice's, whose settings did not change, and removes bob's, whose
    image did; its first login reattaches."""
    backend = MemoryBackend()
    first = await make_server(backend)
    await run_ssh(first.port, client_key.path, "true")
    await run_ssh(first.port, client_key.path, "true", user="bob")
    [alice] = workspaces_of(backend, "alice")
    assert server_running(tmp_path / "workspaces.json")
    await first.stop()
    assert not server_running(tmp_path / "workspaces.json")
    assert set(backend.kept) == {alice, *workspaces_of(backend, "bob")}
    second = await make_server(backend, users={"bob": {"image": "localhost/other:latest"}})
    assert workspaces_of(backend, "alice") == [alice]
    assert workspaces_of(backend, "bob") == []
    assert (await run_ssh(second.port, client_key.path, "echo back")).stdout == b"back\n"
    assert workspaces_of(backend, "alice") == [alice]
    metric = second.ctx.metrics.workspace_attaches_total
    assert metric.labels(outcome="reattached")._value.get() == 1
    await second.stop()


class StuckRemovals(MemoryBackend):
    """podman refusing to remove some containers (``stuck``), or dropping one request for
    others (``dropped_once``: a restart), below what is tested: the workspaces."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck: set[str] = set()
        self.dropped_once: set[str] = set()

    async def remove_sandbox(self, container_id: str) -> bool:
        if container_id in self.stuck:
            await trio.lowlevel.checkpoint()
            raise BackendError("podman: container is busy")
        if container_id in self.dropped_once:
            self.dropped_once.discard(container_id)
            await trio.lowlevel.checkpoint()
            raise BackendUnavailable("podman: connection refused")
        return await super().remove_sandbox(container_id)


async def test_a_leftover_that_cannot_be_removed_does_not_stop_the_adoption_of_others(
    make_server: ServerFactory, client_key: ClientKey
) -> None:
    """bob's kept workspace (found first) is to be discarded and podman refuses; alice's is
    still adopted, so her next login reattaches instead of making a second container."""
    backend = StuckRemovals()
    first = await make_server(backend)
    await run_ssh(first.port, client_key.path, "true", user="bob")
    await run_ssh(first.port, client_key.path, "true")
    [alice] = workspaces_of(backend, "alice")
    backend.stuck = set(workspaces_of(backend, "bob"))
    await first.stop()
    second = await make_server(backend, users={"bob": {"image": "localhost/other:latest"}})
    assert (await run_ssh(second.port, client_key.path, "echo back")).stdout == b"back\n"
    assert workspaces_of(backend, "alice") == [alice]
    backend.stuck = set()
    await second.stop()


async def test_on_shutdown_remove_and_a_second_server_on_the_same_state(
    make_server: ServerFactory, client_key: ClientKey
) -> None:
    """remove: nothing survives the stop. A second live server on the same state file has
    no workspaces (its users are told why) and touches nothing of the first's."""
    backend = MemoryBackend()
    first = await make_server(backend, **{"workspaces.on_shutdown": "remove"})
    await run_ssh(first.port, client_key.path, "true")
    second = await make_server(MemoryBackend())
    result = await run_ssh(second.port, client_key.path, "true")
    assert result.returncode == 255
    assert b"workspaces are unavailable" in result.stderr
    assert len(workspaces_of(backend, "alice")) == 1
    await first.stop()
    assert backend.containers == {}
    assert backend.kept == {}


async def test_home_volumes_are_made_mounted_and_expire(
    make_server: ServerFactory, client_key: ClientKey, tmp_path: Path
) -> None:
    """A labelled volume per user mounted at home (HOME of the programs); its last use
    goes to the state file; expired volumes go, used ones stay."""
    backend = MemoryBackend()
    server = await make_server(
        backend, **{"workspaces.home_volume": True, "workspaces.home": "/home/me"}
    )
    result = await run_ssh(server.port, client_key.path, "printenv HOME")
    assert result.stdout == b"/home/me\n"
    scope = state_label(server.ctx.settings)
    name = home_volume_name("alice", scope)
    [spec] = backend.sandbox_specs
    assert [(v.source, v.destination, v.named) for v in spec.settings.volumes] == [
        (name, "/home/me", True)
    ]
    assert backend.volumes[name][0] == {LABEL_HOME: "alice", LABEL_STATE: scope}
    registry = server.ctx.state.workspaces
    assert registry is not None
    section = server.ctx.settings.workspaces
    far_future = time.time() + 400 * 86400
    assert await registry.expire_volumes(section, now=far_future) == 0  # still mounted
    await server.stop()  # kept, so still mounted
    backend.kept.clear()
    backend.containers.clear()
    state = WorkspaceState(tmp_path / "workspaces.json")
    state.lock()
    assert time.time() - state.volumes[name] < 60
    state.unlock()
    second = await make_server(backend, **{"workspaces.home_volume": True})
    registry = second.ctx.state.workspaces
    assert registry is not None
    section = second.ctx.settings.workspaces
    assert await registry.expire_volumes(section, now=time.time() + 29 * 86400) == 0
    assert await registry.expire_volumes(section, now=far_future) == 1
    assert name not in backend.volumes


async def test_each_user_and_deployment_gets_a_home_volume_of_its_own(
    make_server: ServerFactory, client_key: ClientKey, tmp_path: Path
) -> None:
    """A name that reads like another's (``alice@`` is ``alice`` once made safe for podman)
    and the same name under another state file (another deployment on the same podman)
    each get their own home: before, the name's hash was 32 bits of the user name alone,
    and an existing volume was mounted whoever it was made for (reviewer: a found
    collision read alice's files)."""
    backend = MemoryBackend()
    home = {"workspaces.home_volume": True}
    first = await make_server(backend, **home)
    other = await make_server(
        backend, **home, **{"workspaces.state_file": str(tmp_path / "other.json")}
    )
    for server, user in ((first, "alice"), (first, "alice@"), (other, "alice")):
        result = await run_ssh(server.port, client_key.path, "true", user=user)
        assert result.returncode == 0, result.stderr
    homes = [s.settings.volumes[0].source for s in backend.sandbox_specs]
    assert len(set(homes)) == 3, homes
    scopes = {state_label(first.ctx.settings), state_label(other.ctx.settings)}
    assert {labels[LABEL_STATE] for labels, _ in backend.volumes.values()} == scopes
    assert sorted(labels[LABEL_HOME] for labels, _ in backend.volumes.values()) == [
        "alice", "alice", "alice@"
    ]  # fmt: skip


async def test_expiry_leaves_other_deployments_volumes_and_unrecorded_ones_alone(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """A server expires only its own deployment's home volumes, and one its state file has
    no record of (the file was lost) counts as used now, not as used when it was made:
    before, a workspace server removed every deployment's homes 30 days after creation."""
    backend = MemoryBackend()
    server = await make_server(backend, **{"workspaces.home_volume": True})
    ours, theirs = state_label(server.ctx.settings), "0123456789abcdef"
    long_ago = time.time() - 400 * 86400
    backend.volumes["trissh-home-theirs"] = ({LABEL_HOME: "bob", LABEL_STATE: theirs}, long_ago)
    backend.volumes["trissh-home-unrecorded"] = ({LABEL_HOME: "carol", LABEL_STATE: ours}, long_ago)
    registry = server.ctx.state.workspaces
    assert registry is not None
    section = server.ctx.settings.workspaces
    assert await registry.expire_volumes(section) == 0
    assert await registry.expire_volumes(section, now=time.time() + 29 * 86400) == 0
    assert await registry.expire_volumes(section, now=time.time() + 31 * 86400) == 1
    assert list(backend.volumes) == ["trissh-home-theirs"]


class ConfigServer:
    """The configuration webhook: the image (and start bound) each login's container gets."""

    def __init__(self) -> None:
        self.image = "localhost/from-config-server:1"
        self.start_timeout = ""

    async def __call__(self, request: Received) -> dict[str, Any]:
        docker: dict[str, Any] = {"execution": {"container": {"image": self.image}}}
        if self.start_timeout:
            docker["timeouts"] = {"containerStart": self.start_timeout}
        return {"config": {"docker": docker}}


@pytest.fixture
async def config_server(nursery: trio.Nursery) -> tuple[ConfigServer, dict[str, Any]]:
    """The configuration webhook, and the settings that point a server at it."""
    config = ConfigServer()
    return config, {"auth.config_webhook": {"url": (await start(nursery, config)).url}}


async def kept_by_a_first_server(
    make_server: ServerFactory, backend: MemoryBackend, key: ClientKey, **settings: Any
) -> str:
    """A server makes alice's workspace and keeps it at its stop; the kept container."""
    first = await make_server(backend, **settings)
    await run_ssh(first.port, key.path, "true")
    await first.stop()
    [kept] = workspaces_of(backend, "alice")
    return kept


async def test_a_kept_workspace_configured_by_the_config_server_is_adopted_at_the_next_login(
    make_server: ServerFactory,
    client_key: ClientKey,
    config_server: tuple[ConfigServer, dict[str, Any]],
) -> None:
    """The start-up cannot know what the configuration server will answer, so a kept
    workspace whose settings came from it waits for its user's next login: the same answer
    reattaches it, another replaces it."""
    config, webhook = config_server
    backend = MemoryBackend()
    alice = await kept_by_a_first_server(make_server, backend, client_key, **webhook)
    second = await make_server(backend, **webhook)
    assert workspaces_of(backend, "alice") == [alice]
    assert (await run_ssh(second.port, client_key.path, "echo back")).stdout == b"back\n"
    assert workspaces_of(backend, "alice") == [alice]
    assert backend.sandbox_specs[-1].settings.image == config.image  # no second one made
    metric = second.ctx.metrics.workspace_attaches_total
    assert metric.labels(outcome="reattached")._value.get() == 1
    await second.stop()
    config.image = "localhost/from-config-server:2"
    third = await make_server(backend, **webhook)
    assert (await run_ssh(third.port, client_key.path, "echo new")).stdout == b"new\n"
    [renewed] = workspaces_of(backend, "alice")
    assert renewed != alice
    assert backend.sandbox_specs[-1].settings.image == config.image
    await third.stop()


class StoppedKept(MemoryBackend):
    """A kept container that stopped in the meantime: its adoption fails (as podman's does
    for a container that is not running); the backend below what is tested."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped: set[str] = set()

    @contextlib.asynccontextmanager
    async def adopt_sandbox(
        self, found: FoundSandbox, spec: SandboxSpec
    ) -> AsyncIterator[MemorySandbox]:
        if found.container_id in self.stopped:
            await trio.lowlevel.checkpoint()
            raise BackendError(f"container {found.container_id} is not running")
        async with super().adopt_sandbox(found, spec) as sandbox:
            yield sandbox


async def test_a_claimed_workspace_that_cannot_be_adopted_is_replaced_and_removed(
    make_server: ServerFactory,
    client_key: ClientKey,
    config_server: tuple[ConfigServer, dict[str, Any]],
) -> None:
    """The login that claims it gets a new workspace, not the adoption's error, and the
    kept container does not stay behind, uncounted."""
    _, webhook = config_server
    backend = StoppedKept()
    kept = await kept_by_a_first_server(make_server, backend, client_key, **webhook)
    backend.stopped.add(kept)
    second = await make_server(backend, **webhook)
    result = await run_ssh(second.port, client_key.path, "echo new")
    assert result.stdout == b"new\n", result.stderr
    [renewed] = workspaces_of(backend, "alice")
    assert renewed != kept
    await second.stop()


async def test_a_kept_workspace_nobody_claims_is_removed_after_the_ttl(
    make_server: ServerFactory,
    client_key: ClientKey,
    config_server: tuple[ConfigServer, dict[str, Any]],
) -> None:
    _, webhook = config_server
    backend = MemoryBackend()
    await kept_by_a_first_server(make_server, backend, client_key, **webhook)
    await make_server(backend, **webhook, **{"session.workspace_ttl": 0.3})
    with trio.fail_after(10):
        while workspaces_of(backend, "alice"):
            await trio.sleep(0.05)


class SlowStarts(MemoryBackend):
    """Containers that take 1.5 s to start (podman under load)."""

    @contextlib.asynccontextmanager
    async def open_sandbox(self, spec: SandboxSpec) -> AsyncIterator[MemorySandbox]:
        await trio.sleep(1.5)
        async with super().open_sandbox(spec) as sandbox:
            yield sandbox


async def test_a_workspace_starts_within_the_bound_the_config_server_gave(
    make_server: ServerFactory,
    client_key: ClientKey,
    config_server: tuple[ConfigServer, dict[str, Any]],
) -> None:
    config, webhook = config_server
    config.start_timeout = "10s"
    server = await make_server(SlowStarts(), **webhook, **{"container.start_timeout": 1})
    result = await run_ssh(server.port, client_key.path, "echo slow")
    assert result.stdout == b"slow\n", result.stderr


async def test_a_connection_retrying_a_failed_workspace_start_holds_one_attachment(
    tmp_path: Path,
) -> None:
    """Each session of a connection whose workspace failed to start attaches again; the
    attachment to the failed one goes (no task left per failed start)."""
    backend = MemoryBackend()
    settings = load_config(
        None,
        {
            "session.execution_mode": "workspace",
            "workspaces.state_file": str(tmp_path / "workspaces.json"),
        },
    )
    registry = Workspaces(backend, Metrics(), lambda: settings, instance="test")
    spec = SandboxSpec(conn_id="c1", username="alice", remote="", instance="test")
    async with trio.open_nursery() as upkeep:
        await upkeep.start(registry.run)
        async with trio.open_nursery() as connection:
            source = WorkspaceSource(registry, spec, 30, 60, connection)
            for _ in range(3):
                backend.fail_next_sandbox = BackendError("podman said no")
                with pytest.raises(BackendError, match="podman said no"):
                    await source.get()
            await source.get()
            assert len(connection.child_tasks) == 1
            assert registry.live["alice"].attached == 1
            connection.cancel_scope.cancel()
        upkeep.cancel_scope.cancel()


async def test_a_second_server_serves_workspaces_once_the_first_is_gone(
    make_server: ServerFactory, client_key: ClientKey
) -> None:
    """The lock on the state file was tried once: a server that started beside another
    refused workspace logins for its whole life, even after the other stopped."""
    first = await make_server(MemoryBackend())
    await run_ssh(first.port, client_key.path, "true")
    second = await make_server(MemoryBackend())
    refused = await run_ssh(second.port, client_key.path, "true")
    assert b"workspaces are unavailable" in refused.stderr
    await first.stop()
    served = await run_ssh(second.port, client_key.path, "echo served")
    assert served.stdout == b"served\n", served.stderr


async def test_kept_workspaces_are_adopted_once_podman_answers_again(
    make_server: ServerFactory, client_key: ClientKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """podman unreachable while a restarted server looked for kept workspaces: the kept
    one was neither adopted nor removed and ran on, uncounted, beside the user's next."""
    backend = MemoryBackend()
    first = await make_server(backend)
    await run_ssh(first.port, client_key.path, "true")
    await first.stop()
    [kept] = workspaces_of(backend, "alice")
    monkeypatch.setattr(workspaces, "ADOPTION_RETRY", 0.2)
    backend.unavailable = True
    second = await make_server(backend)
    backend.unavailable = False
    registry = second.ctx.state.workspaces
    assert registry is not None
    with trio.fail_after(30):
        while "alice" not in registry.live:  # adopted (counted), not removed
            await trio.sleep(0.05)
    assert workspaces_of(backend, "alice") == [kept]


async def test_a_master_connection_recovers_from_its_workspace_going_away(
    make_server: ServerFactory, client_key: ClientKey, tmp_path: Path
) -> None:
    """A workspace removed under a ControlMaster connection (an operator, the OOM killer):
    the session that finds it gone fails, the next one gets a new workspace (every later
    session of that connection failed until another connection replaced it)."""
    backend = MemoryBackend()
    server = await make_server(backend)
    control = str(tmp_path / "mux")

    async def over_master(command: str) -> tuple[int, bytes]:
        argv = ssh_argv(server.port, client_key.path, "-S", control, command)
        with trio.fail_after(30):
            done = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False
            )
        return done.returncode, done.stdout

    master = ssh_argv(server.port, client_key.path, "-M", "-S", control, "-N")
    async with trio.open_nursery() as nursery:
        await start_master(nursery, master, control)
        assert await over_master("echo one") == (0, b"one\n")
        [gone] = workspaces_of(backend, "alice")
        await backend.remove_sandbox(gone)
        await over_master("echo two")  # finds it gone
        assert await over_master("echo three") == (0, b"three\n")
        assert workspaces_of(backend, "alice") != [gone]
        nursery.cancel_scope.cancel()  # ends the master


async def test_agent_forwarding_follows_a_master_connection_into_its_new_workspace(
    make_server: ServerFactory, client_key: ClientKey, tmp_path: Path
) -> None:
    """``ssh -A`` over a ControlMaster whose workspace was removed: sessions in the new
    workspace get an agent socket there too (they got no SSH_AUTH_SOCK: the connection's
    socket had gone with the old container and was never made again)."""
    backend = KeptSandboxes()
    server = await make_server(backend)
    control = str(tmp_path / "mux")
    agent_sock = tmp_path / "agent.sock"
    agent = await trio.lowlevel.open_process(
        [require_binary("ssh-agent"), "-D", "-a", str(agent_sock)]
    )
    env = {**os.environ, "SSH_AUTH_SOCK": str(agent_sock)}

    async def over_master(command: str) -> tuple[int, bytes]:
        argv = ssh_argv(server.port, client_key.path, "-A", "-S", control, command)
        with trio.fail_after(30):
            done = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False, env=env
            )
        return done.returncode, done.stdout

    master = ssh_argv(server.port, client_key.path, "-A", "-M", "-S", control, "-N")
    try:
        with trio.fail_after(10):
            while not agent_sock.exists():
                await trio.sleep(0.02)
        async with trio.open_nursery() as nursery:
            await start_master(nursery, master, control, env)
            status, path = await over_master("printenv SSH_AUTH_SOCK")
            assert status == 0
            assert path.startswith(b"/tmp/trissh-agent-")
            [gone] = workspaces_of(backend, "alice")
            await backend.remove_sandbox(gone)
            await over_master("true")  # finds it gone
            assert await over_master("printenv SSH_AUTH_SOCK") == (0, path)
            [now] = workspaces_of(backend, "alice")
            stream = await backend.sandboxes[now].connect(SocketAddress(path=path.decode().strip()))
            await stream.aclose()  # the socket is there, in the new workspace
            nursery.cancel_scope.cancel()  # ends the master
    finally:
        agent.kill()
        await agent.wait()


class KeptSandboxes(MemoryBackend):
    """Remembers its sandboxes by container id, so a test can connect inside them."""

    def __init__(self) -> None:
        super().__init__()
        self.sandboxes: dict[str, MemorySandbox] = {}

    @contextlib.asynccontextmanager
    async def open_sandbox(self, spec: SandboxSpec) -> AsyncIterator[MemorySandbox]:
        async with super().open_sandbox(spec) as sandbox:
            self.sandboxes[sandbox.container_id] = sandbox
            yield sandbox


async def test_a_retried_adoption_keeps_what_the_first_try_adopted(
    make_server: ServerFactory, client_key: ClientKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first try adopted alice's kept workspace, then failed on bob's stopped one; the
    retry took alice's (still labelled with the old server's instance) for a duplicate of
    the live one and removed the container her workspace held."""
    monkeypatch.setattr(workspaces, "ADOPTION_RETRY", 0.2)
    backend = StuckRemovals()
    first = await make_server(backend)
    await run_ssh(first.port, client_key.path, "true")
    await run_ssh(first.port, client_key.path, "true", user="bob")
    await first.stop()
    [alice], [bob] = workspaces_of(backend, "alice"), workspaces_of(backend, "bob")
    del backend.kept[bob]  # stopped meanwhile: to be removed at the adoption...
    backend.dropped_once.add(bob)  # ...whose request podman drops once
    second = await make_server(backend)
    with trio.fail_after(30):
        while workspaces_of(backend, "bob"):  # the retry removed it
            await trio.sleep(0.05)
    assert workspaces_of(backend, "alice") == [alice]
    assert (await run_ssh(second.port, client_key.path, "echo back")).stdout == b"back\n"
    assert workspaces_of(backend, "alice") == [alice]


async def test_the_login_that_takes_the_lock_late_gets_its_kept_workspace(
    make_server: ServerFactory, client_key: ClientKey
) -> None:
    """A standby server takes over once the first stopped (keeping its workspaces): its
    first login made a new workspace and its own kept one was removed as a duplicate."""
    backend = MemoryBackend()
    first = await make_server(backend)
    await run_ssh(first.port, client_key.path, "true")
    [alice] = workspaces_of(backend, "alice")
    second = await make_server(backend)
    await first.stop()
    result = await run_ssh(second.port, client_key.path, "echo taken over")
    assert result.stdout == b"taken over\n", result.stderr
    assert workspaces_of(backend, "alice") == [alice]


async def test_a_sessions_home_is_its_workspaces_home_volume_after_a_reload(
    make_server: ServerFactory, client_key: ClientKey, tmp_path: Path
) -> None:
    """A reload between a login and its first session turned the home volume off: the
    workspace made then has none, so HOME is not set to where it would have been (HOME
    came from the login's configuration, the mounts from the newest: the user wrote to a
    HOME that was not kept)."""
    backend = MemoryBackend()
    server = await make_server(
        backend, **{"workspaces.home_volume": True, "workspaces.home": "/home/ws"}
    )
    control = str(tmp_path / "mux")
    master = ssh_argv(server.port, client_key.path, "-M", "-S", control, "-N")
    async with trio.open_nursery() as nursery:
        await start_master(nursery, master, control)
        settings = server.ctx.settings
        reloaded = settings.model_copy(
            update={"workspaces": settings.workspaces.model_copy(update={"home_volume": False})}
        )
        reload_context(server.ctx, lambda: reloaded)
        argv = ssh_argv(server.port, client_key.path, "-S", control, "printenv HOME")
        with trio.fail_after(30):
            done = await trio.run_process(argv, capture_stdout=True, check=False)
        [spec] = [s for s in backend.sandbox_specs if s.workspace == "alice"]
        assert spec.settings.volumes == ()  # made after the reload: no home volume
        assert done.stdout != b"/home/ws\n"
        nursery.cancel_scope.cancel()  # ends the master


async def test_home_volumes_of_an_earlier_version_are_listed_and_removable(
    tmp_path: Path,
) -> None:
    """A home made before homes were a deployment's own (no state label, an 8-digit hash of
    the name) is shown by ``trissh workspaces`` as such, and ``remove --volume USER``
    removes it too (before: invisible, and "nothing to remove"; second reader)."""
    backend = MemoryBackend()
    settings = load_config(None, {"workspaces.state_file": str(tmp_path / "w.json")})
    old = legacy_home_volume_name("alice")
    backend.volumes[old] = ({LABEL_HOME: "alice"}, time.time())
    listing = "\n".join(await list_workspaces(backend, settings))
    assert (
        "home volumes of an earlier version (not mounted; README, Workspaces):\n  alice" in listing
    )
    assert listing.endswith(old), listing
    someone_elses = legacy_home_volume_name("mallory")
    backend.volumes[someone_elses] = ({LABEL_HOME: "alice"}, time.time())
    removed = await remove_workspace(backend, settings, "mallory", volume=True)
    assert removed == ["nothing to remove for mallory"]  # the name alone is not enough
    removed = await remove_workspace(backend, settings, "alice", volume=True)
    assert removed == [f"removed home volume {old}"]
    assert list(backend.volumes) == [someone_elses]


class ExpiryRacingBackend(MemoryBackend):
    """Holds the expiry pass after its listing and a login before its start, in the order
    podman's latency can put them."""

    def __init__(self) -> None:
        super().__init__()
        self.listed = trio.Event()
        self.go = trio.Event()
        self.start_gate = trio.Event()
        self.starting = trio.Event()
        self.gate_on = False
        #: Hold each volume's removal (its DELETE on the way to podman) until set.
        self.remove_go: trio.Event | None = None
        self.removing = trio.Event()

    async def remove_volume(self, name: str) -> bool:
        if self.remove_go is not None:
            self.removing.set()
            await self.remove_go.wait()
        return await super().remove_volume(name)

    async def find_volumes(self, labels: Mapping[str, str | None]) -> list[FoundVolume]:
        out = await super().find_volumes(labels)
        if self.gate_on:
            self.listed.set()
            await self.go.wait()  # e.g. podman answering the per-volume in-use queries
        return out

    @contextlib.asynccontextmanager
    async def open_sandbox(self, spec: SandboxSpec) -> AsyncIterator[MemorySandbox]:
        if self.gate_on:
            self.starting.set()
            await self.start_gate.wait()  # a start slot's queue / image check
        async with super().open_sandbox(spec) as sandbox:
            yield sandbox


@dataclasses.dataclass
class IdleHome:
    """alice's home, labelled, last used 31 days ago; the registry holding the state."""

    registry: Workspaces
    settings: ServerConfig
    name: str
    labels: dict[str, str]
    expired: list[int]

    async def expire(self) -> None:
        """One expiry pass, its count appended to ``expired``."""
        self.expired.append(await self.registry.expire_volumes(self.settings.workspaces))

    def alice_logs_in(self, nursery: trio.Nursery) -> WorkspaceSource:
        spec = SandboxSpec(conn_id="c1", username="alice", remote="", instance="test")
        source = WorkspaceSource(self.registry, spec, 30, 60, nursery)
        source.prepare(60)
        return source


@contextlib.asynccontextmanager
async def idle_home(tmp_path: Path, backend: MemoryBackend) -> AsyncIterator[IdleHome]:
    settings = load_config(
        None,
        {
            "session.execution_mode": "workspace",
            "workspaces.state_file": str(tmp_path / "w.json"),
            "workspaces.home_volume": True,
        },
    )
    registry = Workspaces(backend, Metrics(), lambda: settings, instance="test")
    name = home_volume_name("alice", state_label(settings))
    async with trio.open_nursery() as upkeep:
        await upkeep.start(registry.run)
        await trio.testing.wait_all_tasks_blocked()  # its first expiry pass is over
        labels = {LABEL_HOME: "alice", LABEL_STATE: state_label(settings)}
        backend.volumes[name] = (labels, time.time() - 40 * 86400)
        assert registry._state is not None
        registry._state.used(name, time.time() - 31 * 86400)
        yield IdleHome(registry, settings, name, labels, [])
        upkeep.cancel_scope.cancel()


async def test_a_home_expiring_as_its_user_logs_in_stays(tmp_path: Path) -> None:
    """The hourly pass listed alice's idle home; alice logs in before it removes it. It
    removed it under her starting workspace, and podman made an empty volume of that name
    with no labels, never expired nor listed (ws reviewer). The pass now looks at the live
    workspaces as it removes, not as it listed."""
    backend = ExpiryRacingBackend()
    async with idle_home(tmp_path, backend) as home:
        backend.gate_on = True
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                n.start_soon(home.expire)
                await backend.listed.wait()
                async with trio.open_nursery() as connection:
                    source = home.alice_logs_in(connection)
                    await backend.starting.wait()  # her home is there, her start queued
                    backend.go.set()
                    while not home.expired:  # the pass goes on
                        await trio.sleep(0.01)
                    backend.start_gate.set()
                    assert (await source.get()).container_id
                    connection.cancel_scope.cancel()
    assert home.expired == [0]
    assert backend.volumes[home.name][0] == home.labels, "the home was replaced, unlabelled"


async def test_a_login_while_the_adoption_waits_for_podman_gets_the_kept_workspace(
    make_server: ServerFactory, client_key: ClientKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """podman not answering at the start defers the adoption (retried); a login meanwhile
    waits for it as after a late lock, and then finds its kept workspace. It made a second
    one, and the retry removed the kept one, tmux and all, as a duplicate (ws reviewer)."""
    backend = MemoryBackend()
    first = await make_server(backend)
    await run_ssh(first.port, client_key.path, "true")
    await first.stop()  # kept
    [kept] = workspaces_of(backend, "alice")
    monkeypatch.setattr(workspaces, "ADOPTION_RETRY", 1.0)
    backend.unavailable = True  # podman still starting at boot
    second = await make_server(backend)
    backend.unavailable = False  # podman answers before the retry
    result = await run_ssh(second.port, client_key.path, "echo hi")
    assert (result.returncode, result.stdout) == (0, b"hi\n")
    await trio.sleep(1.5)  # past the retry
    assert workspaces_of(backend, "alice") == [kept]


async def test_a_login_during_a_homes_removal_waits_and_gets_it_made_anew(
    tmp_path: Path,
) -> None:
    """The expiry pass's DELETE of alice's idle home is on its way when she logs in: her
    start waits for it, then makes her home anew with its labels (second reader: the
    start saw the volume still there, and podman then made it unlabelled)."""
    backend = ExpiryRacingBackend()
    async with idle_home(tmp_path, backend) as home:
        backend.remove_go = trio.Event()
        backend.gate_on = True  # container starts wait in the queue until start_gate
        backend.go.set()  # the listing is not held here
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                n.start_soon(home.expire)
                await backend.removing.wait()  # the live check passed; the DELETE goes
                async with trio.open_nursery() as connection:
                    source = home.alice_logs_in(connection)
                    await trio.testing.wait_all_tasks_blocked()
                    backend.remove_go.set()  # podman removes it
                    while not home.expired:
                        await trio.sleep(0.01)
                    backend.start_gate.set()
                    assert (await source.get()).container_id
                    connection.cancel_scope.cancel()
    assert home.expired == [1]
    assert backend.volumes[home.name][0] == home.labels, "the home was replaced, unlabelled"


async def test_a_login_while_podman_stays_away_is_told_so_after_the_next_try(
    make_server: ServerFactory, client_key: ClientKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """podman still not answering at the deferred adoption's next try: the waiting login
    is refused with podman's error then, not after the session's whole start_timeout
    (300 s by default) as "did not start" (second reader)."""
    backend = MemoryBackend()
    first = await make_server(backend)
    await run_ssh(first.port, client_key.path, "true")
    await first.stop()  # kept
    monkeypatch.setattr(workspaces, "ADOPTION_RETRY", 0.5)
    monkeypatch.setattr(workspaces, "DEFERRED_WAIT_MARGIN", 0.5)
    backend.unavailable = True
    second = await make_server(backend, **{"container.start_timeout": 120})
    started = trio.current_time()
    result = await run_ssh(second.port, client_key.path, "echo hi")
    assert result.returncode != 0
    assert b"workspaces are unavailable" in result.stderr, result.stderr
    assert trio.current_time() - started < 60


async def test_a_login_waits_out_a_slow_adoption_after_a_late_lock(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Failover: the lock's holder went, and taking its kept workspaces over takes 20 s
    (podman busy). A login waits for that and gets its workspace; only a deferred
    adoption (podman not answering) bounds the wait (second reader: 54c61c0 refused it
    after 15 s)."""

    class SlowListing(MemoryBackend):
        slow = False

        async def find_sandboxes(self, labels: Mapping[str, str | None]) -> list[FoundSandbox]:
            if self.slow:
                await trio.sleep(20)
            return await super().find_sandboxes(labels)

    path = tmp_path / "w.json"
    holder = WorkspaceState(path)
    holder.lock()
    backend = SlowListing()
    settings = load_config(
        None, {"session.execution_mode": "workspace", "workspaces.state_file": str(path)}
    )
    registry = Workspaces(backend, Metrics(), lambda: settings, instance="t")
    spec = SandboxSpec(conn_id="c", username="alice", remote="", instance="t")
    async with trio.open_nursery() as upkeep:
        await upkeep.start(registry.run)
        holder.unlock()  # the other server is gone
        backend.slow = True
        async with trio.open_nursery() as connection:
            source = WorkspaceSource(registry, spec, 30, 300, connection)
            with trio.fail_after(300):
                source.prepare(300)
                assert (await source.get()).container_id
            connection.cancel_scope.cancel()
        upkeep.cancel_scope.cancel()


class StalledListing(MemoryBackend):
    """podman hanging: the adoption's listing times out after podman's request timeout."""

    stalled = False

    async def find_sandboxes(self, labels: Mapping[str, str | None]) -> list[FoundSandbox]:
        if self.stalled:
            await trio.sleep(60)
            raise BackendUnavailable("podman: request timed out")
        return await super().find_sandboxes(labels)


async def test_a_login_during_a_try_that_gets_deferred_is_told_after_the_next(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A late lock's first try is under way when alice logs in, and podman hangs: that
    try times out and is deferred, and so does the next. She is refused when the next
    try has failed too (third reader: she waited out the session's start_timeout)."""
    path = tmp_path / "w.json"
    holder = WorkspaceState(path)
    holder.lock()
    backend = StalledListing()
    settings = load_config(
        None, {"session.execution_mode": "workspace", "workspaces.state_file": str(path)}
    )
    registry = Workspaces(backend, Metrics(), lambda: settings, instance="t")
    spec = SandboxSpec(conn_id="c", username="alice", remote="", instance="t")
    async with trio.open_nursery() as upkeep:
        await upkeep.start(registry.run)
        holder.unlock()
        backend.stalled = True
        started = trio.current_time()
        async with trio.open_nursery() as connection:
            source = WorkspaceSource(registry, spec, 30, 300, connection)
            source.prepare(300)
            with trio.fail_after(300):  # as channels/session.py's _sandbox_for
                with pytest.raises(BackendError, match="workspaces are unavailable: podman"):
                    await source.get()
            connection.cancel_scope.cancel()
        assert trio.current_time() - started <= 60 + workspaces.ADOPTION_RETRY + 60 + 1
        upkeep.cancel_scope.cancel()


async def test_a_login_during_a_slow_retry_that_succeeds_gets_its_workspace(
    make_server: ServerFactory, client_key: ClientKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """podman is back, and the deferred adoption's retry takes longer than the wait's
    margin: a login waiting meanwhile gets its kept workspace when that try ends (second
    reader: it was refused with the old 'backend is down' error)."""

    class SlowListing(MemoryBackend):
        slow = 0.0

        async def find_sandboxes(self, labels: Mapping[str, str | None]) -> list[FoundSandbox]:
            found = await super().find_sandboxes(labels)
            await trio.sleep(self.slow)
            return found

    backend = SlowListing()
    first = await make_server(backend)
    await run_ssh(first.port, client_key.path, "true")
    await first.stop()  # kept
    [kept] = workspaces_of(backend, "alice")
    monkeypatch.setattr(workspaces, "ADOPTION_RETRY", 0.5)
    monkeypatch.setattr(workspaces, "DEFERRED_WAIT_MARGIN", 0.5)
    backend.unavailable = True
    second = await make_server(backend, **{"container.start_timeout": 60})
    backend.unavailable = False  # podman answers again, before the retry
    backend.slow = 3.0  # but the retry's work takes 3 s
    result = await run_ssh(second.port, client_key.path, "echo hi")
    assert (result.returncode, result.stdout) == (0, b"hi\n")
    assert workspaces_of(backend, "alice") == [kept]
