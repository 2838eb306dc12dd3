"""Helpers shared by test modules: keys, an in-process server, the real OpenSSH client."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
import structlog
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from trissh.backend import Backend
from trissh.config import load_config
from trissh.server.build import build_context
from trissh.server.listener import open_listeners, serve
from trissh.server.state import ServerContext


@dataclass(frozen=True)
class ClientKey:
    path: Path
    public_line: str


def write_ed25519_key(path: Path) -> ClientKey:
    """An OpenSSH private key file (0600) and its public line, made without ssh-keygen."""
    private = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return ClientKey(path, public.decode() + " test@trissh")


def make_context(
    backend: Backend, authorized_keys: Path, host_key: Path, **overrides: Any
) -> ServerContext:
    settings = load_config(
        None,
        {
            "listen": ["127.0.0.1:0"],
            "authorized_keys": str(authorized_keys),
            "host_keys": [str(host_key)],
            "limits.shutdown_grace": 0,  # tests that want a grace say so
            **overrides,
        },
    )
    return build_context(settings, backend)


@dataclass
class RunningServer:
    port: int
    ctx: ServerContext
    shutdown: trio.Event
    done: trio.Event = field(default_factory=trio.Event)

    async def stop(self, timeout: float = 30) -> None:
        self.shutdown.set()
        with trio.fail_after(timeout):
            await self.done.wait()


async def start_server(nursery: trio.Nursery, ctx: ServerContext) -> RunningServer:
    listeners = await open_listeners([("127.0.0.1", 0)])
    port = listeners[0].socket.getsockname()[1]
    server = RunningServer(port=port, ctx=ctx, shutdown=trio.Event())

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            await serve(ctx, listeners, shutdown=server.shutdown, task_status=task_status)
        finally:
            server.done.set()

    await nursery.start(run)
    return server


# -- environment guards ---------------------------------------------------------------------
# One rule (docs/testing.md): a missing tool, package or service skips its tests only in the
# fast default session; under the README's test command (`scripts/nox -s ci`, `-s podman`,
# which set TRISSH_REQUIRE_ALL=1) or CI=true it fails them, saying what to install.

#: How to get each binary a test needs (scripts/setup-host.sh installs all of them).
DEBIAN_PACKAGES: dict[str, str] = {
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ssh-keyscan": "openssh-client",
    "sftp": "openssh-client",
    "scp": "openssh-client",
    "tmux": "tmux",
    "haproxy": "haproxy",
    "plink": "putty-tools",
    "pscp": "putty-tools",
    "psftp": "putty-tools",
    "puttygen": "putty-tools",
    "dbclient": "dropbear-bin",
    "dropbearconvert": "dropbear-bin",
    "asciinema": "asciinema",
    "script": "bsdutils",
    "rsync": "rsync",
    "git": "git",
    "docker-registry": "docker-registry",
    "htpasswd": "apache2-utils",
    "podman": "podman",
}


def environment_required() -> bool:
    """True when every tool, package and podman must be present (a gap fails, not skips)."""
    return (
        os.environ.get("TRISSH_REQUIRE_ALL") == "1"
        or os.environ.get("TRISSH_REQUIRE_PODMAN") == "1"  # its older name
        or os.environ.get("CI", "").lower() == "true"
    )


def missing(what: str, install: str) -> NoReturn:
    """Skip the test, or fail it when the environment is required."""
    message = f"{what} is missing: {install}"
    if environment_required():
        pytest.fail(f"{message} (TRISSH_REQUIRE_ALL/CI: tests may not skip)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require(present: bool, what: str, install: str) -> None:
    if not present:
        missing(what, install)


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        package = DEBIAN_PACKAGES.get(name, name)
        missing(name, f"run scripts/setup-host.sh as root (apt-get install {package})")
    return path


def require_module(name: str) -> Any:
    """The module (typed Any: the test clients ship incomplete types), or skip/fail."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"Python package {name} ({exc})", "pip install -e '.[test]'")


def needs(*binaries: str) -> pytest.MarkDecorator:
    """Mark a test (or ``pytestmark``) as needing these binaries; checked at set-up by
    tests/conftest.py with :func:`require_binary`."""
    return pytest.mark.needs(*binaries)


SSH = shutil.which("ssh")
needs_ssh = needs("ssh")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (for a server the test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ssh_argv(port: int, key: Path, *args: str, user: str = "alice") -> list[str]:
    return [
        require_binary("ssh"),
        "-F", "/dev/null",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR",
        "-o", "IdentitiesOnly=yes",
        "-o", "ConnectTimeout=10",
        "-i", str(key),
        "-p", str(port),
        f"{user}@127.0.0.1",
        *args,
    ]  # fmt: skip


async def run_ssh(
    port: int,
    key: Path,
    *args: str,
    stdin: bytes = b"",
    user: str = "alice",
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    """Run the real OpenSSH client; bounded, never raises on a non-zero exit."""
    with trio.fail_after(timeout):
        return await trio.run_process(
            ssh_argv(port, key, *args, user=user),
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


def run_module(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m trissh ARGS`` as an operator types it, bounded."""
    return subprocess.run(
        [sys.executable, "-m", "trissh", *args], capture_output=True, text=True, timeout=timeout
    )


def capture_module_log(
    monkeypatch: pytest.MonkeyPatch, module: str, *, bound: bool = False
) -> list[MutableMapping[str, Any]]:
    """A module's log lines from info up, as dicts (``bound``: with the context bound to
    them, as the real loggers have it). The suite logs at warning, and a structlog logger
    keeps the configuration it was first used with, so ``capture_logs`` alone misses them:
    the module's ``log`` is swapped for a capturing one."""
    capture = structlog.testing.LogCapture()
    context = [structlog.contextvars.merge_contextvars] if bound else []
    logger = structlog.wrap_logger(
        None,
        processors=[*context, capture],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    monkeypatch.setattr(f"{module}.log", logger)
    return capture.entries
