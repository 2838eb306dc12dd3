"""`trissh doctor` reports how many containers the host allows at once (issue 19), against
the real podman service and against a second one that keeps podman's default of a kernel
session keyring per container, the cause of runc's "disk quota exceeded" past ~200."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support import require, require_binary
from .test_doctor import _doctor

pytestmark = pytest.mark.podman

PODMAN_USER = "trissh-podman"
RUNDIR = Path("/run/trissh-podman")


def _lines(output: str, name: str) -> list[str]:
    return [line for line in output.splitlines() if f"] {name}: " in line]


def test_doctor_reports_each_ceiling_and_the_lowest(
    podman_url: str, authorized_keys: Path, tmp_path: Path
) -> None:
    """With scripts/setup-host.sh's podman (keyring = false) the keyring is no limit, and
    every other ceiling says how many containers it allows and how to raise it."""
    result = _doctor(podman_url, authorized_keys, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    keyring = _lines(result.stdout, "keyring")
    assert len(keyring) == 1, result.stdout
    assert keyring[0].startswith("[ok  ] keyring: no kernel key per container"), keyring
    for name in ("subordinate ids", "processes", "podman locks", "memory", "open files"):
        assert len(_lines(result.stdout, name)) == 1, (name, result.stdout)
    lowest = _lines(result.stdout, "containers at once")
    assert len(lowest) == 1, result.stdout
    assert " more, bounded by " in lowest[0], lowest


@contextlib.contextmanager
def _podman_service(conf: str) -> Iterator[str]:
    """A second podman API service as the podman user, configured by ``conf`` only (its
    own socket; same storage); stopped and its files removed on the way out."""
    require(os.geteuid() == 0, "root", "run the podman tests as root (scripts/nox -s ci)")
    require_binary("runuser")
    try:
        account = pwd.getpwnam(PODMAN_USER)
    except KeyError:
        pytest.fail(f"no user {PODMAN_USER}: run scripts/setup-host.sh")
    name = f"test-keyring-{secrets.token_hex(4)}"
    conf_path, sock_path = RUNDIR / f"{name}.conf", RUNDIR / f"{name}.sock"
    conf_path.write_text(conf)
    conf_path.chmod(0o644)
    env = [
        "env", "-i", f"HOME={account.pw_dir}", f"XDG_RUNTIME_DIR={RUNDIR / 'xdg'}",
        f"CONTAINERS_CONF={conf_path}", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
    ]  # fmt: skip
    process = subprocess.Popen(
        ["runuser", "-u", PODMAN_USER, "--", *env, "podman", "system", "service",
         "--time=0", f"unix://{sock_path}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _answers(sock_path):
            assert process.poll() is None, "the second podman service exited"
            assert time.monotonic() < deadline, "the second podman service did not answer"
            time.sleep(0.1)
        yield f"unix://{sock_path}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)
        for path in (conf_path, sock_path):
            path.unlink(missing_ok=True)


def _answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(path))
            sock.sendall(b"GET /v4.0.0/libpod/_ping HTTP/1.0\r\n\r\n")
            return b" 200 " in sock.recv(64)[:16]
    except OSError:
        return False


def test_doctor_counts_the_keyring_quota_when_podman_makes_a_keyring_per_container(
    podman_url: str, authorized_keys: Path, tmp_path: Path
) -> None:
    """podman's own default (keyring = true): with a user namespace per container (trissh's
    default) each container's key is charged to its own root, so the quota is no limit;
    sharing the podman user's ids (userns_size = 0), doctor measures the key each container
    costs, says how many more containers the user's key quota allows, and how to lift it."""
    conf = '[engine]\nruntime = "runc"\n\n[containers]\nkeyring = true\n'
    shared = tmp_path / "shared-ids.toml"
    shared.write_text("[container]\nuserns_size = 0\n")
    with _podman_service(conf) as url:
        own = _doctor(url, authorized_keys, tmp_path)
        result = _doctor(url, authorized_keys, tmp_path, "--config", str(shared))
    keyring = _lines(own.stdout, "keyring")
    assert len(keyring) == 1, own.stdout + own.stderr
    assert "charged to the container's own root" in keyring[0], keyring
    assert keyring[0].startswith("[ok  ]"), keyring
    assert "not a limit" in keyring[0], keyring

    keyring = _lines(result.stdout, "keyring")
    assert len(keyring) == 1, result.stdout + result.stderr
    assert "a session keyring per container (1 key)" in keyring[0], keyring
    assert "kernel.keys.maxkeys = " in keyring[0], keyring
    assert "more containers can start" in keyring[0], keyring
    fix = result.stdout.split(keyring[0], 1)[1].splitlines()[1]
    assert "keyring = false" in fix, fix
    assert "kernel.keys.maxkeys" in fix, fix
