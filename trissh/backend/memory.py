"""MemoryBackend: an in-process fake of the backend contract, shipped like httpcore's MockBackend.

Theory of operation
-------------------
Fast driver tests and benchmarks need sandboxes and processes that start in microseconds
and behave like a container's shell in the ways the SSH layer can observe: stdout/stderr
separation, exit codes, signals, stdin EOF, pty size, backpressure. A "sandbox" here is a
dict entry with labels; a "process" is a task running a tiny shell interpreter
(:class:`_Shell`) in a nursery owned by the process context, talking to the session through
bounded pipes (:mod:`trissh.backend._pipe`), so a lagging consumer really stops the
producer.

The interpreter understands ``[shell, "-c", CMD]`` and a bare ``[shell]`` (reads command
lines from stdin, writing the prompt ``"$ "`` before each; with a pty too, but without a
tty's input echo). ``CMD`` is a ``;``- or newline-separated list of built-ins:
``echo WORDS [>&2]``, ``exit N``, ``true``, ``false``, ``cat [> /dev/null]``,
``head -c N /dev/zero``, ``sleep N``, ``stty size``, ``printenv [NAME]``,
``kill [-SIG] $$``, each optionally after ``exec``. ``$NAME``, ``${NAME}``, ``$$`` and
``$?`` are expanded. Anything else prints ``sh: CMD: not found`` and exits 127. Any other
argv runs as one such command.
With a pty, stderr is merged into stdout and ``\\n`` is written as ``\\r\\n`` (ONLCR), as a
real terminal does; ^D in the input is a one-shot EOF (VEOF); closing ``stdin`` is *not* an
EOF (as with sshd, and podman, whose service a tty half-close takes down); input is not
echoed.

Test hooks: ``fail_next_sandbox``, ``stall_sandbox_start``, ``stall_process_start``,
``hold_removal``, ``unavailable``, ``images``, ``add_orphan()``; counters ``live_sandboxes`` and
``live_processes`` must return to 0 after every test.
"""

from __future__ import annotations

import itertools
import re
import shlex
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Final

import structlog
import trio

from trissh.backend._common import (
    ms_since,
    process_env,
    sandbox_labels,
    signal_name,
    signal_number,
)
from trissh.backend._pipe import (
    PipeReceiveStream,
    ProcessStdin,
    open_pipe,
    open_task_nursery,
)
from trissh.backend.base import (
    LABEL_INSTANCE,
    ContainerSettings,
    ExitStatus,
    HealthCheck,
    ProcessSpec,
    SandboxSpec,
    TerminalSize,
)
from trissh.backend.errors import BackendError, BackendUnavailable, ImageNotFound

__all__ = ["MemoryBackend", "MemoryProcess", "MemorySandbox"]

log = structlog.get_logger(__name__)

#: Teardown bound; nothing in the fake blocks, but the contract says bounded.
_CLEANUP_BOUND: Final = 5.0
#: What the fake ``head`` writes at a time: what a session's pump reads at a time from a
#: real program's pipe (256 KiB, direct stdio) when the program is ahead of it.
_ZERO_CHUNK: Final = bytes(256 * 1024)
#: Signals whose default action is not to terminate; the fake ignores them.
_HARMLESS_SIGNALS: Final = frozenset({"CHLD", "CONT", "URG", "WINCH", "STOP", "TSTP"})


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class _Killed(Exception):
    def __init__(self, signal: str) -> None:
        self.signal = signal


