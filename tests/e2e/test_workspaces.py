"""Workspaces on real podman with the real OpenSSH client, in the Debian image: a file and a
running tmux survive reconnects; one user's connections share the workspace and another
user never sees it; the TTL removes it; a restart adopts it; home volumes outlive it."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from trissh.ops.workspaces_cli import list_workspaces

from ..auth.http_server import Received, start
from ..support import ClientKey, RunningServer, needs, run_ssh
from .conftest import ServerFactory, podman_backend, workspaces_of

pytestmark = [pytest.mark.podman, needs("ssh")]


async def ssh(server: RunningServer, key: ClientKey, user: str, command: str) -> str:
    result = await run_ssh(server.port, key.path, command, user=user)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def test_a_workspace_keeps_files_and_tmux_and_is_its_user_s_alone(
    make_server: ServerFactory, client_key: ClientKey, users: list[str]
) -> None:
    """A file and a detached tmux session are there on the next connection; two concurrent
    connections run in one container; another user has another, without the file."""
    alice, bob = users
    server = await make_server()
    first = await ssh(
        server, client_key, alice,
        "echo kept > ~/f && tmux new-session -d -s keep 'sleep 600' && hostname",
    )  # fmt: skip
    seen: dict[str, str] = {}

    async def concurrent(name: str, command: str) -> None:
        seen[name] = await ssh(server, client_key, alice, command)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(concurrent, "long", "sleep 2; hostname")
        nursery.start_soon(concurrent, "short", "cat ~/f; tmux ls -F '#{session_name}'; hostname")
    assert seen["short"] == f"kept\nkeep\n{first}"
    assert seen["long"] == first
    other = await ssh(server, client_key, bob, "cat ~/f 2>/dev/null || echo none; hostname")
    assert other.splitlines()[0] == "none"
    assert other.splitlines()[1] != first.strip()
    assert len(await workspaces_of(server.ctx.settings.podman_url(), alice)) == 1


async def test_after_the_ttl_the_workspace_is_gone_and_the_next_login_starts_fresh(
    make_server: ServerFactory, client_key: ClientKey, users: list[str], podman_url: str
) -> None:
    alice = users[0]
    server = await make_server(**{"session.workspace_ttl": 1})
    first = await ssh(server, client_key, alice, "echo old > ~/f; hostname")
    with trio.fail_after(30):
        while await workspaces_of(podman_url, alice):
            await trio.sleep(0.2)
    again = await ssh(server, client_key, alice, "cat ~/f 2>/dev/null || echo fresh; hostname")
    assert again.splitlines()[0] == "fresh"
    assert again.splitlines()[1] != first.strip()


async def test_a_restart_adopts_the_workspace_with_its_tmux(
    make_server: ServerFactory, client_key: ClientKey, users: list[str], podman_url: str
) -> None:
    """on_shutdown = keep: the stop leaves the container (the operator's list shows it, no
    server holding it); the next server adopts it: the file, the tmux session and the
    container are the same. A third server with another image discards it."""
    alice = users[0]
    keep = {"workspaces.on_shutdown": "keep"}
    first = await make_server(**keep)
    host = await ssh(
        first, client_key, alice, "echo kept > ~/f; tmux new-session -d -s t 'sleep 600'; hostname"
    )
    await first.stop()
    [container] = await workspaces_of(podman_url, alice)
    backend = podman_backend(podman_url)
    listing = "\n".join(await list_workspaces(backend, first.ctx.settings))
    backend.close()
    assert "no server holds them" in listing
    assert f"{alice} " in listing
    assert container[:12] in listing
    second = await make_server(**keep)
    back = await ssh(second, client_key, alice, "cat ~/f; tmux ls -F '#{session_name}'; hostname")
    assert back == f"kept\nt\n{host}"
    assert await workspaces_of(podman_url, alice) == [container]
    await second.stop()
    third = await make_server(**{**keep, "container.image": "localhost/trissh-base:latest"})
    assert await workspaces_of(podman_url, alice) == []
    await third.stop()


async def test_a_restart_keeps_a_workspace_configured_by_the_config_server(
    make_server: ServerFactory,
    client_key: ClientKey,
    users: list[str],
    podman_url: str,
    nursery: trio.Nursery,
) -> None:
    """The configuration server's answer is part of the workspace's settings: the next
    server cannot know it at start-up, so the user's next login decides. The same answer
    gets the same container (file, tmux); another gets a new one."""
    alice = users[0]
    answer = {"pidslimit": 300}

    async def config(request: Received) -> dict[str, object]:
        return {"config": {"docker": {"execution": {"host": dict(answer)}}}}

    webhook = await start(nursery, config)
    keep = {"workspaces.on_shutdown": "keep", "auth.config_webhook": {"url": webhook.url}}
    first = await make_server(**keep)
    host = await ssh(
        first, client_key, alice, "echo kept > ~/f; tmux new-session -d -s t 'sleep 600'; hostname"
    )
    await first.stop()
    [container] = await workspaces_of(podman_url, alice)
    second = await make_server(**keep)
    assert await workspaces_of(podman_url, alice) == [container]
    back = await ssh(second, client_key, alice, "cat ~/f; tmux ls -F '#{session_name}'; hostname")
    assert back == f"kept\nt\n{host}"
    await second.stop()
    answer["pidslimit"] = 400
    third = await make_server(**keep)
    fresh = await ssh(third, client_key, alice, "cat ~/f 2>/dev/null || echo fresh; hostname")
    assert fresh.splitlines()[0] == "fresh"
    assert fresh.splitlines()[1] != host.strip()
    with trio.fail_after(30):  # the old one is removed beside the new one
        while len(await workspaces_of(podman_url, alice)) != 1:
            await trio.sleep(0.2)
    assert await workspaces_of(podman_url, alice) != [container]
    await third.stop()


async def test_the_home_volume_outlives_the_workspace(
    make_server: ServerFactory, client_key: ClientKey, users: list[str], podman_url: str
) -> None:
    """With home_volume, HOME is the volume: a file there survives the TTL's removal of the
    container; a file elsewhere does not; the image's own /root files were copied in."""
    alice = users[0]
    server = await make_server(**{"session.workspace_ttl": 0, "workspaces.home_volume": True})
    await ssh(server, client_key, alice, "echo mine > ~/f; echo gone > /tmp/g")
    with trio.fail_after(30):
        while await workspaces_of(podman_url, alice):
            await trio.sleep(0.2)
    after = await ssh(
        server, client_key, alice,
        "echo $HOME; cat ~/f; cat /tmp/g 2>/dev/null || echo no-tmp; test -f ~/.bashrc && echo rc",
    )  # fmt: skip
    assert after == "/root\nmine\nno-tmp\nrc\n"


