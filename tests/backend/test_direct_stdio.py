"""Direct stdio (``trissh/backend/podman/direct_stdio.py`` + ``trissh-exec --stdio``).

First without podman: the real static helper runs on the host against a real
:class:`DirectStdio` socket (the handover, its bounds, its failure message, no fd left
behind), and the stale-directory sweep. Then in real containers: the pipes are what the
program gets, nobody in a container can list the socket directory, and every directory is
gone with its container.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from trissh.backend import BackendError, ExitStatus, ProcessSpec
from trissh.backend.podman.direct_stdio import (
    CONTAINER_DIR,
    MAX_ATTEMPTS,
    TOKEN_BYTES,
    DirectStdio,
    StdioRoot,
    _default_parent,
    parse_status_line,
)
from trissh.backend.podman.exec import ExecTarget, PodmanProcess
from trissh.backend.podman.fd_pipes import FdPipeReader, FdPipeWriter
from trissh.backend.podman.launch import PipeLauncher
from trissh.ops.doctor import try_session

from .conformance import read_all, run
from .conftest import PodmanHarness, exec_helper, open_podman_harness


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _host_args(direct: DirectStdio) -> list[str]:
    """The helper's options, with the socket as the host sees it (no container here)."""
    option, container_path, token = direct.helper_args()
    assert (option, container_path) == ("--stdio", direct.container_path)
    assert container_path.startswith(CONTAINER_DIR + "/")
    return [option, direct.host_path, token]


async def _hand_over(direct: DirectStdio, into: list[bool]) -> None:
    into.append(await direct.hand_over())


async def _run_helper(
    direct: DirectStdio, args: list[str], program: list[str], stdin: bytes, status: Path
) -> tuple[subprocess.CompletedProcess[bytes], bytes, bytes, ExitStatus | None]:
    """The helper on the host; its process, what the program wrote to the pipes, and the
    exit status the helper reported on the handover connection."""
    helper = exec_helper()
    out: dict[str, bytes] = {}
    handed: list[bool] = []
    reported: list[ExitStatus | None] = []

    async def hand_over_and_listen() -> None:
        await _hand_over(direct, handed)
        reported.append(await direct.exit_status())

    async def collect(key: str, stream: trio.abc.ReceiveStream) -> None:
        out[key] = await read_all(stream)

    async def feed() -> None:
        await direct.stdin.send_all(stdin)
        await direct.stdin.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hand_over_and_listen)
        nursery.start_soon(collect, "out", direct.stdout)
        nursery.start_soon(collect, "err", direct.stderr)
        nursery.start_soon(feed)
        process = await trio.run_process(
            [helper, "--status", str(status), *args, "--", *program],
            stdin=b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert handed == [True]
    return process, out["out"], out["err"], reported[0]


async def test_program_gets_the_pipes_and_the_helper_keeps_its_own_stdio(tmp_path: Path) -> None:
    before = _open_fds()
    direct = DirectStdio(str(tmp_path))
    try:
        with trio.fail_after(20):
            process, out, err, reported = await _run_helper(
                direct,
                _host_args(direct),
                ["sh", "-c", "cat; echo to-err >&2; readlink /proc/self/fd/1; exit 7"],
                b"from stdin\n",
                tmp_path / "status",
            )
    finally:
        direct.close()
    assert process.returncode == 7
    assert reported == ExitStatus(code=7)
    assert (process.stdout, process.stderr) == (b"", b"")  # nothing through the helper's own
    assert out.startswith(b"from stdin\npipe:[")
    assert err == b"to-err\n"
    assert not _exists(direct.host_path), "the socket outlived its handover"
    assert _open_fds() == before


async def test_helper_reports_a_death_by_signal_on_the_connection(tmp_path: Path) -> None:
    direct = DirectStdio(str(tmp_path))
    try:
        with trio.fail_after(20):
            process, _, _, reported = await _run_helper(
                direct, _host_args(direct), ["sh", "-c", "kill -TERM $$"], b"", tmp_path / "st"
            )
    finally:
        direct.close()
    assert process.returncode == 128 + 15
    assert reported == ExitStatus(signal="TERM")


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"exit 0\n", ExitStatus(code=0)),
        (b"exit 255\n", ExitStatus(code=255)),
        (b"signal 9 core 0\n", ExitStatus(signal="KILL")),
        (b"signal 11 core 1\n", ExitStatus(signal="SEGV", core_dumped=True)),
        # a real-time signal (kill -s RTMIN+2): no name, as sshd reports it
        (b"signal 36 core 0\n", ExitStatus(signal="SIG@openssh.com")),
        (b"", None),  # the helper died without a word: podman's record decides
        (b"exit 256\n", None),
        (b"exit -1\n", None),
        (b"signal 999 core 0\n", None),
        (b"signal 9 core 2\n", None),
        (b"bogus\n", None),
    ],
)
def test_status_lines_are_parsed_strictly(line: bytes, status: ExitStatus | None) -> None:
    assert parse_status_line(line) == status


