"""Session recordings: asciicast v2 replayed by the real asciinema, transcripts, caps, failures."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

import trissh.ops.recording
from trissh.backend.base import TerminalSize
from trissh.ops.recording import MIN_MAX_BYTES, Recorder, RecordingState, SessionRecording

from .support import needs

needs_asciinema = needs("asciinema", "script")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_recorder(directory: Path, clock: FakeClock, **kwargs: Any) -> Recorder:
    kwargs.setdefault("max_bytes", 0)
    kwargs.setdefault("record_input", True)
    return Recorder(directory, clock=clock, wall_clock=lambda: 1732500000.25, **kwargs)


def read_cast(path: Path) -> tuple[dict[str, Any], list[list[Any]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def text_of(events: list[list[Any]], code: str) -> str:
    return "".join(event[2] for event in events if event[1] == code)


def record_shell(directory: Path, **kwargs: Any) -> SessionRecording:
    """A short interactive session as the driver would report it."""
    clock = FakeClock()
    recorder = make_recorder(directory, clock, **kwargs)
    size = TerminalSize(columns=100, rows=30)
    rec = recorder.open_session(
        "c0ffee123456", 0, user="alice", pty=size, term="xterm-256color", shell="/bin/sh"
    )
    rec.stdout(b"$ ")
    for key in b"echo hello\r":
        clock.advance(0.1)
        rec.stdin(bytes([key]))
        rec.stdout(b"\r\n" if key == 13 else bytes([key]))
    clock.advance(0.05)
    rec.stdout(b"hello from the container\r\n$ ")
    clock.advance(0.5)
    rec.resize(120, 40)
    rec.stdout("caf\u00e9 \u2713\r\n".encode())
    rec.close(0)
    return rec


@needs_asciinema
def test_asciinema_cat_shows_the_typed_text(tmp_path: Path) -> None:
    rec = record_shell(tmp_path / "rec")
    assert rec.path is not None
    # `asciinema cat` insists on a terminal: run it under script(1)'s pty.
    result = subprocess.run(
        ["script", "-qec", f"asciinema cat {rec.path}", "/dev/null"],
        capture_output=True,
        timeout=60,
        check=True,
        env={**os.environ, "LANG": "C.UTF-8", "HOME": str(tmp_path)},
    )
    shown = result.stdout.decode().replace("\r", "")
    assert "$ echo hello\nhello from the container\n$ caf\u00e9 \u2713" in shown


@needs_asciinema
def test_asciinema_play_replays_it(tmp_path: Path) -> None:
    rec = record_shell(tmp_path / "rec")
    assert rec.path is not None
    result = subprocess.run(
        ["asciinema", "play", "-i", "0.01", str(rec.path)],
        capture_output=True,
        timeout=60,
        check=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "LANG": "C.UTF-8", "HOME": str(tmp_path)},
    )
    assert "hello from the container" in result.stdout.decode()


def test_asciicast_v2_layout(tmp_path: Path) -> None:
    rec = record_shell(tmp_path / "rec")
    assert rec.path is not None
    assert rec.state is RecordingState.CLOSED
    header, events = read_cast(rec.path)
    assert header == {
        "version": 2,
        "width": 100,
        "height": 30,
        "timestamp": 1732500000,
        "env": {"TERM": "xterm-256color", "SHELL": "/bin/sh"},
        "title": "alice conn c0ffee123456 ch 0",
        "trissh": {
            "kind": "pty",
            "conn_id": "c0ffee123456",
            "channel": 0,
            "user": "alice",
            "command": None,
        },
    }
    assert text_of(events, "i") == "echo hello\r"
    assert [e for e in events if e[1] == "r"] == [[1.65, "r", "120x40"]]
    assert events[-1] == [1.65, "x", "0"]
    times = [e[0] for e in events]
    assert times == sorted(times)
    assert events[1] == [0.1, "i", "e"]


def test_input_not_recorded_unless_enabled(tmp_path: Path) -> None:
    rec = record_shell(tmp_path / "rec", record_input=False)
    assert rec.path is not None
    _, events = read_cast(rec.path)
    assert not [e for e in events if e[1] == "i"]
    assert "echo hello" in text_of(events, "o")


def test_transcript(tmp_path: Path) -> None:
    clock = FakeClock()
    recorder = make_recorder(tmp_path, clock)
    rec = recorder.open_session("c1", 3, user="bob", pty=None, command="sort -r")
    rec.stdin(b"a\nb\n")
    clock.advance(0.25)
    rec.stdout(b"b\na\n")
    rec.stderr(b"sort: warning\n")
    rec.resize(1, 1)  # no terminal: ignored
    clock.advance(1)
    rec.close(signal="KILL")
    assert rec.path is not None
    assert rec.path.name.endswith("-c1-3.transcript.cast")
    header, events = read_cast(rec.path)
    assert header["trissh"] == {
        "kind": "transcript",
        "conn_id": "c1",
        "channel": 3,
        "user": "bob",
        "command": "sort -r",
    }
    assert (header["version"], header["width"], header["height"]) == (2, 80, 24)
    assert events == [
        [0.0, "i", "a\nb\n"],
        [0.25, "o", "b\na\n"],
        [0.25, "e", "sort: warning\n"],
        [1.25, "x", "signal:KILL"],
    ]


def test_exit_without_status(tmp_path: Path) -> None:
    rec = make_recorder(tmp_path, FakeClock()).open_session(
        "c", 0, user="u", pty=None, command="true"
    )
    rec.close()
    rec.close(3)  # idempotent
    rec.stdout(b"late")  # after close: ignored
    assert rec.path is not None
    assert read_cast(rec.path)[1] == [[0.0, "x", ""]]


def test_file_and_directory_modes(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        rec = make_recorder(tmp_path / "a" / "rec", FakeClock()).open_session(
            "../../etc/x", 7, user="u/../v", pty=None
        )
    finally:
        os.umask(old)
    assert rec.path is not None
    assert rec.path.parent == tmp_path / "a" / "rec"
    assert rec.path.name == "20241125T020000.250000Z-.._.._etc_x-7.transcript.cast"
    assert stat.S_IMODE(rec.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(rec.path.parent.stat().st_mode) == 0o700
    rec.close(0)


def test_same_name_twice_does_not_clobber(tmp_path: Path) -> None:
    recorder = make_recorder(tmp_path, FakeClock())
    first = recorder.open_session("c", 0, user="u", pty=None)
    second = recorder.open_session("c", 0, user="u", pty=None)
    assert first.path is not None
    assert second.path is not None
    assert second.path.name == first.path.name.replace("-c-0.", "-c-0-1.")
    first.close(0)
    second.close(1)
    assert read_cast(first.path)[1][-1][2] == "0"


def test_size_cap_stops_cleanly(tmp_path: Path) -> None:
    clock = FakeClock()
    recorder = make_recorder(tmp_path, clock, max_bytes=MIN_MAX_BYTES)
    rec = recorder.open_session("c", 0, user="u", pty=TerminalSize(columns=80, rows=24))
    for n in range(200):
        clock.advance(0.01)
        rec.stdout(f"line {n:04} ".encode() + b"x" * 100 + b"\r\n")
    assert rec.state is RecordingState.TRUNCATED
    rec.stdout(b"more")
    rec.close(0)
    assert rec.path is not None
    assert rec.path.stat().st_size <= MIN_MAX_BYTES
    _, events = read_cast(rec.path)
    assert events[-2][1:] == ["m", f"trissh: size limit of {MIN_MAX_BYTES} bytes reached"]
    assert events[-1][1:] == ["x", "0"]
    assert "line 0000" in text_of(events, "o")
    assert "more" not in text_of(events, "o")


def test_max_bytes_must_leave_room_for_the_header(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 16384"):
        Recorder(tmp_path, max_bytes=1000, record_input=False)


def test_worst_case_header_fits_the_minimum_cap(tmp_path: Path) -> None:
    nasty = "\x01" * 100_000
    recorder = make_recorder(tmp_path, FakeClock(), max_bytes=MIN_MAX_BYTES)
    rec = recorder.open_session(nasty, 0, user=nasty, pty=None, term=nasty, command=nasty)
    rec.stdout(b"x" * 100_000)
    rec.close(0)
    assert rec.path is not None
    assert rec.path.stat().st_size <= MIN_MAX_BYTES
    assert read_cast(rec.path)[1][-1] == [0.0, "x", "0"]


def test_utf8_split_across_chunks(tmp_path: Path) -> None:
    text = "h\u00e9llo \u2713 \U0001f600 \u4e16\u754c"
    data = text.encode()
    rec = make_recorder(tmp_path, FakeClock()).open_session(
        "c", 0, user="u", pty=TerminalSize(columns=80, rows=24)
    )
    for n in range(len(data)):
        rec.stdout(data[n : n + 1])
    rec.stdout(b"\xff ok \xe2\x9c")  # an invalid byte, then a truncated character at the end
    rec.close(0)
    assert rec.path is not None
    _, events = read_cast(rec.path)
    assert text_of(events, "o") == text + "\ufffd ok \ufffd"
    assert all(e[2] for e in events if e[1] == "o")  # no empty events for partial bytes


def test_large_chunks_become_bounded_events(tmp_path: Path) -> None:
    rec = make_recorder(tmp_path, FakeClock()).open_session("c", 0, user="u", pty=None)
    payload = ("\u00e9" * 50_000).encode()  # 100 kB, split mid-character at 16 KiB bounds
    rec.stdout(payload)
    rec.close(0)
    assert rec.path is not None
    _, events = read_cast(rec.path)
    out = [e[2] for e in events if e[1] == "o"]
    assert "".join(out) == "\u00e9" * 50_000
    assert max(len(piece.encode()) for piece in out) <= trissh.ops.recording.CHUNK


def test_buffered_until_threshold_or_interval(tmp_path: Path) -> None:
    clock = FakeClock()
    recorder = make_recorder(tmp_path, clock, buffer_bytes=1000, flush_interval=5)
    rec = recorder.open_session("c", 0, user="u", pty=None)
    assert rec.path is not None
    header_size = rec.path.stat().st_size
    rec.stdout(b"small")
    assert rec.path.stat().st_size == header_size
    assert rec.pending_bytes > 0
    clock.advance(5)
    rec.stdout(b"later")
    assert rec.pending_bytes == 0
    written = rec.path.stat().st_size
    rec.stdout(b"y" * 2000)
    assert rec.path.stat().st_size > written + 2000
    rec.close(0)


# -- failures never reach the session ---------------------------------------------------------


def test_unwritable_directory_disables_recording(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    failures: list[int] = []
    recorder = make_recorder(blocker / "rec", FakeClock(), on_failure=lambda: failures.append(1))
    with structlog.testing.capture_logs() as logs:
        rec = recorder.open_session("c", 0, user="u", pty=TerminalSize(columns=80, rows=24))
        rec.stdout(b"hello")
        rec.stdin(b"x")
        rec.resize(10, 10)
        rec.close(0)
    assert rec.state is RecordingState.FAILED
    assert rec.path is None
    assert [entry["event"] for entry in logs] == ["recording_failed"]
    assert str(blocker) in logs[0]["error"]
    assert failures == [1]
    assert recorder.statistics() == {"opened": 1, "failed": 1}


def test_read_only_directory_disables_recording(tmp_path: Path) -> None:
    """A directory the process may not write into (root ignores modes; sysfs refuses root)."""
    if os.geteuid() == 0:
        directory = Path("/sys/kernel")
    else:
        directory = tmp_path / "rec"
        directory.mkdir(mode=0o500)
    before = set(directory.iterdir())
    with structlog.testing.capture_logs() as logs:
        rec = make_recorder(directory, FakeClock()).open_session("c", 0, user="u", pty=None)
        rec.stdout(b"x")
        rec.close(0)
    assert rec.state is RecordingState.FAILED
    assert [entry["event"] for entry in logs] == ["recording_failed"]
    assert "PermissionError" in logs[0]["error"]
    assert set(directory.iterdir()) == before


def state_of(rec: SessionRecording) -> RecordingState:
    """Read the state afresh (keeps mypy from narrowing it across calls)."""
    return rec.state


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_disk_failing_mid_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    before = open_fds()
    recorder = make_recorder(tmp_path, clock, buffer_bytes=100)
    rec = recorder.open_session("c", 0, user="u", pty=TerminalSize(columns=80, rows=24))

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trissh.ops.recording, "_write_all", full)
    with structlog.testing.capture_logs() as logs:
        for _ in range(10):
            rec.stdout(b"z" * 500)
        rec.resize(1, 2)
        rec.close(0)
    assert rec.state is RecordingState.FAILED
    assert [entry["event"] for entry in logs] == ["recording_failed"]
    assert "No space left on device" in logs[0]["error"]
    assert open_fds() == before


# -- the threaded flush --------------------------------------------------------------------------


async def test_async_flush_writes_from_a_thread(tmp_path: Path) -> None:
    rec = make_recorder(tmp_path, FakeClock()).open_session("c", 0, user="u", pty=None)
    rec.stdout(b"hello")
    assert rec.pending_bytes > 0
    await rec.flush()
    assert rec.pending_bytes == 0
    assert rec.path is not None
    assert b"hello" in rec.path.read_bytes()
    await rec.flush()  # nothing to do: still a checkpoint
    rec.close(0)


async def test_close_during_a_stalled_threaded_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session finishes while the disk is stuck; the worker completes the file later."""
    rec = make_recorder(tmp_path, FakeClock()).open_session("c", 0, user="u", pty=None)
    real = trissh.ops.recording._write_all
    entered, release = threading.Event(), threading.Event()

    def stalled(fd: int, data: bytes) -> None:
        entered.set()
        release.wait(10)
        real(fd, data)

    monkeypatch.setattr(trissh.ops.recording, "_write_all", stalled)
    rec.stdout(b"first ")  # below buffer_bytes: buffered for the threaded flush
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(rec.flush)
            await trio.to_thread.run_sync(entered.wait)
            rec.stdout(b"second " * 10)  # the worker owns the file: these only buffer
            rec.close(7)  # hands the close to the worker
            scope.cancel()  # the flush returns at once; its thread goes on
        nursery.cancel_scope.cancel()
    assert state_of(rec) is not RecordingState.CLOSED
    release.set()
    with trio.fail_after(10):
        while state_of(rec) is not RecordingState.CLOSED:
            await trio.sleep(0.01)
    assert rec.path is not None
    _, events = read_cast(rec.path)
    assert text_of(events, "o") == "first " + "second " * 10
    assert events[-1][1:] == ["x", "7"]


