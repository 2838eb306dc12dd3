"""Every place trissh reads a public key takes OpenSSH lines and RFC 4716 blocks alike:
users' key lists, the trusted CA list and file; and a bad one is named precisely. Which
authorized_keys line decides, as sshd: a line whose ``from=`` or ``expiry-time`` refuses the
connection gives way to a later line for the same key; a key's ``command=`` and its
certificate's ``force-command`` must agree."""

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
from trissh.server.build import StartupError, build_context
from trissh.server.state import ServerContext

from ..support import needs

pytestmark = needs("ssh-keygen")

REQUEST = LoginRequest("alice", "192.0.2.7")


def keygen(*args: str) -> str:
    return subprocess.run(
        ["ssh-keygen", "-q", *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("key_sources")
    for name in ("user", "ca"):
        keygen("-t", "ed25519", "-N", "", "-f", str(directory / name))
    keygen(
        "-s", str(directory / "ca"), "-I", "alice-cert", "-n", "alice", str(directory / "user.pub")
    )
    return directory


def blob(path: Path) -> bytes:
    return base64.b64decode(path.read_text().split()[1])


def context(tmp_path: Path, **settings: Any) -> ServerContext:
    config = load_config(None, {"host_keys": [str(tmp_path / "host_key")], **settings})
    return build_context(config, MemoryBackend())


async def test_a_users_list_takes_an_rfc4716_block(made: Path, tmp_path: Path) -> None:
    exported = keygen("-e", "-f", str(made / "user.pub"))
    ctx = context(tmp_path, users={"alice": {"authorized_keys": [exported]}})
    decision = await ctx.auth.publickey(REQUEST, parse_public_key(blob(made / "user.pub")))
    assert decision.ok, decision.reason


async def test_the_trusted_ca_file_and_list_take_rfc4716(made: Path, tmp_path: Path) -> None:
    cert = parse_certificate(blob(made / "user-cert.pub"))
    ca_file = tmp_path / "cas"
    ca_file.write_text("# CAs\n" + keygen("-e", "-f", str(made / "ca.pub")))
    for settings in (
        {"auth.trusted_user_ca_keys_file": str(ca_file)},
        {"auth.trusted_user_ca_keys": [keygen("-e", "-f", str(made / "ca.pub"))]},
    ):
        ctx = context(tmp_path, **settings)
        decision = await ctx.auth.publickey(REQUEST, cert.public_key, cert)
        assert decision.ok, decision.reason


def test_bad_entries_name_the_file_or_key_and_line(made: Path, tmp_path: Path) -> None:
    exported = keygen("-e", "-f", str(made / "ca.pub")).replace("AAAA", "AA!A", 1)
    ca_file = tmp_path / "cas"
    ca_file.write_text("# CAs\n" + exported)
    with pytest.raises(StartupError, match=rf"^{ca_file}:4: RFC 4716 key: invalid base64$"):
        context(tmp_path, **{"auth.trusted_user_ca_keys_file": str(ca_file)})
    users = {"alice": {"authorized_keys": [(made / "user.pub").read_text(), exported]}}
    with pytest.raises(
        StartupError,
        match=r"^users\.alice\.authorized_keys\[2\]: line 3: RFC 4716 key: invalid base64$",
    ):
        context(tmp_path, users=users)


@pytest.mark.parametrize(
    "options", ['from="10.0.0.0/8"', 'principals="bob"', 'restrict,command="/bin/false"']
)
def test_options_on_a_trusted_ca_are_refused_not_ignored(
    made: Path, tmp_path: Path, options: str
) -> None:
    """TrustedUserCAKeys takes bare keys (sshd does not trust a line with options); a
    restriction written there must stop the start, not be dropped while the CA is trusted.
    Restricted CAs are ``cert-authority`` lines in authorized_keys."""
    line = f"{options} {(made / 'ca.pub').read_text()}"
    ca_file = tmp_path / "cas"
    ca_file.write_text(line)
    with pytest.raises(StartupError, match="cert-authority"):
        context(tmp_path, **{"auth.trusted_user_ca_keys_file": str(ca_file)})
    with pytest.raises(StartupError, match="cert-authority"):
        context(tmp_path, **{"auth.trusted_user_ca_keys": [line]})


# -- which line decides, as sshd -----------------------------------------------------------


def with_key_lines(tmp_path: Path, keys: list[str], **settings: Any) -> ServerContext:
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
    key = parse_public_key(blob(made / "user.pub"))
    restricted = line(made / "user.pub", 'from="10.0.0.0/8"')
    own = {"alice": {"authorized_keys": [line(made / "user.pub")]}}
    ctx = with_key_lines(tmp_path, [restricted], users=own)
    decision = await ctx.auth.publickey(REQUEST, key)
    assert decision.ok, decision.reason
    expired = line(made / "user.pub", 'expiry-time="20000101"')
    ctx = with_key_lines(tmp_path, [expired, line(made / "user.pub", 'command="echo later"')])
    decision = await ctx.auth.publickey(REQUEST, key)
    assert decision.ok, decision.reason
    assert decision.grant.forced_command == "echo later"
    ctx = with_key_lines(tmp_path, [restricted])  # no other line: the first refusal says why
    decision = await ctx.auth.publickey(REQUEST, key)
    assert (decision.ok, decision.reason) == (False, "key not allowed from this address")


async def test_a_cas_command_and_its_certificates_force_command_must_agree(
    made: Path, tmp_path: Path
) -> None:
    public = tmp_path / "shell.pub"
    public.write_text((made / "user.pub").read_text())
    keygen("-s", str(made / "ca"), "-I", "shell", "-n", "alice", "-O", "force-command=/bin/sh",
           str(public))  # fmt: skip
    cert = parse_certificate(blob(tmp_path / "shell-cert.pub"))
    ca = (made / "ca.pub").read_text().strip()
    ctx = with_key_lines(tmp_path, [f'cert-authority,command="/usr/bin/backup" {ca}'])
    decision = await ctx.auth.publickey(REQUEST, cert.public_key, cert)
    assert not decision.ok
    assert "forced command options do not match" in decision.reason
    ctx = with_key_lines(tmp_path, [f'cert-authority,command="/bin/sh" {ca}'])
    decision = await ctx.auth.publickey(REQUEST, cert.public_key, cert)
    assert decision.ok, decision.reason
    assert decision.grant.forced_command == "/bin/sh"


async def test_a_cert_authority_line_restricts_a_ca_that_is_also_trusted(
    made: Path, tmp_path: Path
) -> None:
    """sshd reads authorized_keys before TrustedUserCAKeys: a ``cert-authority`` line that
    lets the certificate in brings its restrictions, even when the CA is trusted too."""
    cert = parse_certificate(blob(made / "user-cert.pub"))
    ca = (made / "ca.pub").read_text().strip()
    ctx = with_key_lines(
        tmp_path,
        [f'cert-authority,restrict,command="/bin/false" {ca}'],
        **{"auth.trusted_user_ca_keys": [ca]},
    )
    decision = await ctx.auth.publickey(REQUEST, cert.public_key, cert)
    assert decision.ok, decision.reason
    assert decision.grant.forced_command == "/bin/false"
    assert not decision.grant.allow_pty
    # A line that refuses (from= elsewhere) gives way to the trusted CA, as in sshd.
    ctx = with_key_lines(
        tmp_path,
        [f'cert-authority,from="10.0.0.0/8",command="/bin/false" {ca}'],
        **{"auth.trusted_user_ca_keys": [ca]},
    )
    decision = await ctx.auth.publickey(REQUEST, cert.public_key, cert)
    assert decision.ok, decision.reason
    assert decision.grant.forced_command is None


async def test_every_certificate_login_is_restricted(made: Path, tmp_path: Path) -> None:
    """What a restricted login may not do (add keys without its restrictions, RFC 4819
    §3.1) holds for every certificate: a key it added would outlive the certificate's
    validity and its revocation by serial or key id (before, a plain certificate valid
    for an hour could store a key that never expires; reviewer), as it holds for a
    critical option or a permit-* left out."""
    ca = (made / "ca.pub").read_text().strip()
    ctx = with_key_lines(tmp_path, [f"cert-authority {ca}"])
    plain = parse_certificate(blob(made / "user-cert.pub"))
    decision = await ctx.auth.publickey(REQUEST, plain.public_key, plain)
    assert decision.ok, decision.reason
    assert decision.grant.restricted
    public = tmp_path / "narrow.pub"
    public.write_text((made / "user.pub").read_text())
    keygen("-s", str(made / "ca"), "-I", "narrow", "-n", "alice", "-O", "no-port-forwarding",
           str(public))  # fmt: skip
    narrow = parse_certificate(blob(tmp_path / "narrow-cert.pub"))
    decision = await ctx.auth.publickey(REQUEST, narrow.public_key, narrow)
    assert decision.ok, decision.reason
    assert decision.grant.restricted


# -- a file deleted and SIGHUP'd ----------------------------------------------------------


async def test_deleting_a_users_keys_file_or_the_ca_file_and_reloading_revokes_them(
    made: Path, tmp_path: Path
) -> None:
    """As with the global authorized_keys file (and sshd's files): deleting a user's
    authorized_keys_file, or the trusted CA file, then SIGHUP revokes what it held. The
    reload was refused as a missing file, and the old policy kept trusting both (cfg
    reviewer). At the start a missing file is still a typo that stops it."""
    from trissh.server.build import reload_context

    keys, cas = tmp_path / "alice_keys", tmp_path / "cas"
    keys.write_text((made / "user.pub").read_text())
    cas.write_text((made / "ca.pub").read_text())
    ctx = context(
        tmp_path,
        users={"alice": {"authorized_keys_file": str(keys)}},
        **{"auth.trusted_user_ca_keys_file": str(cas)},
    )
    key = parse_public_key(blob(made / "user.pub"))
    cert = parse_certificate(blob(made / "user-cert.pub"))
    assert (await ctx.auth.publickey(REQUEST, key)).ok
    assert (await ctx.auth.publickey(REQUEST, cert.public_key, cert)).ok
    keys.unlink()
    cas.unlink()
    reload_context(ctx, lambda: ctx.settings)
    assert ctx.latest is not ctx, "the reload was refused"
    assert not (await ctx.latest.auth.publickey(REQUEST, key)).ok
    assert not (await ctx.latest.auth.publickey(REQUEST, cert.public_key, cert)).ok
    with pytest.raises(StartupError, match="No such file"):
        context(tmp_path, users={"alice": {"authorized_keys_file": str(keys)}})


@pytest.mark.parametrize("loose", ["file", "directory"])
@pytest.mark.parametrize("which", ["global", "user", "ca"])
def test_a_key_file_others_may_write_stops_the_start(
    made: Path, tmp_path: Path, loose: str, which: str
) -> None:
    """As sshd's StrictModes: a key file (or its directory) another local user may write
    lets them add a key, and the global file admits any user name (cfg reviewer: a 0666
    file in a 0777 directory loaded without a word). Readable by others is fine."""
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o755)
    path = directory / "file"
    path.write_text((made / ("ca.pub" if which == "ca" else "user.pub")).read_text())
    path.chmod(0o644)
    every: dict[str, dict[str, Any]] = {
        "global": {"authorized_keys": str(path)},
        "user": {"users": {"alice": {"authorized_keys_file": str(path)}}},
        "ca": {"auth.trusted_user_ca_keys_file": str(path)},
    }
    settings = every[which]
    context(tmp_path, **settings)
    (path if loose == "file" else directory).chmod(0o666 if loose == "file" else 0o777)
    with pytest.raises(StartupError, match=r"writable by group or others .* StrictModes"):
        context(tmp_path, **settings)


def test_group_write_is_fine_in_the_owners_private_group(made: Path, tmp_path: Path) -> None:
    """umask 002 (Ubuntu's and Fedora's for users): 0664 files in 0775 directories, the
    group the owner's own; Debian's sshd accepts them, so does trissh (second reader)."""
    import grp
    import os
    import pwd

    me = pwd.getpwuid(os.getuid())
    if grp.getgrgid(me.pw_gid).gr_name != me.pw_name or grp.getgrgid(me.pw_gid).gr_mem:
        pytest.skip("this user's group is not a private group")
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o775)
    directory.chmod(0o775)
    path = directory / "file"
    path.write_text((made / "user.pub").read_text())
    path.chmod(0o664)
    context(tmp_path, authorized_keys=str(path))


def test_a_key_file_that_is_a_pipe_is_refused_and_dev_null_holds_no_key(tmp_path: Path) -> None:
    """sshd reads only regular files: a FIFO others may write would hand them the keys
    (second reader); /dev/null is the usual 'no keys here'."""
    import os

    fifo = tmp_path / "keys"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(StartupError, match="not a regular file"):
        context(tmp_path, authorized_keys=str(fifo))
    assert context(tmp_path, authorized_keys="/dev/null").auth is not None


def test_a_linked_key_file_is_checked_where_it_lives(made: Path, tmp_path: Path) -> None:
    """A symbolic link to a key file in a directory others may write: the target's
    directory counts (second reader: only the link's was checked)."""
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    (loose / "keys").write_text((made / "user.pub").read_text())
    (loose / "keys").chmod(0o644)
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o755)
    (safe / "keys").symlink_to(loose / "keys")
    with pytest.raises(StartupError, match="writable by group or others"):
        context(tmp_path, authorized_keys=str(safe / "keys"))
