"""trissh as a ContainerSSH drop-in, against an authentication and configuration server
written from ContainerSSH's OpenAPI document (tests/auth/containerssh_server.py), with the
real OpenSSH client and real containers: a file and an environment variable from each hook
reach the program; metadata travels to the later hooks, sensitive values never; the
configuration server's answer is applied, or refused naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import trio

from ..auth.containerssh_server import (
    ContainerSSHServer,
    file_value,
    start_containerssh_server,
    value,
)
from ..interop.test_openssh_auth import NO_KEYS, login, make_askpass
from ..support import ClientKey, RunningServer, capture_module_log, make_context, needs
from ..support import start_server as start_trissh
from .conftest import podman_backend

pytestmark = [pytest.mark.podman, needs("ssh")]

PASSWORD = "pw of the auth server"
TOKEN = "tok-9f8e7d"  # a sensitive metadata value: used by hooks, never sent on
SECRET_ENV = "env-secret-31337"  # a sensitive environment value: reaches programs, not hooks
PROBE = (
    'for v in "$FROM_AUTH" "$FROM_AUTHZ" "$FROM_CONFIG" "$SHARED" "$SECRET_ENV";'
    ' do echo "$v"; done;'
    " cat /etc/trissh-test/auth.txt /etc/trissh-test/authz.txt /root/config.txt"
)


@pytest.fixture
async def hooks(nursery: trio.Nursery) -> ContainerSSHServer:
    server = await start_containerssh_server(nursery)
    server.password = PASSWORD
    auth_extras = {
        "metadata": {"stage": value("auth"), "token": value(TOKEN, sensitive=True)},
        "environment": {
            "FROM_AUTH": value("auth-env"),
            "SHARED": value("from-auth"),
            "SECRET_ENV": value(SECRET_ENV, sensitive=True),
        },
        "files": {"/etc/trissh-test/auth.txt": file_value(b"auth file\n")},
    }
    server.extras = {
        "/password": auth_extras,
        "/pubkey": auth_extras,
        "/authz": {
            "metadata": {"authz": value("yes")},
            "environment": {"FROM_AUTHZ": value("authz-env"), "SHARED": value("from-authz")},
            "files": {"/etc/trissh-test/authz.txt": file_value(b"authz file\n")},
        },
        "/config": {
            "environment": {"FROM_CONFIG": value("config-env"), "SHARED": value("from-config")},
            "files": {"/root/config.txt": file_value(b"config file\n", sensitive=True)},
        },
    }
    server.config = {
        "backend": "docker",
        "docker": {"execution": {"container": {"env": ["FROM_CONTAINER_ENV=1"]}}},
    }
    return server


@pytest.fixture
async def trissh(
    nursery: trio.Nursery, podman_url: str, hooks: ContainerSSHServer, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    webhook = {"url": hooks.url, "authz": True, "retries": 0, "timeout": 5}
    ctx = make_context(
        podman_backend(podman_url), Path("/dev/null"), tmp_path / "host_key",
        auth={"failure_delay": 0, "webhook": webhook,
              "config_webhook": {"url": hooks.url + "/config", "retries": 0}},
    )  # fmt: skip
    server = await start_trissh(nursery, ctx)
    yield server
    await server.stop()


@pytest.fixture
def askpass(tmp_path: Path) -> Path:
    return make_askpass(tmp_path, PASSWORD)


class Logs:
    """The log lines of the modules that see webhook answers and sessions (live lists)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        modules = ("trissh.auth.policy", "trissh.channels.session", "trissh.connection.driver")
        self._captured = [capture_module_log(monkeypatch, module) for module in modules]

    def __iter__(self) -> Iterator[MutableMapping[str, Any]]:
        return (line for lines in self._captured for line in lines)


def logs(monkeypatch: pytest.MonkeyPatch) -> Logs:
    return Logs(monkeypatch)


EXPECTED = (
    "auth-env\nauthz-env\nconfig-env\nfrom-config\n"
    f"{SECRET_ENV}\nauth file\nauthz file\nconfig file\n"
).encode()


async def test_a_file_and_a_variable_from_every_hook_reach_the_program(
    monkeypatch: pytest.MonkeyPatch,
    trissh: RunningServer,
    hooks: ContainerSSHServer,
    askpass: Path,
    client_key: ClientKey,
) -> None:
    """Password and public key logins: the environment of /password (or /pubkey), /authz
    and the configuration server, merged in that order (SHARED: the last one wins), and
    their files, written into the container before the program ran."""
    lines = logs(monkeypatch)
    by_password = await login(
        trissh, "alice", askpass, *NO_KEYS, "-o", "PreferredAuthentications=password",
        command=PROBE,
    )  # fmt: skip
    assert (by_password.returncode, by_password.stdout) == (0, EXPECTED), by_password.stderr
    hooks.keys = {" ".join(client_key.public_line.split()[:2])}
    with_key = ("-o", "IdentitiesOnly=yes", "-i", str(client_key.path))
    by_key = await login(trissh, "bob", askpass, *with_key, command=PROBE)
    assert (by_key.returncode, by_key.stdout) == (0, EXPECTED), by_key.stderr
    assert hooks.violations == []
    events = [line["event"] for line in lines]
    assert events.count("webhook_files_placed") == 2
    assert "auth_succeeded" in events  # (the capture sees the login's lines)
    assert all(TOKEN not in repr(line) and SECRET_ENV not in repr(line) for line in lines)


async def test_metadata_travels_on_and_sensitive_values_never_do(
    trissh: RunningServer, hooks: ContainerSSHServer, askpass: Path
) -> None:
    """/authz gets what /password returned, the configuration server what both returned;
    sensitive entries (the token, the secret variable, a sensitive file) are never sent."""
    result = await login(
        trissh, "alice", askpass, *NO_KEYS, "-o", "PreferredAuthentications=password"
    )
    assert result.returncode == 0, result.stderr
    [authz] = hooks.received["/authz"]
    [config] = hooks.received["/config"]
    assert authz["metadata"] == {"stage": value("auth")}
    assert authz["environment"] == {"FROM_AUTH": value("auth-env"), "SHARED": value("from-auth")}
    assert config["metadata"] == {"stage": value("auth"), "authz": value("yes")}
    assert config["environment"]["SHARED"] == value("from-authz")
    assert set(config["files"]) == {"/etc/trissh-test/auth.txt", "/etc/trissh-test/authz.txt"}
    for sent in (authz, config):
        assert TOKEN not in repr(sent)
        assert SECRET_ENV not in repr(sent)


async def test_a_config_answer_with_an_unsupported_field_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    trissh: RunningServer,
    hooks: ContainerSSHServer,
    askpass: Path,
) -> None:
    lines = logs(monkeypatch)
    hooks.config = {"docker": {"execution": {"host": {"CapAdd": ["NET_ADMIN"]}}}}
    result = await login(
        trissh, "alice", askpass, *NO_KEYS, "-o", "PreferredAuthentications=password"
    )
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr
    [rejected] = [line for line in lines if line["event"] == "config_webhook_rejected"]
    assert rejected["error"] == "config.docker.execution.host.CapAdd: not supported by trissh"
