"""zlib@openssh.com with real clients, when the operator turns it on (``[ssh]
compression = true``): OpenSSH ``-C``, paramiko ``compress=True``, asyncssh, PuTTY ``-C``
and Dropbear (which asks for it by default). A few megabytes both ways, with rekeys in
between, so the per-NEWKEYS stream restart is exercised."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from trissh.backend.memory import MemoryBackend
from trissh.server.hostkeys import load_or_create_host_key

from ..support import ClientKey, RunningServer, require_binary, require_module, run_ssh
from .conftest import HostKeyFiles, start_interop_server
from .test_python_clients import asyncssh, paramiko

pytestmark = pytest.mark.interop


@pytest.fixture
async def zlib_server(
    nursery: trio.Nursery,
    memory_backend: MemoryBackend,
    authorized_keys: Path,
    host_key_files: HostKeyFiles,
) -> AsyncIterator[RunningServer]:
    server = await start_interop_server(
        nursery, memory_backend, authorized_keys, host_key_files, **{"ssh.compression": True}
    )
    yield server
    await server.stop()


async def test_openssh_compression_with_rekeys(
    zlib_server: RunningServer, client_key: ClientKey
) -> None:
    require_binary("ssh")
    data = os.urandom(3_000_000) + bytes(3_000_000)  # incompressible part: real rekeys
    result = await run_ssh(
        zlib_server.port, client_key.path, "-C", "-o", "RekeyLimit=1M", "-v", "cat", stdin=data
    )
    log = result.stderr.decode()
    assert result.returncode == 0, log[-3000:]
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()
    assert "compression: zlib@openssh.com" in log, log[-3000:]
    assert log.count("SSH2_MSG_NEWKEYS received") > 2, log[-3000:]


def _paramiko_cat(port: int, key: str, data: bytes) -> bytes:
    assert paramiko is not None
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    transport = paramiko.Transport(sock)
    transport.use_compression(True)
    try:
        transport.start_client(timeout=20)
        transport.auth_publickey("alice", paramiko.Ed25519Key.from_private_key_file(key))
        channel = transport.open_session(timeout=20)
        channel.exec_command("cat")
        channel.sendall(data)
        channel.shutdown_write()
        output = channel.makefile("rb").read()
        assert transport.remote_compression == "zlib@openssh.com"
        return bytes(output)
    finally:
        transport.close()


async def test_paramiko_compression(zlib_server: RunningServer, client_key: ClientKey) -> None:
    require_module("paramiko")
    data = b"paramiko " * 100_000
    output = await trio.to_thread.run_sync(
        _paramiko_cat, zlib_server.port, str(client_key.path), data
    )
    assert output == data


def _asyncssh_cat(port: int, key: str, data: bytes) -> bytes:
    assert asyncssh is not None

    async def run() -> bytes:
        async with asyncssh.connect(
            "127.0.0.1",
            port,
            username="alice",
            client_keys=[key],
            known_hosts=None,
            agent_path=None,
            compression_algs=["zlib@openssh.com"],
        ) as connection:
            result = await connection.run("cat", input=data, encoding=None, timeout=30)
            return bytes(result.stdout)

    return asyncio.run(run())


async def test_asyncssh_compression(zlib_server: RunningServer, client_key: ClientKey) -> None:
    require_module("asyncssh")
    data = b"asyncssh " * 100_000
    output = await trio.to_thread.run_sync(
        _asyncssh_cat, zlib_server.port, str(client_key.path), data
    )
    assert output == data


async def test_plink_and_dbclient_compression(
    zlib_server: RunningServer,
    client_key: ClientKey,
    host_key_files: HostKeyFiles,
    tmp_path: Path,
) -> None:
    """Both exit 0 on `echo ok` with compression negotiated (PuTTY's log says so)."""
    plink = require_binary("plink")
    puttygen = require_binary("puttygen")
    dbclient = require_binary("dbclient")
    convert = require_binary("dropbearconvert")
    env = {**os.environ, "HOME": str(tmp_path)}
    ppk, dbkey = tmp_path / "id.ppk", tmp_path / "id.db"
    await trio.run_process(
        [puttygen, str(client_key.path), "-O", "private", "-o", str(ppk)], capture_stdout=True
    )
    await trio.run_process(
        [convert, "openssh", "dropbear", str(client_key.path), str(dbkey)],
        capture_stdout=True,
        capture_stderr=True,
    )
    pin = load_or_create_host_key(host_key_files.paths["ed25519"])[0].fingerprint
    with trio.fail_after(60):
        putty = await trio.run_process(
            [plink, "-ssh", "-batch", "-v", "-C", "-noagent", "-P", str(zlib_server.port),
             "-l", "alice", "-i", str(ppk), "-hostkey", pin, "127.0.0.1", "echo ok"],
            capture_stdout=True, capture_stderr=True, check=False, env=env, stdin=b"",
        )  # fmt: skip
        dropbear = await trio.run_process(
            [dbclient, "-y", "-y", "-i", str(dbkey), "-p", str(zlib_server.port),
             "alice@127.0.0.1", "echo ok"],
            capture_stdout=True, capture_stderr=True, check=False, env=env, stdin=b"",
        )  # fmt: skip
    putty_log = putty.stderr.decode(errors="replace")
    assert (putty.returncode, putty.stdout) == (0, b"ok\n"), putty_log[-3000:]
    assert "zlib" in putty_log.lower(), putty_log[-3000:]
    assert (dropbear.returncode, dropbear.stdout) == (0, b"ok\n"), dropbear.stderr[-3000:]
