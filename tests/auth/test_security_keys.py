"""The flags a FIDO security key's signature must carry: user presence unless the key's
``no-touch-required`` says otherwise, user verification with ``verify-required``; for
certificates, sshd's merge of the certificate's options and the ``cert-authority`` line's."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fido import PRESENCE, VERIFICATION, SoftwareSecurityKey
from trissh.auth.policy import LoginRequest
from trissh.backend.memory import MemoryBackend
from trissh.config import load_config
from trissh.protocol import parse_public_key
from trissh.protocol.certificates import Certificate, parse_certificate
from trissh.protocol.keys import SecurityKeyAssertion
from trissh.server.build import build_context
from trissh.server.state import ServerContext

from ..support import needs

REQUEST = LoginRequest("alice", "192.0.2.7")


FLAGS = {"none": 0, "touch": PRESENCE, "verified": VERIFICATION, "both": PRESENCE | VERIFICATION}


def context(tmp_path: Path, **settings: Any) -> ServerContext:
    config = load_config(None, {"host_keys": [str(tmp_path / "host_key")], **settings})
    return build_context(config, MemoryBackend())


async def accepted_flags(ctx: ServerContext, key_blob: bytes, cert: Certificate | None) -> set[str]:
    """Which flag combinations the policy lets in (signed requests)."""
    key = cert.public_key if cert is not None else parse_public_key(key_blob)
    found = set()
    for name, flags in FLAGS.items():
        decision = await ctx.auth.publickey(REQUEST, key, cert, SecurityKeyAssertion(flags, 7))
        if decision.ok:
            found.add(name)
            assert decision.log["security_key_flags"] == f"{flags:#04x}"
            assert decision.log["security_key_counter"] == "7"
        else:
            assert "security key signature without user" in decision.reason
    return found


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("", {"touch", "both"}),
        ("no-touch-required ", set(FLAGS)),
        ("verify-required ", {"both"}),
        ("no-touch-required,verify-required ", {"verified", "both"}),
        ("restrict ", {"touch", "both"}),
    ],
)
async def test_authorized_key_options(
    tmp_path: Path, kind: str, options: str, expected: set[str]
) -> None:
    key = SoftwareSecurityKey(kind)  # type: ignore[arg-type]
    ctx = context(tmp_path, users={"alice": {"authorized_keys": [options + key.openssh_line()]}})
    assert await accepted_flags(ctx, key.public_blob, None) == expected


async def test_a_query_needs_no_flags(tmp_path: Path) -> None:
    """PK_OK comes before any signature: the flags are judged on the signed request."""
    key = SoftwareSecurityKey()
    ctx = context(tmp_path, users={"alice": {"authorized_keys": [key.openssh_line()]}})
    decision = await ctx.auth.publickey(REQUEST, parse_public_key(key.public_blob))
    assert decision.ok


needs_keygen = needs("ssh-keygen")


def certificate(tmp_path: Path, key: SoftwareSecurityKey, *options: str) -> Certificate:
    (tmp_path / "user.pub").write_text(key.openssh_line() + "\n")
    if not (tmp_path / "ca").exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ca")], check=True
        )
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(tmp_path / "ca"), "-I", "sk", "-n", "alice", *options,
         str(tmp_path / "user.pub")],
        check=True, capture_output=True,
    )  # fmt: skip
    return parse_certificate(base64.b64decode((tmp_path / "user-cert.pub").read_text().split()[1]))


@needs_keygen
@pytest.mark.parametrize(
    ("cert_options", "line_options", "expected"),
    [
        # trusted through [auth] trusted_user_ca_keys: the certificate alone decides
        ((), None, {"touch", "both"}),
        (("-O", "no-touch-required"), None, set(FLAGS)),
        (("-O", "verify-required"), None, {"both"}),
        # through a cert-authority line: no touch only if both allow it, verify if either
        (("-O", "no-touch-required"), "cert-authority ", {"touch", "both"}),
        ((), "cert-authority,no-touch-required ", {"touch", "both"}),
        (("-O", "no-touch-required"), "cert-authority,no-touch-required ", set(FLAGS)),
        (("-O", "verify-required"), "cert-authority ", {"both"}),
        (("-O", "no-touch-required"), "cert-authority,no-touch-required,verify-required ",
         {"verified", "both"}),
    ],
)  # fmt: skip
async def test_certificate_options(
    tmp_path: Path, cert_options: tuple[str, ...], line_options: str | None, expected: set[str]
) -> None:
    key = SoftwareSecurityKey("ecdsa")
    cert = certificate(tmp_path, key, *cert_options)
    ca_line = (tmp_path / "ca.pub").read_text().strip()
    if line_options is None:
        ctx = context(tmp_path, **{"auth.trusted_user_ca_keys": [ca_line]})
    else:
        ctx = context(tmp_path, users={"alice": {"authorized_keys": [line_options + ca_line]}})
    assert await accepted_flags(ctx, key.public_blob, cert) == expected
