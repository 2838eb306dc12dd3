"""Fixtures shared by every test level: keys, a running server, an OpenSSH client.

Test rules (trio-websocket's, written down): loopback only, port 0, one side closes first
for determinism, and every wait is bounded so a hang fails instead of stalling CI.
"""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pytest
import trio

from trissh.backend.memory import MemoryBackend
from trissh.ops.log import configure_logging

from .support import (
    ClientKey,
    RunningServer,
    make_context,
    require_binary,
    start_server,
    write_ed25519_key,
)

configure_logging("console", "warning")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.slow`` (full-size load) runs only with ``TRISSH_SLOW=1``; otherwise it
    is deselected, not skipped: under the README's test command a skip means something
    is missing, and a deliberate choice is not."""
    if os.environ.get("TRISSH_SLOW") == "1":
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


#: A test that pytest-timeout ended inside ``trio.run`` (see below).
_ABANDONED_RUN = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """pytest-timeout (pyproject's ``timeout``) ends a hung test with a signal, which may
    land inside ``trio.run`` and leave that run's state behind: every later trio test
    would then fail with "run() from inside a run()" instead of only the hung one."""
    try:
        return (yield)
    finally:
        context = trio._core._run.GLOBAL_RUN_CONTEXT
        if "runner" in context.__dict__:
            item.stash[_ABANDONED_RUN] = True
            for name in ("runner", "task"):
                context.__dict__.pop(name, None)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """The abandoned run's generator is garbage in cycles; its ``finally`` clears trio's
    run state, so it must be collected now, not during a later test's run."""
    if item.stash.get(_ABANDONED_RUN, False):
        gc.collect()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@needs("tmux", ...)``: skip, or under the README's test command fail, when missing."""
    for mark in item.iter_markers("needs"):
        for binary in mark.args:
            require_binary(binary)


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session")
def client_key(keys_dir: Path) -> ClientKey:
    return write_ed25519_key(keys_dir / "id_ed25519")


@pytest.fixture(scope="session")
def stranger_key(keys_dir: Path) -> ClientKey:
    """A key that is not in authorized_keys."""
    return write_ed25519_key(keys_dir / "id_stranger")


@pytest.fixture(scope="session")
def authorized_keys(keys_dir: Path, client_key: ClientKey) -> Path:
    path = keys_dir / "authorized_keys"
    path.write_text(client_key.public_line + "\n")
    return path


@pytest.fixture
def memory_backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
async def memory_server(
    nursery: trio.Nursery,
    memory_backend: MemoryBackend,
    authorized_keys: Path,
    tmp_path: Path,
) -> AsyncIterator[RunningServer]:
    ctx = make_context(memory_backend, authorized_keys, tmp_path / "host_key")
    server = await start_server(nursery, ctx)
    yield server
    await server.stop()
