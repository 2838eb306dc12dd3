"""The real OpenSSH client against trissh with the in-process backend (fast, no podman)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, MutableMapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from trissh.backend.memory import MemoryBackend
from trissh.server.build import build_context

from ..support import (
    ClientKey,
    RunningServer,
    capture_module_log,
    make_context,
    needs_ssh,
    run_ssh,
    ssh_argv,
    start_server,
    wait_until,
)

pytestmark = [needs_ssh, pytest.mark.interop]

CIPHERS = ["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
KEX = ["curve25519-sha256", "curve25519-sha256@libssh.org"]


async def test_exec_output_and_exit_code(
    memory_server: RunningServer, client_key: ClientKey
) -> None:
    """`ssh host 'echo hi; exit 3'` prints hi and exits 3."""
    result = await run_ssh(memory_server.port, client_key.path, "echo hi; exit 3")
    assert result.stdout == b"hi\n", result.stderr
    assert result.returncode == 3


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("kex", KEX)
async def test_algorithm_matrix(
    memory_server: RunningServer, client_key: ClientKey, cipher: str, kex: str
) -> None:
    """Every cipher and kex we offer works with OpenSSH when forced with -o."""
    result = await run_ssh(
        memory_server.port, client_key.path, "-c", cipher, "-o", f"KexAlgorithms={kex}", "echo ok"
    )
    assert (result.returncode, result.stdout) == (0, b"ok\n"), result.stderr


async def test_upload_round_trip_is_exact(
    memory_server: RunningServer, client_key: ClientKey
) -> None:
    """50 MB through `cat` come back byte for byte (flow control client → server → client)."""
    data = os.urandom(50_000_000)
    result = await run_ssh(memory_server.port, client_key.path, "cat", stdin=data)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


async def test_upload_is_exact_while_the_server_clock_keeps_firing(
    nursery: trio.Nursery,
    memory_backend: MemoryBackend,
    authorized_keys: Path,
    tmp_path: Path,
    client_key: ClientKey,
) -> None:
    """The connection's timers cancel its socket reads when due (driver.py): with a
    keepalive interval of a millisecond they fire all through a 20 MB round trip, which
    must still arrive byte for byte, keepalives answered. (A configuration may not say
    less than a second: the test sets it past validation.)"""
    settings = make_context(
        memory_backend,
        authorized_keys,
        tmp_path / "host_key",
        **{"session.client_alive_count_max": 100},
    ).settings
    session = settings.session.model_copy(update={"client_alive_interval": 0.001})
    ctx = build_context(settings.model_copy(update={"session": session}), memory_backend)
    assert ctx.settings.session_for("test").client_alive_interval == 0.001
    server = await start_server(nursery, ctx)
    data = os.urandom(20_000_000)
    result = await run_ssh(server.port, client_key.path, "cat", stdin=data)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()
    await server.stop()


async def test_download_with_forced_rekeys(
    memory_server: RunningServer, client_key: ClientKey
) -> None:
    """A 20 MB download while the client rekeys every megabyte arrives complete."""
    result = await run_ssh(
        memory_server.port, client_key.path, "-o", "RekeyLimit=1M", "head -c 20000000 /dev/zero"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == bytes(20_000_000)


async def test_stderr_is_separate(memory_server: RunningServer, client_key: ClientKey) -> None:
    """Without a pty, stderr arrives as extended data on the client's stderr."""
    result = await run_ssh(memory_server.port, client_key.path, "echo out; echo err >&2")
    assert result.stdout == b"out\n"
    assert b"err\n" in result.stderr


async def test_unknown_key_is_refused_and_server_keeps_serving(
    memory_server: RunningServer, client_key: ClientKey, stranger_key: ClientKey
) -> None:
    """A key not in authorized_keys gets exit 255; the next good client still works."""
    refused = await run_ssh(memory_server.port, stranger_key.path, "true")
    assert refused.returncode == 255
    assert b"Permission denied" in refused.stderr
    accepted = await run_ssh(memory_server.port, client_key.path, "echo still here")
    assert accepted.stdout == b"still here\n"


