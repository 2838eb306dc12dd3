"""Subsystems come from ``[session] subsystems``: a known one runs its command, an unknown
one gets CHANNEL_FAILURE before any session task or container (driver + sans-IO client +
in-process backend)."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from tests.sshpeer import USER_KEY, ed25519_blob
from trissh.backend.memory import MemoryBackend
from trissh.config import ConfigError, load_config
from trissh.connection.driver import MAX_CLIENT_LINES
from trissh.protocol.messages import connection as conn
from trissh.server.state import ServerContext

from .peer import Peer, exit_status_of
from .support import capture_module_log, make_context
from .test_driver import connected


def _context(
    backend: MemoryBackend, tmp_path: Path, key_options: str = "", **overrides: Any
) -> ServerContext:
    keys = tmp_path / "authorized_keys"
    line = "ssh-ed25519 " + base64.b64encode(ed25519_blob(USER_KEY)).decode()
    keys.write_text(f"{key_options} {line}\n".lstrip())
    return make_context(backend, keys, tmp_path / "host_key", **overrides)


async def _subsystem(peer: Peer, name: str) -> object:
    """Open a session, ask for ``name``; the server's answer."""
    channel = await peer.open_session()
    peer.client.channel_request(channel, "subsystem", conn.SubsystemData(name=name).encode())
    await peer.flush()
    return await peer.next_message()


@pytest.mark.parametrize("mode", ["session", "connection"])
async def test_an_unknown_subsystem_is_refused_before_anything_runs(
    memory_backend: MemoryBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    """CHANNEL_FAILURE, one log line, no process; in session mode no container either
    (in connection mode the connection's container starts when the channel opens)."""
    logs = capture_module_log(monkeypatch, "trissh.channels.sessions")
    ctx = _context(memory_backend, tmp_path, session={"execution_mode": mode})
    with trio.fail_after(20):
        async with connected(ctx) as peer:
            await peer.login()
            answer = await _subsystem(peer, "nosuch")
            assert isinstance(answer, conn.ChannelFailure)
            await peer.stream.aclose()
    assert [(line["event"], line["subsystem"]) for line in logs] == [
        ("subsystem_refused", "nosuch")
    ]
    assert memory_backend.process_specs == []
    if mode == "session":
        assert memory_backend.sandbox_specs == []


async def test_subsystems_come_from_the_configuration_per_user(
    memory_backend: MemoryBackend, tmp_path: Path
) -> None:
    """The default table runs sftp; a user's own table replaces it (netconf, no sftp)."""
    users = {"bob": {"session": {"subsystems": {"netconf": "/usr/sbin/netconf -q 'a b'"}}}}
    ctx = _context(memory_backend, tmp_path, users=users)
    answers = {}
    with trio.fail_after(20):
        for user, name in [("alice", "sftp"), ("bob", "netconf"), ("bob", "sftp")]:
            async with connected(ctx) as peer:
                peer.client.username = user
                await peer.login()
                answers[user, name] = type(await _subsystem(peer, name)).__name__
                await peer.stream.aclose()
    assert answers == {
        ("alice", "sftp"): "ChannelSuccess",
        ("bob", "netconf"): "ChannelSuccess",
        ("bob", "sftp"): "ChannelFailure",
    }
    # each runs from the home directory, as sshd starts it, with its arguments as written
    assert [_program(spec.argv) for spec in memory_backend.process_specs] == [
        "exec /usr/lib/openssh/sftp-server", "exec /usr/sbin/netconf -q 'a b'"
    ]  # fmt: skip


async def test_the_deprecated_sftp_server_still_runs_sftp(
    memory_backend: MemoryBackend, tmp_path: Path
) -> None:
    ctx = _context(memory_backend, tmp_path, container={"sftp_server": "/opt/sftp-server"})
    with trio.fail_after(20):
        async with connected(ctx) as peer:
            await peer.login()
            assert isinstance(await _subsystem(peer, "sftp"), conn.ChannelSuccess)
            await peer.stream.aclose()
    assert [_program(spec.argv) for spec in memory_backend.process_specs] == [
        "exec /opt/sftp-server"
    ]


async def test_a_forced_command_replaces_a_known_subsystem_only(
    memory_backend: MemoryBackend, tmp_path: Path
) -> None:
    """As sshd (session_subsystem_req, do_exec): an unknown subsystem is refused even with
    command=; a known one runs the forced command, SSH_ORIGINAL_COMMAND its command."""
    ctx = _context(
        memory_backend, tmp_path, key_options='command="echo forced"',
        **{"session.subsystems": {"sftp": "/opt/sftp-server -l INFO"}},
    )  # fmt: skip
    with trio.fail_after(20):
        async with connected(ctx) as peer:
            await peer.login()
            assert isinstance(await _subsystem(peer, "x"), conn.ChannelFailure)
            channel = await peer.open_session()
            peer.client.channel_request(
                channel, "subsystem", conn.SubsystemData(name="sftp").encode()
            )
            await peer.flush()
            messages = await peer.until_close(channel)
            await peer.stream.aclose()
    assert isinstance(messages[0], conn.ChannelSuccess)
    assert exit_status_of(messages) == 0
    [spec] = memory_backend.process_specs
    assert spec.env["SSH_ORIGINAL_COMMAND"] == "/opt/sftp-server -l INFO"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"bad name": "/bin/x"}, "subsystem name 'bad name': letters, digits and @._+- only"),
        ({"x": "relative/path"}, "subsystem command 'relative/path' must start with an absolute"),
        ({"x": "/bin/x 'unclosed"}, "No closing quotation"),
    ],
)
def test_subsystem_tables_are_validated(table: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, {"session.subsystems": table})


