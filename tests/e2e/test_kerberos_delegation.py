"""Kerberos credential delegation into a real container: ``kinit`` at a real MIT KDC, then
``ssh -o GSSAPIDelegateCredentials=yes``; the session finds a ccache at KRB5CCNAME (mode
0600) that is alice's forwarded TGT. The busybox image has no ``klist``: the file's bytes
come back over ssh and the host's ``klist`` reads them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from ..kdc import REALM, SERVICE_HOST, SERVICE_PRINCIPAL, Kdc, start_kdc
from ..support import (
    RunningServer,
    make_context,
    needs_ssh,
    require_binary,
    require_module,
    start_server,
)
from .conftest import podman_backend

pytestmark = [pytest.mark.podman, needs_ssh]

#: Prints the ccache's mode on stderr and its bytes on stdout.
SHOW_CCACHE = 'f="${KRB5CCNAME#FILE:}"; echo "$KRB5CCNAME $(stat -c %a "$f")" >&2; cat "$f"'


@pytest.fixture(scope="module")
def kdc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kdc]:
    with start_kdc(tmp_path_factory.mktemp("kdc"), ("alice",)) as kdc:
        kdc.kinit("alice")
        yield kdc


async def serve(
    nursery: trio.Nursery, podman_url: str, tmp_path: Path, kdc: Kdc, **settings: Any
) -> RunningServer:
    require_module("gssapi")
    kerberos = {"keytab": str(kdc.keytab), "service_principal": SERVICE_PRINCIPAL,
                "realms": [REALM], **settings.pop("kerberos", {})}  # fmt: skip
    ctx = make_context(
        podman_backend(podman_url), Path("/dev/null"), tmp_path / "host_key",
        **{"auth.kerberos": kerberos, "auth.failure_delay": 0, **settings},
    )  # fmt: skip
    return await start_server(nursery, ctx)


@pytest.fixture
def kerberos_env(kdc: Kdc, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in kdc.env.items():
        monkeypatch.setenv(name, value)


async def delegating_ssh(
    server: RunningServer, kdc: Kdc, command: str
) -> subprocess.CompletedProcess[bytes]:
    argv = [
        require_binary("ssh"), "-F", "/dev/null", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "GSSAPIAuthentication=yes",
        "-o", "GSSAPIDelegateCredentials=yes", "-o", f"GSSAPIServerIdentity={SERVICE_HOST}",
        "-o", "PreferredAuthentications=gssapi-with-mic",
        "-p", str(server.port), "alice@127.0.0.1", command,
    ]  # fmt: skip
    with trio.fail_after(90):
        return await trio.run_process(
            argv, env=kdc.client_env("alice"), stdin=b"",
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip


@pytest.mark.usefixtures("kerberos_env")
@pytest.mark.parametrize("mode", ["connection", "session"])
async def test_delegated_ticket_is_a_usable_ccache_in_the_container(
    nursery: trio.Nursery, podman_url: str, tmp_path: Path, kdc: Kdc, mode: str
) -> None:
    server = await serve(
        nursery, podman_url, tmp_path, kdc,
        kerberos={"delegate_credentials": True}, **{"session.execution_mode": mode},
    )  # fmt: skip
    try:
        result = await delegating_ssh(server, kdc, SHOW_CCACHE)
    finally:
        await server.stop()
    assert result.returncode == 0, result.stderr
    name, mode_bits = result.stderr.decode().split()
    assert name.startswith("FILE:/tmp/krb5cc_trissh_"), name
    assert mode_bits == "600"
    ccache = tmp_path / "from-container"
    ccache.write_bytes(result.stdout)
    listing = kdc.klist(ccache)
    assert f"Default principal: alice@{REALM}" in listing, listing
    assert f"krbtgt/{REALM}@{REALM}" in listing, listing


@pytest.mark.usefixtures("kerberos_env")
async def test_without_delegation_enabled_nothing_is_written(
    nursery: trio.Nursery, podman_url: str, tmp_path: Path, kdc: Kdc
) -> None:
    """The client delegates, the configuration does not want it: no file, no variable."""
    server = await serve(nursery, podman_url, tmp_path, kdc)
    try:
        result = await delegating_ssh(
            server, kdc, 'echo "cc=$KRB5CCNAME"; ls /tmp | grep -c krb5cc || true'
        )
    finally:
        await server.stop()
    assert (result.returncode, result.stdout) == (0, b"cc=\n0\n"), result.stderr


#: Waits (bounded) until one ccache of trissh's is left in /tmp, then prints the count and
#: the names left.
ONE_CCACHE_LEFT = (
    "for i in $(seq 50); do n=$(ls /tmp | grep -c ^krb5cc_trissh_); "
    '[ "$n" = 1 ] && break; sleep 0.2; done; echo "$n"; ls /tmp | grep ^krb5cc_trissh_'
)


@pytest.mark.usefixtures("kerberos_env")
async def test_a_workspace_keeps_no_ccache_of_a_connection_that_ended(
    nursery: trio.Nursery, podman_url: str, tmp_path: Path, kdc: Kdc
) -> None:
    """A workspace outlives its connections; their delegated tickets do not (sshd's
    GSSAPICleanupCredentials): the next login finds only its own ccache there."""
    server = await serve(
        nursery, podman_url, tmp_path, kdc,
        kerberos={"delegate_credentials": True},
        **{"session.execution_mode": "workspace", "session.workspace_ttl": 120,
           "workspaces.state_file": str(tmp_path / "workspaces.json"),
           "workspaces.on_shutdown": "remove"},
    )  # fmt: skip
    try:
        first = await delegating_ssh(
            server, kdc, 'f="${KRB5CCNAME#FILE:}"; test -f "$f" && echo "$f"'
        )
        second = await delegating_ssh(server, kdc, f'echo "$KRB5CCNAME"; {ONE_CCACHE_LEFT}')
    finally:
        await server.stop()
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    own, count, *left = second.stdout.decode().split()
    assert first.stdout.decode().strip() != own.removeprefix("FILE:")
    assert (count, left) == ("1", [own.removeprefix("FILE:/tmp/")])
