"""Host certificates with real clients: OpenSSH trusts a ``@cert-authority`` line and logs
in without a prompt (and refuses a certificate from another CA); PuTTY and paramiko, which
do not ask for certificates, still log in with the plain keys. And start-up refuses a
certificate that cannot be served, naming the file."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from trissh.backend.memory import MemoryBackend
from trissh.server.hostkeys import load_or_create_host_key

from ..support import (
    ClientKey,
    RunningServer,
    make_context,
    needs,
    require_binary,
    require_module,
    run_module,
    start_server,
)

pytestmark = [
    pytest.mark.interop,
    needs("ssh-keygen"),
]


def keygen(*args: str) -> None:
    subprocess.run(["ssh-keygen", "-q", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Host keys (ed25519, ecdsa, rsa), a host CA and another CA; each host key certified
    by the CA for the names a test client uses."""
    directory = tmp_path_factory.mktemp("host_pki")
    for name, spec in {
        "ca": ["-t", "ed25519"],
        "other_ca": ["-t", "ed25519"],
        "host_ed25519": ["-t", "ed25519"],
        "host_ecdsa": ["-t", "ecdsa", "-b", "256"],
        "host_rsa": ["-t", "rsa", "-b", "3072"],
    }.items():
        keygen(*spec, "-N", "", "-C", name, "-f", str(directory / name))
    for name in ("host_ed25519", "host_ecdsa", "host_rsa"):
        keygen(
            "-s", str(directory / "ca"), "-I", f"{name}.example", "-h",
            "-n", "127.0.0.1,localhost", "-V", "-5m:+1h", str(directory / f"{name}.pub"),
        )  # fmt: skip
    return directory


HOSTS = ("host_ed25519", "host_ecdsa", "host_rsa")


@pytest.fixture
async def server(
    nursery: trio.Nursery, pki: Path, authorized_keys: Path
) -> AsyncIterator[RunningServer]:
    ctx = make_context(
        MemoryBackend(),
        authorized_keys,
        pki / "host_ed25519",
        host_keys=[str(pki / name) for name in HOSTS],
        host_certificates=[str(pki / f"{name}-cert.pub") for name in HOSTS],
    )
    running = await start_server(nursery, ctx)
    yield running
    await running.stop()


def known_hosts(tmp_path: Path, ca_pub: Path) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(f"@cert-authority * {ca_pub.read_text().strip()}\n")
    return path


async def strict_ssh(
    port: int, key: Path, known: Path, *options: str
) -> subprocess.CompletedProcess[bytes]:
    """OpenSSH with nothing but ``known`` to trust, never asking anything."""
    ssh = require_binary("ssh")
    argv = [
        ssh, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-o", "UpdateHostKeys=no",
        "-i", str(key), "-p", str(port), "-v", *options, "alice@127.0.0.1", "echo ok",
    ]  # fmt: skip
    with trio.fail_after(60):
        return await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)


@pytest.mark.parametrize(
    "algorithm",
    [
        "ssh-ed25519-cert-v01@openssh.com",
        "ecdsa-sha2-nistp256-cert-v01@openssh.com",
        "rsa-sha2-512-cert-v01@openssh.com",
        "rsa-sha2-256-cert-v01@openssh.com",
        None,  # the client's own preference
    ],
)
async def test_openssh_trusts_the_host_ca_without_a_prompt(
    server: RunningServer,
    client_key: ClientKey,
    pki: Path,
    tmp_path: Path,
    algorithm: str | None,
) -> None:
    known = known_hosts(tmp_path, pki / "ca.pub")
    options = ["-o", f"HostKeyAlgorithms={algorithm}"] if algorithm else []
    result = await strict_ssh(server.port, client_key.path, known, *options)
    log = result.stderr.decode(errors="replace")
    assert (result.returncode, result.stdout) == (0, b"ok\n"), log[-3000:]
    assert "Server host certificate: " in log
    assert f"Host '[127.0.0.1]:{server.port}' is known and matches" in log
    if algorithm is not None:
        assert f"host key algorithm: {algorithm}" in log
    assert known.read_text().count("\n") == 1  # nothing learnt, nothing asked


