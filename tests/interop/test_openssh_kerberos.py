"""gssapi-with-mic with the real OpenSSH client and a real MIT KDC (tests/kdc.py): ``kinit``,
then ``ssh -o GSSAPIAuthentication=yes`` logs in; principals not allowed the user name are
refused; a delegated ticket is offered to the sessions (KRB5CCNAME). In-process backend:
tests/e2e/test_kerberos_delegation.py checks the ccache inside a real container."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import trio

from trissh.backend.memory import MemoryBackend

from ..kdc import REALM, SERVICE_HOST, SERVICE_PRINCIPAL, Kdc, start_kdc
from ..support import (
    RunningServer,
    capture_module_log,
    make_context,
    needs_ssh,
    require_binary,
    require_module,
    start_server,
)

pytestmark = [needs_ssh, pytest.mark.interop]

PRINCIPALS = ("alice", "bob", "ops/admin")


@pytest.fixture(scope="module")
def kdc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kdc]:
    with start_kdc(tmp_path_factory.mktemp("kdc"), PRINCIPALS) as kdc:
        for principal in PRINCIPALS:
            kdc.kinit(principal)
        yield kdc


def kerberos_settings(kdc: Kdc, **more: Any) -> dict[str, Any]:
    return {
        "keytab": str(kdc.keytab),
        "service_principal": SERVICE_PRINCIPAL,
        "realms": [REALM],
        "principals": {f"ops/admin@{REALM}": ["deploy"]},
        **more,
    }


@pytest.fixture
async def server(
    nursery: trio.Nursery, tmp_path: Path, kdc: Kdc, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RunningServer]:
    require_module("gssapi")
    for name, value in kdc.env.items():
        monkeypatch.setenv(name, value)
    ctx = make_context(
        MemoryBackend(), Path(os.devnull), tmp_path / "host_key",
        **{
            "auth.kerberos": kerberos_settings(kdc, delegate_credentials=True),
            "auth.failure_delay": 0,
        },
    )  # fmt: skip
    running = await start_server(nursery, ctx)
    yield running
    await running.stop()


async def gssapi_ssh(
    server: RunningServer, kdc: Kdc, principal: str | None, user: str, *options: str
) -> subprocess.CompletedProcess[bytes]:
    """``ssh`` with only gssapi-with-mic, holding ``principal``'s ticket (or none)."""
    argv = [
        require_binary("ssh"), "-F", "/dev/null", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "GSSAPIAuthentication=yes",
        "-o", f"GSSAPIServerIdentity={SERVICE_HOST}",
        "-o", "PreferredAuthentications=gssapi-with-mic", "-o", "PubkeyAuthentication=no",
        "-p", str(server.port), *options, f"{user}@127.0.0.1",
        "echo in; echo cc=$KRB5CCNAME",
    ]  # fmt: skip
    env = kdc.client_env(principal or "nobody")
    if principal is None:
        env["KRB5CCNAME"] = f"FILE:{kdc.directory}/no-such-ccache"
    with trio.fail_after(60):
        return await trio.run_process(
            argv, env=env, stdin=b"", capture_stdout=True, capture_stderr=True, check=False
        )


def lines(log: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [line for line in log if line["event"] == event]


async def test_kinit_then_ssh_logs_in(
    server: RunningServer, kdc: Kdc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice@TRISSH.TEST logs in as alice (the realm rule); the log names the principal.
    No delegation asked: no KRB5CCNAME in the session."""
    log = capture_module_log(monkeypatch, "trissh.connection.driver")
    result = await gssapi_ssh(server, kdc, "alice", "alice")
    assert (result.returncode, result.stdout) == (0, b"in\ncc=\n"), result.stderr
    [succeeded] = lines(log, "auth_succeeded")
    assert succeeded["method"] == "gssapi-with-mic"
    assert succeeded["principal"] == f"alice@{REALM}"
    assert "delegated_credentials" not in succeeded


async def test_a_principal_of_another_user_is_refused(
    server: RunningServer, kdc: Kdc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob's valid ticket does not make him alice: refused like any failed login, and the
    operator's log line names the principal and why."""
    log = capture_module_log(monkeypatch, "trissh.connection.handshake")
    result = await gssapi_ssh(server, kdc, "bob", "alice")
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr, result.stderr
    failed = lines(log, "auth_failed")
    assert [line["method"] for line in failed] == ["gssapi-with-mic"], failed
    assert failed[0]["reason"] == f"principal bob@{REALM} may not log in as alice"


async def test_the_explicit_map_and_instance_principals(server: RunningServer, kdc: Kdc) -> None:
    """ops/admin may be deploy (the map) but not ops: the realm rule takes one-component
    principals only, as sshd's default does."""
    mapped = await gssapi_ssh(server, kdc, "ops/admin", "deploy")
    assert (mapped.returncode, mapped.stdout) == (0, b"in\ncc=\n"), mapped.stderr
    unmapped = await gssapi_ssh(server, kdc, "ops/admin", "ops")
    assert unmapped.returncode == 255


async def test_no_ticket_no_login(server: RunningServer, kdc: Kdc) -> None:
    result = await gssapi_ssh(server, kdc, None, "alice")
    assert result.returncode == 255
    assert b"Permission denied (publickey,gssapi-with-mic)" in result.stderr, result.stderr


async def test_delegated_ticket_reaches_the_session(
    server: RunningServer, kdc: Kdc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GSSAPIDelegateCredentials=yes: the session's KRB5CCNAME names the per-connection
    ccache, and the log line says where it went."""
    log = capture_module_log(monkeypatch, "trissh.connection.driver")
    result = await gssapi_ssh(server, kdc, "alice", "alice", "-o", "GSSAPIDelegateCredentials=yes")
    assert result.returncode == 0, result.stderr
    [succeeded] = lines(log, "auth_succeeded")
    path = succeeded["delegated_credentials"]
    assert path.startswith("/tmp/krb5cc_trissh_")
    assert result.stdout == f"in\ncc=FILE:{path}\n".encode()
