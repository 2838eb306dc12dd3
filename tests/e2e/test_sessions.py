"""Session features end to end with real OpenSSH clients and podman (the sessions issue)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from podman import PodmanClient

from ..support import (
    ClientKey,
    RunningServer,
    make_context,
    needs,
    needs_ssh,
    run_ssh,
    ssh_argv,
    start_server,
)
from .conftest import Containers, podman_backend
from .test_interactive import Tmux

pytestmark = [pytest.mark.podman, pytest.mark.interop, needs_ssh]

SSH_OPTIONS = [
    "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes",
]  # fmt: skip


async def test_death_by_signal_is_reported_as_exit_signal(
    podman_server: RunningServer, client_key: ClientKey
) -> None:
    """`kill -TERM $$` reaches the client as exit-signal TERM; `exit 143` as exit-status 143."""
    killed = await run_ssh(podman_server.port, client_key.path, "-v", "kill -TERM $$")
    assert b"rtype exit-signal" in killed.stderr, killed.stderr
    assert killed.returncode == 255  # what ssh does with exit-signal, as against sshd
    exited = await run_ssh(podman_server.port, client_key.path, "-v", "exit 143")
    assert b"rtype exit-status" in exited.stderr
    assert exited.returncode == 143


async def test_container_killed_from_outside_ends_with_exit_signal(
    podman_server: RunningServer, client_key: ClientKey, containers: Containers, podman_url: str
) -> None:
    """`podman kill` of the session's container: the client gets exit-signal KILL."""
    async with trio.open_nursery() as nursery:
        result: list[subprocess.CompletedProcess[bytes]] = []

        async def client() -> None:
            result.append(await run_ssh(podman_server.port, client_key.path, "-v", "sleep 1000"))

        nursery.start_soon(client)
        await containers.wait_for(podman_server.ctx.instance, 1)
        [container_id] = await containers.of(podman_server.ctx.instance)
        await trio.sleep(0.5)
        await trio.to_thread.run_sync(
            lambda: PodmanClient(base_url=podman_url).containers.get(container_id).kill("KILL")
        )
    assert b"rtype exit-signal" in result[0].stderr, result[0].stderr
    await containers.wait_for(podman_server.ctx.instance, 0)


async def test_env_allow_list(podman_server: RunningServer, client_key: ClientKey) -> None:
    """LANG and LC_* arrive; LD_PRELOAD and a name outside the list do not."""
    send = ["-o", "SendEnv=LANG LC_TIME LD_PRELOAD TRISSH_SECRET"]
    with trio.fail_after(60):
        result = await trio.run_process(
            ssh_argv(podman_server.port, client_key.path, *send,
                     'echo "$LANG|$LC_TIME|$LD_PRELOAD|$TRISSH_SECRET"'),
            capture_stdout=True, capture_stderr=True, check=False,
            env={**os.environ, "LANG": "C.UTF-8", "LC_TIME": "C", "LD_PRELOAD": "/x.so",
                 "TRISSH_SECRET": "s"},
        )  # fmt: skip
    assert result.stdout == b"C.UTF-8|C||\n", result.stderr


def _our_pipes() -> set[str]:
    """``pipe:[inode]`` of every pipe this process (the in-process server) holds."""
    links = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            links.add(os.readlink(f"/proc/self/fd/{fd}"))
    return {link for link in links if link.startswith("pipe:")}


async def test_exec_without_pty_gets_direct_pipes_and_a_pty_does_not(
    podman_server: RunningServer, client_key: ClientKey
) -> None:
    """The server as shipped hands a no-pty program pipes it made itself (the other ends
    are open in this process, not in conmon), end to end: stdin, stdout, stderr and the
    exit status all arrive; with -tt the program has a terminal."""
    script = "for fd in 0 1 2; do readlink /proc/self/fd/$fd; done; read go; wc -c; exit 4"
    argv = ssh_argv(podman_server.port, client_key.path, script)
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stdin is not None
        assert process.stdout is not None
        links = b""
        while links.count(b"\n") < 3:
            links += await process.stdout.receive_some(4096)
        program_ends = links.decode().split()
        assert set(program_ends) <= _our_pipes(), (program_ends, _our_pipes())
        await process.stdin.send_all(b"go\n" + b"x" * 100_000)
        await process.stdin.aclose()
        rest = b""
        while data := await process.stdout.receive_some(4096):
            rest += data
        assert await process.wait() == 4
    assert rest.split() == [b"100000"]
    tty = await run_ssh(podman_server.port, client_key.path, "-tt", "readlink /proc/self/fd/1")
    assert tty.stdout.startswith(b"/dev/pts/"), tty.stdout


async def test_output_of_a_background_child_is_delivered_as_sshd_does(
    podman_server: RunningServer, client_key: ClientKey
) -> None:
    """The shell exits first; its child still holds stdout. As with OpenSSH's sshd, the
    channel stays open until stdout reaches EOF, so the late line is not lost."""
    result = await run_ssh(
        podman_server.port, client_key.path, "(sleep 1; echo late) & echo early; exit 3"
    )
    assert (result.stdout, result.returncode) == (b"early\nlate\n", 3), result.stderr


