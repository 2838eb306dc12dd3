"""Assembling a server from its settings: the context every connection shares (keys,
authentication policy, protocol settings, recorder), and its rebuild on SIGHUP."""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import structlog
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519

from trissh.auth.authorized_keys import AuthorizedKey
from trissh.auth.policy import AuthPolicy, PolicyError, load_key_file
from trissh.backend import Backend
from trissh.config import ConfigError, ServerConfig, container_settings
from trissh.ops.log import set_log_level
from trissh.ops.metrics import Metrics
from trissh.ops.recording import Recorder
from trissh.protocol import HostKey, ProtocolConfig
from trissh.server.hostkeys import HostKeyError, attach_certificates, load_or_create_host_key
from trissh.server.state import ServerContext

log = structlog.get_logger("trissh")


class StartupError(Exception):
    """The server cannot start; the message says why and what to do."""


def make_recorder(settings: ServerConfig, metrics: Metrics) -> Recorder | None:
    section = settings.recording
    if not section.enabled:
        return None
    return Recorder(
        section.directory,
        max_bytes=section.max_bytes,
        record_input=section.record_input,
        on_failure=metrics.recording_failed,
        min_free_bytes=section.min_free_mb * 2**20,
    )


def load_host_keys(settings: ServerConfig, *, create: bool = True) -> tuple[HostKey, ...]:
    """The host keys, a missing one generated and written (``create``), or only generated
    in memory (``trissh check-config``, which writes nothing)."""
    keys = []
    for path in settings.host_key_paths():
        try:
            if not create and not path.exists():
                keys.append(_generated_in_memory(path))
                continue
            key, created = load_or_create_host_key(path)
        except HostKeyError as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:
            raise StartupError(f"host key {path}: {exc.strerror}") from None
        if created:
            log.info("host_key_created", path=str(path), fingerprint=key.fingerprint)
        keys.append(key)
    try:
        certified, attached = attach_certificates(keys, settings.host_certificates, time.time())
    except HostKeyError as exc:
        raise StartupError(str(exc)) from None
    for path, cert in attached:
        log.info(
            "host_certificate_loaded", path=str(path), key_id=cert.key_id,
            fingerprint=cert.public_key.fingerprint, ca=cert.signature_key.fingerprint,
            valid_before=cert.valid_before,
        )  # fmt: skip
    return certified


def _generated_in_memory(path: Path) -> HostKey:
    """A stand-in for a missing host key the start will generate at ``path``.

    Raises:
        StartupError: the start could not write it there.
    """
    nearest = next(parent for parent in path.parents if parent.exists())
    if not (nearest.is_dir() and os.access(nearest, os.W_OK)):
        raise StartupError(f"host key {path}: cannot create it: {nearest} is not writable")
    return HostKey(ed25519.Ed25519PrivateKey.generate())


def build_context(
    settings: ServerConfig,
    backend: Backend,
    *,
    previous: ServerContext | None = None,
    metrics: Metrics | None = None,
    create_host_keys: bool = True,
) -> ServerContext:
    """Everything connections share. With ``previous`` (a reload), the backend, instance
    and live state carry over; only what the configuration says is rebuilt."""
    policy = _auth_policy(settings, reloading=previous is not None)
    if previous is not None:
        policy.share_totp(previous.auth)
    host_keys = load_host_keys(settings, create=create_host_keys)
    try:
        protocol = ProtocolConfig(
            host_keys=host_keys,
            max_auth_attempts=settings.limits.max_auth_attempts,
            accept_env=settings.session.accept_env,
            auth_methods=policy.methods,
            banner=settings.auth.banner,
            max_channels=settings.channel_limit(),
            # this thread's CPU: a host that stalls the process does not count
            cpu_clock=lambda: time.thread_time(),
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


def _auth_policy(settings: ServerConfig, *, reloading: bool = False) -> AuthPolicy:
    """Who may log in; refuses a configuration with no way in at all. An authorized_keys
    file counts even when empty: emptying it and sending SIGHUP is how its last key is
    revoked, and so is deleting it (at the start a missing file is a typo to report)."""
    global_keys: list[AuthorizedKey] = []
    if (keys_file := settings.authorized_keys) is not None:
        missing = reloading and not keys_file.exists()
        try:
            global_keys = [] if missing else load_key_file(keys_file)
        except PolicyError as exc:
            raise StartupError(str(exc)) from None
        if not global_keys:
            log.warning("authorized_keys_empty", path=str(keys_file), missing=missing)
    auth = settings.auth
    ways_in = (
        settings.authorized_keys,
        settings.users,
        auth.webhook,
        auth.trusted_user_ca_keys,
        auth.trusted_user_ca_keys_file,
        auth.kerberos,
    )
    if not any(ways_in):
        raise StartupError(
            "nobody could log in: give --authorized-keys FILE, or configure [users.NAME],"
            " [auth] trusted_user_ca_keys, [auth.webhook] or [auth.kerberos]"
        )
    try:
        return AuthPolicy(settings, global_keys, reloading=reloading)
    except PolicyError as exc:
        raise StartupError(str(exc)) from None


#: Settings used only while the server starts (log format, backend, metrics and admin
#: sockets, the workspace state file whose lock it took).
_START_ONLY: Final = (
    "log_format", "backend", "podman", "metrics.listen", "admin.socket", "workspaces.state_file",
)  # fmt: skip


def _changed_at_start_only(running: ServerConfig, loaded: ServerConfig) -> list[str]:
    """Which of ``_START_ONLY`` a reload would change: it cannot, so it says so."""
    changed = []
    for key in _START_ONLY:
        old: object = running
        new: object = loaded
        for name in key.split("."):
            old, new = getattr(old, name), getattr(new, name)
        if old != new:
            changed.append(key)
    return changed


def _with_running(loaded: Any, running: Any, key: str) -> Any:
    """``loaded`` with ``key`` (dotted) as ``running`` has it."""
    head, _, rest = key.partition(".")
    value = getattr(running, head)
    if rest:
        value = _with_running(getattr(loaded, head), value, rest)
    return loaded.model_copy(update={head: value})


def reload_context(
    ctx: ServerContext,
    load: Callable[[], ServerConfig],
    retire: Callable[[ServerContext], None] = lambda _: None,
) -> None:
    """SIGHUP: read the configuration again; new connections get it, live ones keep theirs.
    A bad file changes nothing but a log line. ``retire`` gets the replaced context."""
    old = ctx.latest
    try:
        settings = load()
        ignored = _changed_at_start_only(ctx.settings, settings)
        for key in ignored:  # what runs keeps what was read at start
            settings = _with_running(settings, ctx.settings, key)
        new = build_context(settings, ctx.backend, previous=old)
    except (ConfigError, StartupError) as exc:
        log.error("config_reload_failed", error=str(exc))
        return
    except Exception as exc:  # a reload must never end the server and its sessions
        log.exception("config_reload_failed", error=str(exc))
        return
    if settings.listen != ctx.settings.listen:
        log.warning("config_reload_listen_ignored", detail="listen addresses change on restart")
    if ignored:
        log.warning("config_reload_ignored", keys=ignored, detail="these change on restart")
    set_log_level(settings.log_level)
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
