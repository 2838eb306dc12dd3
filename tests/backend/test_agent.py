"""The in-container agent (``trissh-exec --agent``) and trissh's side of it.

On the host: the real static helper as the agent, our AgentListener/Agent/AgentProcess as
trissh. In real containers: programs run with no ``podman exec`` at all, teardown kills a
running program, and a container whose agent does not connect falls back to execs. The
stdio/exit/signal/environment contract itself is the conformance suite's
(``podman-agent`` harness).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from trissh.backend import BackendError, ExitStatus, ProcessSpec, PtySpec, TerminalSize
from trissh.backend.podman.agent import (
    SOCKET_NAME,
    Agent,
    AgentListener,
    AgentProcess,
    _PtyOutput,
    open_agent_process,
)
from trissh.backend.podman.direct_stdio import CONTAINER_DIR
from trissh.channels.session import backend_size
from trissh.ops.doctor import try_session
from trissh.protocol import TerminalSize as ProtocolTerminalSize

from .conformance import read_all, run, until_gone
from .conftest import exec_helper, open_podman_harness


@asynccontextmanager
async def host_agent(tmp_path: Path) -> AsyncIterator[tuple[Agent, trio.Process]]:
    """The static helper as an agent on the host, connected to a real AgentListener."""
    helper = exec_helper()
    listener = AgentListener(str(tmp_path), helper)
    command = listener.entrypoint()
    assert command[:3] == [helper, "--agent", f"{CONTAINER_DIR}/{SOCKET_NAME}"]
    process = await trio.lowlevel.open_process([helper, "--agent", listener.host_path, command[3]])
    try:
        with trio.fail_after(10):
            agent = await listener.accept()
        assert agent is not None
        assert not _exists(listener.host_path), "the listening socket outlived accept"
        try:
            yield agent, process
        finally:
            agent.close()
    finally:
        process.kill()
        await process.wait()


def started(
    agent: Agent, argv: list[str], env: dict[str, str] | None = None, pty: PtySpec | None = None
) -> contextlib.AbstractAsyncContextManager[AgentProcess]:
    """A program through the agent, as a session starts one (status watcher included)."""
    spec = ProcessSpec(argv=argv, env=env or {}, pty=pty)
    return open_agent_process(agent, spec, container="host")


async def test_the_agent_runs_programs_with_their_pipes_environment_and_status(
    tmp_path: Path,
) -> None:
    async with host_agent(tmp_path) as (agent, _):
        script = 'read line; echo "out $line $GREETING"; echo err >&2; exit 3'
        async with started(agent, ["sh", "-c", script], {"GREETING": "hi"}) as process:
            out, err, status = await run(process, b"typed\n")
            assert await process.wait() == status  # asked again: the same answer
        assert (out, err, status) == (b"out typed hi\n", b"err\n", ExitStatus(code=3))

        # SIGPIPE is the default again in the program (the agent itself ignores it)
        async with started(agent, ["sh", "-c", "(yes; echo $? >&2) | head -c 1"]) as pipeline:
            assert await run(pipeline) == (b"y", b"141\n", ExitStatus(code=0))

        async with started(agent, ["no-such-program-here"]) as missing:
            out, err, status = await run(missing)
        assert status == ExitStatus(code=127)
        assert b"no-such-program-here" in err


async def test_a_terminal_from_the_agent(tmp_path: Path) -> None:
    """A pty opened by the agent: the program's controlling terminal at the asked size,
    resizable, its output ends with the program even if a child still holds it."""
    pty = PtySpec(term="xterm", size=TerminalSize(columns=101, rows=33))
    script = "tty; stty size; read line; stty size; echo got $line; (sleep 3 &); exit 4"
    async with host_agent(tmp_path) as (agent, _):
        async with started(agent, ["sh", "-c", script], pty=pty) as process:
            assert process.stderr is None
            first = b""
            while b"33 101" not in first:
                first += await process.stdout.receive_some(1000)
            await process.resize(TerminalSize(columns=90, rows=20))
            await process.stdin.send_all(b"hello\n")
            with trio.fail_after(10):
                rest = await read_all(process.stdout)
                status = await process.wait()
        lines = (first + rest).decode().splitlines()
        assert lines[0].startswith("/dev/pts/"), lines
        assert "20 90" in lines, lines
        assert "got hello" in lines, lines
        assert status == ExitStatus(code=4)


async def test_signals_reach_the_program_and_closing_its_line_kills_it(tmp_path: Path) -> None:
    async with host_agent(tmp_path) as (agent, _):
        async with started(agent, ["sh", "-c", "echo ready; exec sleep 1000"]) as process:
            assert await process.stdout.receive_some(100) == b"ready\n"
            await process.send_signal("TERM")
            with trio.fail_after(10):
                assert await process.wait() == ExitStatus(signal="TERM")

        async with started(agent, ["sh", "-c", "echo $$; exec sleep 1000"]) as victim:
            pid = int(await victim.stdout.receive_some(100))
            assert _alive(pid)
        await _gone(pid)  # left while it ran: the session's teardown killed it


async def test_a_signal_reaches_the_programs_process_group(tmp_path: Path) -> None:
    """As sshd's killpg: a shell waiting for its child does not hold TERM back until the
    child ends; both get it."""
    async with host_agent(tmp_path) as (agent, _):
        script = "sleep 1000 & echo $!; wait"
        async with started(agent, ["sh", "-c", script]) as process:
            child = int(await process.stdout.receive_some(100))
            try:
                await process.send_signal("TERM")
                with trio.fail_after(10):
                    assert await process.wait() == ExitStatus(signal="TERM")
                await _gone(child)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, 9)


async def test_signals_sent_together_all_arrive(tmp_path: Path) -> None:
    """Queued signals go out back to back and may reach the agent in one read: each one is
    delivered (the agent read only the first request of a read)."""
    script = "trap 'echo usr1' USR1; trap 'echo usr2' USR2; echo ready; while :; do sleep 1; done"
    async with host_agent(tmp_path) as (agent, _), started(agent, ["sh", "-c", script]) as process:
        assert await process.stdout.receive_some(100) == b"ready\n"
        # Both requests in one write, as two quick send_signal calls often arrive.
        await process._line.send(b"kill 10\nkill 12\n")
        seen = b""
        with trio.fail_after(10):
            while not (b"usr1" in seen and b"usr2" in seen):
                seen += await process.stdout.receive_some(100)
        await process.send_signal("KILL")


async def test_a_terminal_of_no_size_stays_of_no_size(tmp_path: Path) -> None:
    """``ssh -tt`` with stdin not a terminal asks for 0x0 (OpenSSH's client), as sshd
    sets it: programs then use their defaults (80 columns), not a 1x1 screen."""
    pty = PtySpec(term="xterm", size=TerminalSize(columns=0, rows=0))
    program = ["sh", "-c", "stty size"]
    async with host_agent(tmp_path) as (agent, _), started(agent, program, pty=pty) as process:
        with trio.fail_after(10):
            output = await read_all(process.stdout)
            assert await process.wait() == ExitStatus(code=0)
    assert output.split() == [b"0", b"0"]


async def test_a_command_as_long_as_the_protocol_allows_runs_through_the_agent(
    tmp_path: Path,
) -> None:
    """An exec command may be 128 KiB (execve's limit for one argument); the agent took
    requests of 60 KiB at most and the session failed."""
    command = "echo " + "x" * (127 * 1024)
    environment = {"BIG": "y" * 4000}
    async with (
        host_agent(tmp_path) as (agent, _),
        started(agent, ["sh", "-c", command], environment) as process,
    ):
        with trio.fail_after(10):
            output = await read_all(process.stdout)
            assert await process.wait() == ExitStatus(code=0)
    assert output == b"x" * (127 * 1024) + b"\n"


async def test_the_agent_outlives_trissh_but_not_its_programs(tmp_path: Path) -> None:
    """trissh gone: what the agent started is killed; the agent stays as the container's
    keepalive (podman exec must keep working)."""
    async with host_agent(tmp_path) as (agent, helper):
        async with started(agent, ["sh", "-c", "echo $$; exec sleep 1000"]) as process:
            pid = int(await process.stdout.receive_some(100))
            agent.close()
            await _gone(pid)
            with trio.fail_after(10):  # the line closed without a status: killed with it
                assert await process.wait() == ExitStatus(signal="KILL")
        assert helper.poll() is None, "the agent exited with its connection"
        with pytest.raises(BackendError, match="agent went away"):
            await agent.spawn(["true"], {})


async def test_a_terminal_size_past_what_a_terminal_holds_is_clamped(tmp_path: Path) -> None:
    """SSH sends sizes as uint32; a terminal (``struct winsize``) holds 16 bits. A client's
    huge window-change is clamped, as sshd truncates it, instead of failing the session."""
    huge = backend_size(
        ProtocolTerminalSize(columns=70000, rows=2**32 - 1, width_px=1, height_px=0)
    )
    assert huge == TerminalSize(columns=65535, rows=65535, width_px=1, height_px=0)
    pty = PtySpec(term="xterm", size=TerminalSize(columns=80, rows=24))
    async with host_agent(tmp_path) as (agent, _):
        async with started(agent, ["sh", "-c", "read line; stty size"], pty=pty) as process:
            await process.resize(huge)
            await process.stdin.send_all(b"go\n")
            with trio.fail_after(10):
                out = await read_all(process.stdout)
        assert b"65535 65535" in out, out


async def test_connected_says_whether_the_agent_is_still_there(tmp_path: Path) -> None:
    """What the warm pool asks before handing a container out: there while the agent
    runs (a program's output waiting makes no difference), gone once it was killed."""
    async with host_agent(tmp_path) as (agent, helper):
        assert agent.connected()
        async with started(agent, ["sh", "-c", "echo out; exec sleep 1000"]) as process:
            assert await process.stdout.receive_some(100) == b"out\n"
            assert agent.connected()
            helper.kill()
            await helper.wait()
            with trio.fail_after(10):
                while agent.connected():
                    await trio.sleep(0.02)


async def test_requests_are_checked_before_they_are_sent(tmp_path: Path) -> None:
    async with host_agent(tmp_path) as (agent, _):
        with pytest.raises(BackendError, match="NUL"):
            await agent.spawn(["sh", "-c", "echo a\0b"], {})
        with pytest.raises(BackendError, match="exceed"):
            await agent.spawn(["true"], {"BIG": "x" * 400_000})
        assert not agent.broken
        async with started(agent, ["true"]) as process:
            assert (await run(process))[2] == ExitStatus(code=0)


async def test_a_wrong_token_gets_no_agent(tmp_path: Path) -> None:
    listener = AgentListener(str(tmp_path), exec_helper())
    helper = await trio.lowlevel.open_process(
        [exec_helper(), "--agent", listener.host_path, "0" * 32]
    )
    try:
        with capture_logs() as logs, trio.move_on_after(2):
            assert await listener.accept() is None
        assert any(entry["event"] == "agent_refused" for entry in logs)
        assert helper.poll() is None, "an agent that trissh refused must stay as keepalive"
    finally:
        helper.kill()
        await helper.wait()
        listener.close()


async def _gone(pid: int) -> None:
    with trio.fail_after(10):
        while _alive(pid):
            await trio.sleep(0.02)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _alive(pid: int) -> bool:
    """Running (a zombie has already died)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- in real containers ------------------------------------------------------------------------


@pytest.mark.podman
async def test_sessions_in_an_agent_container_make_no_podman_exec(podman_available: str) -> None:
    operations: list[str] = []
    async with open_podman_harness(
        agent=True, observe=lambda operation, seconds: operations.append(operation)
    ) as h:
        with trio.fail_after(60):
            async with h.backend.open_sandbox(h.sandbox_spec()) as sandbox:
                spec = ProcessSpec(argv=h.sh("readlink /proc/self/fd/1; echo $$; sleep 1000"))
                async with sandbox.open_process(spec) as process:
                    pipe = await process.stdout.receive_some(100)
                    assert pipe.startswith(b"pipe:"), pipe
                    while await h.running(sandbox.container_id, "sleep") != 1:
                        await trio.sleep(0.05)
                # left while it ran: the teardown killed it (podman top: no exec)
                await until_gone(h, sandbox.container_id, "sleep")
                info = await h.podman._api.request(
                    "GET", f"/containers/{sandbox.container_id}/json"
                )
                assert not info.get("ExecIDs"), info.get("ExecIDs")
        # what an operator sees in trissh_container_operation_duration_seconds
        assert operations[:2] == ["queue", "start"], operations  # the start queue's wait first
        assert set(operations[2:]) == {"spawn", "remove"}, operations


@pytest.mark.podman
async def test_a_container_whose_agent_does_not_connect_uses_podman_exec(
    podman_available: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent that cannot prove itself (here: a wrong token) costs one warning; that
    container and later ones run their programs as execs, and nothing waits again."""
    real = AgentListener.entrypoint
    monkeypatch.setattr(AgentListener, "entrypoint", lambda self: [*real(self)[:3], "0" * 32])
    monkeypatch.setattr("trissh.backend.podman.agent.CONNECT_TIMEOUT", 2.0)
    operations: list[str] = []
    async with open_podman_harness(
        agent=True, observe=lambda operation, seconds: operations.append(operation)
    ) as h:
        with capture_logs() as logs, trio.fail_after(60):
            for _ in range(2):
                async with h.backend.open_sandbox(h.sandbox_spec()) as sandbox:
                    spec = ProcessSpec(argv=h.sh("echo via exec"))
                    async with sandbox.open_process(spec) as process:
                        out, _, status = await run(process)
                    assert (out, status) == (b"via exec\n", ExitStatus(code=0))
    events = [entry["event"] for entry in logs]
    assert events.count("agent_unavailable") == 1, events
    assert events.count("agent_refused") == 1, events
    assert operations.count("exec") == 2, operations  # the metric shows the fallback
    assert "spawn" not in operations, operations


async def test_terminal_output_comes_in_one_piece_not_per_pty_read() -> None:
    """A pty master hands out a few KiB per read; what is there is taken at once (one SSH
    packet, not one per 4 KiB)."""
    master, slave = os.openpty()
    output = _PtyOutput(trio.lowlevel.FdStream(master), trio.Event())
    try:
        written = _fill(slave)
        assert written > 8192
        await trio.sleep(0.1)  # the kernel moves it to the master's side asynchronously
        with trio.fail_after(5):
            assert await output.receive_some(65536) == b"x" * written
    finally:
        output.close()
        os.close(slave)


def _fill(fd: int) -> int:
    """Write to a pty slave what it takes without blocking (a few pty reads' worth)."""
    os.set_blocking(fd, False)
    written = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            written += os.write(fd, b"x" * 1000)
    return written


@pytest.mark.podman
async def test_doctor_runs_a_program_through_the_agent(podman_available: str) -> None:
    """`trissh doctor`'s session check: a real container, a program via the agent and its
    pipes, the container removed (the harness fails on a leftover)."""
    async with open_podman_harness(agent=True) as h:
        with trio.fail_after(60):
            check = await try_session(h.podman, h.settings)
    assert (check.name, check.ok, check.warning) == ("session", True, False), check
    assert "ran `echo` (agent, pipes)" in check.detail, check.detail


@pytest.mark.podman
async def test_doctor_warns_when_the_agent_does_not_connect(
    podman_available: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback a running server only logs is a warning in doctor, naming the cause."""
    real = AgentListener.entrypoint
    monkeypatch.setattr(AgentListener, "entrypoint", lambda self: [*real(self)[:3], "0" * 32])
    monkeypatch.setattr("trissh.backend.podman.agent.CONNECT_TIMEOUT", 2.0)
    async with open_podman_harness(agent=True) as h:
        with trio.fail_after(60):
            check = await try_session(h.podman, h.settings)
    assert (check.ok, check.warning) == (True, True), check
    assert "(podman exec, pipes)" in check.detail, check.detail
    assert "the container's agent did not connect" in check.detail, check.detail


@pytest.mark.podman
async def test_doctor_fails_on_a_shell_the_image_lacks(podman_available: str) -> None:
    """A configuration that would fail every login fails doctor, with the program's own
    error message."""
    async with open_podman_harness(agent=True) as h:
        with trio.fail_after(60):
            check = await try_session(
                h.podman, dataclasses.replace(h.settings, shell=("/bin/no-such-shell",))
            )
    assert not check.ok, check
    assert "exit code 127" in check.detail, check.detail
    assert "/bin/no-such-shell" in check.detail, check.detail
    assert "shell" in check.fix


@pytest.mark.podman
async def test_programs_see_the_same_environment_from_the_agent_as_from_podman_exec(
    podman_available: str,
) -> None:
    """The agent is the container's main process, whose environment podman gives a
    HOSTNAME that execs never see: a session must not depend on which way it started."""

    async def environment(agent: bool) -> list[bytes]:
        async with open_podman_harness(direct_stdio=True, agent=agent) as h:
            spec = ProcessSpec(argv=h.sh("env"), env={"FROM_CLIENT": "1"})
            async with (
                h.backend.open_sandbox(h.sandbox_spec()) as sandbox,
                sandbox.open_process(spec) as process,
            ):
                out, _, status = await run(process)
        assert status == ExitStatus(code=0)
        return sorted(out.splitlines())

    with trio.fail_after(60):
        via_agent, via_exec = await environment(agent=True), await environment(agent=False)
    assert b"FROM_CLIENT=1" in via_agent
    assert via_agent == via_exec