async def test_helper_without_trissh_says_why_and_runs_nothing(tmp_path: Path) -> None:
    helper = exec_helper()
    marker = tmp_path / "ran"
    with trio.fail_after(20):
        process = await trio.run_process(
            [helper, "--status", str(tmp_path / "st"), "--stdio", str(tmp_path / "none.sock"),
             "0" * 32, "--", "touch", str(marker)],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert process.returncode == 126
    assert b"trissh-exec: no stdio from trissh" in process.stderr
    assert not marker.exists()


async def _connect_and_send(path: str, token: bytes) -> tuple[bytes, int]:
    """A fake helper: send ``token``; what comes back and how many fds came with it."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        await sock.connect(path)
        await sock.send(token)
        data, ancdata, _, _ = await sock.recvmsg(1, socket.CMSG_SPACE(3 * 4))
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                fds += memoryview(payload).cast("i").tolist()
        for fd in fds:
            os.close(fd)
        return data, len(fds)


async def test_a_wrong_token_gets_nothing_and_the_right_one_still_works(tmp_path: Path) -> None:
    direct = DirectStdio(str(tmp_path))
    token = direct.helper_args()[2].encode()
    results: list[tuple[bytes, int]] = []
    handed: list[bool] = []
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_hand_over, direct, handed)
                results.append(await _connect_and_send(direct.host_path, b"f" * len(token)))
                results.append(await _connect_and_send(direct.host_path, token))
    finally:
        direct.close()
    assert results == [(b"", 0), (b"\0", 3)]
    assert handed == [True]


async def test_handover_gives_up_after_max_attempts(tmp_path: Path) -> None:
    direct = DirectStdio(str(tmp_path))
    handed: list[bool] = []
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_hand_over, direct, handed)
                for _ in range(MAX_ATTEMPTS):
                    assert await _connect_and_send(direct.host_path, b"x" * TOKEN_BYTES * 2) == (
                        b"",
                        0,
                    )
        with pytest.raises(FileNotFoundError):
            await _connect_and_send(direct.host_path, b"x")
        # Our copies of the program's ends are closed: the reader sees EOF at once.
        assert await direct.stdout.receive_some(10) == b""
    finally:
        direct.close()
    assert handed == [False]


async def test_a_silent_client_is_dropped_after_the_token_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    direct = DirectStdio(str(tmp_path))
    handed: list[bool] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_hand_over, direct, handed)
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with sock:
                await sock.connect(direct.host_path)
                started = trio.current_time()
                assert await sock.recv(1) == b""  # we said nothing; trissh hung up
                assert trio.current_time() - started < 6
            nursery.cancel_scope.cancel()
    finally:
        direct.close()


def test_sweep_removes_only_roots_of_dead_owners(tmp_path: Path) -> None:
    dead = StdioRoot(str(tmp_path), owner="dead", alive=lambda owner: owner == "live")
    live = StdioRoot(str(tmp_path), owner="live", alive=lambda owner: owner == "live")
    dead_dir, live_dir = dead.make_dir(), live.make_dir()
    (tmp_path / "trissh-stdio-not-a-root").write_text("")  # a file, not ours to judge
    (tmp_path / "unrelated").mkdir()
    assert live.sweep() == 1
    assert not _exists(dead_dir)
    assert os.path.isdir(live_dir)
    assert stat.S_IMODE(os.stat(os.path.dirname(live_dir)).st_mode) == 0o711
    assert stat.S_IMODE(os.stat(live_dir).st_mode) == 0o711
    assert (tmp_path / "unrelated").is_dir()
    live.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trissh-stdio-not-a-root", "unrelated"]


@pytest.mark.podman
async def test_in_a_container_stdio_are_pipes_and_the_directory_is_unlistable(
    podman_available: str,
) -> None:
    async with open_podman_harness(direct_stdio=True) as h:
        root = await _check_container(h)
    assert not _exists(root), "the stdio root outlived close()"


async def _check_container(h: PodmanHarness) -> str:
    """Run the checks in one container; the stdio root directory, for the caller."""
    script = (
        "for fd in 0 1 2; do readlink /proc/self/fd/$fd; done; "
        f"ls {CONTAINER_DIR} >/dev/null 2>&1 && echo listable || echo unlistable; "
        f"touch {CONTAINER_DIR}/x 2>/dev/null && echo writable || echo read-only"
    )
    with trio.fail_after(60):
        async with h.podman.open_sandbox(h.sandbox_spec()) as sandbox:
            launcher = sandbox.launcher
            assert isinstance(launcher, PipeLauncher), launcher
            host_dir = launcher.stdio_dir
            async with sandbox.open_process(ProcessSpec(argv=h.sh(script))) as process:
                out, err, status = await run(process)
                # The status came from the helper, not from polling podman's exec record.
                assert isinstance(process, PodmanProcess)
                assert process.helper_status == status
            assert _exists(host_dir)
            # Bulk output arrives whole through the pipe.
            big = ProcessSpec(argv=h.sh("head -c 20000000 /dev/zero"))
            async with sandbox.open_process(big) as process:
                data, _, big_status = await run(process)
            # Its directory gone (from under us): a clear error, not an OSError.
            StdioRoot.remove_dir(host_dir)
            with pytest.raises(BackendError, match="cannot set up the program's stdio"):
                async with sandbox.open_process(ProcessSpec(argv=h.sh("true"))):
                    pass
    assert status == ExitStatus(code=0), err
    lines = out.decode().split()
    assert [line.split(":")[0] for line in lines[:3]] == ["pipe"] * 3, lines
    assert lines[3:] == ["unlistable", "read-only"]
    assert (len(data), data.count(0), big_status) == (20_000_000, 20_000_000, ExitStatus(code=0))
    assert not _exists(host_dir), "the container's stdio directory outlived it"
    return os.path.dirname(host_dir)


@pytest.fixture
def passable_tmp() -> Iterator[Path]:
    """A directory others may reach (in the 1777 temp dir; pytest's tmp_path is under a
    0700 pytest-of-USER, which no other user can pass)."""
    outer = Path(tempfile.mkdtemp())
    outer.chmod(0o711)
    try:
        yield outer
    finally:
        shutil.rmtree(outer)


def test_default_parent_skips_runtime_dirs_others_cannot_pass(
    passable_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root login's XDG_RUNTIME_DIR (/run/user/0, mode 0700) would make every bind mount
    fail for a podman user that is not root: such a directory is passed over, and so is
    one below a directory others cannot pass."""
    private, shared = passable_tmp / "private", passable_tmp / "shared"
    private.mkdir(mode=0o700)
    shared.mkdir(mode=0o755)
    below_private = private / "open"
    below_private.mkdir(mode=0o755)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(private))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))
    assert _default_parent() == str(shared)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(below_private))
    assert _default_parent() == str(shared)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(passable_tmp / "missing"))
    assert _default_parent() == tempfile.gettempdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{shared}:{private}")  # systemd lists several
    assert _default_parent() == str(shared)


