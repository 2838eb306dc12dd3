"""``trissh doctor`` checks host certificates and revoked keys as the start does, and warns
about a host certificate close to its end."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from trissh.config import load_config
from trissh.ops import doctor
from trissh.ops.doctor import _check_certificates, _check_revoked_keys

from .support import needs

pytestmark = needs("ssh-keygen")


def keygen(*args: str) -> None:
    subprocess.run(["ssh-keygen", "-q", *args], check=True, capture_output=True)


def test_host_certificates(tmp_path: Path) -> None:
    for name in ("ca", "host"):
        keygen("-t", "ed25519", "-N", "", "-f", str(tmp_path / name))

    def check(validity: str) -> tuple[bool, bool, str]:
        keygen(
            "-s",
            str(tmp_path / "ca"),
            "-I",
            "web",
            "-h",
            "-V",
            validity,
            str(tmp_path / "host.pub"),
        )
        settings = load_config(
            None,
            {"host_keys": [str(tmp_path / "host")],
             "host_certificates": [str(tmp_path / "host-cert.pub")]},
        )  # fmt: skip
        [result] = _check_certificates(settings)
        return result.ok, result.warning, result.detail

    ok, warning, detail = check("-1d:+52w")
    assert (ok, warning) == (True, False)
    assert detail.startswith("'web' by CA SHA256:")
    assert "days left" in detail
    assert check("-1d:+2d")[:2] == (True, True)
    assert check("always:forever")[2].endswith("never expires")
    ok, _, detail = check("20200101:20200102")
    assert not ok
    assert "expired at 2020-01-02" in detail


def test_revoked_keys(tmp_path: Path) -> None:
    keygen("-t", "ed25519", "-N", "", "-f", str(tmp_path / "key"))
    keygen("-k", "-f", str(tmp_path / "krl"), str(tmp_path / "key.pub"))
    settings = load_config(None, {"auth.revoked_keys": str(tmp_path / "krl")})
    [result] = _check_revoked_keys(settings)
    assert (result.ok, result.detail) == (True, "KRL version 0, 1 entries")
    (tmp_path / "krl").write_text((tmp_path / "key.pub").read_text())
    [result] = _check_revoked_keys(settings)
    assert (result.ok, result.detail) == (True, "key list, 1 entries")
    (tmp_path / "krl").write_text("garbage\n")
    [result] = _check_revoked_keys(settings)
    assert not result.ok
    assert result.detail.endswith(":1: not a public key (KEYTYPE BASE64 [COMMENT])")
    assert _check_revoked_keys(load_config(None, {})) == []


def test_a_host_key_in_directories_the_start_will_make_is_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh user's ~/.local/share/trissh does not exist yet, and the start makes it:
    doctor looks at the nearest directory that exists (it looked two levels up only, and
    said FAIL). ``os.access`` answers as for a user who may write only ``tmp_path``: the
    suite runs as root, who may write anywhere."""
    monkeypatch.setattr("trissh.ops.doctor.os.access", lambda path, mode: Path(path) == tmp_path)
    deep = tmp_path / "home" / ".local" / "share" / "trissh" / "ssh_host_ed25519_key"
    [check] = doctor._check_host_keys(load_config(None, {"host_keys": [str(deep)]}))
    assert (check.ok, check.detail) == (True, "missing; will be generated at start")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    [check] = doctor._check_host_keys(load_config(None, {"host_keys": [f"{blocker}/key"]}))
    assert (check.ok, check.detail) == (False, "missing and cannot be created")
    monkeypatch.setattr("trissh.ops.doctor.os.access", lambda path, mode: False)
    [check] = doctor._check_host_keys(load_config(None, {"host_keys": [str(deep)]}))
    assert (check.ok, check.detail) == (False, "missing and cannot be created")
