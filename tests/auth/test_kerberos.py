"""The Kerberos acceptor (trissh/auth/gssapi.py) against a real MIT KDC, with python-gssapi
as the client: contexts, MICs, delegation, the principal rule, and start-up checks."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trissh.auth.gssapi import GssFailure, Kerberos, KerberosError
from trissh.config import KerberosSection
from trissh.protocol.messages.gssapi import KRB5_MECHANISM

from ..kdc import REALM, SERVICE_HOST, SERVICE_PRINCIPAL, Kdc, start_kdc
from ..support import require_module, run_module


@pytest.fixture(scope="module")
def kdc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kdc]:
    with start_kdc(tmp_path_factory.mktemp("kdc"), ("alice", "bob")) as kdc:
        kdc.kinit("alice")
        yield kdc


@pytest.fixture
def gssapi(kdc: Kdc, monkeypatch: pytest.MonkeyPatch) -> Any:
    module = require_module("gssapi")
    for name, value in kdc.client_env("alice").items():
        if name.startswith("KRB5"):
            monkeypatch.setenv(name, value)
    return module


def section(kdc: Kdc, **more: Any) -> KerberosSection:
    settings = {
        "keytab": kdc.keytab,
        "service_principal": SERVICE_PRINCIPAL,
        "realms": [REALM],
        "principals": {f"bob@{REALM}": ["shared"]},
        **more,
    }
    return KerberosSection.model_validate(settings)


def initiator(gssapi: Any, *, delegate: bool = False) -> Any:
    """alice's side: a context for host@trissh.test, as OpenSSH makes it."""
    flags = gssapi.RequirementFlag.mutual_authentication | gssapi.RequirementFlag.integrity
    if delegate:
        flags |= gssapi.RequirementFlag.delegate_to_peer
    return gssapi.SecurityContext(
        name=gssapi.Name(f"host@{SERVICE_HOST}", gssapi.NameType.hostbased_service),
        usage="initiate",
        mech=gssapi.MechType.kerberos,
        flags=flags,
    )


async def test_a_context_its_principal_and_its_mic(kdc: Kdc, gssapi: Any) -> None:
    kerberos = Kerberos(section(kdc))
    client = initiator(gssapi)
    exchange = kerberos.exchange()
    output, established = await exchange.step(client.step())
    assert established
    assert exchange.principal == f"alice@{REALM}"
    client.step(output)  # mutual authentication: the server's AP-REP
    assert client.complete
    data = b"session id and request"
    assert await exchange.verify_mic(data, client.get_signature(data))
    assert not await exchange.verify_mic(data + b"!", client.get_signature(data))
    assert not await exchange.verify_mic(data, b"\x04\x04garbage")
    assert await exchange.delegated_ccache() is None


async def test_a_delegated_ticket_becomes_a_usable_ccache(
    kdc: Kdc, gssapi: Any, tmp_path: Path
) -> None:
    """The bytes are a ccache file klist reads: alice's forwarded TGT."""
    exchange = Kerberos(section(kdc)).exchange()
    await exchange.step(initiator(gssapi, delegate=True).step())
    ccache = await exchange.delegated_ccache()
    assert ccache is not None
    path = tmp_path / "delegated"
    path.write_bytes(ccache)
    listing = kdc.klist(path)
    assert f"Default principal: alice@{REALM}" in listing, listing
    assert f"krbtgt/{REALM}@{REALM}" in listing
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("trissh-ccache-")]


async def test_garbage_and_foreign_tickets_fail_with_a_reason(
    kdc: Kdc, gssapi: Any, tmp_path: Path
) -> None:
    kerberos = Kerberos(section(kdc))
    with pytest.raises(GssFailure) as garbage:
        await kerberos.exchange().step(b"\x60\x03\x06\x01\x00")
    assert garbage.value.reason.startswith("GSS-API: ")
    # A ticket for a service whose key this keytab does not hold.
    other = gssapi.SecurityContext(
        name=gssapi.Name(f"krbtgt/{REALM}@{REALM}", gssapi.NameType.kerberos_principal),
        usage="initiate",
        mech=gssapi.MechType.kerberos,
    )
    with pytest.raises(GssFailure) as foreign:
        await kerberos.exchange().step(other.step())
    assert "krbtgt" in foreign.value.reason or "keytab" in foreign.value.reason.lower()


