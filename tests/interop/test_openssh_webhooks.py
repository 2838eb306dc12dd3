"""The real OpenSSH client against trissh backed by ContainerSSH-style webhooks."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trissh.backend.memory import MemoryBackend

from ..auth.http_server import Answer, Received, Server, start
from ..support import (
    ClientKey,
    RunningServer,
    capture_module_log,
    make_context,
    needs_ssh,
    start_server,
    write_ed25519_key,
)
from .test_openssh_auth import NO_KEYS, login, make_askpass

pytestmark = [needs_ssh, pytest.mark.interop]

PASSWORD = "webhook secret"


class Hooks:
    """A scriptable auth + config service; every request is kept for assertions."""

    def __init__(self) -> None:
        self.accept_password = True
        self.accept_keys: set[str] = set()
        self.authz = True
        self.config: dict[str, Any] = {}
        self.status = 200
        #: Paths answered with HTTP 500 (an outage of that endpoint alone).
        self.failing: set[str] = set()
        self.kbd_rounds: list[dict[str, Any]] = []
        #: The authenticatedUsername a right password gets.
        self.mapped = "mapped"
        #: The environment a /pubkey answer gives with its yes.
        self.key_environment: dict[str, str] = {}

    async def __call__(self, request: Received) -> Answer:
        if self.status != 200:
            return self.status, b"{}"
        body = request.body
        path = request.path.removeprefix("/hooks")
        if path in self.failing:
            return 500, b"{}"
        if path == "/password":
            password = base64.b64decode(body["passwordBase64"]).decode()
            ok = self.accept_password and password == PASSWORD
            return {"success": ok, "authenticatedUsername": self.mapped if ok else None}
        if path == "/pubkey":
            ok = body["publicKey"] in self.accept_keys
            environment = {k: {"value": v} for k, v in self.key_environment.items()}
            return {"success": ok, "environment": environment if ok else {}}
        if path == "/authz":
            return {"success": self.authz}
        if path == "/keyboard-interactive":
            self.kbd_rounds.append(body)
            if body["round"] == 0:
                return {"success": None, "prompts": [{"prompt": "Password: ", "echo": False}],
                        "state": "asked-password"}  # fmt: skip
            ok = body["state"] == "asked-password" and body["answers"] == [PASSWORD]
            return {"success": ok}
        if path == "/config":
            return {"config": self.config}
        return 404, b"{}"


@pytest.fixture
def hooks() -> Hooks:
    return Hooks()


@pytest.fixture
async def webhook(nursery: trio.Nursery, hooks: Hooks) -> Server:
    return await start(nursery, hooks)


ServerFactory = Callable[..., Any]


@pytest.fixture
async def make_server(
    nursery: trio.Nursery, webhook: Server, tmp_path: Path
) -> AsyncIterator[ServerFactory]:
    servers: list[RunningServer] = []

    async def make(
        users: dict[str, Any] | None = None,
        forwarding: dict[str, Any] | None = None,
        authorized_keys: Path = Path(os.devnull),
        **auth: Any,
    ) -> RunningServer:
        ctx = make_context(
            MemoryBackend(images={"localhost/trissh-base:latest"}), authorized_keys,
            tmp_path / "host_key",
            auth={"failure_delay": 0, "webhook": {"url": webhook.url, "retries": 0,
                                                  "timeout": 2, **auth},
                  "config_webhook": {"url": webhook.url + "/config", "retries": 0}},
            users=users or {}, forwarding=forwarding or {},
        )  # fmt: skip
        server = await start_server(nursery, ctx)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture
def askpass(tmp_path: Path) -> Path:
    return make_askpass(tmp_path, PASSWORD)


async def test_password_checked_by_the_webhook(
    make_server: ServerFactory, askpass: Path, webhook: Server
) -> None:
    """/password gets passwordBase64 and the ContainerSSH connection fields."""
    server = await make_server()
    result = await login(
        server, "alice", askpass, *NO_KEYS, "-o", "PreferredAuthentications=password"
    )
    assert (result.returncode, result.stdout) == (0, b"in\n"), result.stderr
    [sent] = [r.body for r in webhook.received if r.path.endswith("/password")]
    assert sent["username"] == "alice"
    assert sent["remoteAddress"].startswith("127.0.0.1:")
    assert sent["clientVersion"].startswith("SSH-2.0-OpenSSH_")
    assert base64.b64decode(sent["passwordBase64"]).decode() == PASSWORD
    [config] = [r.body for r in webhook.received if r.path.endswith("/config")]
    assert config["authenticatedUsername"] == "mapped"  # the webhook's name for alice


async def test_a_user_with_a_table_of_their_own_still_logs_in_by_the_webhook(
    make_server: ServerFactory, askpass: Path
) -> None:
    """A ``[users.alice]`` table that only overrides settings (no password_hash, no
    authentication_methods) leaves her password to the webhook, as for anyone else."""
    server = await make_server(users={"alice": {"session": {"max_sessions_per_connection": 2}}})
    result = await login(
        server, "alice", askpass, *NO_KEYS, "-o", "PreferredAuthentications=password"
    )
    assert (result.returncode, result.stdout) == (0, b"in\n"), result.stderr


async def test_keyboard_interactive_is_offered_only_when_the_webhook_answers_it(
    make_server: ServerFactory, askpass: Path
) -> None:
    """Without ``keyboard_interactive`` the webhook cannot check its answers: offering it
    would cost the client a failed attempt (or all of them) before its password is tried."""
    server = await make_server(users={"alice": {"session": {"max_sessions_per_connection": 2}}})
    for user in ("alice", "bob"):
        assert server.ctx.auth.chains_for(user).next_methods([]) == ("publickey", "password")
        result = await login(server, user, askpass, *NO_KEYS)  # the client's own order
        assert (result.returncode, result.stdout) == (0, b"in\n"), result.stderr


async def test_what_an_unproven_keys_answer_gave_does_not_reach_the_session(
    make_server: ServerFactory, askpass: Path, hooks: Hooks, tmp_path: Path
) -> None:
    """The client offers a key the webhook accepts (with ROLE=admin) but cannot sign with
    it (its passphrase is not given), then logs in by password: the key's answer was never
    proved, so its environment must not reach the session (Go's ssh keeps only the
    permissions of the key whose signature verified)."""
    key = tmp_path / "locked"
    await trio.run_process(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "not given", "-f", str(key)],
        capture_stdout=True,
    )
    hooks.accept_keys = {" ".join(key.with_suffix(".pub").read_text().split()[:2])}
    hooks.key_environment = {"ROLE": "admin"}
    server = await make_server()
    result = await login(
        server, "alice", askpass, "-o", "IdentitiesOnly=yes", "-i", str(key),
        "-o", "PreferredAuthentications=publickey,password",
        command="printenv ROLE; echo end",
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, b"end\n"), result.stderr


async def test_public_key_checked_by_the_webhook(
    make_server: ServerFactory, askpass: Path, hooks: Hooks, client_key: ClientKey
) -> None:
    hooks.accept_keys = {" ".join(client_key.public_line.split()[:2])}
    server = await make_server()
    with_key = ("-o", "IdentitiesOnly=yes", "-i", str(client_key.path))
    result = await login(server, "alice", askpass, *with_key)
    assert result.stdout == b"in\n", result.stderr
    hooks.accept_keys = set()
    refused = await login(
        server, "alice", askpass, *with_key, "-o", "PreferredAuthentications=publickey"
    )
    assert refused.returncode == 255


async def test_authz_can_refuse_an_authenticated_user(
    make_server: ServerFactory, askpass: Path, hooks: Hooks
) -> None:
    hooks.authz = False
    server = await make_server(authz=True)
    result = await login(
        server, "alice", askpass, *NO_KEYS, "-o", "PreferredAuthentications=password"
    )
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr


async def test_config_server_overrides_the_container(
    make_server: ServerFactory, askpass: Path, hooks: Hooks
) -> None:
    """The configuration server's image wins: here one that does not exist, so the user
    reads the image name in the failure message."""
    hooks.config = {
        "backend": "docker",
        "docker": {"execution": {"container": {"image": "localhost/from-config-server:1"}}},
    }
    server = await make_server()
    result = await login(
        server, "alice", askpass, *NO_KEYS, "-o", "PreferredAuthentications=password"
    )
    assert b"localhost/from-config-server:1" in result.stderr, result.stderr


PROHIBITED = b"open failed: administratively prohibited: TCP forwarding (local) is not allowed"
#: Nothing listens on the in-process sandbox's port 9: a forward that was let through.
REACHED = b"open failed: connect failed: Connection refused"


def switches(**modes: str) -> dict[str, Any]:
    return {"security": {"forwarding": modes}}


@pytest.mark.parametrize(
    ("configured", "config", "shown"),
    [
        ("yes", switches(forwardingMode="disable"), PROHIBITED),
        ("yes", switches(forwardingMode="filter"), PROHIBITED),
        ("no", switches(forwardingMode="enable"), REACHED),
        ("remote", switches(reverseForwardingMode="disable"), PROHIBITED),  # local as set
        ("local", switches(reverseForwardingMode="disable"), REACHED),
        ("yes", {"trissh": {"forwarding": {"allow_tcp_forwarding": "remote"}}}, PROHIBITED),
        ("no", {"trissh": {"forwarding": {"allow_tcp_forwarding": "yes"}}}, REACHED),
    ],
)
async def test_the_configuration_server_sets_the_logins_forwarding(
    make_server: ServerFactory, askpass: Path, hooks: Hooks,
    configured: str, config: dict[str, Any], shown: bytes,
) -> None:  # fmt: skip
    """ContainerSSH's ``security.forwarding`` switches, or trissh's own keys, grant or refuse
    forwarding for this login over trissh's ``[forwarding]``: ``ssh -W`` shows which."""
    hooks.config = config
    server = await make_server(forwarding={"allow_tcp_forwarding": configured})
    result = await login(
        server, "alice", askpass, *NO_KEYS, "-o", "PreferredAuthentications=password",
        "-v", "-W", "localhost:9", command="",
    )  # fmt: skip
    assert shown in result.stderr, result.stderr[-2000:]


