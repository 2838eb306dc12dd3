"""A real ``python -m trissh`` in workspace mode killed with SIGKILL: its workspace's
container stays, and the next start adopts it with its files and its running tmux, as the
README's "Across restarts" says."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import trio

from trissh.config import load_config
from trissh.ops.workspaces_cli import remove_workspace

from ..support import ClientKey, free_port, needs, run_ssh
from .conftest import podman_backend, workspaces_of

pytestmark = [pytest.mark.podman, needs("ssh")]


class Trissh:
    """One ``python -m trissh`` process; its JSON log lines on stderr, kept."""

    def __init__(self, config: Path, port: int) -> None:
        self.config, self.port = config, port
        self.process: trio.Process | None = None
        self.lines: list[dict[str, object]] = []

    async def start(self, nursery: trio.Nursery) -> None:
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trissh", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        nursery.start_soon(self._read_log, self.process)
        with trio.fail_after(30):
            while not any(line.get("event") == "server_started" for line in self.lines):
                assert self.process.returncode is None, self.lines[-5:]
                await trio.sleep(0.1)

    async def _read_log(self, process: trio.Process) -> None:
        assert process.stderr is not None
        buffer = b""
        while chunk := await process.stderr.receive_some(65536):
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                try:
                    self.lines.append(json.loads(raw))
                except ValueError:
                    self.lines.append({"raw": raw.decode(errors="replace")})

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        with trio.fail_after(10):
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()


@pytest.fixture
def config(
    tmp_path: Path, podman_url: str, authorized_keys: Path, debian_image: str
) -> tuple[Path, int]:
    port = free_port()
    path = tmp_path / "trissh.toml"
    path.write_text(
        f"""
listen = ["127.0.0.1:{port}"]
host_keys = ["{tmp_path / "host_key"}"]
authorized_keys = "{authorized_keys}"
log_format = "json"
[podman]
url = "{podman_url}"
[container]
image = "{debian_image}"
shell = ["/bin/bash"]
[session]
execution_mode = "workspace"
workspace_ttl = 300
[workspaces]
state_file = "{tmp_path / "workspaces.json"}"
on_shutdown = "keep"
"""
    )
    return path, port


async def test_a_killed_server_s_workspace_is_adopted_with_its_tmux(
    nursery: trio.Nursery, config: tuple[Path, int], client_key: ClientKey, podman_url: str
) -> None:
    path, port = config
    user = f"crash{uuid.uuid4().hex[:6]}"
    first = Trissh(path, port)
    second = Trissh(path, port)
    try:
        await first.start(nursery)
        before = await run_ssh(
            port, client_key.path,
            "echo kept > ~/f; tmux new-session -d -s crash 'sleep 600'; hostname", user=user,
        )  # fmt: skip
        assert before.returncode == 0, before.stderr
        await first.kill()
        assert len(await workspaces_of(podman_url, user)) == 1
        await second.start(nursery)
        adopted = [line for line in second.lines if line.get("event") == "workspace_adopted"]
        assert [line["user"] for line in adopted] == [user]
        after = await run_ssh(
            port, client_key.path, "cat ~/f; tmux ls -F '#{session_name}'; hostname", user=user
        )
        assert after.stdout.decode() == f"kept\ncrash\n{before.stdout.decode()}", after.stderr
        attached = [line for line in second.lines if line.get("event") == "workspace_attached"]
        assert attached[-1]["reattached"] is True
    finally:
        await first.stop()
        await second.stop()
        backend = podman_backend(podman_url)
        await remove_workspace(backend, load_config(path, {}), user, volume=False)
        backend.close()
    assert await workspaces_of(podman_url, user) == []
