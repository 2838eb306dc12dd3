"""authorized_keys lines with options (sshd(8) AUTHORIZED_KEYS FILE FORMAT)."""

from __future__ import annotations

import base64
import time

import pytest

from trissh.auth.authorized_keys import (
    OptionError,
    parse_authorized_keys,
    parse_entry,
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


def test_from_wildcards_ignore_case() -> None:
    """sshd also matches a from= entry as a host name, lowercased: an IPv6 negation written
    in capitals denies (cfg reviewer: it let 2001:db8::5 in)."""
    options = parse_options('from="*,!2001:DB8:*"')
    assert not options.allows_source("2001:db8::5")
    assert options.allows_source("2001:db9::5")
    assert parse_options('from="FE80::*"').allows_source("fe80::1")


def test_restrict_then_pty_reenables_the_terminal() -> None:
    assert not parse_options("restrict").allow_pty
    assert parse_options("restrict,pty").allow_pty


@pytest.mark.parametrize(
    "bad",
    [
        'environment="no equals"',
        'expiry-time="2030"',
        'expiry-time="20250230"',  # digits, but no such day: a refused line, not a crash
        'expiry-time="00000101"',
        "frobnicate",
        'command="open',
        # As sshd's addr_match_list, whose -2 refuses the key: an empty entry (a bare
        # "!" too), a network with host bits set, a mask too long for its family;
        # an empty principals= matches nobody.
        'from=""',
        'from="10.0.0.0/8,"',
        'from="!,*"',
        'from="192.168.1.5/24"',
        'from="!10.0.0.0/33,*"',
        'from="10.0.0.0/33,192.168.0.0/16"',
        'principals=""',
        # sshd refuses these twice on one line
        'command="a",command="b"',
        'from="10.0.0.0/8",from="*"',
        'principals="a",principals="b"',
    ],
)
def test_unknown_or_malformed_options_are_errors(bad: str) -> None:
    with pytest.raises(OptionError):
        parse_options(bad)


@pytest.mark.parametrize(
    ("patterns", "address", "allowed"),
    [
        ("127.0.0.0/8, 10.0.0.0/8", "127.0.0.1", True),  # a spaced entry matches nothing
        ("127.0.0.0/8, 10.0.0.0/8", "10.0.0.1", False),
        ("/129,10.0.0.0/8", "10.0.0.1", True),
        # Not a prefix length: no network, only a (failing) wildcard match, as sshd's
        ("10.0.0.0/255.0.0.0", "10.9.9.9", False),
        # sshd's wildcards are * and ? only: brackets are characters
        ("10.0.0.[0-9]", "10.0.0.5", False),
        ("10.0.0.?", "10.0.0.5", True),
        ("10.*", "10.0.0.5", True),
        ("!10.0.0.5,10.*", "10.0.0.5", False),
        ("10.0.0.5", "10.0.0.5", True),
        ("2001:db8::/32", "2001:db8::1", True),
    ],
)
def test_from_entries_that_match_nothing_do_not_lift_the_restriction(
    patterns: str, address: str, allowed: bool
) -> None:
    """As sshd: an entry that is neither a network nor a match for the address (a space
    after the comma, an empty list) matches nothing; the line stays usable."""
    assert parse_options(f'from="{patterns}"').allows_source(address) is allowed


def test_the_earliest_expiry_time_holds() -> None:
    """As sshd: of several expiry-time options, the earliest."""
    options = parse_options('expiry-time="20200101",expiry-time="20991231"')
    assert options.expired(time.time())


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


def _rfc4716(public_line: str, comment: str = "exported") -> str:
    body = public_line.split()[1]
    lines = [body[i : i + 70] for i in range(0, len(body), 70)]
    return "\n".join(
        ["---- BEGIN SSH2 PUBLIC KEY ----", f'Comment: "{comment}"', *lines,
         "---- END SSH2 PUBLIC KEY ----"]
    )  # fmt: skip


def test_rfc4716_blocks_stand_among_openssh_lines(client_key: ClientKey) -> None:
    text = f"no-pty {client_key.public_line}\n{_rfc4716(client_key.public_line)}\nbogus line\n"
    keys, problems = parse_authorized_keys(text)
    assert [(k.line_number, k.comment, k.options.allow_pty) for k in keys] == [
        (1, "test@trissh", False),
        (2, "exported", True),
    ]
    assert keys[0].blob == keys[1].blob
    assert [(p.line_number, p.problem) for p in problems] == [(6, "no supported key type found")]


def test_a_broken_rfc4716_block_is_a_problem_on_its_line(client_key: ClientKey) -> None:
    block = _rfc4716(client_key.public_line).replace("AAAA", "AA*A", 1)
    keys, problems = parse_authorized_keys(f"{client_key.public_line}\n{block}\n")
    assert len(keys) == 1
    assert [(p.line_number, p.problem) for p in problems] == [(4, "RFC 4716 key: invalid base64")]
    unsupported = _rfc4716("x " + base64.b64encode(b"\x00\x00\x00\x07ssh-dss").decode())
    _, problems = parse_authorized_keys(unsupported)
    assert problems[0].problem.startswith("invalid key: unsupported key type")


def test_a_list_entry_is_one_key_in_either_format(client_key: ClientKey) -> None:
    assert parse_entry(_rfc4716(client_key.public_line)).comment == "exported"
    assert parse_entry(f"restrict {client_key.public_line}").options.allow_pty is False
    with pytest.raises(OptionError, match="more than one key"):
        parse_entry(f"{client_key.public_line}\n{client_key.public_line}")
    with pytest.raises(OptionError, match="no key"):
        parse_entry("# nothing")
    with pytest.raises(OptionError, match="line 3: RFC 4716 key: invalid base64"):
        parse_entry(_rfc4716(client_key.public_line).replace("AAAA", "A*AA", 1))


@pytest.mark.parametrize(
    ("value", "expires_at"),
    [
        ("20300101", 1893456000 - 9 * 3600),  # local time, as sshd's parse_absolute_time
        ("203001010000", 1893456000 - 9 * 3600),
        ("20300101Z", 1893456000),  # UTC when it says so
        ("20300101utc", 1893456000),
        ("20300101000000Z", 1893456000),
    ],
)
def test_expiry_time_is_local_unless_it_says_utc(
    monkeypatch: pytest.MonkeyPatch, value: str, expires_at: int
) -> None:
    """sshd reads expiry-time in the server's time zone, or UTC with a Z/UTC suffix (cfg
    reviewer: read as UTC, a key lived 9 h longer in Tokyo, and the suffixes were refused)."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert parse_options(f'expiry-time="{value}"').expires_at == expires_at
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_forced_command_keeps_its_blanks_and_may_name_a_key_type(client_key: ClientKey) -> None:
    """sshd finds the end of the options by scanning quotes, and keeps a command= byte for
    byte (cfg reviewer: blanks were collapsed, changing the operator's command, and a key
    type word inside the quotes made the whole line refused)."""
    key = parse_line(f"command=\"printf 'a   b\tc'\" {client_key.public_line}")
    assert key.options.command == "printf 'a   b\tc'"
    key = parse_line(f'command="/bin/echo ssh-ed25519 hi" {client_key.public_line}')
    assert key.options.command == "/bin/echo ssh-ed25519 hi"
    key = parse_line(f'no-pty,command="say \\"x  y\\"" {client_key.public_line}')
    assert key.options.command == 'say "x  y"'
    with pytest.raises(OptionError):
        parse_line(f'command="unterminated {client_key.public_line}')


def test_option_names_ignore_case_and_the_first_environment_wins() -> None:
    """sshd compares option names with strncasecmp and keeps the first environment= of a
    name (cfg reviewer: NO-PTY refused the line; the last environment= won)."""
    options = parse_options('NO-PTY,Command="x",environment="A=1",environment="A=2"')
    assert not options.allow_pty
    assert options.command == "x"
    assert options.environment == (("A", "1"),)