async def test_killed_client_leaves_nothing_running(
    memory_server: RunningServer, memory_backend: MemoryBackend, client_key: ClientKey
) -> None:
    """SIGKILL of the client mid-command removes its sandbox and process."""
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            partial(trio.run_process, check=False),
            ssh_argv(memory_server.port, client_key.path, "sleep 1000"),
        )
        await wait_until(lambda: memory_backend.live_processes == 1)
        process.kill()
    await wait_until(
        lambda: memory_backend.live_processes == 0 and memory_backend.live_sandboxes == 0
    )


async def test_openssh_binds_its_signature_to_our_host_key(
    memory_server: RunningServer, client_key: ClientKey
) -> None:
    """We announce publickey-hostbound@openssh.com; OpenSSH then signs with it, and it works."""
    result = await run_ssh(memory_server.port, client_key.path, "-vvv", "echo bound")
    assert result.stdout == b"bound\n"
    assert b"using publickey-hostbound-v00@openssh.com" in result.stderr


@pytest.fixture
def driver_logs(monkeypatch: pytest.MonkeyPatch) -> list[MutableMapping[str, Any]]:
    """The connection driver's lines from info up."""
    return capture_module_log(monkeypatch, "trissh.connection.driver")


@pytest.fixture
async def no_forwarding_server(
    nursery: trio.Nursery, memory_backend: MemoryBackend, authorized_keys: Path, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    """A server whose ``[forwarding]`` allows no TCP forwarding at all."""
    ctx = make_context(
        memory_backend,
        authorized_keys,
        tmp_path / "host_key",
        **{"forwarding.allow_tcp_forwarding": "no"},
    )
    server = await start_server(nursery, ctx)
    yield server
    await server.stop()


async def test_refused_port_forwarding_is_logged_with_its_target(
    no_forwarding_server: RunningServer,
    client_key: ClientKey,
    driver_logs: list[MutableMapping[str, Any]],
) -> None:
    """With forwarding turned off, `ssh -W` and `ssh -R` get OpenSSH's own refusal messages;
    the operator gets one `request_refused` line each, naming where the client wanted to go."""
    logs = driver_logs
    port = no_forwarding_server.port
    stdio = await run_ssh(port, client_key.path, "-W", "127.0.0.1:9")
    remote = await run_ssh(
        port,
        client_key.path,
        "-o", "ExitOnForwardFailure=yes",
        "-R", "0.0.0.0:18081:127.0.0.1:80",
        "true",
    )  # fmt: skip
    assert stdio.returncode == 255
    assert b"stdio forwarding failed" in stdio.stderr, stdio.stderr
    assert remote.returncode == 255
    assert b"remote port forwarding failed for listen port 18081" in remote.stderr
    refusals = [
        (e["request"], e["target"], e["reason"]) for e in logs if e["event"] == "request_refused"
    ]
    assert refusals == [
        ("direct-tcpip", "127.0.0.1:9", "TCP forwarding (local) is not allowed"),
        ("tcpip-forward", "0.0.0.0:18081", "TCP forwarding (remote) is not allowed"),
    ], logs


async def test_a_flood_of_refused_requests_is_logged_only_up_to_a_bound(
    no_forwarding_server: RunningServer,
    client_key: ClientKey,
    driver_logs: list[MutableMapping[str, Any]],
) -> None:
    """A client looping on refused requests cannot flood the log: ten lines per connection,
    and `connection_closed` counts them all."""
    forwards = [arg for port in range(18100, 18115) for arg in ("-R", f"{port}:127.0.0.1:80")]
    logs = driver_logs
    result = await run_ssh(
        no_forwarding_server.port, client_key.path, *forwards, "echo still works"
    )
    await wait_until(lambda: any(e["event"] == "connection_closed" for e in logs))
    assert (result.returncode, result.stdout) == (0, b"still works\n"), result.stderr
    refused = [e for e in logs if e["event"] == "request_refused"]
    assert len(refused) == 10, refused
    [closed] = [e for e in logs if e["event"] == "connection_closed"]
    assert closed["requests_refused"] == 15, closed
