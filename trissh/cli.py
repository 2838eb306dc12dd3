"""The ``trissh`` command: run the server, or ``trissh doctor`` to check the host.

Exit codes: 0 clean stop, 1 start-up failure (host keys, ports, backend), 2 bad
configuration or usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import importlib.resources
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from trissh import __version__
from trissh.addresses import parse_listen
from trissh.auth.authorized_keys import AuthorizedKey
from trissh.auth.policy import AuthPolicy, PolicyError, load_key_file
from trissh.backend import DEFAULT_IMAGE, Backend
from trissh.backend.registry import make_backend
from trissh.config import ConfigError, ServerConfig, container_settings, load_config
from trissh.ops.log import configure_logging
from trissh.ops.metrics import Metrics
from trissh.ops.recording import Recorder
from trissh.protocol import HostKey, ProtocolConfig
from trissh.server.hostkeys import HostKeyError, load_or_create_host_key
from trissh.server.listener import open_listeners, serve
from trissh.server.state import ServerContext

log = structlog.get_logger("trissh")

_DESCRIPTION = """\
An SSH server that runs every session in a fresh rootless podman container.

commands:
  (none)          run the server
  doctor          check keys, podman service, runtime and image, run a program in a
                  container as a login would, and say how to fix each problem
  check-config    validate the configuration (and the files it names) without starting
  print-default-config  print a configuration file with every key and its default
  hash-password   read a password (stdin or prompt) and print the password_hash to configure
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trissh",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=["run", "doctor", "check-config", "print-default-config", "hash-password"],
        default="run",
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"trissh {__version__}")
    parser.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="address to listen on; repeatable (default 0.0.0.0:2222)",
    )
    parser.add_argument(
        "--host-key",
        action="append",
        type=Path,
        metavar="PATH",
        help="host key file; repeatable; an ed25519 key is generated if missing",
    )
    parser.add_argument(
        "--authorized-keys",
        type=Path,
        metavar="PATH",
        help="OpenSSH authorized_keys; these keys may log in as any user name",
    )
    parser.add_argument(
        "--podman-url",
        metavar="URL",
        help="podman service (default $CONTAINER_HOST, else $XDG_RUNTIME_DIR/podman/podman.sock,"
        " else /run/trissh-podman/podman.sock from scripts/setup-host.sh)",
    )
    parser.add_argument(
        "--image", metavar="NAME", help=f"container image (default {DEFAULT_IMAGE})"
    )
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML file with the same settings; flags win"
    )
    parser.add_argument(
        "--log-format", choices=["json", "console"], help="json (default): one event per line"
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics, /healthz and /readyz there",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "listen": args.listen,
        "host_keys": [str(p) for p in args.host_key] if args.host_key else None,
        "authorized_keys": str(args.authorized_keys) if args.authorized_keys else None,
        "podman.url": args.podman_url,
        "container.image": args.image,
        "log_format": args.log_format,
        "log_level": args.log_level,
        "metrics.listen": args.metrics_listen,
    }


def default_config_text() -> str:
    """The documented example configuration shipped with the package."""
    return (importlib.resources.files("trissh") / "default-config.toml").read_text()


def check_config(settings: ServerConfig) -> int:
    """Everything a start would check but the ports and podman: keys, users, algorithms."""
    from trissh.backend.memory import MemoryBackend

    try:
        build_context(settings, MemoryBackend())
    except StartupError as exc:
        print(f"trissh: {exc}", file=sys.stderr)
        return 2
    print("configuration OK")
    return 0