async def test_buffer_bound_while_the_worker_is_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = make_recorder(tmp_path, FakeClock(), buffer_bytes=1000, max_pending=1000).open_session(
        "c", 0, user="u", pty=None
    )
    entered, release = threading.Event(), threading.Event()
    real = trissh.ops.recording._write_all

    def stalled(fd: int, data: bytes) -> None:
        entered.set()
        release.wait(10)
        real(fd, data)

    monkeypatch.setattr(trissh.ops.recording, "_write_all", stalled)
    rec.stdout(b"a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.flush)
        await trio.to_thread.run_sync(entered.wait)
        with structlog.testing.capture_logs() as logs:
            for _ in range(100):
                rec.stdout(b"b" * 100)
        assert rec.state is RecordingState.FAILED
        assert rec.pending_bytes == 0
        assert "storage too slow" in logs[0]["error"]
        release.set()
    rec.close(0)  # no effect, no exception


async def test_a_sessions_output_is_written_from_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the session's tap, the output is written by worker threads, never by the
    trio thread, which every connection shares: before, every 64 KiB went out from the
    trio thread (the tap's threaded flush never had anything left to do), so a stalled
    disk held every session (reviewer). The header and the exit line stay inline."""
    from trissh.channels.session_tap import SessionTap

    trio_thread = threading.get_ident()
    inline: list[int] = []
    threaded: list[int] = []
    write_all = trissh.ops.recording._write_all

    def spy(fd: int, data: bytes) -> None:
        (inline if threading.get_ident() == trio_thread else threaded).append(len(data))
        write_all(fd, data)

    monkeypatch.setattr(trissh.ops.recording, "_write_all", spy)
    recorder = Recorder(tmp_path, max_bytes=0, record_input=False)
    recording = recorder.open_session("c1", 0, user="u", pty=None)
    tap = SessionTap(recording, None)
    header = len(inline)
    for size in (1000, 32 * 1024, 256 * 1024, 256 * 1024, 100_000):
        for _ in range(4):
            tap.stdout(b"x" * size)
            await tap.flush_now_and_then()
    assert len(inline) == header
    tap.close(0, None)
    assert sum(threaded) > 2_000_000
    assert recording.path is not None
    _, events = read_cast(recording.path)
    assert len(text_of(events, "o")) == 4 * (1000 + 32 * 1024 + 2 * 256 * 1024 + 100_000)


def test_recording_stops_where_the_disk_would_fill(tmp_path: Path) -> None:
    """min_free_bytes: no recording starts, and a running one stops (the session goes on),
    once the file system holding them has less free: one user's output could otherwise
    fill the disk that also holds the state file and host keys (reviewer: 3 x 100 MiB from
    3 x 20 MB of NULs, without end)."""
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    starved = Recorder(tmp_path, max_bytes=0, record_input=False, min_free_bytes=free * 2)
    refused = starved.open_session("c1", 0, user="u", pty=None)
    assert refused.state is RecordingState.FAILED
    assert list(tmp_path.glob("*.cast")) == []
    recorder = Recorder(tmp_path, max_bytes=0, record_input=False, min_free_bytes=1)
    running = recorder.open_session("c2", 0, user="u", pty=None)
    running.stdout(b"first")
    assert running.state is RecordingState.RECORDING
    recorder.min_free_bytes = free * 2  # the disk filled meanwhile
    running.stdout(b"x" * 70_000)
    assert running.statistics()["state"] == RecordingState.FAILED.value
    running.close(0)
    assert recorder.statistics() == {"opened": 1, "failed": 1}


async def test_stalled_recording_writes_leave_trios_threads_to_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 recorded sessions on a stalled disk hold only the recordings' own writer threads:
    a name lookup (a forward's, a webhook's) still gets a thread (before: trio's 40 shared
    ones were all taken, and it waited for the disk; second reader)."""
    from trissh.channels.session_tap import SessionTap

    stall = threading.Event()
    write_all = trissh.ops.recording._write_all
    trio_thread = threading.get_ident()

    def stalled(fd: int, data: bytes) -> None:
        if threading.get_ident() != trio_thread:  # the headers go out inline
            stall.wait(20)
        write_all(fd, data)

    monkeypatch.setattr(trissh.ops.recording, "_write_all", stalled)
    recorder = Recorder(tmp_path, max_bytes=0, record_input=False)
    try:
        async with trio.open_nursery() as nursery:
            for number in range(40):
                recording = recorder.open_session(f"c{number}", 0, user="u", pty=None)
                tap = SessionTap(recording, None)
                tap.stdout(b"x" * 70_000)
                nursery.start_soon(tap.flush_now_and_then)
            await trio.sleep(0.2)
            with trio.fail_after(5):
                await trio.to_thread.run_sync(lambda: None)
            stall.set()
    finally:
        stall.set()


async def test_a_flush_cancelled_waiting_for_a_writer_still_ends_the_recording(
    tmp_path: Path,
) -> None:
    """The session ends while its flush waits for one of the writer threads (stalled
    writes hold them): the buffered output and the exit line are still written and the
    file closed, by a thread of its own (before: never written nor closed; third reader)."""
    recorder = Recorder(tmp_path, max_bytes=0, record_input=False)
    recording = recorder.open_session("c1", 0, user="alice", pty=None, command="echo hi")
    recording.defer_writes()
    recording.stdout(b"hello " * 20_000)
    holders = [object() for _ in range(trissh.ops.recording.WRITER_THREADS)]
    for holder in holders:
        await recorder.writers.acquire_on_behalf_of(holder)
    with trio.move_on_after(0.2):
        await recording.flush()
    recording.close(0)
    for holder in holders:
        recorder.writers.release_on_behalf_of(holder)
    with trio.fail_after(5):
        while recording.statistics()["state"] != RecordingState.CLOSED.value:
            await trio.sleep(0.01)
    assert recording.path is not None
    _, events = read_cast(recording.path)
    assert len(text_of(events, "o")) == 6 * 20_000
    assert events[-1][1] == "x"


_EXIT_DURING_A_WRITE = """
import sys, threading, time
import trio
import trissh.ops.recording as recording

real = recording._write_all

def slow(fd, data):
    time.sleep(0.5)  # a slow disk: the write is still going when the server's run ends
    real(fd, data)

recording._write_all = slow

async def main():
    recorder = recording.Recorder(sys.argv[1], max_bytes=0, record_input=False)
    rec = recorder.open_session("c1", 0, user="alice", pty=None, command="echo hi")
    rec.defer_writes()
    rec.stdout(b"first ")
    with trio.move_on_after(0.1):
        await rec.flush()  # cancelled: its thread goes on writing
    rec.stdout(b"second")
    rec.close(3)  # left to the writing thread
    if sys.argv[2] == "wait":
        from trissh.ops.recording_writes import finish_writes
        await finish_writes(10)

trio.run(main)
"""


def test_the_end_of_a_recording_outlives_the_server_run(tmp_path: Path) -> None:
    """The server's run ends (shutdown) while a worker thread writes a recording: trio's
    worker threads are daemons, so the interpreter's exit cut the write short and the
    recording lost all of it (seen with "-" for "wait"); the server now waits for them."""
    subprocess.run(
        [sys.executable, "-c", _EXIT_DURING_A_WRITE, str(tmp_path), "wait"],
        check=True,
        timeout=60,
    )
    (path,) = tmp_path.glob("*.cast")
    _, events = read_cast(path)
    assert text_of(events, "o") == "first second"
    assert events[-1][1:] == ["x", "3"]
