"""paramiko and asyncssh as clients: one row per algorithm each shares with trissh, plus
their defaults. Both run in a worker thread (paramiko blocks; asyncssh has its own loop)."""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
from collections.abc import Callable
from typing import Any

import pytest
import trio

from trissh.protocol.ciphers import CIPHERS, MACS
from trissh.protocol.kex import KEX_METHODS
from trissh.protocol.keys import HOST_KEY_ALGORITHMS

from ..support import ClientKey, RunningServer, require_module

pytestmark = [
    pytest.mark.interop,
    pytest.mark.filterwarnings("ignore:Diffie-Hellman over finite fields"),
]


def _optional(name: str) -> Any:
    """The module, or None when the ``test`` extra is not installed (typed as Any: neither
    package ships complete type information)."""
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - the test extra installs both
        return None


paramiko = _optional("paramiko")
asyncssh = _optional("asyncssh")


def _rows(theirs: list[str], kind: str) -> list[tuple[str, str]]:
    ours: dict[str, object] = {
        "kex": KEX_METHODS,
        "cipher": CIPHERS,
        "mac": MACS,
        "host_key": dict.fromkeys(HOST_KEY_ALGORITHMS),
    }[kind]  # type: ignore[assignment]
    return [(kind, name) for name in ours if name in theirs]


# -- paramiko ---------------------------------------------------------------------------------


def _paramiko_rows() -> list[tuple[str, str]]:
    if paramiko is None:
        return [("missing", "paramiko")]
    transport = paramiko.Transport
    return [
        *_rows(list(transport._preferred_kex), "kex"),
        *_rows(list(transport._preferred_ciphers), "cipher"),
        *_rows(list(transport._preferred_macs), "mac"),
        *_rows(list(transport._preferred_keys), "host_key"),
    ]


def _paramiko_exec(port: int, key_path: str, kind: str, name: str) -> tuple[bytes, int, str]:
    """Connect, force one algorithm, run `echo ok`; return output, status and the kex."""
    assert paramiko is not None
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    transport = paramiko.Transport(sock)
    records: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    transport.logger.addHandler(handler)
    transport.logger.setLevel(logging.DEBUG)
    try:
        options = transport.get_security_options()
        if kind == "kex":
            options.kex = (name,)
        elif kind == "cipher":
            options.ciphers = (name,)
        elif kind == "mac":
            options.ciphers = ("aes128-ctr",)
            options.digests = (name,)
        elif kind == "host_key":
            options.key_types = (name,)
        transport.start_client(timeout=20)
        transport.auth_publickey("alice", paramiko.Ed25519Key.from_private_key_file(key_path))
        channel = transport.open_session(timeout=20)
        channel.exec_command("echo ok; exit 3")
        output = channel.makefile("rb").read()
        status = channel.recv_exit_status()
        negotiated = {
            "cipher": transport.remote_cipher,
            "mac": transport.remote_mac,
            "host_key": transport.host_key_type or "",
        }.get(kind, "")
        kex = [line.split()[-1] for line in records if line.startswith("Kex: ")]
        return output, status, str(negotiated or kex[-1:])
    finally:
        transport.logger.removeHandler(handler)
        transport.close()


@pytest.mark.parametrize(("kind", "name"), _paramiko_rows(), ids=lambda v: str(v))
async def test_paramiko(
    interop_server: RunningServer, client_key: ClientKey, kind: str, name: str
) -> None:
    require_module("paramiko")
    output, status, negotiated = await trio.to_thread.run_sync(
        _paramiko_exec, interop_server.port, str(client_key.path), kind, name
    )
    assert (output, status) == (b"ok\n", 3)
    if kind in ("cipher", "mac", "host_key"):
        assert negotiated == name


async def test_paramiko_defaults(default_server: RunningServer, client_key: ClientKey) -> None:
    """paramiko 5's own preferences against trissh's defaults: mlkem768x25519 first."""
    require_module("paramiko")
    # constraints.txt pins a paramiko that prefers it; an older one would make this vacuous.
    assert paramiko.Transport._preferred_kex[0] == "mlkem768x25519-sha256", paramiko.__version__
    output, status, engine = await trio.to_thread.run_sync(
        _paramiko_exec, default_server.port, str(client_key.path), "defaults", ""
    )
    assert (output, status) == (b"ok\n", 3)
    assert engine == "['mlkem768x25519-sha256']", engine


# -- asyncssh ---------------------------------------------------------------------------------


def _asyncssh_rows() -> list[tuple[str, str]]:
    if asyncssh is None:
        return [("missing", "asyncssh")]
    encryption, kex, mac, public_key = (
        importlib.import_module(f"asyncssh.{module}")
        for module in ("encryption", "kex", "mac", "public_key")
    )

    def names(getter: Callable[[], list[bytes]]) -> list[str]:
        return [name.decode() for name in getter()]

    return [
        *_rows(names(kex.get_kex_algs), "kex"),
        *_rows(names(encryption.get_encryption_algs), "cipher"),
        *_rows(names(mac.get_mac_algs), "mac"),
        *_rows(names(public_key.get_public_key_algs), "host_key"),
    ]


def _asyncssh_exec(port: int, key_path: str, kind: str, name: str) -> tuple[str, int, str]:
    assert asyncssh is not None
    options: dict[str, Any] = {}
    if kind == "kex":
        options["kex_algs"] = [name]
    elif kind == "cipher":
        options["encryption_algs"] = [name]
    elif kind == "mac":
        options["encryption_algs"] = ["aes128-ctr"]
        options["mac_algs"] = [name]
    elif kind == "host_key":
        options["server_host_key_algs"] = [name]

    async def run() -> tuple[str, int, str]:
        async with asyncssh.connect(
            "127.0.0.1",
            port,
            username="alice",
            client_keys=[key_path],
            known_hosts=None,
            agent_path=None,
            connect_timeout=20,
            **options,
        ) as connection:
            result = await connection.run("echo ok; exit 3", timeout=20)
            assert result.exit_status is not None, "no exit-status from the server"
            return str(result.stdout), result.exit_status, ""

    return asyncio.run(run())


@pytest.mark.parametrize(("kind", "name"), _asyncssh_rows(), ids=lambda v: str(v))
async def test_asyncssh(
    interop_server: RunningServer, client_key: ClientKey, kind: str, name: str
) -> None:
    require_module("asyncssh")
    output, status, _ = await trio.to_thread.run_sync(
        _asyncssh_exec, interop_server.port, str(client_key.path), kind, name
    )
    assert (output, status) == ("ok\n", 3)


async def test_asyncssh_defaults(default_server: RunningServer, client_key: ClientKey) -> None:
    require_module("asyncssh")
    output, status, _ = await trio.to_thread.run_sync(
        _asyncssh_exec, default_server.port, str(client_key.path), "defaults", ""
    )
    assert (output, status) == ("ok\n", 3)