def hash_password_command() -> int:
    """Print an argon2id hash of a password read from stdin, or typed twice at a prompt."""
    from trissh.auth.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("trissh: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("trissh: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "hash-password":
        return hash_password_command()
    if args.command == "print-default-config":
        print(default_config_text(), end="")
        return 0
    overrides = _overrides(args)
    try:
        settings = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"trissh: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "check-config":
        return check_config(settings)
    if args.command == "doctor":
        from trissh.ops.doctor import run_doctor

        return trio.run(run_doctor, settings)
    try:
        return trio.run(_run_server, settings, lambda: load_config(args.config, overrides))
    except StartupError as exc:
        print(f"trissh: {exc}", file=sys.stderr)
        return 1


class StartupError(Exception):
    """The server cannot start; the message says why and what to do."""


def metered_backend(settings: ServerConfig, metrics: Metrics) -> Backend:
    """The configured backend, its container operations timed and its warm pool counted."""
    backend = make_backend(settings, metrics.container_operation)
    metrics.warm_containers.set_function(lambda: backend.warm_containers)
    return backend


def make_recorder(settings: ServerConfig, metrics: Metrics) -> Recorder | None:
    section = settings.recording
    if not section.enabled:
        return None
    return Recorder(
        section.directory,
        max_bytes=section.max_bytes,
        record_input=section.record_input,
        on_failure=metrics.recording_failed,
    )


def load_host_keys(settings: ServerConfig) -> tuple[HostKey, ...]:
    keys = []
    for path in settings.host_key_paths():
        try:
            key, created = load_or_create_host_key(path)
        except (HostKeyError, OSError) as exc:
            raise StartupError(str(exc)) from None
        if created:
            log.info("host_key_created", path=str(path), fingerprint=key.fingerprint)
        keys.append(key)
    return tuple(keys)


def build_context(
    settings: ServerConfig,
    backend: Backend,
    *,
    previous: ServerContext | None = None,
    metrics: Metrics | None = None,
) -> ServerContext:
    """Everything connections share. With ``previous`` (a reload), the backend, instance
    and live state carry over; only what the configuration says is rebuilt."""
    global_keys: list[AuthorizedKey] = []
    if settings.authorized_keys is not None:
        try:
            global_keys = load_key_file(settings.authorized_keys)
        except PolicyError as exc:
            raise StartupError(str(exc)) from None
    auth = settings.auth
    ways_in = (
        global_keys,
        settings.users,
        auth.webhook,
        auth.trusted_user_ca_keys,
        auth.trusted_user_ca_keys_file,
    )
    if not any(ways_in):
        raise StartupError(
            "nobody could log in: give --authorized-keys FILE, or configure [users.NAME],"
            " [auth] trusted_user_ca_keys or [auth.webhook]"
        )
    try:
        policy = AuthPolicy(settings, global_keys)
    except PolicyError as exc:
        raise StartupError(str(exc)) from None
    host_keys = load_host_keys(settings)
    try:
        protocol = ProtocolConfig(
            host_keys=host_keys,
            max_auth_attempts=settings.limits.max_auth_attempts,
            accept_env=settings.session.accept_env,
            auth_methods=policy.methods,
            **settings.ssh.protocol_options(),
        )
    except ValueError as exc:
        raise StartupError(f"[ssh]: {exc}") from None
    if previous is not None:
        return dataclasses.replace(
            previous,
            settings=settings,
            protocol=protocol,
            auth=policy,
            recorder=make_recorder(settings, previous.metrics),
        )
    metrics = metrics or Metrics()
    return ServerContext(
        settings=settings,
        protocol=protocol,
        auth=policy,
        backend=backend,
        instance=secrets.token_hex(8),
        metrics=metrics,
        recorder=make_recorder(settings, metrics),
    )


def reload_context(
    ctx: ServerContext,
    load: Callable[[], ServerConfig],
    retire: Callable[[ServerContext], None] = lambda _: None,
) -> None:
    """SIGHUP: read the configuration again; new connections get it, live ones keep theirs.
    A bad file changes nothing but a log line. ``retire`` gets the replaced context."""
    old = ctx.state.context or ctx
    try:
        settings = load()
        new = build_context(settings, ctx.backend, previous=old)
    except (ConfigError, StartupError) as exc:
        log.error("config_reload_failed", error=str(exc))
        return
    if settings.listen != ctx.settings.listen:
        log.warning("config_reload_listen_ignored", detail="listen addresses change on restart")
    configure_logging(settings.log_format, settings.log_level)
    ctx.backend.keep_warm(container_settings(settings.container), ctx.instance)
    ctx.state.context = new
    retire(old)
    log.info("config_reloaded", users=len(settings.users))


async def retire_context(old: ServerContext) -> None:
    """Close a replaced context's webhook clients once its logins are over: connections
    keep the context they started with, and each login ends within its grace time."""
    try:
        await trio.sleep(old.settings.limits.login_grace_time)
    finally:
        await old.auth.aclose()


async def _run_server(settings: ServerConfig, load: Callable[[], ServerConfig]) -> int:
    metrics = Metrics()
    ctx = build_context(settings, metered_backend(settings, metrics), metrics=metrics)
    try:
        listeners = await open_listeners([parse_listen(item) for item in settings.listen])
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {', '.join(settings.listen)}: {exc.strerror}"
        ) from None
    shutdown = trio.Event()
    try:
        async with trio.open_nursery() as nursery:

            def retire(old: ServerContext) -> None:
                nursery.start_soon(retire_context, old)

            nursery.start_soon(
                _watch_signals,
                shutdown,
                nursery.cancel_scope,
                lambda: reload_context(ctx, load, retire),
            )
            await serve(ctx, listeners, shutdown=shutdown)
            nursery.cancel_scope.cancel()  # retired contexts close now, in their finally
    finally:
        await (ctx.state.context or ctx).auth.aclose()
    return 0


async def _watch_signals(
    shutdown: trio.Event, everything: trio.CancelScope, reload: Callable[[], None]
) -> None:
    """SIGHUP: reload. First SIGTERM/SIGINT: graceful stop. Second: cancel at once (the
    cleanup of every container still runs, bounded)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal_received", signal=signal.Signals(signum).name)
            if signum == signal.SIGHUP:
                reload()
                continue
            if shutdown.is_set():
                everything.cancel()
            shutdown.set()