class MemoryBackend:
    """An in-memory :class:`~trissh.backend.base.Backend`: fast, deterministic, leak-checked."""

    def __init__(
        self, *, images: Collection[str] | None = None, pipe_limit: int = 128 * 1024
    ) -> None:
        """Args:
        images: images that exist; ``None`` means every image does.
        pipe_limit: bytes buffered per stdio pipe before the writer blocks.
        """
        self.images = None if images is None else frozenset(images)
        self.pipe_limit = pipe_limit
        #: Raised (once) by the next ``open_sandbox``.
        self.fail_next_sandbox: BackendError | None = None
        #: ``open_sandbox`` creates the container, then blocks forever before "starting" it.
        self.stall_sandbox_start = False
        #: ``open_process`` blocks forever before the program starts.
        self.stall_process_start = False
        #: When set, removing a sandbox first waits (bounded) until this event is set: a
        #: slow container removal, for tests of what must not wait for one.
        self.hold_removal: trio.Event | None = None
        #: Behave as if the container service cannot be reached.
        self.unavailable = False
        #: Labels of every existing container, by id (includes orphans).
        self.containers: dict[str, dict[str, str]] = {}
        #: Every spec ever opened, for tests that check what the driver asked for.
        self.sandbox_specs: list[SandboxSpec] = []
        self.process_specs: list[ProcessSpec] = []
        self.live_sandboxes = 0
        self.live_processes = 0
        self._ids = itertools.count(1)

    def add_orphan(self, *, instance: str) -> str:
        """Pretend a crashed trissh ``instance`` left a container behind; return its id."""
        container_id = f"mem{next(self._ids):08x}"
        self.containers[container_id] = {LABEL_INSTANCE: instance}
        return container_id

    @asynccontextmanager
    async def open_sandbox(self, spec: SandboxSpec) -> AsyncIterator[MemorySandbox]:
        """Create and "start" a fake container; leaving the context removes it.

        Cancellation: safe at any point; a created container is always removed.
        """
        await trio.lowlevel.checkpoint()
        self._check_available()
        if self.fail_next_sandbox is not None:
            error, self.fail_next_sandbox = self.fail_next_sandbox, None
            raise error
        image = spec.settings.image
        if self.images is not None and image not in self.images:
            raise ImageNotFound(image)
        started = time.monotonic()
        container_id = f"mem{next(self._ids):08x}"
        self.containers[container_id] = sandbox_labels(spec)
        self.sandbox_specs.append(spec)
        self.live_sandboxes += 1
        sandbox = MemorySandbox(self, container_id, spec)
        try:
            if self.stall_sandbox_start:
                await trio.sleep_forever()
            log.debug(
                "container_created",
                container=container_id,
                conn_id=spec.conn_id,
                user=spec.username,
                duration_ms=ms_since(started),
            )
            yield sandbox
        finally:
            if self.hold_removal is not None:
                with trio.move_on_after(_CLEANUP_BOUND, shield=True):
                    await self.hold_removal.wait()
            with trio.move_on_after(_CLEANUP_BOUND, shield=True):
                removed = time.monotonic()
                sandbox.closed = True
                del self.containers[container_id]
                self.live_sandboxes -= 1
                await trio.lowlevel.checkpoint()
                log.debug(
                    "container_removed",
                    container=container_id,
                    conn_id=spec.conn_id,
                    duration_ms=ms_since(removed),
                )

    def keep_warm(self, settings: ContainerSettings, instance: str) -> None:
        """Creating a sandbox in memory costs nothing: no pool."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to maintain: removal in memory cannot fail."""
        task_status.started()
        await trio.sleep_forever()

    async def sweep(self, *, keep_instance: str) -> int:
        """Remove containers labelled with another instance (see :meth:`add_orphan`)."""
        await trio.lowlevel.checkpoint()
        self._check_available()
        stale = [
            cid
            for cid, labels in self.containers.items()
            if LABEL_INSTANCE in labels and labels[LABEL_INSTANCE] != keep_instance
        ]
        for cid in stale:
            del self.containers[cid]
        log.info("containers_swept", count=len(stale), keep_instance=keep_instance)
        return len(stale)

    async def health(self, image: str) -> list[HealthCheck]:
        """One check for the "service" and one for the image, like the real backend's."""
        await trio.lowlevel.checkpoint()
        if self.unavailable:
            return [
                HealthCheck(
                    name="service",
                    ok=False,
                    detail="in-memory backend marked unavailable",
                    fix="set MemoryBackend.unavailable = False",
                )
            ]
        present = self.images is None or image in self.images
        return [
            HealthCheck(name="service", ok=True, detail="in-memory backend"),
            HealthCheck(
                name="image",
                ok=present,
                detail=f"{image} {'present' if present else 'missing'}",
                fix="" if present else "add it to MemoryBackend(images=...)",
            ),
        ]

    def _check_available(self) -> None:
        if self.unavailable:
            raise BackendUnavailable("container backend unavailable: in-memory backend is down")


