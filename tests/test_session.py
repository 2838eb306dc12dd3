"""A session handler alone: no driver, no socket, no SSH — a ``ChannelPort`` that records
what the session does to its connection, and the in-process backend.

That this works is the point of the channel seam: a kind of channel is written and tested
against the narrow port, and the driver only routes to it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import trio

from trissh.auth.policy import Grant
from trissh.backend import ExitStatus, SandboxSpec
from trissh.backend.memory import MemoryBackend
from trissh.backend.memory.backend import MemoryProcess
from trissh.channels.session import SessionContext, run_session
from trissh.config import ContainerSection, SessionSection, container_settings
from trissh.connection.channel import ChannelHandle
from trissh.connection.sandboxes import SessionSandboxes
from trissh.ops.log_quota import LogQuota
from trissh.ops.metrics import Metrics
from trissh.ops.recording import Recorder
from trissh.protocol import ChannelId, PtyRequest, SessionKind, SessionRequested, TerminalSize

from .support import capture_module_log


class RecordingPort:
    """What a session asked of its connection, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.core_dumped = False
        self.output = bytearray()
        self.space_changed = trio.Event()

    def send_room(self, channel_id: ChannelId) -> int:
        return 1 << 20

    def send_data(self, channel_id: ChannelId, data: memoryview, *, stderr: bool) -> int:
        self.output += data
        return len(data)

    def flush(self) -> None:
        pass

    def send_eof(self, channel_id: ChannelId) -> None:
        self.calls.append(("eof", None))

    def acknowledge(self, channel_id: ChannelId, amount: int) -> None:
        self.calls.append(("acknowledge", amount))

    def reply_request(self, channel_id: ChannelId, ok: bool) -> None:
        self.calls.append(("reply", ok))

    def finish(
        self,
        channel_id: ChannelId,
        *,
        exit_code: int | None = None,
        signal: str | None = None,
        core_dumped: bool = False,
    ) -> None:
        self.calls.append(("finish", (exit_code, signal)))
        self.core_dumped = core_dumped


def context(backend: MemoryBackend, **grant: object) -> SessionContext:
    container = ContainerSection()
    spec = SandboxSpec(
        conn_id="c1",
        username="alice",
        remote="127.0.0.1:1",
        instance="test",
        settings=container_settings(container),
    )
    return SessionContext(
        conn_id="c1",
        username="alice",
        container=container,
        settings=SessionSection(execution_mode="session"),
        grant=Grant(**grant),  # type: ignore[arg-type]
        sandboxes=SessionSandboxes(backend, spec),
        metrics=Metrics(),
        lines=LogQuota(100),
    )


async def run(ctx: SessionContext, command: str) -> RecordingPort:
    port = RecordingPort()
    handle = ChannelHandle(port, ChannelId(3))
    handle.feed_eof()
    request = SessionRequested(channel_id=ChannelId(3), kind=SessionKind.EXEC, command=command)
    with trio.fail_after(10):
        await run_session(ctx, handle, request)
    return port


async def test_an_exec_answers_runs_and_finishes_with_its_status() -> None:
    backend = MemoryBackend()
    port = await run(context(backend), "echo hi; exit 3")
    assert bytes(port.output) == b"hi\n"
    assert port.calls[0] == ("reply", True)
    assert port.calls[-1] == ("finish", (3, None))
    assert (backend.live_sandboxes, backend.live_processes) == (0, 0)


async def test_a_core_dump_is_told_to_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """exit-signal carries "core dumped" as sshd's (WCOREDUMP): the backend's status had it,
    and the session dropped it."""
    wait = MemoryProcess.wait

    async def dumped(process: MemoryProcess) -> ExitStatus:
        return dataclasses.replace(await wait(process), core_dumped=True)

    monkeypatch.setattr(MemoryProcess, "wait", dumped)
    port = await run(context(MemoryBackend()), "kill -SEGV $$")
    assert port.calls[-1] == ("finish", (None, "SEGV"))
    assert port.core_dumped


def _recorded_command(directory: Path) -> object:
    [recording] = directory.glob("*.cast")
    return json.loads(recording.read_text().splitlines()[0])["trissh"]["command"]


async def test_a_forced_command_runs_instead_of_the_one_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The log line names both, what was asked and what ran, and the recording what ran
    (both named only what the client asked)."""
    logs = capture_module_log(monkeypatch, "trissh.channels.session")
    backend = MemoryBackend()
    recorder = Recorder(tmp_path, max_bytes=0, record_input=False)
    ctx = dataclasses.replace(context(backend, forced_command="echo forced"), recorder=recorder)
    port = await run(ctx, "echo asked")
    assert bytes(port.output) == b"forced\n"
    assert port.calls[-1] == ("finish", (0, None))
    [started] = [line for line in logs if line["event"] == "session_started"]
    assert (started["command"], started["forced_command"]) == ("echo asked", "echo forced")
    assert _recorded_command(tmp_path) == "echo forced"


async def test_a_long_command_is_cut_in_the_log_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client may send a 128 KiB command each session: its session_started line carries
    the first 4096 characters and the length, not all of it (before: 131 KB lines)."""
    logs = capture_module_log(monkeypatch, "trissh.channels.session")
    command = "true " + "x" * 100_000
    await run(context(MemoryBackend()), command)
    [started] = [line for line in logs if line["event"] == "session_started"]
    assert started["command"] == command[:4096] + "... (100005 characters)"


async def test_a_huge_terminal_is_recorded_at_the_size_the_terminal_took(
    tmp_path: Path,
) -> None:
    """SSH sizes are uint32 and a terminal holds 16 bits: the recording said 4294967295
    columns where the program saw 65535."""
    recorder = Recorder(tmp_path, max_bytes=0, record_input=False)
    ctx = dataclasses.replace(context(MemoryBackend()), recorder=recorder)
    port = RecordingPort()
    handle = ChannelHandle(port, ChannelId(3))
    handle.feed_eof()
    huge = TerminalSize(columns=0xFFFFFFFF, rows=0xFFFFFFFF)
    request = SessionRequested(
        channel_id=ChannelId(3),
        kind=SessionKind.EXEC,
        command="stty size",
        pty=PtyRequest(term="xterm", size=huge),
    )
    with trio.fail_after(10):
        await run_session(ctx, handle, request)
    assert bytes(port.output) == b"65535 65535\r\n"
    assert _recorded_size(tmp_path) == (65535, 65535)


def _recorded_size(directory: Path) -> tuple[int, int]:
    [recording] = directory.glob("*.cast")
    header = json.loads(recording.read_text().splitlines()[0])
    return header["width"], header["height"]
