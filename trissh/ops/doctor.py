"""``trissh doctor``: check what a working server needs, and say how to fix each problem.

Everything it asks of the backend is the :class:`~trissh.backend.base.Backend` contract:
``health`` for the host, then (all healthy) :func:`try_session` opens a sandbox and runs one
program in it as a login would, and reports how the sandbox's programs start
(``launch_path``) when that is short of what the configuration asked for; in the first
trial's container a listener and a connection to it prove forwarding works inside
(:func:`try_forwarding`), unless ``health`` already said it cannot.
"""

from __future__ import annotations

import errno
import os
import secrets
import sys
import time
from typing import Final

import trio

from trissh.auth.authorized_keys import load_authorized_keys
from trissh.auth.revocation import RevocationError, load_revoked_keys
from trissh.backend import (
    Backend,
    BackendError,
    ContainerSettings,
    ExitStatus,
    ForwardError,
    HealthCheck,
    ProcessSpec,
    Sandbox,
    SandboxSpec,
    SocketAddress,
)
from trissh.backend.registry import make_backend
from trissh.config import ContainerSection, ServerConfig, container_settings
from trissh.protocol.certificates import FOREVER
from trissh.server.hostkeys import (
    HostKeyError,
    attach_certificates,
    load_host_key,
    load_or_create_host_key,
)

#: On top of the container start timeout: the agent's wait, one program, the removal.
TRIAL_SLACK: Final = 30.0
#: Containers tried: the server-wide settings and the first users' own.
MAX_TRIALS: Final = 5
#: A host certificate that expires sooner than this is worth a warning.
CERTIFICATE_WARNING_S: Final = 14 * 86400


def _check_host_keys(settings: ServerConfig) -> list[HealthCheck]:
    checks = []
    for path in settings.host_key_paths():
        if not path.exists():
            nearest = next(parent for parent in path.parents if parent.exists())
            writable = nearest.is_dir() and os.access(nearest, os.W_OK)  # the start makes dirs
            checks.append(
                HealthCheck(
                    name=f"host key {path}",
                    ok=writable,
                    detail="missing; will be generated at start"
                    if writable
                    else "missing and cannot be created",
                    fix=""
                    if writable
                    else f"create {path.parent} writable for this user, or pass --host-key",
                )
            )
            continue
        try:
            key, _ = load_or_create_host_key(path)
        except HostKeyError as exc:
            checks.append(
                HealthCheck(
                    name=f"host key {path}",
                    ok=False,
                    detail=str(exc),
                    fix="point --host-key at an unencrypted ed25519, RSA or ECDSA key",
                )
            )
            continue
        checks.append(HealthCheck(name=f"host key {path}", ok=True, detail=key.fingerprint))
    return checks


def _check_certificates(settings: ServerConfig) -> list[HealthCheck]:
    """Host certificates against the host keys, as the start checks them."""
    if not settings.host_certificates:
        return []
    try:
        keys = [load_host_key(path) for path in settings.host_key_paths() if path.exists()]
        now = time.time()
        _, attached = attach_certificates(keys, settings.host_certificates, now)
    except HostKeyError as exc:
        fix = "sign the host key again: ssh-keygen -s CA -h -I ID -n HOSTNAMES -V +52w key.pub"
        return [HealthCheck(name="host certificates", ok=False, detail=str(exc), fix=fix)]
    checks = []
    for path, cert in attached:
        left = cert.valid_before - now
        until = "never expires" if cert.valid_before == FOREVER else f"{left / 86400:.0f} days left"
        checks.append(
            HealthCheck(
                name=f"host certificate {path}",
                ok=True,
                detail=f"{cert.key_id!r} by CA {cert.signature_key.fingerprint}, {until}",
                fix="renew it, then SIGHUP" if left < CERTIFICATE_WARNING_S else "",
                warning=left < CERTIFICATE_WARNING_S,
            )
        )
    return checks


def _check_revoked_keys(settings: ServerConfig) -> list[HealthCheck]:
    path = settings.auth.revoked_keys
    if path is None:
        return []
    try:
        revoked = load_revoked_keys(path)
    except RevocationError as exc:
        fix = "write a KRL (ssh-keygen -k -f FILE SPEC) or one public key per line"
        return [HealthCheck(name=f"revoked keys {path}", ok=False, detail=str(exc), fix=fix)]
    kind = f"KRL version {revoked.version}" if revoked.kind == "krl" else "key list"
    detail = f"{kind}, {revoked.entries} entries"
    return [HealthCheck(name=f"revoked keys {path}", ok=True, detail=detail)]


