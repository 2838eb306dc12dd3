"""Who may forward where: ``[forwarding]`` narrowed by the login's key options, as sshd."""

from __future__ import annotations

import pytest

from trissh.auth.authorized_keys import OptionError, parse_options
from trissh.auth.policy import Grant
from trissh.channels.forward_policy import ForwardPolicy
from trissh.config import (
    ConfigError,
    DirectionGrant,
    ForwardingGrant,
    ForwardingSection,
    load_config,
)
from trissh.protocol import SocketPath, TcpAddress


def policy(grant: Grant | None = None, **settings: object) -> ForwardPolicy:
    return ForwardPolicy(ForwardingSection.model_validate(settings), grant or Grant())


WEB = TcpAddress(host="localhost", port=8080)
SOCKET = SocketPath(path="/run/app.sock")


def test_everything_is_allowed_by_default() -> None:
    p = policy()
    assert p.refuse_open(WEB) is None
    assert p.refuse_listen(WEB) is None
    assert p.refuse_open(SOCKET) is None
    assert p.refuse_agent() is None


@pytest.mark.parametrize(
    ("setting", "local", "remote"),
    [("yes", True, True), ("local", True, False), ("remote", False, True), ("no", False, False)],
)
def test_allow_tcp_forwarding_directions(setting: str, local: bool, remote: bool) -> None:
    p = policy(allow_tcp_forwarding=setting)
    assert (p.refuse_open(WEB) is None) is local
    assert (p.refuse_listen(WEB) is None) is remote
    assert p.refuse_open(SOCKET) is None  # unix sockets have their own switch


def test_streamlocal_has_its_own_switch() -> None:
    p = policy(allow_streamlocal_forwarding="no")
    assert p.refuse_open(SOCKET) == "unix socket forwarding (local) is not allowed"
    assert p.refuse_listen(SOCKET) is not None
    assert p.refuse_open(WEB) is None


@pytest.mark.parametrize(
    ("entries", "target", "allowed"),
    [
        (("none",), WEB, False),
        (("localhost:8080",), WEB, True),
        (("localhost:8081",), WEB, False),
        (("*:8080",), WEB, True),
        (("localhost:*",), WEB, True),
        (("127.0.0.1:8080",), WEB, False),  # textual, as sshd: no resolution
        (("[::1]:22", "localhost:8080"), WEB, True),
        (("[::1]:22",), TcpAddress(host="::1", port=22), True),
    ],
)
def test_permit_open(entries: tuple[str, ...], target: TcpAddress, allowed: bool) -> None:
    refusal = policy(permit_open=entries).refuse_open(target)
    assert (refusal is None) is allowed
    if not allowed:
        assert refusal == f"{target} is not in permit_open"


@pytest.mark.parametrize(
    ("entries", "allowed"),
    [
        (("any",), True),
        (("none",), False),
        (("localhost:8080",), False),
        (("*:8080",), False),
        (("*:*",), True),
        (("/run/app.sock:*",), True),
    ],
)
def test_permit_open_applies_to_unix_sockets_as_sshd(
    entries: tuple[str, ...], allowed: bool
) -> None:
    """sshd matches a socket path against PermitOpen and permitopen= as a host with no
    port: only an entry with any port (``*``) and that host or ``*`` lets it through, so a
    key limited to one TCP port cannot reach a unix socket instead."""
    refusal = policy(permit_open=entries).refuse_open(SOCKET)
    assert (refusal is None) is allowed
    if not allowed:
        assert refusal == f"{SOCKET} is not in permit_open"
    key = policy(grant_of('permitopen="localhost:8080"'))
    assert key.refuse_open(SOCKET) == f"{SOCKET} is not in permit_open"
    assert key.refuse_listen(SOCKET) is None  # sshd's PermitListen is TCP only


def test_permit_listen_takes_a_bare_port() -> None:
    p = policy(permit_listen=("9000",))
    assert p.refuse_listen(TcpAddress(host="", port=9000)) is None
    assert p.refuse_listen(TcpAddress(host="localhost", port=9001)) is not None


@pytest.mark.parametrize(
    "bad", [("any", "localhost:1"), ("localhost",), ("host:0",), ("host:99999",), (":80",)]
)
def test_bad_permit_entries_are_refused_with_the_key(bad: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match=r"forwarding\.permit_open"):
        load_config(None, {"forwarding.permit_open": list(bad)})


def test_per_user_forwarding_overrides() -> None:
    settings = load_config(
        None,
        {"users": {"alice": {"forwarding": {"allow_tcp_forwarding": "no"}}}},
    )
    assert settings.forwarding_for("alice").allow_tcp_forwarding == "no"
    assert settings.forwarding_for("bob").allow_tcp_forwarding == "yes"


def grant_of(options: str) -> Grant:
    parsed = parse_options(options)
    return Grant(
        allow_port_forwarding=parsed.allow_port_forwarding,
        allow_agent_forwarding=parsed.allow_agent_forwarding,
        permit_open=(parsed.permit_open,) if parsed.permit_open else (),
        permit_listen=(parsed.permit_listen,) if parsed.permit_listen else (),
    )