async def test_openssh_refuses_a_certificate_from_another_ca(
    server: RunningServer, client_key: ClientKey, pki: Path, tmp_path: Path
) -> None:
    known = known_hosts(tmp_path, pki / "other_ca.pub")
    result = await strict_ssh(server.port, client_key.path, known)
    assert (result.returncode, result.stdout) == (255, b"")
    assert b"Host key verification failed" in result.stderr


@pytest.fixture(scope="module")
def putty_key(client_key: ClientKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    puttygen = require_binary("puttygen")
    path = tmp_path_factory.mktemp("putty_hostcert") / "id.ppk"
    subprocess.run(
        [puttygen, str(client_key.path), "-O", "private", "-o", str(path)],
        check=True, stdin=subprocess.DEVNULL, capture_output=True,
    )  # fmt: skip
    return path


async def test_plink_logs_in_with_a_plain_host_key(
    server: RunningServer, putty_key: Path, pki: Path, tmp_path: Path
) -> None:
    plink = require_binary("plink")
    pins: list[str] = []
    for name in HOSTS:
        pins += ["-hostkey", load_or_create_host_key(pki / name)[0].fingerprint]
    argv = [
        plink, "-ssh", "-batch", "-v", "-noagent", "-P", str(server.port), "-l", "alice",
        "-i", str(putty_key), *pins, "127.0.0.1", "echo ok",
    ]  # fmt: skip
    with trio.fail_after(60):
        result = await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False, stdin=b"",
            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    log = result.stderr.decode(errors="replace")
    assert (result.returncode, result.stdout) == (0, b"ok\n"), log[-3000:]
    assert "Host key fingerprint is:\nssh-ed25519 255 SHA256:" in log.replace("\r", "")
    assert "ssh-ed25519-cert-v01@openssh.com" in log  # offered, and left alone


def _paramiko_plain(paramiko: Any, port: int, key_path: Path) -> tuple[bytes, str]:
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        transport.start_client(timeout=20)
        transport.auth_publickey("alice", paramiko.Ed25519Key.from_private_key_file(str(key_path)))
        channel = transport.open_session(timeout=20)
        channel.exec_command("echo ok")
        return channel.makefile("rb").read(), transport.host_key_type or ""
    finally:
        transport.close()


async def test_paramiko_logs_in_with_a_plain_host_key(
    server: RunningServer, client_key: ClientKey
) -> None:
    paramiko = require_module("paramiko")
    output, host_key_type = await trio.to_thread.run_sync(
        _paramiko_plain, paramiko, server.port, client_key.path
    )
    assert output == b"ok\n"
    assert "cert" not in host_key_type


def test_startup_refuses_an_expired_certificate(pki: Path, tmp_path: Path) -> None:
    """``trissh check-config`` runs every start-up check: the message names the file."""
    pub = tmp_path / "host_ed25519.pub"
    shutil.copy(pki / "host_ed25519.pub", pub)
    keygen("-s", str(pki / "ca"), "-I", "old", "-h", "-V", "20200101:20200201", str(pub))
    cert = tmp_path / "host_ed25519-cert.pub"
    authorized = tmp_path / "authorized_keys"
    authorized.write_text((pki / "ca.pub").read_text())
    result = run_module(
        "check-config", "--host-key", str(pki / "host_ed25519"), "--host-certificate",
        str(cert), "--authorized-keys", str(authorized),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"{cert}: host certificate 'old' unusable: expired at 2020-02-01" in result.stderr
    mismatched = run_module(
        "check-config", "--host-key", str(pki / "host_rsa"), "--host-certificate",
        str(pki / "host_ed25519-cert.pub"), "--authorized-keys", str(authorized),
    )  # fmt: skip
    assert mismatched.returncode == 2
    assert "certifies the ssh-ed25519 key SHA256:" in mismatched.stderr
    assert "which is none of the host keys" in mismatched.stderr
