"""Per-user container settings from the configuration, checked from inside the container."""

from __future__ import annotations

import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from podman import PodmanClient

from trissh.backend.base import LABEL_CONN_ID, LABEL_INSTANCE, LABEL_REMOTE, LABEL_USER

from ..support import ClientKey, RunningServer, make_context, needs_ssh, run_ssh, start_server
from .conftest import Containers, podman_backend

pytestmark = [pytest.mark.podman, needs_ssh]

#: /etc, not /: the image's / is 0555, which root without CAP_DAC_OVERRIDE cannot write to.
PROBE = (
    'id -u; pwd; echo "$GREETING"; touch /etc/probe 2>/dev/null && echo root-writable; '
    "touch /tmp/t && echo tmp-writable; cat /data/file 2>/dev/null; "
    "df -m /tmp | tail -1 | awk '{print $2}'"
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A host directory the rootless podman user can read (pytest's tmp_path is 0700)."""
    with tempfile.TemporaryDirectory(prefix="trissh-volume-") as name:
        path = Path(name)
        path.chmod(0o755)
        (path / "file").write_text("from the host\n")
        (path / "file").chmod(0o644)
        yield path


@pytest.fixture
async def configured_server(
    nursery: trio.Nursery,
    podman_url: str,
    authorized_keys: Path,
    tmp_path: Path,
    shared_dir: Path,
) -> AsyncIterator[RunningServer]:
    users = {
        "alice": {
            "container": {
                "read_only": True,
                "tmp_size_mb": 16,
                "env": {"GREETING": "hello alice"},
                "labels": {"team": "blue"},
                "workdir": "/tmp",
                "user": "nobody",
                "volumes": [f"{shared_dir}:/data:ro"],
            },
            "session": {"max_sessions_per_connection": 2},
        }
    }
    ctx = make_context(
        podman_backend(podman_url), authorized_keys, tmp_path / "host_key", users=users
    )
    server = await start_server(nursery, ctx)
    yield server
    await server.stop()


async def test_a_user_s_settings_shape_their_container(
    configured_server: RunningServer, client_key: ClientKey
) -> None:
    """alice: user nobody, workdir, env, read-only root, a 16 MB /tmp, the volume."""
    result = await run_ssh(configured_server.port, client_key.path, PROBE, user="alice")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split("\n")[:7] == [
        "65534", "/tmp", "hello alice", "tmp-writable", "from the host", "16", ""
    ]  # fmt: skip


async def test_other_users_get_the_defaults(
    configured_server: RunningServer, client_key: ClientKey
) -> None:
    """bob has no [users.bob]: root in the container, starting in root's home (as sshd
    starts programs in the home directory), no volume, a writable root."""
    result = await run_ssh(configured_server.port, client_key.path, PROBE, user="bob")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().split("\n")
    assert lines[:5] == ["0", "/root", "", "root-writable", "tmp-writable"], lines
    assert "from the host" not in lines


async def test_user_labels_and_trissh_labels(
    configured_server: RunningServer,
    client_key: ClientKey,
    containers: Containers,
    podman_url: str,
) -> None:
    """The operator's labels sit beside trissh's own (user, instance, conn_id)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_ssh(configured_server.port, client_key.path, "sleep 5", user="alice")
        )
        await containers.wait_for(configured_server.ctx.instance, 1)
        [container_id] = await containers.of(configured_server.ctx.instance)
        labels = await trio.to_thread.run_sync(
            lambda: PodmanClient(base_url=podman_url).containers.get(container_id).labels
        )
        nursery.cancel_scope.cancel()
    assert labels["team"] == "blue"
    assert labels[LABEL_USER] == "alice"
    assert labels[LABEL_INSTANCE] == configured_server.ctx.instance
    assert re.fullmatch(r"[0-9a-f]{12}", labels[LABEL_CONN_ID]), labels
    assert labels[LABEL_REMOTE].startswith("127.0.0.1:"), labels
