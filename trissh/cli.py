"""The ``trissh`` command: run the server, ``trissh doctor`` to check the host, or
``trissh sessions|kill|watch|drain`` to operate a running server (trissh/admin/).

Exit codes: 0 clean stop, 1 start-up failure (host keys, ports, backend), 2 bad
configuration or usage.
"""

from __future__ import annotations

import argparse
import getpass
import importlib.resources
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from trissh import __version__
from trissh.backend import DEFAULT_IMAGE
from trissh.config import ConfigError, ServerConfig, load_config
from trissh.ops.log import configure_logging
from trissh.server.build import StartupError, build_context
from trissh.server.hostkeys import HostKeyError, load_host_key, sshfp_records
from trissh.server.process import run_server

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
  sshfp           print DNS SSHFP records for the host keys (--host NAME; as ssh-keygen -r)

operating a running server (through its [admin] socket, as its user or root):
  sessions        list connections and their sessions (--json for all fields)
  kill CONN       end a connection as a disconnect would: its sessions and containers go
  watch CONN:CH   show a session's terminal live, read-only (--notify tells the user)
  drain           stop gracefully: /readyz 503 at once, serve for [limits] drain_time,
                  then stop accepting and give sessions [limits] shutdown_grace
  workspaces      list users' workspaces and home volumes; `workspaces remove [--volume] USER`
"""

_ADMIN_COMMANDS = ("sessions", "kill", "watch", "drain")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trissh",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=[
            "run", "doctor", "check-config", "print-default-config", "hash-password", "sshfp",
            *_ADMIN_COMMANDS,
            "workspaces",
        ],
        default="run",
        help=argparse.SUPPRESS,
    )  # fmt: skip
    parser.add_argument("arguments", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--volume", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"trissh {__version__}")
    parser.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="address to listen on; repeatable (default 0.0.0.0:2222)",
    )
    _add_key_arguments(parser)
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
    _add_admin_arguments(parser)
    return parser


def _add_key_arguments(parser: argparse.ArgumentParser) -> None:
    """Host keys, their certificates, and the keys that may log in."""
    parser.add_argument(
        "--host-key",
        action="append",
        type=Path,
        metavar="PATH",
        help="host key file; repeatable; an ed25519 key is generated if missing",
    )
    parser.add_argument(
        "--host-certificate",
        action="append",
        type=Path,
        metavar="PATH",
        help="OpenSSH host certificate (ssh-keygen -s CA -h) for one of the host keys; repeatable",
    )
    parser.add_argument(
        "--authorized-keys",
        type=Path,
        metavar="PATH",
        help="OpenSSH authorized_keys; these keys may log in as any user name",
    )
    parser.add_argument(
        "--host", metavar="NAME", help="sshfp: the DNS name the records are for (default: FQDN)"
    )


def _add_admin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin-socket", metavar="PATH", help="the admin socket (default: [admin] socket)"
    )
    parser.add_argument("--json", action="store_true", help="sessions: print JSON")
    parser.add_argument(
        "--notify", action="store_true", help="watch: tell the user they are being watched"
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "listen": args.listen,
        "host_keys": [str(p) for p in args.host_key] if args.host_key else None,
        "host_certificates": (
            [str(p) for p in args.host_certificate] if args.host_certificate else None
        ),
        "authorized_keys": str(args.authorized_keys) if args.authorized_keys else None,
        "podman.url": args.podman_url,
        "container.image": args.image,
        "log_format": args.log_format,
        "log_level": args.log_level,
        "metrics.listen": args.metrics_listen,
        "admin.socket": args.admin_socket,
    }


def default_config_text() -> str:
    """The documented example configuration shipped with the package."""
    return (importlib.resources.files("trissh") / "default-config.toml").read_text()


def check_config(settings: ServerConfig) -> int:
    """Everything a start would check but the ports and reaching podman: keys, users,
    algorithms, the backend's own settings. Writes nothing (a missing host key is only
    reported)."""
    from trissh.backend.memory import MemoryBackend
    from trissh.server.process import checked_backend

    try:
        build_context(settings, MemoryBackend(), create_host_keys=False)
        checked_backend(settings)
    except StartupError as exc:
        print(f"trissh: {exc}", file=sys.stderr)
        return 2
    for path in settings.host_key_paths():
        if not path.exists():
            print(f"host key {path}: missing; the start generates it")
    print("configuration OK")
    return 0


def sshfp_command(settings: ServerConfig, host: str) -> int:
    """Print the SSHFP records of the configured host keys (never creates one)."""
    keys = []
    for path in settings.host_key_paths():
        try:
            keys.append(load_host_key(path))
        except HostKeyError as exc:
            print(f"trissh: {exc}", file=sys.stderr)
            return 1
    for record in sshfp_records(keys, host):
        print(record)
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


def admin_command(args: argparse.Namespace, settings: ServerConfig) -> int:
    from trissh.admin.client import run

    if not settings.admin.socket:
        print(
            "trissh: no admin socket: give --admin-socket PATH, or --config FILE with "
            "[admin] socket",
            file=sys.stderr,
        )
        return 2
    wanted = 1 if args.command in ("kill", "watch") else 0
    if len(args.arguments) != wanted:
        what = "one argument" if wanted else "no argument"
        print(f"trissh {args.command}: takes {what}", file=sys.stderr)
        return 2
    target = args.arguments[0] if wanted else None
    return run(args.command, settings.admin.socket, target, as_json=args.json, notify=args.notify)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
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
    if args.command in _ADMIN_COMMANDS:
        return admin_command(args, settings)
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "check-config":
        return check_config(settings)
    if args.command == "sshfp":
        return sshfp_command(settings, args.host or socket.getfqdn())
    if args.command == "doctor":
        from trissh.ops.doctor import run_doctor

        return trio.run(run_doctor, settings)
    if args.command == "workspaces":
        from trissh.ops.workspaces_cli import workspaces_command

        return trio.run(workspaces_command, settings, args.arguments, args.volume)
    if args.arguments:
        print(f"trissh {args.command}: unexpected arguments {args.arguments}", file=sys.stderr)
        return 2
    try:
        return trio.run(run_server, settings, lambda: load_config(args.config, overrides))
    except StartupError as exc:
        print(f"trissh: {exc}", file=sys.stderr)
        return 1
