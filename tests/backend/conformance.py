"""One backend conformance suite, run against every backend (ContainerSSH's pattern).

A backend takes part by providing a :class:`Harness`: the backend itself plus the few things
a test cannot ask through the contract (how to count containers, plant an orphan, build an
unreachable twin). ``test_conformance.py`` subclasses :class:`BackendConformance`; the
``harness`` fixture in ``conftest.py`` is parametrized over the backends.
"""

from __future__ import annotations

import abc
import dataclasses
import uuid
from collections.abc import Sequence

import pytest
import trio

from trissh.backend import (
    Backend,
    BackendUnavailable,
    ContainerSettings,
    ExitStatus,
    ImageNotFound,
    LaunchPath,
    Process,
    ProcessSpec,
    PtySpec,
    SandboxSpec,
    TerminalSize,
)

#: Per-test wall-clock bound: generous for podman, far above what MemoryBackend needs.
TEST_BOUND = 30.0


class Harness(abc.ABC):
    """What a backend must offer the suite beyond the contract itself."""

    name: str
    backend: Backend
    settings: ContainerSettings
    #: How the backend's sandboxes start programs, as ``Sandbox.launch_path`` says it.
    launch_via: str
    #: Whether its sandboxes make sockets inside (else ``ForwardError("unsupported")``).
    forwarding: bool = True
    #: Whether its programs are real (busybox ``nc``, ``wget``, ``test`` in the image).
    real_programs: bool = False

    def __init__(self) -> None:
        self.instance = f"conformance-{uuid.uuid4().hex[:12]}"

    def sandbox_spec(self, *, settings: ContainerSettings | None = None) -> SandboxSpec:
        return SandboxSpec(
            conn_id=f"c-{uuid.uuid4().hex[:8]}",
            username="alice",
            remote="192.0.2.7:50000",
            instance=self.instance,
            settings=settings or self.settings,
        )

    def sh(self, command: str) -> list[str]:
        return [*self.settings.shell, "-c", command]

    @abc.abstractmethod
    def unavailable_backend(self) -> Backend:
        """The same backend pointed at a service that does not answer."""

    @abc.abstractmethod
    async def containers(self, instance: str) -> list[str]:
        """Ids of existing containers labelled ``trissh.instance=instance``."""

    @abc.abstractmethod
    async def add_orphan(self, instance: str) -> None:
        """Create a container as a crashed trissh ``instance`` would have left it."""

    @abc.abstractmethod
    async def running(self, container_id: str, program: str) -> int:
        """How many ``program`` processes run in the container (as `ps` would count)."""


#: How long a killed program may take to be gone: the kill is sent as the context is left
#: (the agent kills on its line closing), not waited for.
KILL_BOUND = 5.0


async def until_gone(harness: Harness, container_id: str, program: str) -> None:
    """Until no ``program`` runs in the container; fails after ``KILL_BOUND``."""
    with trio.fail_after(KILL_BOUND):
        while await harness.running(container_id, program):
            await trio.sleep(0.05)


async def read_all(stream: trio.abc.ReceiveStream | None) -> bytes:
    assert stream is not None
    chunks = []
    while data := await stream.receive_some(65536):
        chunks.append(data)
    return b"".join(chunks)


async def read_until(stream: trio.abc.ReceiveStream, needle: bytes) -> bytes:
    seen = b""
    while needle not in seen:
        data = await stream.receive_some(65536)
        if not data:
            raise AssertionError(f"EOF before {needle!r}; got {seen!r}")
        seen += data
    return seen


