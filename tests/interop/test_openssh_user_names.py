"""User names through the real OpenSSH client (``ssh -l NAME``), which itself refuses shell
metacharacters and control characters on its command line (those are covered with the
sans-IO client in tests/auth/test_user_names.py)."""

from __future__ import annotations

import pytest

from ..support import ClientKey, RunningServer, needs_ssh, run_ssh

pytestmark = [needs_ssh, pytest.mark.interop]

REFUSED = {"space": "a b", "slash": "a/b", "dot dot": "..", "leading dot": ".x", "long": "x" * 65}
ACCEPTED = {"64 bytes": "x" * 64, "backslash": "DOMAIN\\user", "non-ASCII": "émile"}


@pytest.mark.parametrize("name", REFUSED.values(), ids=REFUSED.keys())
async def test_a_refused_name_reads_like_a_wrong_key(
    memory_server: RunningServer, client_key: ClientKey, stranger_key: ClientKey, name: str
) -> None:
    """ssh with the right key under a refused name prints exactly what it prints for a
    valid name with a key the server does not know, and exits 255."""
    refused = await run_ssh(memory_server.port, client_key.path, "echo in", user=name)
    wrong_key = await run_ssh(memory_server.port, stranger_key.path, "echo in", user="alice")
    assert (refused.returncode, wrong_key.returncode) == (255, 255)
    assert refused.stdout == wrong_key.stdout == b""
    assert refused.stderr.replace(name.encode(), b"alice") == wrong_key.stderr, refused.stderr
    assert b"Permission denied (publickey)." in refused.stderr


@pytest.mark.parametrize("name", ACCEPTED.values(), ids=ACCEPTED.keys())
async def test_odd_names_the_rule_allows_log_in(
    memory_server: RunningServer, client_key: ClientKey, name: str
) -> None:
    result = await run_ssh(memory_server.port, client_key.path, "echo in", user=name)
    assert (result.returncode, result.stdout) == (0, b"in\n"), result.stderr