async def test_the_home_volume_stays_its_user_s_in_a_new_id_range(
    make_server: ServerFactory, client_key: ClientKey, users: list[str], podman_url: str
) -> None:
    """Each container has its own range of host ids, and the next workspace rarely gets
    the last one's (another container took it meanwhile): the volume's files belonged to
    the old range, so the user could not even enter their home (``drwx------ 65534``)."""
    alice, bob = users
    server = await make_server(**{"session.workspace_ttl": 0, "workspaces.home_volume": True})
    first = await ssh(server, client_key, alice, "echo mine > ~/f; head -1 /proc/self/uid_map")
    with trio.fail_after(30):
        while await workspaces_of(podman_url, alice):
            await trio.sleep(0.2)
    async with trio.open_nursery() as nursery:  # bob's workspace takes the freed range
        nursery.start_soon(ssh, server, client_key, bob, "sleep 8")
        with trio.fail_after(30):
            while not await workspaces_of(podman_url, bob):
                await trio.sleep(0.2)
        again = await ssh(
            server, client_key, alice,
            "head -1 /proc/self/uid_map; cat ~/f; echo more >> ~/f && touch ~/g && echo writable",
        )  # fmt: skip
    mapped, *rest = again.splitlines()
    assert mapped != first.strip()  # the test made the case it is about
    assert rest == ["mine", "writable"]


async def test_a_second_server_leaves_a_running_server_s_workspaces_alone(
    make_server: ServerFactory,
    client_key: ClientKey,
    users: list[str],
    podman_url: str,
    tmp_path: Path,
) -> None:
    """Two servers with their own state files on one podman service: the second adopted
    the first's live workspace at its start and removed it after its own TTL, under the
    user's running session."""
    alice = users[0]
    first = await make_server()
    async with trio.open_nursery() as nursery:
        outcome: dict[str, str] = {}

        async def session() -> None:
            outcome["out"] = await ssh(first, client_key, alice, "sleep 6; echo survived")

        nursery.start_soon(session)
        with trio.fail_after(30):
            while not (held := await workspaces_of(podman_url, alice)):
                await trio.sleep(0.2)
        second = await make_server(
            **{"workspaces.state_file": str(tmp_path / "other.json"), "session.workspace_ttl": 1}
        )
        await trio.sleep(3)  # past the second server's TTL
        assert await workspaces_of(podman_url, alice) == held
        await second.stop()
    assert outcome["out"] == "survived\n"