def test_key_options_narrow_the_settings() -> None:
    assert policy(grant_of("no-port-forwarding")).refuse_open(WEB) == (
        "port forwarding is not allowed for this key"
    )
    assert policy(grant_of("no-port-forwarding")).refuse_listen(SOCKET) is not None
    assert policy(grant_of("no-agent-forwarding")).refuse_agent() is not None
    only_db = grant_of('permitopen="db:5432",permitopen="cache:6379"')
    assert policy(only_db).refuse_open(TcpAddress(host="db", port=5432)) is None
    assert policy(only_db).refuse_open(WEB) is not None
    # the key narrows the settings, it never widens them
    assert (
        policy(only_db, permit_open=("cache:6379",)).refuse_open(TcpAddress(host="db", port=5432))
        is not None
    )
    assert policy(grant_of('permitlisten="8080"')).refuse_listen(WEB) is None
    assert (
        policy(grant_of('permitlisten="8080"')).refuse_listen(TcpAddress(host="localhost", port=9))
        is not None
    )


def test_restrict_turns_everything_off_until_a_later_option_turns_it_on() -> None:
    restricted = parse_options("restrict")
    assert not restricted.allow_port_forwarding
    assert not restricted.allow_agent_forwarding
    assert not restricted.allow_pty
    reopened = parse_options("restrict,port-forwarding")
    assert reopened.allow_port_forwarding
    assert not reopened.allow_agent_forwarding


def test_merged_grants_keep_every_restriction() -> None:
    merged = grant_of('permitopen="a:1"').merged(grant_of("no-agent-forwarding"))
    assert merged.permit_open == (("a:1",),)
    assert not merged.allow_agent_forwarding


@pytest.mark.parametrize("bad", ['permitopen="nohost"', 'permitlisten="x:70000"'])
def test_malformed_permit_options_invalidate_the_line(bad: str) -> None:
    with pytest.raises(OptionError):
        parse_options(bad)


def test_a_connection_may_open_its_sessions_and_forwards_channels() -> None:
    """The protocol core's cap on channels per connection is what the users' limits add up
    to, for the user with the most; each kind keeps its own bound."""
    assert load_config(None, {}).channel_limit() == 10 + 64
    settings = load_config(
        None,
        {
            "session.max_sessions_per_connection": 4,
            "users": {"ci": {"forwarding": {"max_channels": 500}}},
        },
    )
    assert settings.channel_limit() == 4 + 500


def test_a_configuration_servers_directions_go_over_the_users_settings() -> None:
    settings = load_config(
        None,
        {
            "forwarding.allow_streamlocal_forwarding": "no",
            "users": {"alice": {"forwarding": {"allow_tcp_forwarding": "local"}}},
        },
    )
    grant = ForwardingGrant(
        ways={
            "allow_tcp_forwarding": DirectionGrant(local=False, remote=True),
            "allow_streamlocal_forwarding": DirectionGrant(remote=True),
        }
    )
    alice = settings.with_forwarding_grant("alice", grant)
    assert (alice.allow_tcp_forwarding, alice.allow_streamlocal_forwarding) == ("remote", "remote")
    assert settings.with_forwarding_grant("bob", ForwardingGrant()) == settings.forwarding_for(
        "bob"
    )


@pytest.mark.parametrize(
    ("entry", "host", "allowed"),
    [
        ("localhost:8080", "LOCALHOST", True),  # sshd lowercases the requested host
        ("127.0.0.*:8080", "127.0.0.1", True),  # sshd's match_pattern: * and ?
        ("127.0.0.?:8080", "127.0.0.5", True),
        ("127.0.0.?:8080", "127.0.0.10", False),
        ("*.internal:8080", "web.internal", True),
        ("*.internal:8080", "internal", False),
        ("[12]7.0.0.1:8080", "127.0.0.1", False),  # no character classes in ssh patterns
    ],
)
def test_permit_listen_hosts_are_ssh_patterns(entry: str, host: str, allowed: bool) -> None:
    """sshd matches a PermitListen (and a key's permitlisten=) host as a pattern."""
    target = TcpAddress(host=host, port=8080)
    assert (policy(permit_listen=(entry,)).refuse_listen(target) is None) is allowed
    key = policy(grant_of(f'permitlisten="{entry}"'))
    assert (key.refuse_listen(target) is None) is allowed


@pytest.mark.parametrize("host", ["LOCALHOST", "127.0.0.1"])
def test_permit_open_hosts_stay_exact(host: str) -> None:
    """sshd's PermitOpen compares hosts as written: no pattern, no case folding."""
    assert (
        policy(permit_open=("localhost:8080", "127.0.0.*:8080")).refuse_open(
            TcpAddress(host=host, port=8080)
        )
        is not None
    )


def test_a_port_written_with_leading_zeros_is_its_number() -> None:
    """sshd reads PermitOpen's port as a number (a2port): ``db:080`` is port 80."""
    target = TcpAddress(host="db", port=80)
    assert policy(permit_open=("db:080",)).refuse_open(target) is None
    assert policy(grant_of('permitopen="db:080"')).refuse_open(target) is None
    assert policy(permit_listen=("080",)).refuse_listen(target) is None
