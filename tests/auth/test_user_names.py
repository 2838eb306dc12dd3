"""Hostile user names, through the driver with the sans-IO test client (names no real client
will send: NUL, newline, escape sequences, a leading dash): refused like a wrong key, with
the same methods and the same delay, one escaped log line, no sandbox, and an accepted
name whatever odd characters the rule lets through."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.peer import Peer
from tests.sshpeer import USER_KEY, ed25519_blob
from trissh.auth import passwords
from trissh.auth.names import UserNameRule, escaped
from trissh.auth.passwords import hash_password
from trissh.backend.memory import MemoryBackend
from trissh.connection.driver import serve_connection
from trissh.protocol import DisconnectReason, wire
from trissh.protocol.constants import MessageNumber
from trissh.protocol.messages import transport as tr
from trissh.protocol.messages import userauth as ua
from trissh.protocol.wire import Reader
from trissh.server.state import ServerContext

from ..support import capture_module_log, make_context

#: Each refused by the default rule, with the reason.
REFUSED = {
    "nul": ("a\x00b", "control or unprintable characters"),
    "newline": ("alice\nroot", "control or unprintable characters"),
    "escape": ("a\x1b[2Jb", "control or unprintable characters"),
    "bidi override": ("\u202eelgoog", "control or unprintable characters"),
    "no-break space": ("a\u00a0b", "control or unprintable characters"),
    "space": ("a b", "does not match user_name_pattern"),
    "slash": ("../../etc", "does not match user_name_pattern"),
    "dot dot": ("..", "does not match user_name_pattern"),
    "leading dash": ("-oProxyCommand=sh", "does not match user_name_pattern"),
    "leading dot": (".hidden", "does not match user_name_pattern"),
    "65 bytes": ("a" * 65, "longer than 64 bytes"),
    "33 two-byte characters": ("é" * 33, "longer than 64 bytes"),
    "empty": ("", "empty"),
}
#: Odd but allowed: the rule is about what is unsafe to carry, not about taste.
ACCEPTED = ["a" * 64, "o'brien", "$(id)", "DOMAIN\\user", "émile", "ops.team-1_x@example.org"]
FAILURE_DELAY = 1.0


def key_file(tmp_path: Path) -> Path:
    keys = tmp_path / "authorized_keys"  # any user name with this key
    keys.write_text("ssh-ed25519 " + base64.b64encode(ed25519_blob(USER_KEY)).decode() + "\n")
    return keys


@pytest.fixture
def ctx(memory_backend: MemoryBackend, tmp_path: Path) -> ServerContext:
    return make_context(
        memory_backend, key_file(tmp_path), tmp_path / "host_key",
        auth={"failure_delay": FAILURE_DELAY},
    )  # fmt: skip


@asynccontextmanager
async def authenticating(ctx: ServerContext) -> AsyncIterator[Peer]:
    """A connection served in the background, past key exchange and the service request."""
    server_end, client_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_connection(server_end, ctx, conn_id="t", remote="mem"))
        peer = Peer(client_end)
        while not peer.client.established:
            await peer._read()
        peer.client.request_service()
        await peer.expect(tr.ExtInfo)
        await peer.expect(tr.ServiceAccept)
        yield peer
        nursery.cancel_scope.cancel()


async def _attempt(peer: Peer, username: str, *, sign: bool = True) -> tuple[object, float]:
    """One publickey request with the authorized key; the answer and how long it took."""
    started = trio.current_time()
    peer.client.auth_publickey(username=username, sign=sign)
    answer = await peer.next_message()
    return answer, trio.current_time() - started


async def _ask_keyboard_interactive(peer: Peer, username: str) -> bytes:
    """Start keyboard-interactive as ``username``; the raw answer (60 is also PK_OK to the
    decoder: an INFO_REQUEST is read as such by the caller)."""
    peer.client.send(
        ua.UserauthRequest(
            username=username, service="ssh-connection", method="keyboard-interactive",
            method_data=ua.KeyboardInteractiveMethod().encode(),
        )
    )  # fmt: skip
    while not peer.client.inbox:
        await peer._read()
    return bytes(peer.client.inbox.popleft())


def _logs(monkeypatch: pytest.MonkeyPatch) -> tuple[list[MutableMapping[str, Any]], ...]:
    """The login conversation's lines and the connection's auth lines."""
    return (
        capture_module_log(monkeypatch, "trissh.auth.login"),
        capture_module_log(monkeypatch, "trissh.connection.handshake"),
    )


@pytest.mark.parametrize(("name", "reason"), REFUSED.values(), ids=REFUSED.keys())
async def test_a_refused_name_fails_like_a_wrong_key(
    ctx: ServerContext,
    memory_backend: MemoryBackend,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
    name: str,
    reason: str,
) -> None:
    """The right key under a refused name: the failure a wrong key gets (same methods,
    same randomized delay, a key query answered at once), again on a second try; one
    ``user_name_refused`` line, the name escaped wherever it is logged; no sandbox."""
    login_log, handshake_log = _logs(monkeypatch)
    with trio.fail_after(60):
        async with authenticating(ctx) as peer:
            peer.client.user_key = ed25519.Ed25519PrivateKey.generate()
            wrong_key, wrong_key_took = await _attempt(peer, "alice")
            peer.client.user_key = USER_KEY
        async with authenticating(ctx) as peer:
            query, query_took = await _attempt(peer, name, sign=False)
            first, first_took = await _attempt(peer, name)
            second, _ = await _attempt(peer, name)
    assert wrong_key == ua.UserauthFailure(methods=("publickey",))
    assert query == first == second == wrong_key
    assert FAILURE_DELAY * 0.5 <= first_took <= FAILURE_DELAY * 1.5
    assert FAILURE_DELAY * 0.5 <= wrong_key_took <= FAILURE_DELAY * 1.5
    assert query_took == 0
    refusals = [line for line in login_log if line["event"] == "user_name_refused"]
    assert refusals == [
        {"event": "user_name_refused", "user": escaped(name), "reason": reason, "log_level": "info"}
    ]
    failed = [line["user"] for line in handshake_log if line["event"] == "auth_failed"]
    assert failed[:3] == ["alice", escaped(name), escaped(name)]  # the last may be cut off
    assert all(char.isprintable() for user in failed for char in user)
    assert memory_backend.sandbox_specs == []


@pytest.mark.parametrize("name", ACCEPTED)
async def test_odd_names_the_rule_allows_log_in(
    ctx: ServerContext, memory_backend: MemoryBackend, name: str
) -> None:
    """The name reaches the sandbox exactly as sent."""
    with trio.fail_after(20):
        async with authenticating(ctx) as peer:
            answer, _ = await _attempt(peer, name)
            assert answer == ua.UserauthSuccess()
            channel = await peer.open_session()
            await peer.exec(channel, "true")
            await peer.until_close(channel)
    [spec] = memory_backend.sandbox_specs
    assert spec.username == name


async def test_keyboard_interactive_asks_a_refused_name_as_an_unknown_user(
    memory_backend: MemoryBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keyboard-interactive open to every name: the same "Password: " prompt as for an
    unknown user, the answer checked against the dummy hash (same time), then the failure."""
    checked: list[tuple[str | None, str]] = []
    real_verify = passwords.verify_password

    async def recording_verify(stored: str | None, password: str) -> bool:
        checked.append((stored, password))
        return bool(await real_verify(stored, password))

    monkeypatch.setattr("trissh.auth.login.verify_password", recording_verify)
    monkeypatch.setattr("trissh.auth.policy.verify_password", recording_verify)
    ctx = make_context(
        memory_backend, key_file(tmp_path), tmp_path / "host_key",
        auth={"failure_delay": 0, "authentication_methods": ["publickey", "keyboard-interactive"]},
        users={"bob": {"password_hash": hash_password("right")}},
    )  # fmt: skip
    prompts = []
    with trio.fail_after(30):
        for name in ("nobody-here", "a b"):
            async with authenticating(ctx) as peer:
                payload = await _ask_keyboard_interactive(peer, name)
                prompts.append(ua.UserauthInfoRequest.decode(Reader(payload, 1)))
                peer.client.send(ua.UserauthInfoResponse(responses=("guess",)))
                await peer.expect(ua.UserauthFailure)
    assert prompts[0] == prompts[1]
    assert prompts[0].prompts == (("Password: ", False),)
    assert checked == [(None, "guess"), (None, "guess")]  # the unknown user's, then ours
    assert memory_backend.sandbox_specs == []


