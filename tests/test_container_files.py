"""A connection's files go into each container once: a session starting there meanwhile
waits until they are written, and a write that was cancelled is done again."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
import trio.testing

from trissh.backend import BackendError, ProcessSpec, Sandbox
from trissh.channels import files as files_module
from trissh.channels.files import ContainerFiles
from trissh.server.workspace_source import WorkspaceSource

from .support import capture_module_log


@dataclass
class Container:
    """Only what ``once`` looks at: the container's id."""

    container_id: str = "c1"


SANDBOX = cast("Sandbox", Container())


async def test_a_concurrent_session_waits_for_the_files(
    autojump_clock: trio.testing.MockClock,
) -> None:
    files = ContainerFiles()
    written: list[float] = []
    seen: list[float] = []

    async def write() -> None:
        await trio.sleep(1)
        written.append(trio.current_time())

    async def session() -> None:
        await files.once("secret", SANDBOX, write)
        seen.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session)
        await trio.sleep(0.1)
        nursery.start_soon(session)
    assert len(written) == 1
    assert min(seen) >= written[0]  # neither went on before the files were there


async def test_a_cancelled_write_is_done_by_the_next_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    files = ContainerFiles()
    writes: list[str] = []

    async def write() -> None:
        await trio.sleep(1)
        writes.append("done")

    with trio.move_on_after(0.5):  # the first session's client left mid-write
        await files.once("secret", SANDBOX, write)
    await files.once("secret", SANDBOX, write)
    assert writes == ["done"]


class BrokenStream(trio.abc.ReceiveStream):
    """An exec's output stream that breaks (podman's exec connection dropped)."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("the exec's stream broke")

    async def aclose(self) -> None:
        pass


class Sink(trio.abc.SendStream):
    def __init__(self, broken: bool = False) -> None:
        self.broken = broken

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self.broken:  # as trio's pipes break: no text, the OSError as the cause
            raise trio.BrokenResourceError from BrokenPipeError(32, "Broken pipe")

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


@dataclass
class BreakingContainer:
    """Every program's output stream breaks; the argv of each program is kept."""

    container_id: str = "c1"
    argvs: list[Sequence[str]] = field(default_factory=list)

    @asynccontextmanager
    async def open_process(self, spec: ProcessSpec) -> AsyncIterator[SimpleNamespace]:
        self.argvs.append(spec.argv)

        async def wait() -> SimpleNamespace:
            return SimpleNamespace(code=0)

        yield SimpleNamespace(stdin=Sink(), stdout=BrokenStream(), stderr=None, wait=wait)


async def test_a_broken_exec_while_removing_secrets_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The removal's own failure (its exec stream breaking came as an ExceptionGroup) must
    not escape: the connection's teardown goes on and the workspace is left as usual."""
    files = ContainerFiles()
    container = BreakingContainer()
    sandbox = cast("Sandbox", container)
    lines = capture_module_log(monkeypatch, "trissh.channels.files")
    await files.provide(sandbox, {"/tmp/krb5cc_trissh_x": b"ticket"}, "/bin/sh")
    await files.remove_secrets(sandbox)
    events = [line["event"] for line in lines]
    assert events == ["container_file_failed", "container_file_remove_failed"]
    assert "the exec's stream broke" in lines[1]["error"]
    assert len(container.argvs) == 2


def test_removing_a_secret_also_removes_what_a_cut_short_write_left(tmp_path: Path) -> None:
    """The removal script, run by a real sh: the file and its ``.trissh-new`` beside it."""
    secret = tmp_path / "krb5cc_trissh_x"
    secret.write_bytes(b"ticket")
    (tmp_path / "krb5cc_trissh_x.trissh-new").write_bytes(b"half a ticket")
    other = tmp_path / "krb5cc_other"
    other.write_bytes(b"another connection's")
    subprocess.run(["sh", "-c", files_module._REMOVE_SCRIPT, "sh", str(secret)], check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["krb5cc_other"]


async def test_leaving_a_workspace_detaches_even_when_the_leave_fails() -> None:
    """The workspace's attachment is given back whatever ``on_leave`` does, or its TTL would
    never start."""

    class Registry:
        def __init__(self) -> None:
            self.detached: list[object] = []

        def detach(self, workspace: object) -> None:
            self.detached.append(workspace)

    async def failing_leave(sandbox: Sandbox) -> None:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("leave failed")

    registry = Registry()
    workspace = SimpleNamespace(sandbox=SANDBOX)
    scope = trio.CancelScope()
    raised: list[BaseException] = []

    async def hold(source: WorkspaceSource) -> None:
        try:
            await source._hold(cast("Any", workspace), scope)
        except RuntimeError as exc:
            raised.append(exc)

    async with trio.open_nursery() as nursery:
        source = WorkspaceSource(cast("Any", registry), cast("Any", None), 1, 1, nursery)
        source.on_leave = failing_leave
        nursery.start_soon(hold, source)
        await trio.sleep(0.01)
        scope.cancel()
    assert [str(exc) for exc in raised] == ["leave failed"]
    assert registry.detached == [workspace]


async def test_a_broken_stdin_pipe_is_told_with_its_cause() -> None:
    """trio's BrokenResourceError carries no text of its own: the reason is its cause."""

    class PipeBreaks:
        container_id = "c1"

        @asynccontextmanager
        async def open_process(self, spec: ProcessSpec) -> AsyncIterator[SimpleNamespace]:
            async def wait() -> SimpleNamespace:
                return SimpleNamespace(code=0)

            yield SimpleNamespace(stdin=Sink(broken=True), stdout=None, stderr=None, wait=wait)

    with pytest.raises(BackendError, match=r"^writing /tmp/f failed: \[Errno 32\] Broken pipe$"):
        await files_module.write_file(cast("Sandbox", PipeBreaks()), "/tmp/f", b"x", "/bin/sh")
