"""FIDO security keys with the real OpenSSH client. There is no hardware key here: the
client's ``SecurityKeyProvider`` is ``sk_soft.c``, a software authenticator built for these
tests (OpenSSH's own regress suite does the same with its sk-dummy). ``ssh-keygen -w``
enrols ``ed25519-sk`` and ``ecdsa-sk`` keys with it, and ``ssh`` signs through it, so the
key files, the signatures and the client's PIN prompt are OpenSSH's own; the flags the
"key" returns can be forced (``TRISSH_SK_FLAGS``) to play a key nobody touched."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import trio

from trissh.backend.memory import MemoryBackend

from ..support import (
    RunningServer,
    capture_module_log,
    make_context,
    needs,
    require,
    require_binary,
    ssh_argv,
    start_server,
)

pytestmark = [
    needs("ssh", "ssh-keygen"),
    pytest.mark.interop,
]

SOURCE = Path(__file__).with_name("sk_soft.c")


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sk_soft.c built as a shared library (needs gcc and libssl-dev: setup-host.sh)."""
    gcc = require_binary("gcc")
    library = tmp_path_factory.mktemp("sk_provider") / "sk_soft.so"
    built = subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(library),
         str(SOURCE), "-lcrypto"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    require(
        built.returncode == 0,
        f"OpenSSL headers to build {SOURCE.name} ({built.stderr[-300:]})",
        "run scripts/setup-host.sh as root (apt-get install libssl-dev)",
    )
    return library


def enrol(provider: Path, path: Path, kind: str, *options: str) -> Path:
    """``ssh-keygen -t KIND-sk -w provider``: a key file whose handle only sk_soft reads."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", f"{kind}-sk", "-w", str(provider), "-N", "", "-C", path.name,
         *options, "-f", str(path)],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def keys(provider: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("sk_keys")
    made = {
        "ed25519": enrol(provider, directory / "ed25519", "ed25519"),
        "ecdsa": enrol(provider, directory / "ecdsa", "ecdsa"),
        "untouched": enrol(provider, directory / "untouched", "ed25519", "-O", "no-touch-required"),
        "pin": enrol(provider, directory / "pin", "ecdsa", "-O", "verify-required"),
        "certified": enrol(provider, directory / "certified", "ed25519"),
    }
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / "ca")], check=True
    )
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(directory / "ca"), "-I", "sk-cert", "-n", "alice",
         str(directory / "certified.pub")],
        check=True, capture_output=True,
    )  # fmt: skip
    askpass = directory / "askpass"
    askpass.write_text("#!/bin/sh\necho 123456\n")  # the "PIN" OpenSSH asks for
    askpass.chmod(0o755)
    return made | {"ca": directory / "ca", "askpass": askpass}


def line(path: Path, options: str = "") -> str:
    return options + Path(f"{path}.pub").read_text()


def authorize(keys: dict[str, Path], directory: Path) -> tuple[Path, str]:
    """An authorized_keys file for the keys, with their options, and the CA's line."""
    authorized = directory / "authorized_keys"
    authorized.write_text(
        line(keys["ed25519"])
        + line(keys["ecdsa"])
        + line(keys["untouched"], "no-touch-required ")
        + line(keys["pin"], "verify-required ")
    )
    return authorized, Path(f"{keys['ca']}.pub").read_text()


@pytest.fixture
async def server(
    nursery: trio.Nursery, keys: dict[str, Path], tmp_path: Path
) -> AsyncIterator[RunningServer]:
    authorized, ca = authorize(keys, tmp_path)
    ctx = make_context(
        MemoryBackend(), authorized, tmp_path / "host_key",
        **{"auth.trusted_user_ca_keys": [ca], "auth.failure_delay": 0},
    )  # fmt: skip
    running = await start_server(nursery, ctx)
    yield running
    await running.stop()


async def login(
    port: int, provider: Path, keys: dict[str, Path], name: str, flags: int | None = None
) -> subprocess.CompletedProcess[bytes]:
    argv = ssh_argv(port, keys[name], "echo in")
    argv[1:1] = ["-o", f"SecurityKeyProvider={provider}"]
    env = {**os.environ, "SSH_ASKPASS": str(keys["askpass"]), "SSH_ASKPASS_REQUIRE": "force"}
    env.pop("TRISSH_SK_FLAGS", None)
    if flags is not None:
        env["TRISSH_SK_FLAGS"] = str(flags)
    with trio.fail_after(60):
        return await trio.run_process(
            argv, env=env, capture_stdout=True, capture_stderr=True, check=False, stdin=b""
        )


class AuthLog:
    """The auth_succeeded and auth_failed lines of the server (two modules log them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._logs = [
            capture_module_log(monkeypatch, module)
            for module in ("trissh.connection.driver", "trissh.connection.handshake")
        ]

    def events(self, name: str) -> list[MutableMapping[str, Any]]:
        return [entry for log in self._logs for entry in log if entry["event"] == name]


@pytest.fixture
def auth_log(monkeypatch: pytest.MonkeyPatch) -> AuthLog:
    return AuthLog(monkeypatch)


def reasons(log: AuthLog) -> list[str]:
    return [str(entry["reason"]) for entry in log.events("auth_failed")]


@pytest.mark.parametrize("name", ["ed25519", "ecdsa", "certified"])
async def test_a_touched_security_key_logs_in(
    server: RunningServer,
    provider: Path,
    keys: dict[str, Path],
    name: str,
    auth_log: AuthLog,
) -> None:
    result = await login(server.port, provider, keys, name)
    assert (result.returncode, result.stdout) == (0, b"in\n"), result.stderr
    [succeeded] = auth_log.events("auth_succeeded")
    assert succeeded["security_key_flags"] == "0x01"
    assert succeeded["security_key_counter"] == str(0x01020304)


@pytest.mark.parametrize("name", ["ed25519", "ecdsa", "certified"])
async def test_an_untouched_signature_is_refused(
    server: RunningServer,
    provider: Path,
    keys: dict[str, Path],
    name: str,
    auth_log: AuthLog,
) -> None:
    result = await login(server.port, provider, keys, name, flags=0)
    assert (result.returncode, result.stdout) == (255, b"")
    assert "security key signature without user presence (no touch)" in reasons(auth_log)


async def test_no_touch_required_lets_an_untouched_key_in(
    server: RunningServer, provider: Path, keys: dict[str, Path]
) -> None:
    result = await login(server.port, provider, keys, "untouched")
    assert (result.returncode, result.stdout) == (0, b"in\n"), result.stderr


async def test_verify_required_wants_the_pin(
    server: RunningServer,
    provider: Path,
    keys: dict[str, Path],
    auth_log: AuthLog,
) -> None:
    """The client asks for the PIN (askpass answers) and the key reports verification;
    the same key reporting a touch but no verification is refused."""
    result = await login(server.port, provider, keys, "pin")
    assert (result.returncode, result.stdout) == (0, b"in\n"), result.stderr
    refused = await login(server.port, provider, keys, "pin", flags=0x01)
    assert refused.returncode == 255
    assert "security key signature without user verification" in reasons(auth_log)