async def test_sftp_put_get_ls_rename_rm_100_mb(
    podman_server: RunningServer, client_key: ClientKey, tmp_path: Path
) -> None:
    """sftp moves 100 MB each way intact and does the usual file operations."""
    source = tmp_path / "big"
    source.write_bytes(os.urandom(100_000_000))
    back = tmp_path / "back"
    batch = tmp_path / "batch"
    batch.write_text(
        f"put {source} /tmp/big\nls -l /tmp\nget /tmp/big {back}\n"
        "rename /tmp/big /tmp/renamed\nls /tmp\nrm /tmp/renamed\nls /tmp\n"
    )
    argv = ["sftp", *SSH_OPTIONS, "-i", str(client_key.path), "-P", str(podman_server.port),
            "-b", str(batch), "alice@127.0.0.1"]  # fmt: skip
    with trio.fail_after(180):
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr
    digest = hashlib.sha256(source.read_bytes()).digest()
    assert hashlib.sha256(back.read_bytes()).digest() == digest
    listing = result.stdout.decode()
    assert "100000000" in listing
    assert listing.rstrip().endswith("sftp> ls /tmp")  # empty after rm


@pytest.mark.parametrize("legacy", [False, True], ids=["sftp-protocol", "scp-protocol"])
async def test_scp_both_ways(
    podman_server: RunningServer, client_key: ClientKey, tmp_path: Path, legacy: bool
) -> None:
    """scp (OpenSSH 9's SFTP mode, and the legacy protocol with -O) copies both ways."""
    source = tmp_path / "file"
    source.write_bytes(os.urandom(3_000_000))
    back = tmp_path / "back"
    base = ["scp", *(["-O"] if legacy else []), *SSH_OPTIONS, "-i", str(client_key.path),
            "-P", str(podman_server.port)]  # fmt: skip
    control = tmp_path / "mux"
    shared = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}", "-o", "ControlPersist=30"]
    with trio.fail_after(120):
        up = await trio.run_process(
            [*base, *shared, str(source), "alice@127.0.0.1:/tmp/file"], capture_stderr=True,
            check=False,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        down = await trio.run_process(
            [*base, *shared, "alice@127.0.0.1:/tmp/file", str(back)], capture_stderr=True,
            check=False,
        )  # fmt: skip
        assert down.returncode == 0, down.stderr
        await trio.run_process(
            ["ssh", *SSH_OPTIONS, "-o", f"ControlPath={control}", "-O", "exit", "x"],
            check=False, capture_stderr=True,
        )  # fmt: skip
    assert back.read_bytes() == source.read_bytes()


@needs("tmux")
async def test_ctrl_c_interrupts_a_command_in_a_pty(
    podman_server: RunningServer, client_key: ClientKey
) -> None:
    """Ctrl-C in the terminal interrupts `sleep`, and the shell prompt comes back."""
    tmux = Tmux()
    command = " ".join([*ssh_argv(podman_server.port, client_key.path, "-tt"), "; sleep 30"])
    try:
        tmux("new-session", "-d", "-s", "t", "-x", "100", "-y", "30", command)
        await tmux.wait_for(" #")
        tmux("send-keys", "-t", "t", "sleep 1000", "Enter")
        await trio.sleep(1)
        tmux("send-keys", "-t", "t", "C-c")
        # The shell drops the rest of an interrupted line; a new command must run at once.
        tmux("send-keys", "-t", "t", "echo after-$((6*7))", "Enter")
        await tmux.wait_for("after-42")
        tmux("send-keys", "-t", "t", "exit", "Enter")
    finally:
        tmux.kill()


@pytest.fixture
async def short_limits_server(
    nursery: trio.Nursery, podman_url: str, authorized_keys: Path, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    ctx = make_context(
        podman_backend(podman_url), authorized_keys, tmp_path / "host_key",
        **{"session.idle_timeout": 2, "container.start_timeout": 60},
    )  # fmt: skip
    server = await start_server(nursery, ctx)
    yield server
    await server.stop()


async def test_idle_timeout_for_real(
    short_limits_server: RunningServer, client_key: ClientKey, containers: Containers
) -> None:
    """A silent session is told it idled and is closed; its container goes too."""
    start = trio.current_time()
    result = await run_ssh(short_limits_server.port, client_key.path, "sleep 1000")
    assert b"trissh: session idle for 2 s, closing" in result.stderr
    assert trio.current_time() - start < 30
    await containers.wait_for(short_limits_server.ctx.instance, 0)


async def test_start_timeout_fails_cleanly(
    nursery: trio.Nursery,
    podman_url: str,
    authorized_keys: Path,
    tmp_path: Path,
    client_key: ClientKey,
    containers: Containers,
) -> None:
    """A container slower to start than start_timeout: a clear message, nothing left."""
    ctx = make_context(
        podman_backend(podman_url), authorized_keys, tmp_path / "host_key",
        **{"container.start_timeout": 0.001},
    )  # fmt: skip
    server = await start_server(nursery, ctx)
    result = await run_ssh(server.port, client_key.path, "true")
    assert result.returncode == 255
    assert b"trissh: container did not start within 0.001 s" in result.stderr
    await containers.wait_for(ctx.instance, 0)
    await server.stop()


async def test_unreachable_podman_says_so(
    nursery: trio.Nursery, authorized_keys: Path, tmp_path: Path, client_key: ClientKey
) -> None:
    """Podman service down: the user reads "container backend unavailable"."""
    ctx = make_context(
        podman_backend(f"unix://{tmp_path}/no-podman.sock"), authorized_keys, tmp_path / "hk"
    )
    server = await start_server(nursery, ctx)
    result = await run_ssh(server.port, client_key.path, "true")
    assert result.returncode == 255
    assert b"container backend unavailable" in result.stderr, result.stderr
    await server.stop()
