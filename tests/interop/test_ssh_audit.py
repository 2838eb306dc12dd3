"""ssh-audit against trissh: no ``[fail]`` with the defaults, and no ``[warn]`` but the
post-quantum notes on the classical kex kept for older clients; with the post-quantum-only
setting (``[ssh] kex = [...]``, see ``trissh.config.SshSettings``) no ``[warn]`` at all."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import trio

from trissh.backend.memory import MemoryBackend
from trissh.protocol.kex import POST_QUANTUM_KEX

from ..support import make_context, require_module, start_server
from .conftest import HostKeyFiles

pytestmark = pytest.mark.interop

#: The only warning the defaults may draw, on each classical key exchange.
NOT_PQ = "does not provide protection against post-quantum attacks"


async def _audit(
    nursery: trio.Nursery,
    backend: MemoryBackend,
    authorized_keys: Path,
    host_key_files: HostKeyFiles,
    **overrides: object,
) -> tuple[int, str]:
    require_module("ssh_audit")
    ctx = make_context(
        backend,
        authorized_keys,
        host_key_files.paths["ed25519"],
        host_keys=[str(host_key_files.paths["ed25519"]), str(host_key_files.paths["rsa"])],
        **overrides,
    )
    server = await start_server(nursery, ctx)
    argv = [
        sys.executable, "-m", "ssh_audit", "--no-colors", "--skip-rate-test",
        "-p", str(server.port), "127.0.0.1",
    ]  # fmt: skip
    with trio.fail_after(60):
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    await server.stop()
    return result.returncode, result.stdout.decode()


def _findings(report: str, level: str) -> list[tuple[str, str]]:
    """(algorithm, message) for each ``[level]`` line; continuation lines name no algorithm."""
    found = []
    current = ""
    for line in report.splitlines():
        head = re.match(r"\(\w+\) (\S+)", line)
        if head:
            current = head.group(1)
        match = re.search(rf"\[{level}\] (.*)", line)
        if match:
            found.append((current, match.group(1).strip()))
    return found


async def test_defaults_have_no_failure_and_only_post_quantum_warnings(
    nursery: trio.Nursery,
    memory_backend: MemoryBackend,
    authorized_keys: Path,
    host_key_files: HostKeyFiles,
) -> None:
    code, report = await _audit(nursery, memory_backend, authorized_keys, host_key_files)
    assert "(kex) mlkem768x25519-sha256" in report, report
    assert _findings(report, "fail") == [], report
    warnings = _findings(report, "warn")
    assert warnings, report
    assert {message for _, message in warnings} == {NOT_PQ}, report
    assert {name for name, _ in warnings} == {
        "curve25519-sha256",
        "curve25519-sha256@libssh.org",
        "diffie-hellman-group16-sha512",
    }, report
    assert code in (0, 2), report  # 2: warnings present


async def test_post_quantum_only_has_no_warning(
    nursery: trio.Nursery,
    memory_backend: MemoryBackend,
    authorized_keys: Path,
    host_key_files: HostKeyFiles,
) -> None:
    code, report = await _audit(
        nursery,
        memory_backend,
        authorized_keys,
        host_key_files,
        **{"ssh.kex": list(POST_QUANTUM_KEX)},
    )
    assert _findings(report, "fail") == [], report
    assert _findings(report, "warn") == [], report
    assert code == 0, report