class MemorySandbox:
    """A fake container: a pid counter and the processes opened in it."""

    def __init__(self, backend: MemoryBackend, container_id: str, spec: SandboxSpec) -> None:
        self._backend = backend
        self._container_id = container_id
        self.spec = spec
        self.closed = False
        self._pids = itertools.count(2)

    @property
    def container_id(self) -> str:
        return self._container_id

    @asynccontextmanager
    async def open_process(self, spec: ProcessSpec) -> AsyncIterator[MemoryProcess]:
        """Run ``spec.argv`` through the fake shell; leaving the context kills it.

        Cancellation: safe; the program task is cancelled and the pipes closed.
        """
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise BackendError(f"container {self._container_id} is gone")
        backend = self._backend
        env = {**self.spec.settings.env, **process_env(spec)}
        process = MemoryProcess(spec, env, next(self._pids), backend.pipe_limit)
        backend.process_specs.append(spec)
        backend.live_processes += 1
        try:
            if backend.stall_process_start:
                await trio.sleep_forever()
            async with open_task_nursery() as nursery:
                nursery.start_soon(process._run, self.spec.settings.shell)
                try:
                    yield process
                finally:
                    process._kill_now()
        finally:
            process._close_pipes()
            backend.live_processes -= 1


class MemoryProcess:
    """A fake program's handle: bounded pipes, a status, a cancel scope for signals."""

    def __init__(self, spec: ProcessSpec, env: dict[str, str], pid: int, limit: int) -> None:
        self.spec = spec
        self.env = env
        self.pid = pid
        self._pty_size = None if spec.pty is None else spec.pty.size
        self._stdin_w, self._stdin_r = open_pipe(limit)
        self._stdin: trio.abc.SendStream = (
            self._stdin_w if spec.pty is None else ProcessStdin(self._stdin_w)
        )
        self._stdout_w, self._stdout_r = open_pipe(limit)
        if spec.pty is None:
            self._stderr_w, stderr_r = open_pipe(limit)
            self._stderr_r: PipeReceiveStream | None = stderr_r
        else:
            self._stderr_w, self._stderr_r = self._stdout_w, None
        self._scope = trio.CancelScope()
        self._signal: str | None = None
        self._status: ExitStatus | None = None
        self._error: BaseException | None = None
        self._done = trio.Event()

    @property
    def stdin(self) -> trio.abc.SendStream:
        return self._stdin

    @property
    def stdout(self) -> trio.abc.ReceiveStream:
        return self._stdout_r

    @property
    def stderr(self) -> trio.abc.ReceiveStream | None:
        return self._stderr_r

    @property
    def pty_size(self) -> TerminalSize | None:
        """The current terminal size, as ``stty size`` would report it."""
        return self._pty_size

    async def resize(self, size: TerminalSize) -> None:
        """Update the size ``stty size`` reports. No-op without a pty."""
        await trio.lowlevel.checkpoint()
        if self._pty_size is not None:
            self._pty_size = size

    async def send_signal(self, signal: str) -> None:
        """Terminate the program with ``signal`` unless its default action is to ignore it.

        Raises:
            BackendError: not a signal name.
        """
        await trio.lowlevel.checkpoint()
        try:
            name = signal_name(signal_number(signal))
        except ValueError as exc:
            raise BackendError(f"cannot send signal {signal!r}: {exc}") from None
        if self._done.is_set() or name in _HARMLESS_SIGNALS:
            return
        self._signal = name
        self._scope.cancel()

    async def wait(self) -> ExitStatus:
        """Wait for the program to end.

        Cancellation: safe; the program keeps running until the context exits.

        Raises:
            BackendError: the fake program itself crashed (a bug in the fake or its input).
        """
        await self._done.wait()
        if self._error is not None:
            raise BackendError(f"fake program crashed: {self._error!r}") from self._error
        assert self._status is not None
        return self._status

    async def _run(self, shell: Collection[str]) -> None:
        shell_io = _Shell(self, tuple(shell))
        status: ExitStatus | None = None
        try:
            with self._scope:
                status = ExitStatus(code=await shell_io.run_argv(list(self.spec.argv)))
        except _Killed as killed:
            status = ExitStatus(signal=killed.signal)
        except trio.BrokenResourceError:
            status = ExitStatus(signal="PIPE")
        except Exception as exc:
            self._error = exc
            status = ExitStatus(code=70)
        finally:
            if status is None:
                status = ExitStatus(signal=self._signal or "KILL")
            self._status = status
            self._close_pipes()
            self._done.set()

    def _kill_now(self) -> None:
        if not self._done.is_set():
            self._signal = self._signal or "KILL"
            self._scope.cancel()

    def _close_pipes(self) -> None:
        self._stdin_r.close()
        self._stdout_w.close()
        self._stderr_w.close()