async def run(
    process: Process, stdin: bytes = b"", *, close_stdin: bool = True
) -> tuple[bytes, bytes, ExitStatus]:
    """Feed ``stdin``, collect stdout/stderr concurrently, then wait for the exit status."""
    out: dict[str, bytes] = {}

    async def feed() -> None:
        if stdin:
            await process.stdin.send_all(stdin)
        if close_stdin:
            await process.stdin.aclose()

    async def collect(key: str, stream: trio.abc.ReceiveStream | None) -> None:
        out[key] = b"" if stream is None else await read_all(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        nursery.start_soon(collect, "out", process.stdout)
        nursery.start_soon(collect, "err", process.stderr)
    return out["out"], out["err"], await process.wait()


def pty(rows: int = 24, columns: int = 80) -> PtySpec:
    return PtySpec(term="xterm-256color", size=TerminalSize(columns=columns, rows=rows))


class BackendConformance:
    """The suite. Every test must leave no container or process behind (checked at teardown)."""

    async def exec_(
        self, h: Harness, argv: Sequence[str], stdin: bytes = b"", **kw: object
    ) -> tuple[bytes, bytes, ExitStatus]:
        spec = ProcessSpec(argv=argv, **kw)  # type: ignore[arg-type]
        async with (
            h.backend.open_sandbox(h.sandbox_spec()) as sandbox,
            sandbox.open_process(spec) as process,
        ):
            return await run(process, stdin)

    async def test_stdout_of_echo(self, harness: Harness) -> None:
        with trio.fail_after(TEST_BOUND):
            out, err, status = await self.exec_(harness, harness.sh("echo hello world"))
        assert (out, err, status) == (b"hello world\n", b"", ExitStatus(code=0))

    async def test_stderr_is_separate_without_pty(self, harness: Harness) -> None:
        with trio.fail_after(TEST_BOUND):
            out, err, status = await self.exec_(
                harness, harness.sh("echo to-out; echo to-err >&2; echo more-out")
            )
        assert out == b"to-out\nmore-out\n"
        assert err == b"to-err\n"
        assert status == ExitStatus(code=0)

    @pytest.mark.parametrize("code", [0, 3, 255])
    async def test_exit_codes(self, harness: Harness, code: int) -> None:
        with trio.fail_after(TEST_BOUND):
            _, _, status = await self.exec_(harness, harness.sh(f"exit {code}"))
        assert status == ExitStatus(code=code)

    async def test_unknown_command(self, harness: Harness) -> None:
        with trio.fail_after(TEST_BOUND):
            out, err, status = await self.exec_(harness, harness.sh("no-such-command-xyz"))
        assert out == b""
        assert b"no-such-command-xyz" in err
        assert b"not found" in err
        assert status == ExitStatus(code=127)

    async def test_env_vars_arrive(self, harness: Harness) -> None:
        settings = dataclasses.replace(harness.settings, env={"FROM_SETTINGS": "s-value"})
        spec = ProcessSpec(
            argv=harness.sh('echo "$GREETING"; echo "$FROM_SETTINGS"'),
            env={"GREETING": "hello there"},
        )
        with trio.fail_after(TEST_BOUND):
            async with (
                harness.backend.open_sandbox(harness.sandbox_spec(settings=settings)) as sandbox,
                sandbox.open_process(spec) as process,
            ):
                out, _, status = await run(process)
        assert out == b"hello there\ns-value\n"
        assert status == ExitStatus(code=0)

    async def test_stdin_to_cat_then_eof(self, harness: Harness) -> None:
        data = bytes(range(256)) * 4000  # ~1 MB: more than any buffer on the way
        with trio.fail_after(TEST_BOUND):
            out, err, status = await self.exec_(harness, harness.sh("cat"), data)
        assert len(out) == len(data)
        assert out == data
        assert (err, status) == (b"", ExitStatus(code=0))

    async def test_stdin_eof_without_data(self, harness: Harness) -> None:
        with trio.fail_after(TEST_BOUND):
            out, _, status = await self.exec_(harness, harness.sh("cat; echo done"))
        assert (out, status) == (b"done\n", ExitStatus(code=0))

    async def test_drain_stdin_to_dev_null(self, harness: Harness) -> None:
        with trio.fail_after(TEST_BOUND):
            out, _, status = await self.exec_(
                harness, harness.sh("cat > /dev/null; echo drained"), b"x" * 300_000
            )
        assert (out, status) == (b"drained\n", ExitStatus(code=0))

    async def test_large_output(self, harness: Harness) -> None:
        with trio.fail_after(TEST_BOUND):
            out, err, status = await self.exec_(harness, harness.sh("head -c 5000000 /dev/zero"))
        assert len(out) == 5_000_000
        assert out.count(0) == 5_000_000
        assert (err, status) == (b"", ExitStatus(code=0))

    async def test_pty_reports_initial_size(self, harness: Harness) -> None:
        with trio.fail_after(TEST_BOUND):
            out, err, status = await self.exec_(
                harness, harness.sh("stty size"), pty=pty(rows=33, columns=101)
            )
        assert out == b"33 101\r\n"
        assert err == b""
        assert status == ExitStatus(code=0)

    async def test_pty_interactive_shell_and_resize(self, harness: Harness) -> None:
        spec = ProcessSpec(
            argv=list(harness.settings.shell), env={"GREETING": "hi-there"}, pty=pty()
        )
        with trio.fail_after(TEST_BOUND):
            async with (
                harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox,
                sandbox.open_process(spec) as process,
            ):
                assert process.stderr is None
                await process.stdin.send_all(b'echo "$GREETING"\n')
                await read_until(process.stdout, b"hi-there\r\n")
                await process.stdin.send_all(b"stty size\n")
                await read_until(process.stdout, b"24 80\r\n")
                await process.resize(TerminalSize(columns=132, rows=43))
                await process.stdin.send_all(b"stty size\n")
                await read_until(process.stdout, b"43 132\r\n")
                await process.stdin.send_all(b"exit 7\n")
                await read_all(process.stdout)
                status = await process.wait()
        assert status == ExitStatus(code=7)

    async def test_pty_stdin_close_is_no_eof_but_ctrl_d_is(self, harness: Harness) -> None:
        """As with sshd: EOF on a pty session's stdin is not delivered to the program (and
        half-closing a tty exec socket takes podman 4.3's service down); ^D is."""
        spec = ProcessSpec(argv=harness.sh("cat"), pty=pty())
        with trio.fail_after(TEST_BOUND):
            async with harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox:
                async with sandbox.open_process(spec) as process:
                    await process.stdin.send_all(b"line\n")
                    await read_until(process.stdout, b"line\r\n")
                    await process.stdin.aclose()
                    with trio.move_on_after(0.5) as waiting:
                        await process.wait()
                    assert waiting.cancelled_caught, "closing a pty's stdin ended the program"
                async with sandbox.open_process(spec) as process:
                    await process.stdin.send_all(b"x\n\x04")
                    assert (await read_all(process.stdout)).endswith(b"x\r\n")
                    assert await process.wait() == ExitStatus(code=0)

    async def test_signal_terminates(self, harness: Harness) -> None:
        """TERM to ``sleep``: an exit signal, or (podman reports only codes) 128 + 15."""
        with trio.fail_after(TEST_BOUND):
            async with (
                harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox,
                sandbox.open_process(ProcessSpec(argv=harness.sh("sleep 100"))) as process,
            ):
                await process.send_signal("TERM")
                out, _, status = await run(process)
        assert out == b""
        assert status in (ExitStatus(signal="TERM"), ExitStatus(code=143))

    async def test_signal_to_pty_process(self, harness: Harness) -> None:
        spec = ProcessSpec(argv=harness.sh("sleep 100"), pty=pty())
        with trio.fail_after(TEST_BOUND):
            async with (
                harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox,
                sandbox.open_process(spec) as process,
            ):
                await process.send_signal("KILL")
                status = await process.wait()
        assert status in (ExitStatus(signal="KILL"), ExitStatus(code=137))

    async def test_leaving_the_context_kills_a_running_process(self, harness: Harness) -> None:
        with trio.fail_after(TEST_BOUND):
            async with harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox:
                # sleep, unlike cat, outlives the end of its stdin: only a kill stops it.
                spec = ProcessSpec(argv=harness.sh("echo ready; sleep 1000"))
                async with sandbox.open_process(spec) as process:
                    assert await read_until(process.stdout, b"ready\n") == b"ready\n"
                    # the shell forks sleep after the echo: wait until it is there
                    while await harness.running(sandbox.container_id, "sleep") != 1:
                        await trio.sleep(0.05)
                await until_gone(harness, sandbox.container_id, "sleep")
                # The sandbox is still usable afterwards.
                spec = ProcessSpec(argv=harness.sh("echo still-here"))
                async with sandbox.open_process(spec) as process:
                    out, _, _ = await run(process)
        assert out == b"still-here\n"

    @pytest.mark.parametrize("delay", [0.0, 0.02, 0.2, 1.0])
    async def test_cancellation_leaves_nothing_behind(self, harness: Harness, delay: float) -> None:
        """Cancel at different points: before create, during create/start, while running."""
        with trio.fail_after(TEST_BOUND):
            with trio.move_on_after(delay) as scope:
                async with harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox:
                    spec = ProcessSpec(argv=harness.sh("sleep 100"))
                    async with sandbox.open_process(spec) as process:
                        await process.wait()
            assert scope.cancelled_caught
            # No container, no process in it (the harness fixture counts MemoryBackend's).
            assert await harness.containers(harness.instance) == []

    async def test_missing_image(self, harness: Harness) -> None:
        settings = dataclasses.replace(
            harness.settings, image="localhost/trissh-conformance-missing:latest"
        )
        with trio.fail_after(TEST_BOUND), pytest.raises(ImageNotFound) as info:
            async with harness.backend.open_sandbox(harness.sandbox_spec(settings=settings)):
                pytest.fail("sandbox opened with a missing image")
        assert info.value.image == settings.image
        assert "not found" in str(info.value)
        assert await harness.containers(harness.instance) == []

    async def test_unreachable_service(self, harness: Harness) -> None:
        backend = harness.unavailable_backend()
        with trio.fail_after(TEST_BOUND):
            with pytest.raises(BackendUnavailable, match="container backend unavailable"):
                async with backend.open_sandbox(harness.sandbox_spec()):
                    pytest.fail("sandbox opened on an unreachable service")
            with pytest.raises(BackendUnavailable):
                await backend.sweep(keep_instance=harness.instance)
            checks = await backend.health(harness.settings)
        assert checks
        assert not checks[0].ok
        assert checks[0].fix

    async def test_sweep_removes_leftovers_of_other_instances(self, harness: Harness) -> None:
        other = f"crashed-{uuid.uuid4().hex[:8]}"
        with trio.fail_after(TEST_BOUND):
            await harness.add_orphan(other)
            assert len(await harness.containers(other)) == 1
            async with harness.backend.open_sandbox(harness.sandbox_spec()):
                removed = await harness.backend.sweep(keep_instance=harness.instance)
                # Our own live sandbox survives the sweep.
                assert len(await harness.containers(harness.instance)) == 1
            assert removed >= 1
            assert await harness.containers(other) == []

    async def test_health_reports_service_and_image(self, harness: Harness) -> None:
        with trio.fail_after(TEST_BOUND):
            checks = await harness.backend.health(harness.settings)
            missing = await harness.backend.health(
                dataclasses.replace(
                    harness.settings, image="localhost/trissh-conformance-missing:latest"
                )
            )
        by_name = {check.name: check for check in checks}
        assert by_name["service"].ok
        assert by_name["image"].ok, by_name["image"]
        assert not {check.name: check for check in missing}["image"].ok

    async def test_ready_says_whether_a_login_could_get_a_container(self, harness: Harness) -> None:
        with trio.fail_after(TEST_BOUND):
            assert await harness.backend.ready(harness.settings.image) is None
            missing = await harness.backend.ready("localhost/trissh-conformance-missing:latest")
            unreachable = await harness.unavailable_backend().ready(harness.settings.image)
        assert "not found" in (missing or ""), missing
        assert "unavailable" in (unreachable or ""), unreachable

    async def test_doctor_runs_a_program_as_a_login_would(self, harness: Harness) -> None:
        """``trissh doctor``'s trial needs nothing beyond the contract, and a sandbox says
        how its programs start: the way its configuration asked for, nothing fell back."""
        from trissh.ops.doctor import try_session

        with trio.fail_after(TEST_BOUND):
            async with harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox:
                path = sandbox.launch_path
            check = await try_session(harness.backend, harness.settings)
        assert path == LaunchPath(via=harness.launch_via)
        assert (check.name, check.ok, check.warning) == ("session", True, False), check
        assert f"ran `echo` ({harness.launch_via})" in check.detail, check.detail
        assert harness.backend.warm_containers == 0  # none asked for
        assert harness.backend.url
