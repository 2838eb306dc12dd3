"""Session-level requests the sessions issue relies on: env guard, break, server keepalives."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sshpeer import ConnectionPair, established_pair, make_config
from trissh.protocol import ChannelId, RequestRefused, SessionRequested, SignalReceived, wire
from trissh.protocol.messages import connection as conn
from trissh.protocol.messages.connection import BreakData, EnvData, PtyRequestData

PEER = 7


def session(**config: Any) -> tuple[ConnectionPair, ChannelId]:
    pair = established_pair(make_config(**config))
    return pair, pair.open_session(PEER)


def pty(pair: ConnectionPair, cid: ChannelId) -> None:
    data = PtyRequestData(term="xterm", columns=80, rows=24, width_px=0, height_px=0, modes=b"\0")
    pair.client.channel_request(cid, "pty-req", data.encode(), want_reply=False)


@pytest.mark.parametrize(
    "name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "PATH", "BASH_ENV", "PYTHONPATH", "GIT_DIR",
             "GIT_SSH_COMMAND", "GIT_PROTOCOLX", "ZDOTDIR", "GLIBC_TUNABLES", "NLSPATH",
             "OPENSSL_CONF", "LESSOPEN", "SSH_ORIGINAL_COMMAND", "SSH_AUTH_SOCK", "SSH_TTY",
             "KRB5CCNAME", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "LUA_INIT", "LUA_INIT_5_4",
             "PHPRC", "VIMINIT", "EXINIT", "CDPATH", "GLOBIGNORE"]
)  # fmt: skip
def test_dangerous_env_is_refused_even_when_everything_is_allowed(name: str) -> None:
    """accept_env = ("*",) still never lets a client set how programs load or start."""
    pair, cid = session(accept_env=("*",))
    pair.client.channel_request(cid, "env", EnvData(name=name, value="x").encode())
    pair.client.channel_request(cid, "env", EnvData(name="LANG", value="C.UTF-8").encode())
    pair.client.channel_request(
        cid, "exec", conn.ExecData(command="true").encode(), want_reply=False
    )
    refusal, event = pair.transfer()
    assert refusal == RequestRefused(
        request="env", reason=f"{name} is never accepted", channel_id=cid
    )
    assert isinstance(event, SessionRequested)
    assert event.env == {"LANG": "C.UTF-8"}
    assert pair.client.take_all() == [
        conn.ChannelFailure(recipient_channel=PEER),
        conn.ChannelSuccess(recipient_channel=PEER),
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [("PATH=/tmp/evil:/usr/bin:", ""), ("", "x"), ("LANG\0LD_PRELOAD", "x"), ("LANG", "C\0x"),
     ("BASH_FUNC_cd%%", "() { echo bypassed; }"), ("BASH_FUNC_cd()", "() { :; }"),
     ("1LANG", "x"), ("LANG-X", "x"), ("LÄNG", "x")],
)  # fmt: skip
def test_what_is_no_environment_variable_is_refused(name: str, value: str) -> None:
    """Only a shell's portable names: a name with ``=`` would set another variable (PATH
    here, past the guard: ``PATH=...`` matches no pattern of it), an empty name or a NUL is
    none at all, and bash turns ``BASH_FUNC_cd%%`` into a function that replaces ``cd`` in
    the command line trissh runs, forced commands included."""
    pair, cid = session(accept_env=("*",))
    pair.client.channel_request(cid, "env", EnvData(name=name, value=value).encode())
    pair.client.channel_request(
        cid, "exec", conn.ExecData(command="true").encode(), want_reply=False
    )
    refusal, event = pair.transfer()
    assert isinstance(refusal, RequestRefused)
    assert refusal.reason == "not an environment variable name and value"
    assert isinstance(event, SessionRequested)
    assert event.env == {}


@pytest.mark.parametrize(("accept", "accepted"), [(("GIT_PROTOCOL",), True), (("*",), True),
                                                  (("LANG",), False)])  # fmt: skip
def test_git_protocol_passes_the_guard_when_accept_env_lists_it(
    accept: tuple[str, ...], accepted: bool
) -> None:
    """git's protocol v2 (``GIT_PROTOCOL=version=2``) is the one GIT_* name the guard lets
    through, and only as any other name: when accept_env matches it."""
    pair, cid = session(accept_env=accept)
    data = EnvData(name="GIT_PROTOCOL", value="version=2").encode()
    pair.client.channel_request(cid, "env", data)
    pair.client.channel_request(
        cid, "exec", conn.ExecData(command="git-upload-pack x").encode(), want_reply=False
    )
    *refusals, event = pair.transfer()
    assert isinstance(event, SessionRequested)
    assert event.env == ({"GIT_PROTOCOL": "version=2"} if accepted else {})
    assert [r.reason for r in refusals if isinstance(r, RequestRefused)] == (
        [] if accepted else ["GIT_PROTOCOL is not in accept_env"]
    )


@pytest.mark.parametrize("request_type", ["pty-req", "signal"])
def test_a_name_that_is_not_ascii_fails_its_request_not_the_connection(
    request_type: str,
) -> None:
    """A Latin-1 TERM or signal name is refused as a Latin-1 exec command is; it was a
    protocol error that ended every session of the connection."""
    pair, cid = session()
    if request_type == "signal":
        pair.client.channel_request(cid, "shell", want_reply=False)
        pair.transfer()
        data = wire.string(b"T\xc9RM")
    else:
        data = wire.string(b"xt\xe9rm") + wire.uint32(80) + wire.uint32(24) + bytes(8)
        data += wire.string(b"\0")
    pair.client.channel_request(cid, request_type, data)
    (refusal,) = pair.transfer()
    assert isinstance(refusal, RequestRefused)
    assert refusal.request == request_type
    assert pair.client.take_all() == [conn.ChannelFailure(recipient_channel=PEER)]
    pair.client.channel_request(cid, "window-change", bytes(16), want_reply=False)
    pair.transfer()
    assert not pair.server.closed


def test_break_on_a_pty_session_is_an_interrupt() -> None:
    """RFC 4335: BREAK on a terminal session arrives as SIGINT, and is acknowledged."""
    pair, cid = session()
    pty(pair, cid)
    pair.client.channel_request(cid, "shell", want_reply=False)
    pair.transfer()
    pair.client.channel_request(cid, "break", BreakData(length_ms=500).encode())
    assert pair.transfer() == [SignalReceived(channel_id=cid, signal="INT")]
    assert pair.client.take_all() == [conn.ChannelSuccess(recipient_channel=PEER)]


def test_break_without_a_terminal_is_refused() -> None:
    """Without a pty there is nothing to interrupt: CHANNEL_FAILURE, no signal."""
    pair, cid = session()
    pair.client.channel_request(cid, "exec", conn.ExecData(command="x").encode(), want_reply=False)
    pair.transfer()
    pair.client.channel_request(cid, "break", BreakData(length_ms=0).encode())
    assert pair.transfer() == [
        RequestRefused(request="break", reason="no terminal session to interrupt", channel_id=cid)
    ]
    assert pair.client.take_all() == [conn.ChannelFailure(recipient_channel=PEER)]


def test_keepalive_probe_and_answer() -> None:
    """send_keepalive() asks keepalive@openssh.com with want_reply; any answer resets the count."""
    pair = established_pair()
    pair.server.send_keepalive()
    pair.server.send_keepalive()
    assert pair.server.keepalives_unanswered == 2
    pair.transfer()
    probes = pair.client.take_all()
    assert probes == [conn.GlobalRequest(name="keepalive@openssh.com", want_reply=True)] * 2
    pair.client.send(conn.RequestFailure())
    pair.transfer()
    assert pair.server.keepalives_unanswered == 0


def test_no_keepalive_before_authentication() -> None:
    """Before authentication the connection protocol does not run: no probe is sent."""
    pair = ConnectionPair(make_config())
    pair.handshake()
    pair.server.send_keepalive()
    assert pair.server.keepalives_unanswered == 0


@pytest.mark.parametrize(
    ("request_type", "data"),
    [
        ("exec", wire.string(b"cat \xe9.txt")),
        ("subsystem", wire.string(b"sftp\xff")),
        ("env", wire.string(b"LANG") + wire.string(b"fr_FR.ISO-8859-1 \xe9")),
        ("env", wire.string(b"LANG") + wire.string(b"x" * (conn.MAX_ENV_VALUE + 1))),
        ("env", wire.string(b"L" * (conn.MAX_ENV_NAME + 1)) + wire.string(b"C")),
        ("exec", wire.string(b"x" * (conn.MAX_COMMAND + 1))),
        ("subsystem", wire.string(b"s" * (conn.MAX_NAME + 1))),
    ],
)
def test_a_request_that_is_not_utf8_or_too_long_is_refused_and_the_connection_goes_on(
    request_type: str, data: bytes
) -> None:
    """A Latin-1 file name in an exec command (or an env value, a subsystem name), or one
    longer than trissh takes, gets a channel failure, as sshd refuses that request alone;
    the connection and its other channels are not torn down for it (with ControlMaster,
    that is every session of the user's connection)."""
    pair, cid = session(accept_env=("LANG",))
    pair.client.channel_request(cid, request_type, data)
    [refusal] = pair.transfer()
    assert isinstance(refusal, RequestRefused)
    assert refusal.reason.startswith(f"{request_type}: ")
    assert pair.client.take_all() == [conn.ChannelFailure(recipient_channel=PEER)]
    other = pair.open_session(PEER + 1)
    pair.client.channel_request(other, "exec", conn.ExecData(command="true").encode())
    [started] = pair.transfer()
    assert isinstance(started, SessionRequested)


def test_a_start_refused_before_anything_ran_lets_the_channel_ask_again() -> None:
    """An unknown subsystem is refused; the client may then exec on the same channel (psftp
    and WinSCP fall back to scp that way), as sshd's session stays larval."""
    pair, cid = session()
    pair.client.channel_request(cid, "subsystem", conn.SubsystemData(name="nope").encode())
    [asked] = pair.transfer()
    assert isinstance(asked, SessionRequested)
    pair.server.reply_channel_request(cid, False, again=True)
    pair.client.channel_request(cid, "exec", conn.ExecData(command="scp -f x").encode())
    [started] = pair.transfer()
    assert isinstance(started, SessionRequested)
    assert started.command == "scp -f x"
    pair.server.reply_channel_request(cid, True)
    pair.transfer()
    assert pair.client.take_all() == [
        conn.ChannelFailure(recipient_channel=PEER),
        conn.ChannelSuccess(recipient_channel=PEER),
    ]


def test_signals_are_refused_for_a_subsystem_as_sshd() -> None:
    """sshd's session_signal_req: "refusing to send signal ... to subsystem session"."""
    pair, cid = session()
    pair.client.channel_request(
        cid, "subsystem", conn.SubsystemData(name="sftp").encode(), want_reply=False
    )
    pair.transfer()
    pair.client.channel_request(cid, "signal", conn.SignalData(name="TERM").encode())
    assert pair.transfer() == [
        RequestRefused(
            request="signal",
            reason="signals are refused for subsystem and forced-command sessions",
            channel_id=cid,
        )
    ]
    assert pair.client.take_all() == [conn.ChannelFailure(recipient_channel=PEER)]


def test_signals_are_refused_when_the_login_runs_a_forced_command() -> None:
    """A forced command (authorized_keys command=, a certificate's force-command) is the
    operator's program: the user may end the session, not signal it (sshd)."""
    pair, cid = session()
    pair.server.refuse_signals()
    pair.client.channel_request(cid, "exec", conn.ExecData(command="x").encode(), want_reply=False)
    pair.transfer()
    pair.client.channel_request(cid, "signal", conn.SignalData(name="INT").encode())
    [refusal] = pair.transfer()
    assert isinstance(refusal, RequestRefused)
    assert refusal.reason == "signals are refused for subsystem and forced-command sessions"


def test_break_is_refused_where_signals_are() -> None:
    """A BREAK is an interrupt here (RFC 4335 leaves it to the server): the sessions that
    take no ``signal`` (forced command, subsystem) take no BREAK either."""
    pair, cid = session()
    pair.server.refuse_signals()
    pty(pair, cid)
    pair.client.channel_request(cid, "shell", want_reply=False)
    pair.transfer()
    pair.client.channel_request(cid, "break", BreakData(length_ms=500).encode())
    [refusal] = pair.transfer()
    assert isinstance(refusal, RequestRefused)
    assert refusal.reason == "signals are refused for subsystem and forced-command sessions"
