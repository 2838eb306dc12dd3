"""OpenSSH's ``ssh`` against trissh: one row per algorithm both implement (``ssh -Q``
intersected with ours), the defaults, host key rotation, and a long transfer with forced
rekeys."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from trissh.protocol.ciphers import CIPHERS, MACS
from trissh.protocol.kex import KEX_METHODS
from trissh.protocol.keys import HOST_KEY_ALGORITHMS

from ..support import ClientKey, RunningServer, require_binary, run_ssh

pytestmark = pytest.mark.interop


def _query(kind: str) -> list[str]:
    ssh = shutil.which("ssh")
    if ssh is None:
        return []
    result = subprocess.run([ssh, "-Q", kind], capture_output=True, text=True, check=False)
    return result.stdout.split()


def _shared(kind: str, ours: object) -> list[str]:
    theirs = set(_query(kind))
    names = [name for name in ours if name in theirs]  # type: ignore[attr-defined]
    return names or ["(ssh missing)"]


KEX = _shared("kex", KEX_METHODS)
CIPHER_NAMES = _shared("cipher", CIPHERS)
MAC_NAMES = _shared("mac", MACS)
HOST_KEYS = _shared("HostKeyAlgorithms", HOST_KEY_ALGORITHMS)


async def _ssh_ok(server: RunningServer, key: ClientKey, *options: str) -> None:
    result = await run_ssh(server.port, key.path, *options, "-v", "echo ok")
    assert (result.returncode, result.stdout) == (0, b"ok\n"), result.stderr.decode()[-3000:]
    return


@pytest.mark.parametrize("kex", KEX)
async def test_kex(interop_server: RunningServer, client_key: ClientKey, kex: str) -> None:
    await _ssh_ok(interop_server, client_key, "-o", f"KexAlgorithms={kex}")


@pytest.mark.parametrize("cipher", CIPHER_NAMES)
async def test_cipher(interop_server: RunningServer, client_key: ClientKey, cipher: str) -> None:
    await _ssh_ok(interop_server, client_key, "-o", f"Ciphers={cipher}")


@pytest.mark.parametrize("mac", MAC_NAMES)
async def test_mac(interop_server: RunningServer, client_key: ClientKey, mac: str) -> None:
    await _ssh_ok(interop_server, client_key, "-o", "Ciphers=aes128-ctr", "-o", f"MACs={mac}")


@pytest.mark.parametrize("host_key", HOST_KEYS)
async def test_host_key(
    interop_server: RunningServer, client_key: ClientKey, host_key: str
) -> None:
    await _ssh_ok(interop_server, client_key, "-o", f"HostKeyAlgorithms={host_key}")


async def test_defaults_negotiate_post_quantum_kex(
    default_server: RunningServer, client_key: ClientKey
) -> None:
    """OpenSSH 9.2's own defaults pick sntrup761x25519-sha512 (mlkem768x25519 needs OpenSSH
    9.9), ssh-ed25519 and chacha20-poly1305."""
    result = await run_ssh(default_server.port, client_key.path, "-vv", "echo ok")
    assert result.stdout == b"ok\n", result.stderr.decode()[-3000:]
    log = result.stderr.decode()
    # Upstream 9.2 prefers the @openssh.com name; Debian's backport lists the RFC name first.
    assert re.search(r"kex: algorithm: sntrup761x25519-sha512(@openssh\.com)?\r?\n", log), log
    assert "kex: host key algorithm: ssh-ed25519" in log
    assert "cipher: chacha20-poly1305@openssh.com" in log


async def test_update_host_keys_learns_every_key(
    interop_server: RunningServer, client_key: ClientKey, tmp_path: Path
) -> None:
    """hostkeys-00/hostkeys-prove-00 (OpenSSH PROTOCOL §2.5): with UpdateHostKeys=yes the
    client learns the ed25519 key, then proves and records the other four."""
    ssh = require_binary("ssh")
    known = tmp_path / "known_hosts"
    argv = [
        ssh, "-F", "/dev/null", "-v",
        "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={known}",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", "UpdateHostKeys=yes",
        "-o", "HostKeyAlgorithms=ssh-ed25519,rsa-sha2-512,ecdsa-sha2-nistp256,"
        "ecdsa-sha2-nistp384,ecdsa-sha2-nistp521",
        "-o", "IdentitiesOnly=yes",
        "-i", str(client_key.path),
        "-p", str(interop_server.port),
        "alice@127.0.0.1", "true",
    ]  # fmt: skip
    with trio.fail_after(30):
        for _ in range(2):  # the first connection only learns the key it was shown
            result = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False
            )
    log = result.stderr.decode()
    assert result.returncode == 0, log[-3000:]
    key_types = sorted(line.split()[1] for line in known.read_text().splitlines())
    assert key_types == sorted(
        [
            "ssh-ed25519",
            "ssh-rsa",
            "ecdsa-sha2-nistp256",
            "ecdsa-sha2-nistp384",
            "ecdsa-sha2-nistp521",
        ]
    ), log[-3000:]


@pytest.mark.parametrize(
    ("kex", "size"),
    [("curve25519-sha256", 200_000_000), ("sntrup761x25519-sha512", 20_000_000)],
    ids=["200MB-curve25519", "20MB-sntrup761"],
)
async def test_download_with_a_rekey_every_megabyte(
    default_server: RunningServer, client_key: ClientKey, kex: str, size: int
) -> None:
    """-o RekeyLimit=1M forces a rekey per megabyte (~200 of them mid-transfer for 200 MB).
    The post-quantum row is shorter: OpenSSH's reference sntrup761 key generation is slow."""
    result = await run_ssh(
        default_server.port,
        client_key.path,
        "-o", "RekeyLimit=1M",
        "-o", f"KexAlgorithms={kex}",
        "-v",
        f"head -c {size} /dev/zero",
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert len(result.stdout) == size
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(bytes(size)).digest()
    rekeys = result.stderr.count(b"SSH2_MSG_KEXINIT sent")
    assert rekeys > size // 2_000_000, rekeys