class _Shell:
    """The fake shell: runs built-ins against the process's pipes."""

    def __init__(self, process: MemoryProcess, shell: tuple[str, ...]) -> None:
        self.p = process
        self.shells = {*shell, "sh", "/bin/sh", "bash", "/bin/bash", "ash", "/bin/ash"}
        self.status = 0
        #: Input read but not consumed; ``None`` marks a one-shot EOF (^D on a pty).
        self._pending: deque[bytes | None] = deque()
        self._stdin_eof = False

    async def run_argv(self, argv: list[str]) -> int:
        if argv and argv[0] in self.shells:
            if len(argv) >= 3 and argv[1] == "-c":
                return await self._run_script(argv[2])
            if argv[1:] in ([], ["-l"]):  # a login shell is what sessions ask for
                return await self._interactive()
        try:
            await self._run_words(argv)
        except _Exit as exit_:
            return exit_.code
        return self.status

    async def _run_script(self, script: str) -> int:
        try:
            await self._run_line(script)
        except _Exit as exit_:
            return exit_.code
        return self.status

    async def _interactive(self) -> int:
        try:
            while True:
                await self._write(b"$ ")
                line = await self._readline()
                if line is None:
                    return self.status
                await self._run_line(line.decode(errors="replace"))
        except _Exit as exit_:
            return exit_.code

    async def _run_line(self, line: str) -> None:
        for command in re.split(r"[;\n]", line):
            if command.strip():
                try:
                    words = shlex.split(command)
                except ValueError:
                    await self._write(b"sh: syntax error\n", err=True)
                    self.status = 2
                    continue
                await self._run_words([self._expand(w) for w in words])

    def _expand(self, word: str) -> str:
        def sub(match: re.Match[str]) -> str:
            name = match.group(1).strip("{}")
            if name == "$":
                return str(self.p.pid)
            if name == "?":
                return str(self.status)
            return self.p.env.get(name, "")

        return re.sub(r"\$(\$|\?|[A-Za-z_]\w*|\{[A-Za-z_]\w*\})", sub, word)

    async def _run_words(self, words: list[str]) -> None:
        out: str | None = "out"
        err: str | None = "err"
        args: list[str] = []
        it = iter(words)
        for word in it:
            if word in (">&2", "1>&2"):
                out = "err"
            elif word in (">/dev/null", "1>/dev/null"):
                out = None
            elif word == "2>/dev/null":
                err = None
            elif word in (">", "1>") and next(it, None) == "/dev/null":
                out = None
            else:
                args.append(word)
        replace = args[:1] == ["exec"]
        if replace:
            args = args[1:]
        if not args:
            return
        builtin = _BUILTINS.get(args[0])
        if builtin is None:
            await self._write(f"sh: {args[0]}: not found\n".encode(), err=err is not None)
            self.status = 127
            if replace:
                raise _Exit(127)
            return
        self.status = await builtin(self, args[1:], _Output(self, out, err))
        if replace:
            raise _Exit(self.status)

    async def _write(self, data: bytes, *, err: bool = False) -> None:
        if self.p._pty_size is not None and b"\n" in data:
            data = data.replace(b"\n", b"\r\n")
        await (self.p._stderr_w if err else self.p._stdout_w).send_all(data)

    async def _readline(self) -> bytes | None:
        """One command line; ``None`` at EOF (^D on an empty pty line, or stdin closed)."""
        ends = b"\r\n" if self.p._pty_size is not None else b"\n"
        line = bytearray()
        while True:
            chunk = await self.read_stdin()
            if not chunk:
                return bytes(line) if line else None
            cut = min((i for i in map(chunk.find, ends) if i >= 0), default=-1)
            if cut < 0:
                line += chunk
                continue
            line += chunk[:cut]
            if chunk[cut + 1 :]:
                self._pending.appendleft(chunk[cut + 1 :])
            return bytes(line)

    async def read_stdin(self) -> bytes:
        """The next stdin chunk; ``b""`` for EOF.

        On a pty, ^D is a one-shot EOF (the next read goes on), as a terminal's VEOF is.
        """
        if not self._pending:
            if self._stdin_eof:
                return b""
            chunk = await self.p._stdin_r.receive_some()
            if not chunk:
                self._stdin_eof = True
                return b""
            if self.p._pty_size is None:
                return chunk
            for index, part in enumerate(chunk.split(b"\x04")):
                if index:
                    self._pending.append(None)
                if part:
                    self._pending.append(part)
        item = self._pending.popleft()
        return b"" if item is None else item


