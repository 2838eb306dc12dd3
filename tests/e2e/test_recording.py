"""A real pty session through podman is recorded, and `asciinema cat` replays what was typed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from ..support import (
    ClientKey,
    RunningServer,
    make_context,
    needs,
    ssh_argv,
    start_server,
)
from .conftest import podman_backend
from .test_interactive import Tmux

pytestmark = [pytest.mark.podman, needs("ssh", "asciinema", "script", "tmux")]


@pytest.fixture
async def recording_server(
    nursery: trio.Nursery, podman_url: str, authorized_keys: Path, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    ctx = make_context(
        podman_backend(podman_url), authorized_keys, tmp_path / "host_key",
        recording={"enabled": True, "directory": str(tmp_path / "recordings")},
    )  # fmt: skip
    server = await start_server(nursery, ctx)
    yield server
    await server.stop()


async def test_pty_session_replays_with_asciinema(
    recording_server: RunningServer, client_key: ClientKey, tmp_path: Path
) -> None:
    tmux = Tmux()
    command = " ".join([*ssh_argv(recording_server.port, client_key.path, "-tt"), "; sleep 30"])
    try:
        tmux("new-session", "-d", "-s", "t", "-x", "100", "-y", "30", command)
        await tmux.wait_for(" #")
        tmux("send-keys", "-t", "t", "echo recorded-$((40+2))", "Enter")
        await tmux.wait_for("recorded-42")
        tmux("send-keys", "-t", "t", "exit", "Enter")
        directory = tmp_path / "recordings"
        with trio.fail_after(20):
            while not list(directory.glob("*.cast")):
                await trio.sleep(0.1)
            [cast] = list(directory.glob("*.cast"))
            while '"x"' not in cast.read_text():  # closed: the exit line is written
                await trio.sleep(0.1)
    finally:
        tmux.kill()
    with trio.fail_after(30):  # asciinema cat wants a terminal: script(1) provides one
        replay = await trio.run_process(
            ["script", "-qc", f"asciinema cat {cast}", "/dev/null"],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    shown = replay.stdout.decode(errors="replace")
    assert "echo recorded-$((40+2))" in shown  # the typed text, echoed by the pty
    assert "recorded-42" in shown
    assert oct(cast.stat().st_mode & 0o777) == "0o600"
