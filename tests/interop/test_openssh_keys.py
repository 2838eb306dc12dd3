"""Real OpenSSH logins with keys in the formats and states of issue 23: a key exported with
``ssh-keygen -e`` (RFC 4716) in an authorized keys file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from trissh.backend.memory import MemoryBackend

from ..support import make_context, needs_ssh, run_ssh, start_server

pytestmark = [
    needs_ssh,
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen"),
]


def keygen(*args: str) -> str:
    return subprocess.run(
        ["ssh-keygen", "-q", *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.mark.parametrize("spec", [["-t", "ed25519"], ["-t", "ecdsa"], ["-t", "rsa", "-b", "3072"]])
async def test_a_key_exported_as_rfc4716_logs_in(
    nursery: trio.Nursery, tmp_path: Path, spec: list[str]
) -> None:
    key = tmp_path / "id"
    keygen(*spec, "-N", "", "-f", str(key))
    authorized = tmp_path / "authorized_keys"
    authorized.write_text("# exported with ssh-keygen -e\n" + keygen("-e", "-f", f"{key}.pub"))
    assert "BEGIN SSH2 PUBLIC KEY" in authorized.read_text()
    ctx = make_context(MemoryBackend(), authorized, tmp_path / "host_key")
    server = await start_server(nursery, ctx)
    result = await run_ssh(server.port, key, "echo in")
    assert (result.returncode, result.stdout) == (0, b"in\n"), result.stderr
    other = tmp_path / "other"
    keygen("-t", "ed25519", "-N", "", "-f", str(other))
    refused = await run_ssh(server.port, other, "echo in")
    assert refused.returncode == 255
    await server.stop()
