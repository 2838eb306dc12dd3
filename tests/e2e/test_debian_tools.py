"""What users run over SSH, through trissh into a Debian workspace, with the real clients:
rsync both ways (checksummed), git clone and push over ssh with protocol v2 (GIT_PROTOCOL
through accept_env), and sftp resuming a 100 MB file both ways (reget, reput)."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from pathlib import Path

import pytest
import trio

from ..support import ClientKey, RunningServer, needs, require_binary, ssh_argv
from .conftest import ServerFactory
from .test_workspaces import ssh

pytestmark = [pytest.mark.podman, needs("ssh", "rsync", "git", "sftp")]

MB = 1024 * 1024


def ssh_command(server: RunningServer, key: ClientKey) -> str:
    """The `ssh` command line rsync's -e and GIT_SSH_COMMAND run (host and user added)."""
    argv = ssh_argv(server.port, key.path)[:-1]  # without user@host
    return " ".join(shlex.quote(word) for word in argv)


async def run(argv: list[str], **env: str) -> str:
    with trio.fail_after(120):
        result = await trio.run_process(
            argv,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, **env},
        )
    assert result.returncode == 0, (argv, result.stderr.decode())
    return result.stdout.decode() + result.stderr.decode()


def tree(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


async def test_rsync_both_ways_with_checksums(
    make_server: ServerFactory, client_key: ClientKey, users: list[str], tmp_path: Path
) -> None:
    """A tree up with `rsync -ac`, then a changed file in the workspace, then the tree back:
    both copies match, byte for byte; the second upload sends nothing (`--itemize`)."""
    alice = users[0]
    server = await make_server()
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("alpha\n")
    (source / "sub" / "b.bin").write_bytes(os.urandom(3 * MB))
    remote = f"{alice}@127.0.0.1:up/"
    rsync = [require_binary("rsync"), "-ac", "-e", ssh_command(server, client_key)]
    await run([*rsync, f"{source}/", remote])
    await ssh(server, client_key, alice, "echo changed >> up/a.txt")
    assert await run([*rsync, "--itemize-changes", f"{source}/sub/", remote + "sub/"]) == ""
    back = tmp_path / "back"
    await run([*rsync, remote, f"{back}/"])
    (source / "a.txt").write_text("alpha\nchanged\n")
    assert tree(back) == tree(source)


async def test_git_clone_and_push_over_ssh_with_protocol_v2(
    make_server: ServerFactory, client_key: ClientKey, users: list[str], tmp_path: Path
) -> None:
    """A bare repository in the workspace: push a commit, clone it elsewhere; the trace
    shows the server speaking protocol v2 (GIT_PROTOCOL reached git-upload-pack)."""
    alice = users[0]
    server = await make_server()
    await ssh(server, client_key, alice, "git init -q --bare --initial-branch=main ~/repo.git")
    git = require_binary("git")
    url = f"ssh://{alice}@127.0.0.1/root/repo.git"
    env = {
        "GIT_SSH_COMMAND": ssh_command(server, client_key),
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(tmp_path),
    }
    ident = ["-c", "user.name=T", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main"]
    work = tmp_path / "work"
    await run([git, *ident, "init", "-q", str(work)], **env)
    (work / "README").write_text("hello over trissh\n")
    await run([git, *ident, "-C", str(work), "add", "README"], **env)
    await run([git, *ident, "-C", str(work), "commit", "-qm", "first"], **env)
    await run([git, *ident, "-C", str(work), "push", "-q", url, "main"], **env)
    trace = await run(
        [git, *ident, "-c", "protocol.version=2", "clone", "-q", url, str(tmp_path / "clone")],
        GIT_TRACE_PACKET="1",
        **env,
    )
    assert re.search(r"\b\w+< version 2$", trace, re.MULTILINE), trace  # the server's first line
    assert (tmp_path / "clone" / "README").read_text() == "hello over trissh\n"
    log = await ssh(server, client_key, alice, "git -C ~/repo.git log --format=%s main")
    assert log == "first\n"


async def test_sftp_resumes_a_100_mb_file_both_ways(
    make_server: ServerFactory, client_key: ClientKey, users: list[str], tmp_path: Path
) -> None:
    """reget appends to what is there: a local partial copy whose 40 MB prefix was marked
    keeps its mark and gets the rest (a full transfer would have replaced it); reput
    likewise on the server side."""
    alice = users[0]
    server = await make_server()
    data = os.urandom(100 * MB)
    prefix = 40 * MB
    full = tmp_path / "full.bin"
    full.write_bytes(data)
    marked = b"\x00" * prefix
    (tmp_path / "partial.bin").write_bytes(marked)
    sftp = [require_binary("sftp"), *ssh_argv(server.port, client_key.path)[1:-1]]
    sftp = [arg if arg != "-p" else "-P" for arg in sftp]  # sftp spells the port -P
    sftp.append(f"{alice}@127.0.0.1")
    batch = tmp_path / "batch"
    batch.write_text(
        f"put {full} whole.bin\n"
        f"put {tmp_path / 'partial.bin'} resumed.bin\n"
        f"reput {full} resumed.bin\n"
        f"reget whole.bin {tmp_path / 'partial.bin'}\n"
    )
    await run([*sftp[:-1], "-b", str(batch), sftp[-1]])
    local = (tmp_path / "partial.bin").read_bytes()
    assert len(local) == len(data)
    assert local[:prefix] == marked
    assert local[prefix:] == data[prefix:]
    remote = await ssh(
        server, client_key, alice,
        f"head -c {prefix} resumed.bin | sha256sum; tail -c +{prefix + 1} resumed.bin | sha256sum;"
        " stat -c %s resumed.bin",
    )  # fmt: skip
    head, tail, size = (line.split()[0] for line in remote.splitlines())
    assert head == hashlib.sha256(marked).hexdigest()
    assert tail == hashlib.sha256(data[prefix:]).hexdigest()
    assert size == str(len(data))
