"""``[auth] revoked_keys``: a KRL or a plain key list, refused at every login (the webhook
and certificates included), errors naming the file and line."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest

from trissh.auth.policy import LoginRequest
from trissh.auth.revocation import RevocationError, load_revoked_keys
from trissh.backend.memory import MemoryBackend
from trissh.config import load_config
from trissh.protocol import parse_public_key
from trissh.protocol.certificates import parse_certificate
from trissh.server.build import StartupError, build_context
from trissh.server.state import ServerContext

from ..support import capture_module_log, needs

pytestmark = needs("ssh-keygen")

REQUEST = LoginRequest("alice", "192.0.2.7")


def keygen(*args: str) -> str:
    return subprocess.run(
        ["ssh-keygen", "-q", *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("revocation")
    for name in ("alice", "bob", "ca"):
        keygen("-t", "ed25519", "-N", "", "-f", str(directory / name))
    keygen(
        "-s",
        str(directory / "ca"),
        "-I",
        "bob-cert",
        "-z",
        "42",
        "-n",
        "alice",
        str(directory / "bob.pub"),
    )
    return directory


def blob(path: Path) -> bytes:
    return base64.b64decode(path.read_text().split()[1])


def context(made: Path, tmp_path: Path, revoked: Path, **settings: Any) -> ServerContext:
    authorized = tmp_path / "authorized_keys"
    authorized.write_text((made / "alice.pub").read_text() + (made / "bob.pub").read_text())
    config = load_config(
        None,
        {
            "host_keys": [str(tmp_path / "host_key")],
            "authorized_keys": str(authorized),
            "auth.trusted_user_ca_keys": [(made / "ca.pub").read_text()],
            "auth.revoked_keys": str(revoked),
            **settings,
        },
    )
    return build_context(config, MemoryBackend())


async def verdicts(ctx: ServerContext, made: Path) -> dict[str, bool]:
    cert = parse_certificate(blob(made / "bob-cert.pub"))
    return {
        "alice": (await ctx.auth.publickey(REQUEST, parse_public_key(blob(made / "alice.pub")))).ok,
        "bob": (await ctx.auth.publickey(REQUEST, parse_public_key(blob(made / "bob.pub")))).ok,
        "bob-cert": (await ctx.auth.publickey(REQUEST, cert.public_key, cert)).ok,
    }


async def test_a_krl_revokes_a_key_and_a_certificate(made: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec"
    spec.write_text("serial: 42\n")
    krl = tmp_path / "krl"
    keygen("-k", "-f", str(krl), "-s", str(made / "ca.pub"), str(spec))
    ctx = context(made, tmp_path, krl)
    assert await verdicts(ctx, made) == {"alice": True, "bob": True, "bob-cert": False}
    keygen("-k", "-u", "-f", str(krl), str(made / "alice.pub"))
    ctx = context(made, tmp_path, krl)
    assert await verdicts(ctx, made) == {"alice": False, "bob": True, "bob-cert": False}
    cert = parse_certificate(blob(made / "bob-cert.pub"))
    decision = await ctx.auth.publickey(REQUEST, cert.public_key, cert)
    assert decision.reason == "revoked: certificate serial 42 revoked"


async def test_a_plain_list_in_either_format(made: Path, tmp_path: Path) -> None:
    listed = tmp_path / "revoked"
    listed.write_text("# revoked\n" + keygen("-e", "-f", str(made / "alice.pub")))
    assert await verdicts(context(made, tmp_path, listed), made) == {
        "alice": False, "bob": True, "bob-cert": True,
    }  # fmt: skip
    listed.write_text((made / "bob-cert.pub").read_text())  # a certificate: its key
    assert await verdicts(context(made, tmp_path, listed), made) == {
        "alice": True, "bob": False, "bob-cert": False,
    }  # fmt: skip
    listed.write_text((made / "ca.pub").read_text())  # a CA: its certificates
    assert await verdicts(context(made, tmp_path, listed), made) == {
        "alice": True, "bob": True, "bob-cert": False,
    }  # fmt: skip


async def test_the_webhook_cannot_let_a_revoked_key_in(made: Path, tmp_path: Path) -> None:
    """Revocation comes first: no webhook is asked (its URL does not even exist)."""
    listed = tmp_path / "revoked"
    listed.write_text((made / "alice.pub").read_text())
    ctx = context(made, tmp_path, listed, **{"auth.webhook": {"url": "http://192.0.2.1:9"}})
    key = parse_public_key(blob(made / "alice.pub"))
    decision = await ctx.auth.publickey(LoginRequest("mallory", "192.0.2.7"), key)
    assert (decision.ok, decision.reason) == (False, "revoked: key revoked")


def test_the_loaded_file_is_logged(
    made: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = capture_module_log(monkeypatch, "trissh.auth.revocation")
    listed = tmp_path / "revoked"
    listed.write_text((made / "alice.pub").read_text() + (made / "bob.pub").read_text())
    load_revoked_keys(listed)
    assert logs[-1] == {
        "event": "revoked_keys_loaded", "log_level": "info", "path": str(listed),
        "format": "key_list", "krl_version": 0, "entries": 2,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ssh-ed25519 AAAA!!!\n", r":1: not a public key \(KEYTYPE BASE64 \[COMMENT\]\)$"),
        ("# c\n\nssh-rsa {alice}\n", r":3: not a public key"),
        ("no-pty {alice_line}", r":1: not a public key"),
        ("---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n", r":1: RFC 4716 key without an END line$"),
        ("ssh-ed25519-cert-v01@openssh.com {alice}\n", r":1: not a public key"),
    ],
)
def test_a_bad_list_names_the_file_and_line(
    made: Path, tmp_path: Path, content: str, message: str
) -> None:
    alice = blob(made / "alice.pub")
    listed = tmp_path / "revoked"
    listed.write_text(
        content.format(
            alice=base64.b64encode(alice).decode(), alice_line=(made / "alice.pub").read_text()
        )
    )
    with pytest.raises(RevocationError, match=f"^{listed}{message}"):
        load_revoked_keys(listed)


def test_an_unusable_file_stops_the_start(made: Path, tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"nope: cannot read revoked keys: No such file"):
        context(made, tmp_path, tmp_path / "nope")
    broken = tmp_path / "krl"
    broken.write_bytes(b"SSHKRL\n\x00\x00\x00\x00\x02")
    with pytest.raises(StartupError, match=rf"^{broken}: invalid KRL: unsupported KRL format"):
        context(made, tmp_path, broken)
