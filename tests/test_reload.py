"""SIGHUP's reload as the CLI wires it: what the replaced configuration held is released."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from trissh.auth.policy import LoginRequest
from trissh.backend import ContainerSettings
from trissh.backend.memory import MemoryBackend
from trissh.config import ServerConfig, load_config
from trissh.protocol.messages import transport as tr
from trissh.protocol.messages import userauth as ua
from trissh.server.build import build_context, reload_context, retire_context
from trissh.server.listener import serve
from trissh.server.state import ServerContext

from .auth.http_server import Server, answer, start
from .support import (
    ClientKey,
    make_context,
    needs_ssh,
    run_ssh,
    start_server,
    write_ed25519_key,
)

GRACE = 0.5


def webhook_settings(url: str, host_key: Path, grace: float = GRACE) -> ServerConfig:
    return load_config(
        None,
        {
            "listen": ["127.0.0.1:0"],
            "host_keys": [str(host_key)],
            "auth": {"failure_delay": 0, "webhook": {"url": url, "retries": 0}},
            "limits.login_grace_time": grace,
        },
    )


async def ask_password(ctx: ServerContext) -> bool:
    """One webhook round trip; httpx keeps the connection in its pool afterwards."""
    request = LoginRequest("alice", "192.0.2.7", "c0ffee", remote="192.0.2.7:50022")
    return (await ctx.auth.password(request, "pw")).ok


async def until_closed(server: Server, count: int) -> None:
    with trio.fail_after(5):
        while server.closed < count:
            await trio.sleep(0.01)


async def test_reload_closes_the_old_webhook_connections_once_its_logins_are_over(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Live connections keep their context, so the replaced webhook client serves logins
    that started before the reload until the login grace time ends; then its pooled
    connection is closed instead of lingering for the life of the server."""
    webhook = await start(nursery, answer({"success": True}))
    host_key = tmp_path / "host_key"
    write_ed25519_key(host_key)
    ctx = build_context(webhook_settings(webhook.url, host_key), MemoryBackend())
    assert await ask_password(ctx)
    assert (webhook.connections, webhook.closed) == (1, 0)

    async with trio.open_nursery() as retiring:
        reload_context(
            ctx,
            lambda: webhook_settings(webhook.url, host_key),
            lambda old: retiring.start_soon(retire_context, old),
        )
        assert ctx.state.context is not None
        assert ctx.state.context is not ctx
        assert await ask_password(ctx)  # a login that started before the reload
        await trio.sleep(GRACE / 2)
        assert webhook.closed == 0
        await until_closed(webhook, 1)  # after the grace: the old pool's connection

    new = ctx.state.context
    assert await ask_password(new)
    assert webhook.connections == 2  # the new context has its own client
    await new.auth.aclose()
    await until_closed(webhook, 2)