async def test_an_unknown_user_meets_what_a_user_with_a_password_meets(
    memory_backend: MemoryBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With the default method chains, password and keyboard-interactive (offered to
    everyone, since a user has a password) answer an unknown name as they answer a user
    with a password: the "Password: " prompt, a check against the dummy hash, the failure
    delay. Before, the unknown name's answer came at once, without a prompt: one request
    told which names have a password to guess (reviewer)."""
    checked: list[tuple[str | None, str]] = []

    async def recording_verify(stored: str | None, password: str) -> bool:
        """No argon2 (its worker thread and the mock clock do not mix): which hash."""
        checked.append((stored, password))
        return False

    monkeypatch.setattr("trissh.auth.login.verify_password", recording_verify)
    monkeypatch.setattr("trissh.auth.policy.verify_password", recording_verify)
    stored = hash_password("right")
    ctx = make_context(
        memory_backend, key_file(tmp_path), tmp_path / "host_key",
        auth={"failure_delay": FAILURE_DELAY},
        users={"bob": {"password_hash": stored}, "kay": {"session": {"idle_timeout": 60}}},
    )  # fmt: skip
    seen: dict[str, list[object]] = {}
    with trio.fail_after(60):
        for name in ("bob", "nobody-here", "kay"):
            async with authenticating(ctx) as peer:
                payload = await _ask_keyboard_interactive(peer, name)
                prompts = payload[0] == 60 and ua.UserauthInfoRequest.decode(Reader(payload, 1))
                started = trio.current_time()
                peer.client.send(ua.UserauthInfoResponse(responses=("guess",)))
                await peer.expect(ua.UserauthFailure)
                answered = trio.current_time() - started
                started = trio.current_time()
                peer.client.send(
                    ua.UserauthRequest(
                        username=name, service="ssh-connection", method="password",
                        method_data=ua.PasswordMethod(password="guess").encode(),
                    )
                )  # fmt: skip
                await peer.expect(ua.UserauthFailure)
                password_took = trio.current_time() - started
                seen[name] = [
                    prompts,
                    answered > FAILURE_DELAY / 2,
                    password_took > FAILURE_DELAY / 2,
                ]
    assert seen["nobody-here"] == seen["bob"]
    assert seen["kay"] == seen["bob"]  # a table without a password (third reader)
    assert seen["bob"][0].prompts == (("Password: ", False),)  # type: ignore[attr-defined]
    assert checked == [(stored, "guess")] * 2 + [(None, "guess")] * 4


def test_the_rule_can_be_configured() -> None:
    strict = UserNameRule(r"[a-z_][a-z0-9_-]*", max_bytes=32)
    assert strict.problem("alice") is None
    assert strict.problem("$(id)") == "does not match user_name_pattern"
    assert strict.problem("a" * 33) == "longer than 32 bytes"
    lax = UserNameRule(r".+", max_bytes=256)
    assert lax.problem("John Smith") is None
    assert lax.problem("a\nb") == "control or unprintable characters"  # never configurable


def test_escaped_names_are_one_printable_line() -> None:
    assert escaped("alice") == "alice"
    assert escaped("a b\x00\n\\\u202e") == "a\\x20b\\x00\\x0a\\\\\\u202e"
    assert escaped("x" * 200) == "x" * 96 + "..."


@pytest.mark.parametrize("raw", [b"\xff\xfeab", b"a" * 257], ids=["invalid UTF-8", "257 bytes"])
async def test_names_the_core_cannot_read_end_the_connection(
    ctx: ServerContext, memory_backend: MemoryBackend, raw: bytes
) -> None:
    """Not UTF-8, or past the core's 256-byte bound: a protocol error before the login
    conversation (or any log line) sees a name."""
    payload = (
        bytes([MessageNumber.USERAUTH_REQUEST])
        + wire.string(raw) + wire.string("ssh-connection") + wire.string("none")
    )  # fmt: skip
    with trio.fail_after(10):
        async with authenticating(ctx) as peer:
            peer.client.send(payload)
            disconnect = await peer.expect(tr.Disconnect)
            assert await peer.next_message() is None
    assert disconnect.reason == DisconnectReason.PROTOCOL_ERROR
    assert raw.decode("latin-1") not in disconnect.description
    assert memory_backend.sandbox_specs == []
