"""Which authorized_keys line decides, as sshd: a line whose ``from=`` or ``expiry-time``
refuses the connection is skipped and a later line for the same key may still let it in;
a key's ``command=`` and its certificate's ``force-command`` must agree."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest

from trissh.auth.policy import LoginRequest
from trissh.backend.memory import MemoryBackend
from trissh.config import load_config
from trissh.protocol import parse_public_key
from trissh.protocol.certificates import parse_certificate
from trissh.server.build import build_context
from trissh.server.state import ServerContext

from ..support import needs

pytestmark = needs("ssh-keygen")

REQUEST = LoginRequest("alice", "192.0.2.7")


def keygen(*args: str) -> None:
    subprocess.run(["ssh-keygen", "-q", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("key_lines")
    for name in ("user", "ca"):
        keygen("-t", "ed25519", "-N", "", "-f", str(directory / name))
    keygen(
        "-s", str(directory / "ca"), "-I", "shell", "-n", "alice", "-O", "force-command=/bin/sh",
        str(directory / "user.pub"),
    )  # fmt: skip
    return directory


def context(tmp_path: Path, keys: list[str], **settings: Any) -> ServerContext:
    """``keys`` as the global authorized_keys file, read before the user's own list."""
    path = tmp_path / "authorized_keys"
    path.write_text("".join(line + "\n" for line in keys))
    config = load_config(
        None, {"host_keys": [str(tmp_path / "host_key")], "authorized_keys": str(path), **settings}
    )
    return build_context(config, MemoryBackend())


def line(path: Path, options: str = "") -> str:
    return f"{options} {path.read_text().strip()}".strip()


async def test_a_line_refusing_the_address_gives_way_to_a_later_line(
    made: Path, tmp_path: Path
) -> None:
    key = parse_public_key(base64.b64decode((made / "user.pub").read_text().split()[1]))
    restricted = line(made / "user.pub", 'from="10.0.0.0/8"')
    ctx = context(
        tmp_path, [restricted], users={"alice": {"authorized_keys": [line(made / "user.pub")]}}
    )
    decision = await ctx.auth.publickey(REQUEST, key)
    assert decision.ok, decision.reason
    expired = line(made / "user.pub", 'expiry-time="20000101"')
    ctx = context(tmp_path, [expired, line(made / "user.pub", 'command="echo later"')])
    decision = await ctx.auth.publickey(REQUEST, key)
    assert decision.ok, decision.reason
    assert decision.grant.forced_command == "echo later"
    ctx = context(tmp_path, [restricted])  # no other line: the first refusal says why
    decision = await ctx.auth.publickey(REQUEST, key)
    assert (decision.ok, decision.reason) == (False, "key not allowed from this address")


async def test_a_cas_command_and_its_certificates_force_command_must_agree(
    made: Path, tmp_path: Path
) -> None:
    cert = parse_certificate(base64.b64decode((made / "user-cert.pub").read_text().split()[1]))
    ca = (made / "ca.pub").read_text().strip()
    ctx = context(tmp_path, [f'cert-authority,command="/usr/bin/backup" {ca}'])
    decision = await ctx.auth.publickey(REQUEST, cert.public_key, cert)
    assert not decision.ok
    assert "forced command options do not match" in decision.reason
    ctx = context(tmp_path, [f'cert-authority,command="/bin/sh" {ca}'])
    decision = await ctx.auth.publickey(REQUEST, cert.public_key, cert)
    assert decision.ok, decision.reason
    assert decision.grant.forced_command == "/bin/sh"
