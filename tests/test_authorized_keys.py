"""authorized_keys lines with options (sshd(8) AUTHORIZED_KEYS FILE FORMAT)."""

from __future__ import annotations

import pytest

from trissh.auth.authorized_keys import (
    OptionError,
    parse_authorized_keys,
    parse_line,
    parse_options,
)

from .support import ClientKey


def test_options_with_quotes_commas_and_escapes() -> None:
    options = parse_options(
        'from="10.0.0.0/8,!10.1.2.3",command="echo a,b \\"q\\"",no-pty,'
        'environment="LANG=C.UTF-8",expiry-time="20300101",no-port-forwarding'
    )
    assert options.from_patterns == ("10.0.0.0/8", "!10.1.2.3")
    assert options.command == 'echo a,b "q"'
    assert not options.allow_pty
    assert options.environment == (("LANG", "C.UTF-8"),)
    assert options.expires_at == 1893456000


@pytest.mark.parametrize(
    ("address", "allowed"),
    [("10.9.9.9", True), ("10.1.2.3", False), ("192.168.1.1", False), ("::1", False)],
)
def test_from_patterns(address: str, allowed: bool) -> None:
    """CIDRs, wildcards and negations, as sshd matches them (IP addresses only)."""
    options = parse_options('from="10.0.0.0/8,!10.1.2.3"')
    assert options.allows_source(address) is allowed
    assert parse_options('from="192.168.1.*"').allows_source("192.168.1.77")


def test_restrict_then_pty_reenables_the_terminal() -> None:
    assert not parse_options("restrict").allow_pty
    assert parse_options("restrict,pty").allow_pty


@pytest.mark.parametrize(
    "bad", ['environment="no equals"', 'expiry-time="2030"', "frobnicate", 'command="open']
)
def test_unknown_or_malformed_options_are_errors(bad: str) -> None:
    with pytest.raises(OptionError):
        parse_options(bad)


def test_a_line_with_bad_options_is_skipped_not_half_applied(client_key: ClientKey) -> None:
    """Granting more than the operator wrote is worse than refusing: the line is dropped."""
    text = f"frobnicate {client_key.public_line}\nno-pty {client_key.public_line}\n"
    keys, problems = parse_authorized_keys(text)
    assert [k.line_number for k in keys] == [2]
    assert not keys[0].options.allow_pty
    assert problems[0].line_number == 1
    assert "frobnicate" in problems[0].problem


def test_cert_authority_with_principals(client_key: ClientKey) -> None:
    key = parse_line(f'cert-authority,principals="alice,ops" {client_key.public_line}')
    assert key.options.cert_authority
    assert key.options.principals == ("alice", "ops")
