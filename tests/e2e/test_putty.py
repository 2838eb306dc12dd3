"""PuTTY's command-line tools (plink, pscp, psftp) against trissh and podman."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from ..support import ClientKey, RunningServer, make_context, needs, start_server
from .conftest import podman_backend

PUTTY_TOOLS = ("plink", "pscp", "psftp", "puttygen")
pytestmark = [pytest.mark.podman, pytest.mark.interop, needs(*PUTTY_TOOLS)]


@pytest.fixture(scope="module")
def ppk(client_key: ClientKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client key in PuTTY's format."""
    path = tmp_path_factory.mktemp("putty") / "key.ppk"
    subprocess.run(
        ["puttygen", str(client_key.path), "-O", "private", "-o", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


def common(server: RunningServer, ppk: Path) -> list[str]:
    fingerprint = server.ctx.protocol.host_keys[0].fingerprint
    return ["-batch", "-P", str(server.port), "-i", str(ppk), "-hostkey", fingerprint]


async def run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(120):
        return await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)


async def test_plink_runs_a_command(podman_server: RunningServer, ppk: Path) -> None:
    """plink: output and exit status."""
    result = await run(
        ["plink", "-ssh", *common(podman_server, ppk), "alice@127.0.0.1", "echo hi; exit 3"]
    )
    assert result.stdout == b"hi\n", result.stderr
    assert result.returncode == 3


@pytest.fixture
def exchange_dir() -> Iterator[Path]:
    """A host directory the container's root (the podman user on the host) may write."""
    with tempfile.TemporaryDirectory(prefix="trissh-exchange-") as name:
        path = Path(name)
        path.chmod(0o777)
        yield path


@pytest.fixture
async def volume_server(
    nursery: trio.Nursery,
    podman_url: str,
    authorized_keys: Path,
    tmp_path: Path,
    exchange_dir: Path,
) -> AsyncIterator[RunningServer]:
    """alice's containers mount ``exchange_dir`` read-write at /data, so a file copied up
    by one connection can be checked on the host and copied down by the next."""
    users = {"alice": {"container": {"volumes": [f"{exchange_dir}:/data:rw"]}}}
    ctx = make_context(
        podman_backend(podman_url), authorized_keys, tmp_path / "host_key", users=users
    )
    server = await start_server(nursery, ctx)
    yield server
    await server.stop()


@pytest.mark.parametrize("protocol", ["-sftp", "-scp"])
async def test_pscp_copies_both_ways(
    volume_server: RunningServer, ppk: Path, tmp_path: Path, exchange_dir: Path, protocol: str
) -> None:
    """pscp over SFTP and over the SCP protocol: up, then down again, byte for byte."""
    source = tmp_path / "file"
    source.write_bytes(os.urandom(2_000_000))
    up = await run(["pscp", protocol, *common(volume_server, ppk), str(source),
                    "alice@127.0.0.1:/data/file"])  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert (exchange_dir / "file").read_bytes() == source.read_bytes()
    back = tmp_path / "back"
    down = await run(["pscp", protocol, *common(volume_server, ppk),
                      "alice@127.0.0.1:/data/file", str(back)])  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == source.read_bytes()


async def test_psftp_batch(podman_server: RunningServer, ppk: Path, tmp_path: Path) -> None:
    """psftp: put, ls, get, rename, rm in one session; the file comes back intact."""
    source = tmp_path / "data"
    source.write_bytes(os.urandom(1_000_000))
    back = tmp_path / "data.back"
    script = tmp_path / "script"
    script.write_text(
        f"put {source} /tmp/data\nls /tmp\nget /tmp/data {back}\n"
        "mv /tmp/data /tmp/moved\nrm /tmp/moved\nls /tmp\n"
    )
    result = await run(["psftp", *common(podman_server, ppk), "-b", str(script), "alice@127.0.0.1"])
    assert result.returncode == 0, result.stderr
    assert back.read_bytes() == source.read_bytes()
