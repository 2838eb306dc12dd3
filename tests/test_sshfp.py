"""``trissh sshfp``: the SSHFP records of the configured host keys, byte for byte what
``ssh-keygen -r NAME -f key.pub`` prints for the same keys (RFC 4255, 6594, 7479)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from .support import needs, run_module

pytestmark = needs("ssh-keygen")

SPECS = {
    "ed25519": ["-t", "ed25519"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
    "rsa": ["-t", "rsa", "-b", "3072"],
}


@pytest.fixture(scope="module")
def host_keys(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    directory = tmp_path_factory.mktemp("sshfp")
    paths = []
    for name, spec in SPECS.items():
        path = directory / f"ssh_host_{name}_key"
        subprocess.run(["ssh-keygen", "-q", *spec, "-N", "", "-f", str(path)], check=True)
        paths.append(path)
    return paths


def keygen_records(paths: list[Path], host: str) -> str:
    return "".join(
        subprocess.run(
            ["ssh-keygen", "-r", host, "-f", f"{path}.pub"],
            check=True, capture_output=True, text=True,
        ).stdout
        for path in paths
    )  # fmt: skip


def host_key_flags(paths: list[Path]) -> list[str]:
    return [flag for path in paths for flag in ("--host-key", str(path))]


def test_records_equal_ssh_keygen_for_every_key_type(host_keys: list[Path]) -> None:
    result = run_module("sshfp", "--host", "ssh.example.org", *host_key_flags(host_keys))
    assert result.returncode == 0, result.stderr
    assert result.stdout == keygen_records(host_keys, "ssh.example.org")
    assert result.stdout.count("\n") == 2 * len(SPECS)


def test_default_name_is_the_fqdn_and_keys_come_from_the_config_file(
    host_keys: list[Path], tmp_path: Path
) -> None:
    config = tmp_path / "trissh.toml"
    config.write_text(f'host_keys = ["{host_keys[0]}", "{host_keys[-1]}"]\n')
    result = run_module("sshfp", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout == keygen_records([host_keys[0], host_keys[-1]], socket.getfqdn())


def test_a_missing_key_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = run_module("sshfp", "--host", "h", "--host-key", str(missing))
    assert (result.returncode, result.stdout) == (1, "")
    assert f"{missing}: cannot read host key" in result.stderr
    assert not missing.exists()
