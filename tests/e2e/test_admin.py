"""The operator's view through the admin socket, end to end: ``trissh sessions``, ``kill``
and ``watch`` run as an operator types them (``python -m trissh``), against a server on
real podman with real OpenSSH clients; ``watch`` in tmux, beside the user's own terminal."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from ..support import (
    ClientKey,
    RunningServer,
    capture_module_log,
    make_context,
    needs,
    require,
    ssh_argv,
    start_server,
)
from .conftest import Containers, podman_backend

pytestmark = [pytest.mark.podman, needs("ssh", "tmux")]


@pytest.fixture
async def server(
    nursery: trio.Nursery, podman_url: str, authorized_keys: Path, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    """The admin socket in a directory others may pass through (pytest's are 0700), so
    that only the socket's own mode and the server's check keep them out."""
    directory = _socket_directory()
    ctx = make_context(
        podman_backend(podman_url), authorized_keys, tmp_path / "host_key",
        **{"admin.socket": str(directory / "admin.sock")},
    )  # fmt: skip
    running = await start_server(nursery, ctx)
    try:
        yield running
        await running.stop()
        assert not (directory / "admin.sock").exists()  # removed on the way out
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _socket_directory() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="trissh-admin-", dir="/tmp"))
    directory.chmod(0o755)
    return directory


def trissh_argv(server: RunningServer, *args: str) -> list[str]:
    socket = server.ctx.settings.admin.socket
    return [sys.executable, "-m", "trissh", *args, "--admin-socket", socket]


async def trissh(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it, bounded."""
    with trio.fail_after(30):
        done = await trio.run_process(
            trissh_argv(server, *args), capture_stdout=True, capture_stderr=True, check=False
        )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


async def listed(server: RunningServer) -> list[dict[str, Any]]:
    result = await trissh(server, "sessions", "--json")
    assert result.returncode == 0, result.stderr
    connections: list[dict[str, Any]] = json.loads(result.stdout)["connections"]
    return connections


async def wait_listed(server: RunningServer, sessions: int) -> list[dict[str, Any]]:
    """Until the listing shows ``sessions`` running sessions in all."""
    with trio.fail_after(30):
        while True:
            connections = await listed(server)
            if sum(len(c["sessions"]) for c in connections) == sessions:
                return connections
            await trio.sleep(0.2)


async def test_sessions_lists_who_runs_what_where(
    server: RunningServer, client_key: ClientKey, containers: Containers
) -> None:
    """Two clients, one with a terminal: users, addresses, containers (podman's own ids),
    commands, terminal sizes, bytes; and the same in the text listing."""

    async def client(*args: str) -> None:
        argv = ssh_argv(server.port, client_key.path, *args)
        await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client, "-tt", "sleep 20")
        nursery.start_soon(client, "sleep 20; echo")
        connections = await wait_listed(server, 2)
        podman_ids = set(await containers.of(server.ctx.instance))
        by_command = {c["sessions"][0]["command"]: c for c in connections}
        assert set(by_command) == {"sleep 20", "sleep 20; echo"}
        for conn in connections:
            assert conn["user"] == "alice"
            assert conn["remote"].startswith("127.0.0.1:")
            assert conn["bytes_in"] > 0
            assert conn["bytes_out"] > 0
            [session] = conn["sessions"]
            assert session["kind"] == "exec"
            assert session["container"] in podman_ids
        assert by_command["sleep 20"]["sessions"][0]["term"] is not None
        assert by_command["sleep 20; echo"]["sessions"][0]["term"] is None
        text = (await trissh(server, "sessions")).stdout
        for conn in connections:
            assert f"{conn['conn_id']}  alice@127.0.0.1:" in text
            container = conn["sessions"][0]["container"][:12]
            assert f"{conn['conn_id']}:0  exec 'sleep 20" in text
            assert f"container {container}" in text
        nursery.cancel_scope.cancel()


