"""The real OpenSSH client against trissh with the in-process backend (fast, no podman)."""

from __future__ import annotations

import hashlib
import os
from functools import partial

import pytest
import trio

from trissh.backend.memory import MemoryBackend

from .support import ClientKey, RunningServer, needs_ssh, run_ssh, ssh_argv, wait_until

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