def _program(argv: Sequence[str]) -> str:
    """What a subsystem's ``sh -c`` line finally executes (after going home)."""
    assert argv[:2] == ["/bin/sh", "-c"], argv
    return argv[2].rsplit("; ", 1)[-1]


async def _exec(ctx: ServerContext, command: str, *requests: tuple[str, bytes]) -> list[object]:
    """Log in, exec ``command``, send ``requests`` on its channel: the messages until CLOSE."""
    with trio.fail_after(20):
        async with connected(ctx) as peer:
            await peer.login()
            channel = await peer.open_session()
            await peer.exec(channel, command)
            for request_type, data in requests:
                peer.client.channel_request(channel, request_type, data)
            await peer.flush()
            messages = await peer.until_close(channel)
            await peer.stream.aclose()
    return messages


async def test_a_forced_command_session_takes_no_signals(
    memory_backend: MemoryBackend, tmp_path: Path
) -> None:
    """sshd's session_signal_req refuses signals to a forced-command session: TERM is
    refused (CHANNEL_FAILURE) and the program runs on until it ends by itself."""
    ctx = _context(memory_backend, tmp_path, key_options='command="sleep 1"')
    messages = await _exec(ctx, "anything", ("signal", conn.SignalData(name="TERM").encode()))
    assert conn.ChannelFailure(recipient_channel=0) in messages
    assert exit_status_of(messages) == 0


async def test_an_empty_forced_command_still_forces(
    memory_backend: MemoryBackend, tmp_path: Path
) -> None:
    """``command=""`` (keys meant for forwarding only) runs ``sh -c ""``, as sshd: never the
    client's command. An empty string was merged away as if there were no forced command."""
    ctx = _context(memory_backend, tmp_path, key_options='command=""')
    messages = await _exec(ctx, "echo chosen by the client")
    assert exit_status_of(messages) == 0
    [spec] = memory_backend.process_specs
    assert spec.argv[-2] == "-c"
    assert "chosen" not in spec.argv[-1]
    assert spec.env["SSH_ORIGINAL_COMMAND"] == "echo chosen by the client"


async def test_a_client_looping_on_refusals_writes_a_bounded_number_of_lines(
    memory_backend: MemoryBackend, tmp_path: Path
) -> None:
    """An unknown subsystem is refused and the channel may ask again (as sshd): a client
    asking in a loop got one log line per request (12k lines a second, the operator's
    disk and a slow log pipe the event loop writes to). Past the connection's quota the
    lines are only counted, and connection_closed says how many were left out."""
    ctx = _context(memory_backend, tmp_path)
    with capture_logs() as logs, trio.fail_after(20):
        async with connected(ctx) as peer:
            await peer.login()
            channel = await peer.open_session()
            for _ in range(300):
                peer.client.channel_request(
                    channel, "subsystem", conn.SubsystemData(name="nope").encode()
                )
            await peer.flush()
            for _ in range(300):
                assert isinstance(await peer.next_message(), conn.ChannelFailure)
            await peer.stream.aclose()
        await trio.sleep(0.1)
    refused = [entry for entry in logs if entry["event"] == "subsystem_refused"]
    assert len(refused) == MAX_CLIENT_LINES
    [closed] = [entry for entry in logs if entry["event"] == "connection_closed"]
    assert closed["lines_suppressed"] == 300 - MAX_CLIENT_LINES