async def test_shutdown_closes_a_retiring_context_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Cancelled while it waits (the server stops), the retirement still closes, then and
    not after its grace (120 s here, far past the wait for the close)."""
    webhook = await start(nursery, answer({"success": True}))
    host_key = tmp_path / "host_key"
    write_ed25519_key(host_key)
    ctx = build_context(webhook_settings(webhook.url, host_key, grace=120), MemoryBackend())
    assert await ask_password(ctx)
    started = trio.current_time()
    with trio.move_on_after(GRACE / 5):
        await retire_context(ctx)
    await until_closed(webhook, 1)
    assert trio.current_time() - started < 10  # not the grace's 120 s (generous: no flake)


def test_a_reload_with_unreadable_webhook_tls_files_keeps_the_running_configuration(
    tmp_path: Path,
) -> None:
    """A mistyped or rotated CA path is a refused reload (one log line), never an exception
    out of the signal handler, which would end the server and every session."""
    host_key = tmp_path / "host_key"
    write_ed25519_key(host_key)
    ctx = build_context(webhook_settings("http://127.0.0.1:9/", host_key), MemoryBackend())

    def load() -> ServerConfig:
        webhook = {"url": "https://127.0.0.1:9/", "ca_file": str(tmp_path / "missing-ca.pem")}
        overrides = {"listen": ["127.0.0.1:0"], "host_keys": [str(host_key)]}
        return load_config(None, {**overrides, "auth": {"webhook": webhook}})

    with capture_logs() as logs:
        reload_context(ctx, load)
    [failed] = [entry for entry in logs if entry["event"] == "config_reload_failed"]
    assert "auth.webhook" in failed["error"]
    assert "missing-ca.pem" in failed["error"]
    assert ctx.state.context is None


def test_a_reload_says_which_changed_settings_wait_for_a_restart(tmp_path: Path) -> None:
    """The backend, the metrics address and the admin socket are made once, at start: a
    reload that changes them applies the rest and says these did not change."""
    host_key = tmp_path / "host_key"
    write_ed25519_key(host_key)
    ctx = build_context(webhook_settings("http://127.0.0.1:9/", host_key), MemoryBackend())

    def load() -> ServerConfig:
        return load_config(
            None,
            {
                "listen": ["127.0.0.1:0"],
                "host_keys": [str(host_key)],
                "auth": {"webhook": {"url": "http://127.0.0.1:9/"}},
                "podman.warm_pool": 3,
                "metrics.listen": "127.0.0.1:9100",
                "admin.socket": str(tmp_path / "admin.sock"),
                "session.motd": "changed",
                "workspaces.state_file": str(tmp_path / "elsewhere.json"),
            },
        )

    with capture_logs() as logs:
        reload_context(ctx, load)
    [ignored] = [entry for entry in logs if entry["event"] == "config_reload_ignored"]
    assert ignored["keys"] == ["podman", "metrics.listen", "admin.socket", "workspaces.state_file"]
    assert ignored["log_level"] == "warning"
    assert ctx.state.context is not None
    assert ctx.state.context.settings.session.motd == "changed"
    # what runs keeps the values read at start: the workspace registry holds the first
    # state file's lock, so new workspaces must not be labelled with another's (ws reviewer:
    # a second instance of a fleet then took the new file and removed live workspaces)
    running = ctx.state.context.settings
    assert running.workspaces.state_file == ctx.settings.workspaces.state_file
    assert running.podman == ctx.settings.podman
    assert running.admin.socket == ctx.settings.admin.socket


def test_no_error_while_reloading_ends_the_server(tmp_path: Path) -> None:
    """Whatever goes wrong building the new configuration (a bug, an unforeseen file),
    the running one stays: one log line, never an exception out of the SIGHUP handler."""
    host_key = tmp_path / "host_key"
    write_ed25519_key(host_key)
    ctx = build_context(webhook_settings("http://127.0.0.1:9/", host_key), MemoryBackend())

    def load() -> ServerConfig:
        raise RuntimeError("day is out of range for month")

    with capture_logs() as logs:
        reload_context(ctx, load)
    [failed] = [entry for entry in logs if entry["event"] == "config_reload_failed"]
    assert "out of range" in failed["error"]
    assert ctx.state.context is None


class SlowSweep(MemoryBackend):
    """A start-up sweep that waits for the test (many leftovers after a crash)."""

    def __init__(self) -> None:
        super().__init__()
        self.sweeping = trio.Event()
        self.release = trio.Event()
        #: The image of each ``keep_warm``, in order: the last is what the pool holds.
        self.warm: list[str] = []

    def keep_warm(self, settings: ContainerSettings, instance: str) -> None:
        self.warm.append(settings.image)

    async def sweep(self, *, keep_instance: str) -> int:
        self.sweeping.set()
        await self.release.wait()
        return await super().sweep(keep_instance=keep_instance)


async def test_a_reload_during_the_start_up_sweep_is_the_configuration_served(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A SIGHUP while the start-up sweep runs: the reloaded configuration is what the
    server then serves, and the one it replaced is the one retired (the start overwrote
    the new one with the start-up one, which it had just retired)."""
    host_key = tmp_path / "host_key"
    write_ed25519_key(host_key)

    def settings(banner: str) -> ServerConfig:
        return load_config(
            None,
            {
                "listen": ["127.0.0.1:0"],
                "host_keys": [str(host_key)],
                "auth": {"banner": banner, "webhook": {"url": "http://127.0.0.1:9/"}},
                "container.image": f"localhost/{banner}:1",
            },
        )

    backend = SlowSweep()
    ctx = build_context(settings("before"), backend)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    shutdown = trio.Event()
    nursery.start_soon(partial(serve, ctx, listeners, shutdown=shutdown))
    with trio.fail_after(10):
        await backend.sweeping.wait()
    retired: list[ServerContext] = []
    reload_context(ctx, lambda: settings("after"), retired.append)
    backend.release.set()
    with trio.fail_after(10):
        while ctx.state.connections_nursery is None:
            await trio.sleep(0.01)
    assert ctx.state.context is not None
    assert ctx.state.context.settings.auth.banner == "after"
    assert retired == [ctx]
    assert backend.warm[-1] == "localhost/after:1"  # the pool too
    shutdown.set()


@needs_ssh
@pytest.mark.parametrize("revoke", ["empty", "delete"])
async def test_emptying_authorized_keys_and_reloading_lets_that_key_in_no_more(
    nursery: trio.Nursery, tmp_path: Path, client_key: ClientKey, revoke: str
) -> None:
    """Removing the last key (or the file) and sending SIGHUP revokes it, as with sshd's
    file (the reload was refused, as "nobody could log in" or as a missing file, and the
    key kept working)."""
    keys = tmp_path / "authorized_keys"
    keys.write_text(client_key.public_line + "\n")
    ctx = make_context(MemoryBackend(), keys, tmp_path / "host_key")
    server = await start_server(nursery, ctx)
    assert (await run_ssh(server.port, client_key.path, "echo in")).stdout == b"in\n"
    if revoke == "empty":
        keys.write_text("# nobody any more\n")
    else:
        keys.unlink()
    reload_context(ctx, lambda: ctx.settings)
    result = await run_ssh(server.port, client_key.path, "echo in")
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr


async def test_a_key_revoked_by_a_reload_is_refused_on_a_connection_opened_before_it(
    tmp_path: Path,
) -> None:
    """A connection keeps the context it was accepted with, but its login asks the newest
    policy: as sshd reads authorized_keys at each attempt, a key removed and SIGHUP'd no
    longer logs in on a connection held open, unauthenticated, since before (cfg reviewer:
    it did, for up to login_grace_time)."""
    from .peer import Peer
    from .test_driver import connected, user_keys

    keys = user_keys(tmp_path)
    ctx = make_context(MemoryBackend(), keys, tmp_path / "host_key")
    with trio.fail_after(20):
        async with connected(ctx) as peer:
            assert isinstance(peer, Peer)
            while not peer.client.established:
                assert await peer._read()
            keys.write_text("# revoked\n")
            reload_context(ctx, lambda: ctx.settings)
            assert ctx.state.context is not ctx
            peer.client.request_service()
            peer.client.auth_publickey()
            await peer.expect(tr.ExtInfo)
            await peer.expect(tr.ServiceAccept)
            await peer.expect(ua.UserauthFailure)
            await peer.stream.aclose()


async def test_a_user_a_reload_added_gets_their_settings_on_a_connection_opened_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The login's limits come from the configuration whose policy let it in: a user a
    SIGHUP added, logging in on a connection opened before it, got the old file's
    defaults instead of their [users.NAME] restrictions (second reader)."""
    from trissh.connection import handshake

    from .test_driver import connected

    alice = {
        "forwarding": {"allow_tcp_forwarding": "no"},
        "session": {"max_sessions_per_connection": 1},
    }
    ctx, reloaded = _nobody_then_alice(tmp_path, alice=alice)
    logins: list[handshake.Login] = []
    real = handshake.login_of

    def recording(*args: Any) -> handshake.Login:
        logins.append(real(*args))
        return logins[-1]

    monkeypatch.setattr(handshake, "login_of", recording)
    with trio.fail_after(20):
        async with connected(ctx) as peer:
            while not peer.client.established:
                assert await peer._read()
            reload_context(ctx, lambda: reloaded)
            peer.client.request_service()
            peer.client.auth_publickey()
            await peer.expect(tr.ExtInfo)
            await peer.expect(tr.ServiceAccept)
            await peer.expect(ua.UserauthSuccess)
            await peer.stream.aclose()
    [login] = logins
    assert login.forwarding.allow_tcp_forwarding == "no"
    assert login.session.max_sessions_per_connection == 1


async def test_a_user_a_reload_added_is_recorded_as_the_new_file_says(tmp_path: Path) -> None:
    """The configuration that let a login in serves all of it: a user a SIGHUP added,
    and whom it also named for recording, logging in on a connection opened before it,
    had sessions recorded (or not) as the old file said (second reader)."""
    from .peer import output_of
    from .test_driver import connected

    recordings = tmp_path / "rec"
    ctx, reloaded = _nobody_then_alice(
        tmp_path, recording={"enabled": True, "directory": str(recordings)}
    )
    with trio.fail_after(20):
        async with connected(ctx) as peer:
            while not peer.client.established:
                assert await peer._read()
            reload_context(ctx, lambda: reloaded)
            await peer.login()
            channel = await peer.open_session()
            await peer.exec(channel, "echo hi")
            assert output_of(await peer.until_close(channel)) == b"hi\n"
            await peer.stream.aclose()
    assert len(list(recordings.glob("*.cast"))) == 1


def _nobody_then_alice(tmp_path: Path, **more: Any) -> tuple[ServerContext, ServerConfig]:
    """A server no one may log in to yet, and the configuration a SIGHUP will read: alice
    added (her ``[users.alice]`` table takes ``alice``'s keys), with ``more`` on top."""
    import base64

    from tests.sshpeer import USER_KEY, ed25519_blob

    host_key, nobody = tmp_path / "host_key", tmp_path / "authorized_keys"
    nobody.write_text("# nobody yet\n")
    line = "ssh-ed25519 " + base64.b64encode(ed25519_blob(USER_KEY)).decode()
    base = {
        "listen": ["127.0.0.1:0"],
        "authorized_keys": str(nobody),
        "host_keys": [str(host_key)],
        "limits.shutdown_grace": 0,
        "auth.failure_delay": 0,
    }
    alice = {"authorized_keys": [line], **more.pop("alice", {})}
    ctx = build_context(load_config(None, base), MemoryBackend())
    return ctx, load_config(None, {**base, "users": {"alice": alice}, **more})