async def test_kill_ends_the_connection_and_everything_it_ran(
    server: RunningServer,
    client_key: ClientKey,
    containers: Containers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``trissh kill CONN``: the client is disconnected with a reason, its container goes,
    the listing is empty, and the request is logged with who asked."""
    logs = capture_module_log(monkeypatch, "trissh.admin.server")
    result: list[subprocess.CompletedProcess[bytes]] = []

    async def client() -> None:
        argv = ssh_argv(server.port, client_key.path, "sleep 1000")
        with trio.fail_after(60):
            result.append(
                await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
            )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        [conn] = await wait_listed(server, 1)
        await containers.wait_for(server.ctx.instance, 1)
        unknown = await trissh(server, "kill", "0123456789ab")
        assert unknown.returncode == 1
        assert "no connection" in unknown.stderr
        killed = await trissh(server, "kill", conn["conn_id"])
        assert killed.returncode == 0, killed.stderr
    assert result[0].returncode == 255
    assert b"ended by the operator" in result[0].stderr
    await containers.wait_for(server.ctx.instance, 0)
    assert await listed(server) == []
    [request] = [e for e in logs if e["event"] == "admin_request" and e["result"] == "ok"
                 and e["action"] == "kill"]  # fmt: skip
    assert request["target"] == conn["conn_id"]
    assert request["peer_uid"] == os.geteuid()


class Tmux:
    """A private tmux server with one window per named session."""

    def __init__(self) -> None:
        self.socket = f"trissh-admin-test-{secrets.token_hex(4)}"

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def start(self, name: str, argv: list[str], trailer: str) -> None:
        command = " ".join(argv) + f"; echo {trailer}-$?; sleep 60"
        self("new-session", "-d", "-s", name, "-x", "100", "-y", "30", command)

    def screen(self, name: str) -> str:
        return self("capture-pane", "-p", "-t", name)

    async def wait_for(self, name: str, text: str, timeout: float = 20) -> str:
        screen = ""
        with trio.move_on_after(timeout):
            while text not in (screen := self.screen(name)):
                await trio.sleep(0.1)
            return screen
        raise AssertionError(f"{text!r} did not appear on {name}'s screen:\n{screen}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)


async def test_watch_shows_the_users_terminal_as_they_type(
    server: RunningServer, client_key: ClientKey
) -> None:
    """The user's shell in one tmux session, ``trissh watch --notify`` in another: the
    user is told, what the user's shell prints appears on the operator's screen as it
    happens, the operator's keys reach nothing, and the watch ends with the session."""
    tmux = Tmux()
    try:
        tmux.start("user", ssh_argv(server.port, client_key.path, "-tt"), "SSH-DONE")
        await tmux.wait_for("user", " #")
        [conn] = await wait_listed(server, 1)
        session = f"{conn['conn_id']}:0"
        tmux.start("op", trissh_argv(server, "watch", session, "--notify"), "WATCH-DONE")
        await tmux.wait_for("op", f"watching alice@127.0.0.1:{conn['remote'].split(':')[1]}")
        await tmux.wait_for("user", "an operator is watching this session")
        tmux("send-keys", "-t", "user", "echo watched-$((6*7))", "Enter")
        await tmux.wait_for("op", "watched-42")
        tmux("send-keys", "-t", "op", "echo from-the-operator", "Enter")  # read-only
        tmux("send-keys", "-t", "user", "echo still-$((2+3))", "Enter")
        await tmux.wait_for("op", "still-5")
        assert "from-the-operator" not in tmux.screen("user")
        assert [s["watchers"] for c in await listed(server) for s in c["sessions"]] == [1]
        tmux("send-keys", "-t", "user", "exit", "Enter")
        await tmux.wait_for("user", "SSH-DONE-0")
        screen = await tmux.wait_for("op", "WATCH-DONE-0")
        assert "watch ended: session ended" in screen
    finally:
        tmux.kill()


async def test_watch_refuses_what_it_cannot_show(server: RunningServer) -> None:
    result = await trissh(server, "watch", "0123456789ab:0")
    assert result.returncode == 1
    assert "no connection" in result.stderr


async def test_the_admin_socket_is_its_owners_alone(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mode 0600; and a user that gets past the mode (it is widened here) is refused by
    its credentials, never answered."""
    path = trio.Path(server.ctx.settings.admin.socket)
    assert stat.S_IMODE((await path.stat()).st_mode) == 0o600
    require(os.geteuid() == 0, "root", "run the tests as root (a client runs as nobody)")
    logs = capture_module_log(monkeypatch, "trissh.admin.server")
    client = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "try: s.connect(sys.argv[1])\n"
        "except OSError as e: print('connect', e.errno); sys.exit()\n"
        "try: s.sendall(b'{\"action\": \"sessions\"}\\n'); print('answer', s.recv(100))\n"
        "except OSError as e: print('answer', e.errno)\n"
    )
    argv = ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", client, str(path)]
    with trio.fail_after(30):
        denied = await trio.run_process(argv, capture_stdout=True, check=False)
        assert denied.stdout.strip() == b"connect 13"  # EACCES
        await path.chmod(0o666)
        refused = await trio.run_process(argv, capture_stdout=True, check=False)
    assert refused.stdout.strip() in (b"answer b''", b"answer 32", b"answer 104")  # no answer
    [refusal] = [e for e in logs if e["event"] == "admin_refused"]
    assert refusal["peer_uid"] == 65534


@pytest.mark.parametrize(
    ("request_line", "error"),
    [
        (b"[" * 4000 + b"\n", "malformed request: not a JSON object"),
        (b"not json\n", "malformed request: not a JSON object"),
        (b"[1, 2]\n", "malformed request: not a JSON object"),
    ],
)
async def test_a_malformed_request_is_answered_and_logged_once(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch, request_line: bytes, error: str
) -> None:
    """A request that is not one JSON object gets an answer saying so and one
    ``admin_request`` line (before: nothing at all, or, nested 4000 deep, a traceback)."""
    logged = capture_module_log(monkeypatch, "trissh.admin.server")
    with trio.fail_after(10):
        stream = await trio.open_unix_socket(server.ctx.settings.admin.socket)
        async with stream:
            await stream.send_all(request_line)
            answer = b""
            while chunk := await stream.receive_some(4096):
                answer += chunk
    assert json.loads(answer) == {"ok": False, "error": error}
    assert [(e["event"], e["result"]) for e in logged] == [("admin_request", "refused")]