def _check_authorized_keys(settings: ServerConfig) -> HealthCheck:
    path = settings.authorized_keys
    if path is None:
        return HealthCheck(
            name="authorized keys",
            ok=False,
            detail="none configured",
            fix="pass --authorized-keys FILE",
        )
    try:
        keys, problems = load_authorized_keys(path)
    except OSError as exc:
        return HealthCheck(
            name=f"authorized keys {path}",
            ok=False,
            detail=str(exc.strerror),
            fix="chmod go-w the file and its directory"
            if exc.errno == errno.EPERM
            else "create the file with one OpenSSH public key per line",
        )
    detail = f"{len(keys)} key(s)" + (f", {len(problems)} line(s) skipped" if problems else "")
    return HealthCheck(
        name=f"authorized keys {path}",
        ok=bool(keys),
        detail=detail,
        fix="" if keys else "add an OpenSSH public key to the file",
    )


def _container_variants(settings: ServerConfig) -> list[tuple[str, ContainerSection]]:
    """``[container]``, then each different container a ``[users.NAME]`` table makes,
    named after the users it serves."""
    default = settings.container.model_dump_json()
    sections = {default: settings.container}
    users_of: dict[str, list[str]] = {}
    for name in sorted(settings.users):
        section = settings.container_for(name)
        key = section.model_dump_json()
        sections.setdefault(key, section)
        users_of.setdefault(key, []).append(name)
    return [
        ("session" if key == default else f"session of {', '.join(users_of[key])}", section)
        for key, section in sections.items()
    ]


async def _try_sessions(
    backend: Backend, settings: ServerConfig, *, forwarding: bool
) -> list[HealthCheck]:
    """Everything above passed: now a container and a program, as for a login (bounded),
    with the server-wide container settings and with each user's own; ``forwarding``:
    and a forward in the first of them."""
    variants = _container_variants(settings)
    trials: list[HealthCheck] = []
    checks = [
        await _try_session(backend, name, section, trials if forwarding and i == 0 else None)
        for i, (name, section) in enumerate(variants[:MAX_TRIALS])
    ]
    checks += trials
    if len(variants) > MAX_TRIALS:
        checks.append(
            HealthCheck(
                name="session",
                ok=True,
                warning=True,
                detail=f"{len(variants) - MAX_TRIALS} more per-user container settings not tried",
            )
        )
    return checks


async def _try_session(
    backend: Backend, name: str, section: ContainerSection, forwarding: list[HealthCheck] | None
) -> HealthCheck:
    bound = section.start_timeout + TRIAL_SLACK
    with trio.move_on_after(bound):
        return await try_session(backend, container_settings(section), name, forwarding)
    return HealthCheck(
        name=name,
        ok=False,
        detail=f"no program ran in a container within {bound:g} s",
        fix="look for podman's errors in its service log; raise [container] start_timeout",
    )


async def try_session(
    backend: Backend,
    settings: ContainerSettings,
    name: str = "session",
    forwarding: list[HealthCheck] | None = None,
) -> HealthCheck:
    """Open a sandbox and run one program in it as a login would: the configuration, the
    runtime and the way programs start, proven end to end; given a ``forwarding`` list,
    :func:`try_forwarding` in the same sandbox adds its check there.

    A fallback (the sandbox's programs start in a slower way than configured) is a warning
    that names it: logins work, only slower. A BackendError becomes a failed check; the
    sandbox is removed either way.
    """
    spec = SandboxSpec(
        conn_id=f"doctor-{secrets.token_hex(4)}",
        username="doctor",
        remote="doctor",
        instance=f"doctor-{secrets.token_hex(4)}",
        settings=settings,
    )
    marker = "trissh-doctor"
    program = ProcessSpec(argv=[*settings.shell, "-c", f"echo {marker}"])
    started = time.monotonic()
    try:
        async with backend.open_sandbox(spec) as sandbox:
            start_ms, started = _ms_since(started), time.monotonic()
            path = sandbox.launch_path
            async with sandbox.open_process(program) as process:
                output = await _read_bounded(process.stdout, 1024)
                errors = await _read_bounded(process.stderr, 1024) if process.stderr else b""
                status = await process.wait()
            run_ms = _ms_since(started)
            if forwarding is not None:
                forwarding.append(await try_forwarding(sandbox))
            started = time.monotonic()
    except BackendError as exc:
        return HealthCheck(name=name, ok=False, detail=f"no program ran: {exc}")
    if status != ExitStatus(code=0) or output.strip() != marker.encode():
        return HealthCheck(
            name=name,
            ok=False,
            detail=f"`echo {marker}` ended with {_outcome(status)};"
            f" stdout {output[:80]!r}, stderr {errors[:200]!r}",
            fix="check [container] shell and user: the shell must exist in the image",
        )
    detail = (
        f"a container started in {start_ms:.0f} ms, ran `echo` ({path.via}) in {run_ms:.0f} ms"
        f" and was removed in {_ms_since(started):.0f} ms"
    )
    if path.fallback is None:
        return HealthCheck(name=name, ok=True, detail=detail)
    return HealthCheck(
        name=name,
        ok=True,
        warning=True,
        detail=f"{detail}; slower than configured: {path.fallback}",
        fix=path.fix,
    )


