"""Interop fixtures: an in-process trissh (memory backend) that offers *every* algorithm it
implements, with a host key of every type, so each client can pick one with its own options.

A client binary or package that is missing skips its tests only in the fast session; under
the README's test command it fails them (``tests/support.py``: ``require_binary``,
``require_module``): CI installs them (``scripts/setup-host.sh``, the ``test`` extra).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from trissh.backend.memory import MemoryBackend
from trissh.protocol.ciphers import CIPHERS, MACS
from trissh.protocol.kex import KEX_METHODS

from ..support import ClientKey, RunningServer, make_context, start_server

#: Everything trissh implements; tests narrow it from the client side.
ALL_ALGORITHMS: dict[str, Any] = {
    "ssh.kex": list(KEX_METHODS),
    "ssh.ciphers": list(CIPHERS),
    "ssh.macs": list(MACS),
}


@dataclass(frozen=True)
class HostKeyFiles:
    paths: dict[str, Path]

    def all(self) -> list[str]:
        return [str(path) for path in self.paths.values()]


@pytest.fixture(scope="session")
def host_key_files(tmp_path_factory: pytest.TempPathFactory) -> HostKeyFiles:
    """One host key of each type (RSA at 3072 bits), written once per session."""
    directory = tmp_path_factory.mktemp("host_keys")
    keys: dict[str, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]
    keys = {
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=3072),
        "nistp256": ec.generate_private_key(ec.SECP256R1()),
        "nistp384": ec.generate_private_key(ec.SECP384R1()),
        "nistp521": ec.generate_private_key(ec.SECP521R1()),
    }
    paths = {}
    for name, key in keys.items():
        path = directory / f"ssh_host_{name}_key"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        paths[name] = path
    return HostKeyFiles(paths)


async def start_interop_server(
    nursery: trio.Nursery,
    backend: MemoryBackend,
    authorized_keys: Path,
    host_keys: HostKeyFiles,
    **overrides: Any,
) -> RunningServer:
    settings = {"host_keys": host_keys.all(), **ALL_ALGORITHMS, **overrides}
    ctx = make_context(backend, authorized_keys, host_keys.paths["ed25519"], **settings)
    return await start_server(nursery, ctx)


@pytest.fixture
async def interop_server(
    nursery: trio.Nursery,
    memory_backend: MemoryBackend,
    authorized_keys: Path,
    host_key_files: HostKeyFiles,
) -> AsyncIterator[RunningServer]:
    """trissh offering every algorithm it has, and every host key type."""
    server = await start_interop_server(nursery, memory_backend, authorized_keys, host_key_files)
    yield server
    await server.stop()


@pytest.fixture
async def default_server(
    nursery: trio.Nursery,
    memory_backend: MemoryBackend,
    authorized_keys: Path,
    host_key_files: HostKeyFiles,
) -> AsyncIterator[RunningServer]:
    """trissh with its default algorithm lists, and an ed25519 and an RSA host key."""
    ctx = make_context(
        memory_backend,
        authorized_keys,
        host_key_files.paths["ed25519"],
        host_keys=[str(host_key_files.paths["ed25519"]), str(host_key_files.paths["rsa"])],
    )
    server = await start_server(nursery, ctx)
    yield server
    await server.stop()


__all__ = ["ClientKey", "HostKeyFiles", "start_interop_server"]
