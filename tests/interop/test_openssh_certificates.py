"""OpenSSH user certificates made with `ssh-keygen -s`, offered by the real `ssh` client."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from trissh.backend.memory import MemoryBackend

from ..support import RunningServer, make_context, needs, run_ssh, start_server

pytestmark = [needs("ssh", "ssh-keygen"), pytest.mark.interop]


def keygen(*args: str) -> None:
    subprocess.run(["ssh-keygen", "-q", *args], check=True, capture_output=True)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    path = tmp_path / "ca"
    keygen("-t", "ed25519", "-N", "", "-f", str(path))
    return path


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    path = tmp_path / "other_ca"
    keygen("-t", "ed25519", "-N", "", "-f", str(path))
    return path


def certified(tmp_path: Path, ca: Path, name: str, *sign_options: str) -> Path:
    """A fresh user key with its certificate (``NAME-cert.pub``) beside it."""
    key = tmp_path / name
    keygen("-t", "ed25519", "-N", "", "-f", str(key))
    keygen("-s", str(ca), "-I", f"{name}@example", *sign_options, str(key) + ".pub")
    return key


@pytest.fixture
async def server(
    nursery: trio.Nursery, tmp_path: Path, ca: Path, other_ca: Path
) -> AsyncIterator[RunningServer]:
    ca_line = (ca.with_suffix(".pub")).read_text().strip()
    other_line = other_ca.with_suffix(".pub").read_text().strip()
    users = {"carol": {"authorized_keys": [f'cert-authority,principals="ops" {other_line}']}}
    ctx = make_context(
        MemoryBackend(), Path(os.devnull), tmp_path / "host_key", users=users,
        **{"auth.trusted_user_ca_keys": [ca_line], "auth.failure_delay": 0},
    )  # fmt: skip
    running = await start_server(nursery, ctx)
    yield running
    await running.stop()


async def test_trusted_ca_certificate_logs_in_as_a_principal(
    server: RunningServer, tmp_path: Path, ca: Path
) -> None:
    key = certified(tmp_path, ca, "alice", "-n", "alice,admin", "-V", "-5m:+1h")
    result = await run_ssh(server.port, key, "echo in", user="alice")
    assert (result.returncode, result.stdout) == (0, b"in\n"), result.stderr
    admin = await run_ssh(server.port, key, "echo in", user="admin")
    assert admin.returncode == 0


async def test_wrong_principal_is_refused(server: RunningServer, tmp_path: Path, ca: Path) -> None:
    key = certified(tmp_path, ca, "alice", "-n", "alice")
    result = await run_ssh(server.port, key, "true", user="mallory")
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr


async def test_expired_certificate_is_refused(
    server: RunningServer, tmp_path: Path, ca: Path
) -> None:
    key = certified(tmp_path, ca, "alice", "-n", "alice", "-V", "-2d:-1d")
    result = await run_ssh(server.port, key, "true", user="alice")
    assert result.returncode == 255


async def test_certificate_from_an_untrusted_ca_is_refused(
    server: RunningServer, tmp_path: Path, other_ca: Path
) -> None:
    """other_ca is trusted only for carol (principals=ops), not server-wide."""
    key = certified(tmp_path, other_ca, "alice", "-n", "alice")
    result = await run_ssh(server.port, key, "true", user="alice")
    assert result.returncode == 255


async def test_cert_authority_line_with_principals(
    server: RunningServer, tmp_path: Path, other_ca: Path
) -> None:
    """carol's authorized_keys trusts other_ca for certificates naming principal ops."""
    key = certified(tmp_path, other_ca, "opskey", "-n", "ops")
    result = await run_ssh(server.port, key, "echo carol", user="carol")
    assert result.stdout == b"carol\n", result.stderr
    not_ops = certified(tmp_path, other_ca, "devkey", "-n", "dev")
    assert (await run_ssh(server.port, not_ops, "true", user="carol")).returncode == 255


async def test_force_command_and_no_pty_from_the_certificate(
    server: RunningServer, tmp_path: Path, ca: Path
) -> None:
    key = certified(
        tmp_path, ca, "alice", "-n", "alice", "-O", "force-command=echo forced", "-O", "no-pty"
    )
    result = await run_ssh(server.port, key, "rm -rf /", user="alice")
    assert result.stdout == b"forced\n", result.stderr
    tty = await run_ssh(server.port, key, "-tt", "true", user="alice")
    assert b"PTY allocation request failed" in tty.stderr


async def test_source_address_option(server: RunningServer, tmp_path: Path, ca: Path) -> None:
    inside = certified(tmp_path, ca, "near", "-n", "alice", "-O", "source-address=127.0.0.0/8")
    outside = certified(tmp_path, ca, "far", "-n", "alice", "-O", "source-address=10.0.0.0/8")
    assert (await run_ssh(server.port, inside, "true", user="alice")).returncode == 0
    assert (await run_ssh(server.port, outside, "true", user="alice")).returncode == 255