async def try_forwarding(sandbox: Sandbox) -> HealthCheck:
    """A listener inside ``sandbox`` and a connection to it, one byte across: what every
    forward needs of the backend. Unsupported is a warning (logins work); anything else
    fails."""
    name = "forwarding trial"
    started = time.monotonic()
    try:
        async with sandbox.listen(SocketAddress(host="127.0.0.1")) as listener:
            address = SocketAddress(host="127.0.0.1", port=listener.port)
            async with await sandbox.connect(address) as client:
                server, _ = await listener.accept()
                async with server:
                    await client.send_all(b"x")
                    arrived = await server.receive_some(1)
    except ForwardError as exc:
        if exc.reason == "unsupported":
            return HealthCheck(name=name, ok=True, warning=True, detail=f"no forwarding: {exc}")
        return HealthCheck(
            name=name,
            ok=False,
            detail=f"a connection inside the container to a listener there failed: {exc}",
            fix="rebuild the helper with scripts/setup-host.sh; see the log for agent_bad_socket",
        )
    if arrived != b"x":
        return HealthCheck(name=name, ok=False, detail="a forwarded byte did not arrive")
    return HealthCheck(
        name=name,
        ok=True,
        detail="a connection inside the container reached a listener there"
        f" in {_ms_since(started):.0f} ms",
    )


async def _host_limits(backend: Backend, settings: ServerConfig) -> list[HealthCheck]:
    """The host's ceilings: how many containers at once, and how to raise each (bounded)."""
    bound = settings.container.start_timeout + TRIAL_SLACK
    try:
        with trio.move_on_after(bound):
            return await backend.host_limits(container_settings(settings.container))
    except BackendError as exc:
        return [HealthCheck(name="limits", ok=False, detail=f"no probe container: {exc}")]
    return [HealthCheck(name="limits", ok=False, detail=f"no answer within {bound:g} s")]


def _ms_since(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 3)


def _outcome(status: ExitStatus) -> str:
    return f"signal {status.signal}" if status.signal else f"exit code {status.code}"


async def _read_bounded(stream: trio.abc.ReceiveStream, limit: int) -> bytes:
    """A program's output up to EOF, or its first ``limit`` bytes."""
    data = b""
    while len(data) < limit and (chunk := await stream.receive_some(limit - len(data))):
        data += chunk
    return data


async def run_doctor(settings: ServerConfig) -> int:
    checks = [*_check_host_keys(settings), *_check_certificates(settings)]
    checks += [_check_authorized_keys(settings), *_check_revoked_keys(settings)]
    backend = make_backend(settings)
    checks.append(HealthCheck(name=f"{settings.backend.kind} url", ok=True, detail=backend.url))
    try:
        health = [HealthCheck(name="service", ok=False, detail="no answer within 30 s")]
        with trio.move_on_after(30):
            health = await backend.health(container_settings(settings.container))
        checks.extend(health)
        if all(check.ok for check in health):
            unavailable = any(c.name == "forwarding" and c.warning for c in health)
            checks.extend(await _try_sessions(backend, settings, forwarding=not unavailable))
            checks.extend(await _host_limits(backend, settings))
    finally:
        backend.close()
    failed = 0
    for check in checks:
        mark = "FAIL" if not check.ok else "warn" if check.warning else "ok  "
        print(f"[{mark}] {check.name}: {check.detail}")
        failed += not check.ok
        if (not check.ok or check.warning) and check.fix:
            print(f"       fix: {check.fix}")
    print("all checks passed" if not failed else f"{failed} check(s) failed", file=sys.stderr)
    return 1 if failed else 0
