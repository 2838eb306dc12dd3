"""PuTTY's ``plink`` (0.78) and Dropbear's ``dbclient`` (2022.83) against trissh.

Neither can pick every algorithm from its command line, so each row narrows the *server*
to one algorithm of the category under test: a session that works used it. The lists below
are what these client versions implement (from their binaries' name tables) intersected
with trissh's. Neither has mlkem768x25519 (PuTTY 0.83 and Dropbear 2025.87 add it), the
HMAC-SHA2-512 MACs, or (Dropbear) any encrypt-then-MAC mode.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trio

from trissh.backend.memory import MemoryBackend
from trissh.protocol.ciphers import CIPHERS, MACS
from trissh.protocol.kex import KEX_METHODS
from trissh.protocol.keys import HOST_KEY_ALGORITHMS
from trissh.server.hostkeys import load_or_create_host_key

from ..support import ClientKey, require_binary
from .conftest import HostKeyFiles, start_interop_server

pytestmark = pytest.mark.interop

_PUTTY_KEX = (
    "sntrup761x25519-sha512@openssh.com",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group14-sha256",
    "diffie-hellman-group-exchange-sha256",
)
_PUTTY_CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
_PUTTY_MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-256")
_HOST_KEYS = (
    "ssh-ed25519",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)

PUTTY_ROWS = [
    *(("kex", name) for name in _PUTTY_KEX),
    *(("cipher", name) for name in _PUTTY_CIPHERS),
    *(("mac", name) for name in _PUTTY_MACS),
    *(("host_key", name) for name in _HOST_KEYS),
]
DROPBEAR_ROWS = [
    *(
        ("kex", name)
        for name in (
            "curve25519-sha256",
            "curve25519-sha256@libssh.org",
            "ecdh-sha2-nistp256",
            "ecdh-sha2-nistp384",
            "ecdh-sha2-nistp521",
            "diffie-hellman-group14-sha256",
        )
    ),
    *(("cipher", name) for name in ("chacha20-poly1305@openssh.com", "aes256-ctr", "aes128-ctr")),
    ("mac", "hmac-sha2-256"),
    *(
        ("host_key", name)
        for name in (
            "ssh-ed25519",
            "rsa-sha2-256",
            "ecdsa-sha2-nistp256",
            "ecdsa-sha2-nistp384",
            "ecdsa-sha2-nistp521",
        )
    ),
]


def _server_settings(kind: str, name: str) -> dict[str, object]:
    """Offer only ``name`` in its category (a MAC row also needs a non-AEAD cipher)."""
    if kind == "kex":
        return {"ssh.kex": [name]}
    if kind == "cipher":
        return {"ssh.ciphers": [name]}
    if kind == "mac":
        return {"ssh.ciphers": ["aes128-ctr", "aes256-ctr"], "ssh.macs": [name]}
    return {"ssh.host_key_algorithms": [name]}


async def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False, env=env, stdin=b""
        )


@pytest.fixture(scope="session")
def putty_key(client_key: ClientKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    puttygen = require_binary("puttygen")
    path = tmp_path_factory.mktemp("putty") / "id.ppk"
    subprocess.run(
        [puttygen, str(client_key.path), "-O", "private", "-o", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return path


@pytest.fixture(scope="session")
def dropbear_key(client_key: ClientKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    convert = require_binary("dropbearconvert")
    path = tmp_path_factory.mktemp("dropbear") / "id.db"
    subprocess.run(
        [convert, "openssh", "dropbear", str(client_key.path), str(path)],
        check=True,
        capture_output=True,
    )
    return path


@pytest.mark.parametrize(("kind", "name"), PUTTY_ROWS, ids=lambda v: str(v))
async def test_plink(
    nursery: trio.Nursery,
    memory_backend: MemoryBackend,
    authorized_keys: Path,
    host_key_files: HostKeyFiles,
    putty_key: Path,
    tmp_path: Path,
    kind: str,
    name: str,
) -> None:
    plink = require_binary("plink")
    server = await start_interop_server(
        nursery, memory_backend, authorized_keys, host_key_files, **_server_settings(kind, name)
    )
    pins: list[str] = []
    for path in host_key_files.paths.values():
        pins += ["-hostkey", load_or_create_host_key(path)[0].fingerprint]
    env = {**os.environ, "HOME": str(tmp_path)}  # PuTTY keeps its state under ~/.putty
    argv = [
        plink, "-ssh", "-batch", "-v", "-noagent",
        "-P", str(server.port), "-l", "alice", "-i", str(putty_key), *pins,
        "127.0.0.1", "echo ok",
    ]  # fmt: skip
    result = await _run(argv, env)
    log = result.stderr.decode(errors="replace")
    await server.stop()
    assert (result.returncode, result.stdout) == (0, b"ok\n"), log[-3000:]


@pytest.mark.parametrize(("kind", "name"), DROPBEAR_ROWS, ids=lambda v: str(v))
async def test_dbclient(
    nursery: trio.Nursery,
    memory_backend: MemoryBackend,
    authorized_keys: Path,
    host_key_files: HostKeyFiles,
    dropbear_key: Path,
    tmp_path: Path,
    kind: str,
    name: str,
) -> None:
    dbclient = require_binary("dbclient")
    server = await start_interop_server(
        nursery, memory_backend, authorized_keys, host_key_files, **_server_settings(kind, name)
    )
    options: list[str] = []
    if kind == "cipher":
        options = ["-c", name]
    elif kind == "mac":
        options = ["-m", name]
    env = {**os.environ, "HOME": str(tmp_path)}
    argv = [
        dbclient, "-y", "-y", "-i", str(dropbear_key), *options,
        "-p", str(server.port), "alice@127.0.0.1", "echo ok",
    ]  # fmt: skip
    result = await _run(argv, env)
    log = result.stderr.decode(errors="replace")
    await server.stop()
    assert (result.returncode, result.stdout) == (0, b"ok\n"), log[-3000:]


def test_client_lists_are_implemented_by_trissh() -> None:
    known: dict[str, object] = {"kex": KEX_METHODS, "cipher": CIPHERS, "mac": MACS}
    for kind, name in PUTTY_ROWS + DROPBEAR_ROWS:
        assert name in known.get(kind, HOST_KEY_ALGORITHMS), (kind, name)  # type: ignore[operator]