def test_the_principal_rule(kdc: Kdc, gssapi: Any) -> None:
    """``NAME@REALM`` of a configured realm is NAME; the map adds more; nothing else."""
    kerberos = Kerberos(section(kdc))
    allowed = [
        (f"alice@{REALM}", "alice"),
        (f"bob@{REALM}", "bob"),
        (f"bob@{REALM}", "shared"),
    ]
    refused = [
        (f"alice@{REALM}", "bob"),
        ("alice@OTHER.REALM", "alice"),
        (f"alice/admin@{REALM}", "alice"),
        (f"alice/admin@{REALM}", "alice/admin"),
        (f"alice@{REALM}", "shared"),
        ("alice", "alice"),
        ("", ""),
    ]
    assert all(kerberos.may_log_in(p, u) for p, u in allowed)
    assert not any(kerberos.may_log_in(p, u) for p, u in refused)
    assert kerberos.choose([b"\x06\x01\x01", KRB5_MECHANISM]) == KRB5_MECHANISM
    assert kerberos.choose([b"\x06\x09\x2a\x86\x48\x82\xf7\x12\x01\x02\x02"]) is None


def test_an_unusable_keytab_stops_the_start(kdc: Kdc, gssapi: Any, tmp_path: Path) -> None:
    with pytest.raises(KerberosError, match=r"not found|nonexistent"):
        Kerberos(section(kdc, keytab=tmp_path / "missing.keytab"))
    with pytest.raises(KerberosError, match="host/elsewhere"):
        Kerberos(section(kdc, service_principal=f"host/elsewhere@{REALM}"))
    Kerberos(section(kdc, service_principal=""))  # any principal of the keytab


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"service_principal": "trissh.test"}, "host/NAME@REALM"),
        ({"service_principal": "host/x"}, "host/NAME@REALM"),
        ({"realms": ["A@B"]}, "not a realm"),
        ({"principals": {"alice": ["alice"]}, "realms": []}, "NAME@REALM"),
        ({"realms": [], "principals": {}}, "no one could log in"),
        ({"ccache_directory": "tmp"}, "absolute"),
        ({"ccache_directory": "/tmp/../etc"}, "absolute"),
    ],
)
def test_settings_are_validated(settings: dict[str, Any], problem: str) -> None:
    from pydantic import ValidationError

    base: dict[str, Any] = {"keytab": "/k", "realms": ["R"]}
    with pytest.raises(ValidationError, match=problem):
        KerberosSection.model_validate({**base, **settings})


def test_check_config_names_the_keytab_and_the_principal(
    kdc: Kdc, gssapi: Any, tmp_path: Path
) -> None:
    """``trissh check-config`` acquires the acceptor credentials as a start does."""
    config = tmp_path / "trissh.toml"
    host_key = tmp_path / "host_key"
    for keytab, principal, expected in [
        (tmp_path / "gone.keytab", SERVICE_PRINCIPAL, f"auth.kerberos.keytab {tmp_path}/gone"),
        (kdc.keytab, f"host/other.test@{REALM}", f"host/other.test@{REALM}"),
    ]:
        config.write_text(
            f'host_keys = ["{host_key}"]\n[auth.kerberos]\nkeytab = "{keytab}"\n'
            f'service_principal = "{principal}"\nrealms = ["{REALM}"]\n'
        )
        result = run_module("check-config", "--config", str(config))
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr, result.stderr
    config.write_text(
        f'host_keys = ["{host_key}"]\n[auth.kerberos]\nkeytab = "{kdc.keytab}"\n'
        f'service_principal = "{SERVICE_PRINCIPAL}"\nrealms = ["{REALM}"]\n'
    )
    ok = run_module("check-config", "--config", str(config))
    assert ok.returncode == 0, ok.stderr
