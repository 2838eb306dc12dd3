"""Password, keyboard-interactive (password + TOTP) and method chains with the real OpenSSH
client, answering prompts through SSH_ASKPASS (no terminal needed), in-process backend."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pyotp
import pytest
import trio

from trissh.auth.passwords import hash_password
from trissh.backend.memory import MemoryBackend

from ..support import (
    SSH,
    ClientKey,
    RunningServer,
    make_context,
    needs_ssh,
    start_server,
    write_ed25519_key,
)

pytestmark = [needs_ssh, pytest.mark.interop]

PASSWORD = "correct horse battery staple"
SECRET = pyotp.random_base32()
ASKPASS = """#!/bin/sh
echo "$1" >>"$(dirname "$0")/asked"
case "$1" in
  *assword*) cat "$(dirname "$0")/password" ;;
  *code*) cat "$(dirname "$0")/code" ;;
  *) echo "unexpected prompt: $1" >&2; exit 1 ;;
esac
"""


def make_askpass(tmp_path: Path, password: str) -> Path:
    """An SSH_ASKPASS script in its own directory that answers password prompts with
    ``password`` (and code prompts with the directory's ``code`` file)."""
    directory = tmp_path / "askpass"
    directory.mkdir()
    script = directory / "askpass.sh"
    script.write_text(ASKPASS)
    script.chmod(0o755)
    (directory / "password").write_text(password + "\n")
    return script


@pytest.fixture
def askpass(tmp_path: Path) -> Path:
    return make_askpass(tmp_path, PASSWORD)


@pytest.fixture
async def server(
    nursery: trio.Nursery, tmp_path: Path, client_key: ClientKey
) -> AsyncIterator[RunningServer]:
    totp = tmp_path / "totp"
    totp.write_text(SECRET)
    totp.chmod(0o600)
    users = {
        "pat": {"password_hash": hash_password(PASSWORD)},
        "tess": {"password_hash": hash_password(PASSWORD), "totp_secret_file": str(totp)},
        "carl": {
            "authorized_keys": [client_key.public_line],
            "password_hash": hash_password(PASSWORD),
            "authentication_methods": ["publickey,password"],
        },
        "nora": {
            "authorized_keys": [
                f'command="echo forced: $SSH_ORIGINAL_COMMAND",no-pty {client_key.public_line}'
            ],
        },
    }
    ctx = make_context(
        MemoryBackend(), Path(os.devnull), tmp_path / "host_key", users=users,
        **{"auth.failure_delay": 0, "limits.max_auth_attempts": 3},
    )  # fmt: skip
    running = await start_server(nursery, ctx)
    yield running
    await running.stop()


async def login(
    server: RunningServer, user: str, askpass: Path, *options: str, command: str = "echo in"
) -> subprocess.CompletedProcess[bytes]:
    assert SSH is not None
    argv = [
        SSH, "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-o", "NumberOfPasswordPrompts=1", "-p", str(server.port), *options,
        f"{user}@127.0.0.1", command,
    ]  # fmt: skip
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}
    env.pop("SSH_AUTH_SOCK", None)
    with trio.fail_after(60):
        return await trio.run_process(
            argv, env=env, stdin=b"", capture_stdout=True, capture_stderr=True, check=False
        )


NO_KEYS = ("-o", "PubkeyAuthentication=no")


async def test_password(server: RunningServer, askpass: Path) -> None:
    result = await login(
        server, "pat", askpass, *NO_KEYS, "-o", "PreferredAuthentications=password"
    )
    assert (result.returncode, result.stdout) == (0, b"in\n"), result.stderr


async def test_wrong_password_is_refused(server: RunningServer, askpass: Path) -> None:
    (askpass.parent / "password").write_text("nope\n")
    result = await login(
        server, "pat", askpass, *NO_KEYS, "-o", "PreferredAuthentications=password"
    )
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr


async def test_too_many_keys_offered_disconnects(
    server: RunningServer, askpass: Path, tmp_path: Path
) -> None:
    """Offering more unauthorized keys than max_auth_attempts (3) ends in a DISCONNECT,
    which OpenSSH reports as "Too many authentication failures", like sshd's MaxAuthTries."""
    keys = [write_ed25519_key(tmp_path / f"stranger{i}") for i in range(4)]
    identities = [arg for key in keys for arg in ("-i", str(key.path))]
    result = await login(
        server, "pat", askpass, "-o", "IdentitiesOnly=yes",
        "-o", "PreferredAuthentications=publickey", *identities,
    )  # fmt: skip
    assert result.returncode == 255
    assert b"Too many authentication failures" in result.stderr, result.stderr