async def test_pipe_reader_reads_what_is_there_without_a_scheduling_round() -> None:
    """The download hot path: data already in the pipe comes back with no checkpoint;
    an empty pipe waits; a closed reader says so (and never reads a reused fd number)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    reader = FdPipeReader(trio.lowlevel.FdStream(read_end))
    try:
        os.write(write_end, b"ready")
        others_ran = False

        async def other_task() -> None:
            nonlocal others_ran
            others_ran = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)  # runs at our next scheduling point, not before
            assert await reader.receive_some(100) == b"ready"
            assert not others_ran, "receive_some yielded although data was there"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.receive_some, 100)
            await trio.testing.wait_all_tasks_blocked()  # parked on the empty pipe
            os.write(write_end, b"late")
        os.close(write_end)
        write_end = -1
        assert await reader.receive_some(100) == b""
    finally:
        if write_end >= 0:
            os.close(write_end)
        reader.close()
    with pytest.raises(trio.ClosedResourceError):
        await reader.receive_some(100)


async def test_pipe_writer_writes_everything_in_order_and_reports_a_gone_reader() -> None:
    """More than the pipe holds: what it does not take at once is waited for, in order;
    a program that closed its stdin makes the next send BrokenResourceError."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    writer = FdPipeWriter(trio.lowlevel.FdStream(write_end))
    reader = FdPipeReader(trio.lowlevel.FdStream(read_end))
    data = bytes(range(256)) * 8192  # 2 MiB, far above any pipe buffer
    received = bytearray()

    async def drain() -> None:
        while chunk := await reader.receive_some(65536):
            received.extend(chunk)

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await writer.send_all(data)
                await writer.aclose()
        assert bytes(received) == data
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        os.close(read_end)
        gone = FdPipeWriter(trio.lowlevel.FdStream(write_end))
        with pytest.raises(trio.BrokenResourceError):
            await gone.send_all(b"x")
        gone.close()
    finally:
        writer.close()
        reader.close()