async def test_failing_webhook_fails_the_login_and_the_server_goes_on(
    make_server: ServerFactory, askpass: Path, hooks: Hooks
) -> None:
    hooks.status = 500
    server = await make_server()
    result = await login(
        server, "alice", askpass, *NO_KEYS, "-o", "PreferredAuthentications=password"
    )
    assert result.returncode == 255
    hooks.status = 200
    again = await login(
        server, "alice", askpass, *NO_KEYS, "-o", "PreferredAuthentications=password"
    )
    assert again.stdout == b"in\n", again.stderr


async def test_a_failing_webhook_costs_only_the_key_it_was_asked_about(
    make_server: ServerFactory, askpass: Path, hooks: Hooks, client_key: ClientKey,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """/pubkey failing refuses the key it was asked about, as sshd treats a failing
    AuthorizedKeysCommand; the client's next key, which the local file accepts, logs in,
    and the operator reads one warning naming the endpoint (not a crashed connection)."""
    logged = capture_module_log(monkeypatch, "trissh.auth.webhook_calls")
    hooks.failing = {"/pubkey"}
    keys = tmp_path / "authorized_keys"
    keys.write_text(client_key.public_line + "\n")
    unknown = write_ed25519_key(tmp_path / "unknown_key")
    server = await make_server(authorized_keys=keys)
    result = await login(
        server, "alice", askpass, "-o", "IdentitiesOnly=yes", "-i", str(unknown.path),
        "-i", str(client_key.path), "-o", "PreferredAuthentications=publickey",
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, b"in\n"), result.stderr
    failed = [(e["log_level"], e["endpoint"]) for e in logged if "webhook" in e["event"]]
    assert failed == [("warning", "pubkey")]


@pytest.mark.parametrize(
    ("endpoint", "method", "auth", "event"),
    [
        ("/password", "password", {}, "auth_webhook_failed"),
        ("/keyboard-interactive", "keyboard-interactive", {"keyboard_interactive": True},
         "auth_webhook_failed"),
        ("/authz", "password", {"authz": True}, "auth_webhook_failed"),
        ("/config", "password", {}, "config_webhook_failed"),
    ],
)  # fmt: skip
async def test_a_failing_webhook_refuses_the_login_with_one_log_line(
    make_server: ServerFactory, askpass: Path, hooks: Hooks, monkeypatch: pytest.MonkeyPatch,
    endpoint: str, method: str, auth: dict[str, Any], event: str,
) -> None:  # fmt: skip
    """An endpoint that fails refuses the login as a "no" would (the client reads
    "Permission denied", not "internal server error"), the operator reads one line saying
    which service failed, and the server goes on."""
    modules = ("trissh.auth.webhook_calls", "trissh.auth.policy")
    logs = [capture_module_log(monkeypatch, module) for module in modules]
    hooks.failing = {endpoint}
    server = await make_server(**auth)
    preferred = ("-o", f"PreferredAuthentications={method}")
    result = await login(server, "alice", askpass, *NO_KEYS, *preferred)
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr, result.stderr
    assert [e["event"] for log in logs for e in log if "webhook" in e["event"]] == [event]
    hooks.failing = set()
    again = await login(server, "alice", askpass, *NO_KEYS, *preferred)
    assert again.stdout == b"in\n", again.stderr


async def test_a_webhook_password_user_types_the_password_once(
    make_server: ServerFactory, askpass: Path
) -> None:
    """Stock OpenSSH tries keyboard-interactive before password: with a webhook that checks
    passwords only, that attempt fails at once and the one password prompt logs in (second
    reader: a change against name probing sent this user prompts that could never succeed,
    three of them, and with three keys in an agent max_auth_attempts came first)."""
    server = await make_server()
    result = await login(server, "alice", askpass, *NO_KEYS)
    assert result.stdout == b"in\n", result.stderr
    asked = (askpass.parent / "asked").read_text().splitlines()
    assert len(asked) == 1, asked
    assert "password" in asked[0], asked


async def test_keyboard_interactive_driven_by_the_webhook(
    make_server: ServerFactory, askpass: Path, hooks: Hooks
) -> None:
    server = await make_server(keyboard_interactive=True)
    result = await login(
        server, "alice", askpass, *NO_KEYS, "-o", "PreferredAuthentications=keyboard-interactive"
    )
    assert (result.returncode, result.stdout) == (0, b"in\n"), result.stderr
    assert [r["round"] for r in hooks.kbd_rounds] == [0, 1]


async def test_a_refused_name_never_reaches_the_webhook(
    make_server: ServerFactory, askpass: Path, webhook: Server
) -> None:
    """A name the rule refuses fails before any webhook call: the service never sees it."""
    server = await make_server()
    password = ("-o", "PreferredAuthentications=password")
    refused = await login(server, "../etc", askpass, *NO_KEYS, *password)
    assert refused.returncode == 255
    assert webhook.received == []
    accepted = await login(server, "alice", askpass, *NO_KEYS, *password)
    assert accepted.returncode == 0, accepted.stderr  # the same login, a name that passes
    assert webhook.received


async def test_a_name_the_webhook_maps_to_passes_the_rule_too(
    make_server: ServerFactory, askpass: Path, hooks: Hooks, webhook: Server
) -> None:
    """authenticatedUsername becomes the container's user and labels: one the rule
    refuses fails the login, and the configuration server is not asked."""
    hooks.mapped = "mapped user\nroot"
    server = await make_server()
    result = await login(
        server, "alice", askpass, *NO_KEYS, "-o", "PreferredAuthentications=password"
    )
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr
    assert [r.path.removeprefix("/hooks") for r in webhook.received] == ["/password"]
