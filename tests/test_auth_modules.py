"""Passwords (argon2id), TOTP with replay protection, and AuthenticationMethods chains."""

from __future__ import annotations

from pathlib import Path

import pyotp
import pytest

from trissh.auth.chains import MethodChains
from trissh.auth.passwords import check_hash, hash_password, verify_password
from trissh.auth.policy import LoginRequest
from trissh.auth.totp import TotpError, TotpVerifier, load_secret
from trissh.backend.memory import MemoryBackend
from trissh.config import load_config
from trissh.server.build import build_context


async def test_password_round_trip_and_unknown_user() -> None:
    stored = hash_password("correct horse")
    assert check_hash(stored) == stored
    assert await verify_password(stored, "correct horse")
    assert not await verify_password(stored, "wrong")
    assert not await verify_password(None, "correct horse")  # dummy hash, same cost


@pytest.mark.parametrize("bad", ["plaintext", "$2b$12$abc", "$argon2id$garbage"])
def test_only_argon2id_hashes_are_accepted(bad: str) -> None:
    with pytest.raises(ValueError, match="argon2id"):
        check_hash(bad)


def test_totp_accepts_drift_and_refuses_replays() -> None:
    secret = pyotp.random_base32()
    totp = pyotp.TOTP(secret)
    verifier = TotpVerifier(secret)
    now = 1_800_000_000.0
    assert verifier.verify(totp.at(now - 30), now)  # one step of clock drift
    assert not verifier.verify(totp.at(now - 30), now)  # used once: never again
    assert verifier.verify(totp.at(now), now)
    assert not verifier.verify(totp.at(now - 60), now)  # too old
    assert not verifier.verify("12345", now)


def test_totp_secret_files(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text("jbsw y3dp ehpk 3pxp\n")
    good.chmod(0o600)
    assert load_secret(good) == "JBSWY3DPEHPK3PXP"
    good.chmod(0o644)  # as sshd wants of private keys (before: loaded silently; reviewer)
    with pytest.raises(TotpError, match=r"readable or writable by others \(mode 0644\)"):
        load_secret(good)
    short = tmp_path / "short"
    short.write_text("JBSWY3DP")
    short.chmod(0o600)
    with pytest.raises(TotpError, match="80 bits"):
        load_secret(short)
    with pytest.raises(TotpError, match="cannot read"):
        load_secret(tmp_path / "missing")


def test_chains_offer_only_what_comes_next() -> None:
    chains = MethodChains.parse(
        ["publickey,password", "publickey,keyboard-interactive", "password"]
    )
    assert chains.next_methods([]) == ("publickey", "password")
    assert chains.next_methods(["publickey"]) == ("password", "keyboard-interactive")
    assert not chains.complete(["publickey"])
    assert chains.complete(["publickey", "password"])
    assert chains.complete(["password"])
    assert chains.next_methods(["password"]) == ()


async def test_a_reload_keeps_totp_replay_protection(tmp_path: Path) -> None:
    """A code used before a SIGHUP is not taken again after it (nor by the old policy,
    which serves logins already under way): both use one verifier per unchanged secret."""
    secret = pyotp.random_base32()
    path = tmp_path / "totp"
    path.write_text(secret)
    path.chmod(0o600)
    settings = load_config(
        None,
        {
            "host_keys": [str(tmp_path / "host_key")],
            "users": {"tess": {"totp_secret_file": str(path)}},
        },
    )
    old = build_context(settings, MemoryBackend())
    request = LoginRequest("tess", "192.0.2.7")
    code = pyotp.TOTP(secret).now()
    assert (await old.auth.answers(request, [], [code])).ok
    new = build_context(settings, MemoryBackend(), previous=old)
    assert not (await new.auth.answers(request, [], [code])).ok
    assert not (await old.auth.answers(request, [], [code])).ok