def test_passable_by_others_looks_at_every_directory_on_the_path(passable_tmp: Path) -> None:
    """What ``trissh doctor`` warns about: a 0700 directory anywhere above the stdio root."""
    inner = passable_tmp / "inner"
    inner.mkdir()
    root = StdioRoot(str(inner), owner="me", alive=lambda owner: True)
    assert root.passable_by_others()
    passable_tmp.chmod(0o700)
    assert not root.passable_by_others()


@pytest.mark.podman
async def test_a_stdio_dir_podman_cannot_reach_falls_back_to_the_stream(
    podman_available: str,
) -> None:
    """A default that does not fit the host (here: a 0700 directory the podman user cannot
    enter) must not fail logins: one warning, then podman's stream for new containers."""
    unreachable = Path(tempfile.mkdtemp())  # 0700, ours
    try:
        async with open_podman_harness(direct_stdio=True, stdio_dir=str(unreachable)) as h:
            with trio.fail_after(60), capture_logs() as logs:
                for _ in range(2):
                    async with h.backend.open_sandbox(h.sandbox_spec()) as sandbox:
                        spec = ProcessSpec(argv=h.sh("echo works"))
                        async with sandbox.open_process(spec) as process:
                            out, _, status = await run(process)
                        assert (out, status) == (b"works\n", ExitStatus(code=0))
                        assert isinstance(process, PodmanProcess)
                        assert process.handed_over is None
        warnings = [e for e in logs if e["event"] == "direct_stdio_unavailable"]
        assert len(warnings) == 1, logs
        assert "permission denied" in warnings[0]["error"]
    finally:
        shutil.rmtree(unreachable)


@pytest.mark.podman
async def test_doctor_warns_when_podman_cannot_mount_the_stdio_dir(podman_available: str) -> None:
    """What the server only logs once is a warning in `trissh doctor`'s session check."""
    unreachable = Path(tempfile.mkdtemp())  # 0700, ours
    try:
        async with open_podman_harness(direct_stdio=True, stdio_dir=str(unreachable)) as h:
            with trio.fail_after(60):
                check = await try_session(h.podman, h.settings)
        assert (check.ok, check.warning) == (True, True), check
        assert "(podman exec, stream)" in check.detail, check.detail
        assert "podman could not mount the stdio directory" in check.detail, check.detail
    finally:
        shutil.rmtree(unreachable)


class _NoStatusFile:
    """The API as ``trissh-exec --read-status`` answers when the helper left no record:
    it was killed itself (SIGKILL reaches no handler), or the program chose its code."""

    async def exec_output(self, container_id: str, argv: list[str]) -> bytes:
        await trio.lowlevel.checkpoint()
        return b""


@pytest.mark.parametrize(
    ("sent", "status"),
    [({9}, ExitStatus(signal="KILL")), (set(), ExitStatus(code=137))],
    ids=["kill-sent", "nothing-sent"],
)
async def test_a_helper_killed_by_our_kill_reports_the_signal(
    sent: set[int], status: ExitStatus
) -> None:
    """``signal KILL`` on a podman exec kills the helper (its pid is the exec's), which then
    writes no record: code 137 is our KILL when we sent one, else the program's own code."""
    target = ExecTarget(api=_NoStatusFile(), container_id="c" * 64, shell=("/bin/sh",))  # type: ignore[arg-type]
    process = PodmanProcess(target, "e" * 64, ProcessSpec(argv=["sleep", "9"]), status_path="/x")
    process._signals_sent.update(sent)
    assert await process._classify(137) == status