async def test_keyboard_interactive_password_and_totp(server: RunningServer, askpass: Path) -> None:
    """tess: keyboard-interactive asks for the password and a TOTP code."""
    (askpass.parent / "code").write_text(pyotp.TOTP(SECRET).now() + "\n")
    result = await login(
        server, "tess", askpass, *NO_KEYS, "-o", "PreferredAuthentications=keyboard-interactive"
    )
    assert (result.returncode, result.stdout) == (0, b"in\n"), result.stderr


async def test_totp_user_cannot_skip_the_code_with_password(
    server: RunningServer, askpass: Path
) -> None:
    """With a TOTP secret the right password alone does not log in. The failure message
    lists password to every user alike (like an unknown user's, so it reveals nothing), so
    the client does send it: the server refuses it for tess."""
    result = await login(
        server, "tess", askpass, *NO_KEYS, "-o", "PreferredAuthentications=password"
    )
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr
    asked = (askpass.parent / "asked").read_text().splitlines()
    assert asked == ["tess@127.0.0.1's password: "], asked  # the right one was sent


async def test_publickey_then_password_chain(
    server: RunningServer, askpass: Path, client_key: ClientKey
) -> None:
    """carl: authentication_methods = publickey,password — both needed, in that order."""
    with_key = ("-o", "IdentitiesOnly=yes", "-i", str(client_key.path))
    both = await login(server, "carl", askpass, *with_key)
    assert (both.returncode, both.stdout) == (0, b"in\n"), both.stderr
    (askpass.parent / "password").write_text("nope\n")
    key_only = await login(server, "carl", askpass, *with_key)
    assert key_only.returncode == 255
    assert b"Permission denied" in key_only.stderr


async def test_forced_command_from_key_options(
    server: RunningServer, askpass: Path, client_key: ClientKey
) -> None:
    """nora's key says command=...: that runs instead, with SSH_ORIGINAL_COMMAND set."""
    with_key = ("-o", "IdentitiesOnly=yes", "-i", str(client_key.path))
    result = await login(server, "nora", askpass, *with_key, command="rm -rf /")
    assert result.stdout == b"forced: rm -rf /\n", result.stderr


async def test_no_pty_from_key_options(
    server: RunningServer, askpass: Path, client_key: ClientKey
) -> None:
    """nora's key says no-pty: an explicit -tt fails as it does against sshd."""
    with_key = ("-o", "IdentitiesOnly=yes", "-i", str(client_key.path), "-tt")
    result = await login(server, "nora", askpass, *with_key)
    assert result.returncode == 255
    assert b"PTY allocation request failed" in result.stderr


async def test_unknown_user_is_treated_like_a_known_one(
    server: RunningServer, askpass: Path
) -> None:
    """The same methods are offered to a user that does not exist (no enumeration)."""
    result = await login(server, "nobody-here", askpass, *NO_KEYS)
    assert result.returncode == 255
    assert b"Permission denied (publickey,password,keyboard-interactive)" in result.stderr


@pytest.mark.parametrize(("second", "ok"), [("echo one", True), ("echo two", False)])
async def test_a_publickey_chain_whose_keys_force_different_commands_is_refused(
    nursery: trio.Nursery, tmp_path: Path, client_key: ClientKey, askpass: Path,
    second: str, ok: bool,
) -> None:  # fmt: skip
    """``publickey,publickey`` with two keys: their ``command=`` must agree, as sshd's
    sshauthopt_merge ('forced command options do not match'); the same one runs."""
    other = tmp_path / "other"
    await trio.run_process(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], capture_stdout=True
    )
    other_line = other.with_suffix(".pub").read_text().strip()
    users = {
        "dana": {
            "authorized_keys": [
                f'command="echo one" {client_key.public_line}',
                f'command="{second}" {other_line}',
            ],
            "authentication_methods": ["publickey,publickey"],
        }
    }
    ctx = make_context(
        MemoryBackend(), Path(os.devnull), tmp_path / "host_key", users=users,
        **{"auth.failure_delay": 0},
    )  # fmt: skip
    server = await start_server(nursery, ctx)
    result = await login(
        server, "dana", askpass, "-o", "IdentitiesOnly=yes",
        "-i", str(client_key.path), "-i", str(other),
    )  # fmt: skip
    assert result.returncode == (0 if ok else 255), result.stderr
    assert result.stdout == (b"one\n" if ok else b"")
    await server.stop()