class _Output:
    """Where a built-in's stdout/stderr go after redirections (``None`` = /dev/null)."""

    def __init__(self, shell: _Shell, out: str | None, err: str | None) -> None:
        self._shell = shell
        self._out = out
        self._err = err

    @property
    def discard_out(self) -> bool:
        return self._out is None

    async def out(self, data: bytes) -> None:
        if self._out is not None:
            await self._shell._write(data, err=self._out == "err")

    async def err(self, data: bytes) -> None:
        if self._err is not None:
            await self._shell._write(data, err=True)


async def _echo(sh: _Shell, args: list[str], io: _Output) -> int:
    newline = True
    if args[:1] == ["-n"]:
        newline, args = False, args[1:]
    await io.out(" ".join(args).encode() + (b"\n" if newline else b""))
    return 0


async def _exit(sh: _Shell, args: list[str], io: _Output) -> int:
    try:
        code = int(args[0]) if args else sh.status
    except ValueError:
        await io.err(f"sh: exit: Illegal number: {args[0]}\n".encode())
        code = 2
    raise _Exit(code % 256)


async def _true(sh: _Shell, args: list[str], io: _Output) -> int:
    await trio.lowlevel.checkpoint()
    return 0


async def _false(sh: _Shell, args: list[str], io: _Output) -> int:
    await trio.lowlevel.checkpoint()
    return 1


async def _cat(sh: _Shell, args: list[str], io: _Output) -> int:
    if args:
        await io.err(b"cat: only stdin is supported by the fake\n")
        return 1
    while chunk := await sh.read_stdin():
        if not io.discard_out:
            await io.out(chunk)
    return 0


async def _head(sh: _Shell, args: list[str], io: _Output) -> int:
    if len(args) != 3 or args[0] != "-c" or args[2] != "/dev/zero" or not args[1].isdigit():
        await io.err(b"head: only 'head -c N /dev/zero' is supported by the fake\n")
        return 1
    remaining = int(args[1])
    while remaining > 0:
        size = min(remaining, len(_ZERO_CHUNK))
        await io.out(_ZERO_CHUNK if size == len(_ZERO_CHUNK) else _ZERO_CHUNK[:size])
        remaining -= size
    return 0


async def _sleep(sh: _Shell, args: list[str], io: _Output) -> int:
    if args == ["infinity"]:
        await trio.sleep_forever()
    try:
        seconds = float(args[0])
    except (IndexError, ValueError):
        await io.err(b"sleep: invalid number\n")
        return 1
    await trio.sleep(seconds)
    return 0


async def _stty(sh: _Shell, args: list[str], io: _Output) -> int:
    size = sh.p.pty_size
    if size is None:
        await io.err(b"stty: standard input: Not a tty\n")
        return 1
    if args != ["size"]:
        await io.err(b"stty: only 'stty size' is supported by the fake\n")
        return 1
    await io.out(f"{size.rows} {size.columns}\n".encode())
    return 0


async def _printenv(sh: _Shell, args: list[str], io: _Output) -> int:
    if not args:
        await io.out("".join(f"{k}={v}\n" for k, v in sh.p.env.items()).encode())
        return 0
    values = [sh.p.env[name] for name in args if name in sh.p.env]
    if values:
        await io.out("".join(f"{v}\n" for v in values).encode())
    else:
        await trio.lowlevel.checkpoint()
    return 0 if len(values) == len(args) else 1


async def _kill(sh: _Shell, args: list[str], io: _Output) -> int:
    signal = "TERM"
    if args and args[0].startswith("-"):
        signal, args = args[0][1:], args[1:]
    if args[:1] == ["-s"] and len(args) > 1:
        signal, args = args[1], args[2:]
    try:
        name = signal_name(signal_number(signal))
    except ValueError:
        await io.err(f"kill: invalid signal {signal}\n".encode())
        return 1
    for pid in args:
        if pid != str(sh.p.pid):
            await io.err(f"kill: can't kill pid {pid}: No such process\n".encode())
            return 1
    if args and name not in _HARMLESS_SIGNALS:
        raise _Killed(name)
    await trio.lowlevel.checkpoint()
    return 0


_Builtin = Callable[[_Shell, list[str], _Output], Awaitable[int]]
_BUILTINS: Final[Mapping[str, _Builtin]] = {
    "echo": _echo,
    "exit": _exit,
    "true": _true,
    ":": _true,
    "false": _false,
    "cat": _cat,
    "head": _head,
    "sleep": _sleep,
    "stty": _stty,
    "printenv": _printenv,
    "kill": _kill,
}
