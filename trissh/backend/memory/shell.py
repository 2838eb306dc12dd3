"""The fake shell of :class:`~trissh.backend.memory.MemoryBackend`'s programs.

It understands ``[shell, "-c", CMD]`` and a bare ``[shell]`` (reads command lines from
stdin, writing the prompt ``"$ "`` before each; with a pty too, but without a tty's input
echo). ``CMD`` is a ``;``- or newline-separated list of built-ins: ``echo WORDS [>&2]``,
``exit N``, ``true``, ``false``, ``cat [> /dev/null]``, ``cat PATH...`` (the files its
container was given), ``head -c N /dev/zero``,
``sleep N``, ``stty size``, ``printenv [NAME]``, ``kill [-SIG] $$``, ``cd`` (does
nothing), each optionally after ``exec``, and ``NAME=$(tty) && export NAME`` (what a pty
session starts with: the terminal is ``/dev/pts/0``). ``$NAME``, ``${NAME}``, ``$$``
and ``$?`` are expanded. Anything else prints ``sh: CMD: not found`` and exits 127. Any
other argv runs as one such command. With a pty, ``\\n`` is written as ``\\r\\n``
(ONLCR), as a real terminal does, and ^D in the input is a one-shot EOF (VEOF).

The shell sees its process through :class:`ShellProcess` only: its pid, environment,
terminal size and the program's ends of its pipes.
"""

from __future__ import annotations

import re
import shlex
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Protocol

import trio

from trissh.backend._common import signal_name, signal_number
from trissh.backend._pipe import MemoryPipeReceiveStream
from trissh.backend.base import TerminalSize

__all__ = ["HARMLESS_SIGNALS", "FakeShell", "Killed", "ShellProcess"]

#: What the fake ``head`` writes at a time: what a session's pump reads at a time from a
#: real program's pipe (256 KiB, direct stdio) when the program is ahead of it.
_ZERO_CHUNK: Final = bytes(256 * 1024)
#: Signals whose default action is not to terminate; the fake ignores them.
HARMLESS_SIGNALS: Final = frozenset({"CHLD", "CONT", "URG", "WINCH", "STOP", "TSTP"})
#: ``NAME=$(tty) && export NAME``: how a pty session learns its terminal's name.
_TTY_EXPORT: Final = re.compile(r"([A-Za-z_]\w*)=\$\(tty\) && export \1")


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class Killed(Exception):
    """The program ended by a signal it sent itself (``kill -SIG $$``)."""

    def __init__(self, signal: str) -> None:
        self.signal = signal


class ShellProcess(Protocol):
    """What the fake shell sees of its process."""

    @property
    def pid(self) -> int: ...

    @property
    def env(self) -> Mapping[str, str]: ...

    @property
    def pty_size(self) -> TerminalSize | None:
        """The terminal's size now; ``None`` without a pty."""

    @property
    def program_stdin(self) -> MemoryPipeReceiveStream: ...

    @property
    def program_stdout(self) -> trio.abc.SendStream: ...

    @property
    def program_stderr(self) -> trio.abc.SendStream:
        """With a pty, the same stream as :attr:`program_stdout`."""

    @property
    def files(self) -> Mapping[str, bytes]:
        """The files its container holds (``Sandbox.put_files``), for ``cat PATH``."""


class FakeShell:
    """The fake shell: runs built-ins against the process's pipes."""

    def __init__(self, process: ShellProcess, shell: tuple[str, ...]) -> None:
        self.p = process
        self.shells = {*shell, "sh", "/bin/sh", "bash", "/bin/bash", "ash", "/bin/ash"}
        self.status = 0
        #: Input read but not consumed; ``None`` marks a one-shot EOF (^D on a pty).
        self._pending: deque[bytes | None] = deque()
        self._stdin_eof = False
        #: Variables the script exported, over the process's environment.
        self.exported: dict[str, str] = {}

    @property
    def env(self) -> Mapping[str, str]:
        return {**self.p.env, **self.exported}

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
            if tty := _TTY_EXPORT.fullmatch(command.strip()):
                if self.p.pty_size is not None:
                    self.exported[tty.group(1)] = "/dev/pts/0"
                continue
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
            return self.env.get(name, "")

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
        if replace and args[0] in self.shells:  # a pty session's wrapper execs the shell
            raise _Exit(await self.run_argv(args))
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
        if self.p.pty_size is not None and b"\n" in data:
            data = data.replace(b"\n", b"\r\n")
        await (self.p.program_stderr if err else self.p.program_stdout).send_all(data)

    async def _readline(self) -> bytes | None:
        """One command line; ``None`` at EOF (^D on an empty pty line, or stdin closed)."""
        ends = b"\r\n" if self.p.pty_size is not None else b"\n"
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
            chunk = await self.p.program_stdin.receive_some()
            if not chunk:
                self._stdin_eof = True
                return b""
            if self.p.pty_size is None:
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

    def __init__(self, shell: FakeShell, out: str | None, err: str | None) -> None:
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


async def _echo(sh: FakeShell, args: list[str], io: _Output) -> int:
    newline = True
    if args[:1] == ["-n"]:
        newline, args = False, args[1:]
    await io.out(" ".join(args).encode() + (b"\n" if newline else b""))
    return 0


async def _exit(sh: FakeShell, args: list[str], io: _Output) -> int:
    try:
        code = int(args[0]) if args else sh.status
    except ValueError:
        await io.err(f"sh: exit: Illegal number: {args[0]}\n".encode())
        code = 2
    raise _Exit(code % 256)


async def _true(sh: FakeShell, args: list[str], io: _Output) -> int:
    await trio.lowlevel.checkpoint()
    return 0


async def _false(sh: FakeShell, args: list[str], io: _Output) -> int:
    await trio.lowlevel.checkpoint()
    return 1


async def _cat(sh: FakeShell, args: list[str], io: _Output) -> int:
    if args:  # files its container was given, else nothing
        missing = [path for path in args if path not in sh.p.files]
        for path in args:
            if path in sh.p.files:
                await io.out(sh.p.files[path])
        for path in missing:
            await io.err(f"cat: {path}: No such file or directory\n".encode())
        return 1 if missing else 0
    while chunk := await sh.read_stdin():
        if not io.discard_out:
            await io.out(chunk)
    return 0


async def _head(sh: FakeShell, args: list[str], io: _Output) -> int:
    if len(args) != 3 or args[0] != "-c" or args[2] != "/dev/zero" or not args[1].isdigit():
        await io.err(b"head: only 'head -c N /dev/zero' is supported by the fake\n")
        return 1
    remaining = int(args[1])
    while remaining > 0:
        size = min(remaining, len(_ZERO_CHUNK))
        await io.out(_ZERO_CHUNK if size == len(_ZERO_CHUNK) else _ZERO_CHUNK[:size])
        remaining -= size
    return 0


async def _sleep(sh: FakeShell, args: list[str], io: _Output) -> int:
    if args == ["infinity"]:
        await trio.sleep_forever()
    try:
        seconds = float(args[0])
    except (IndexError, ValueError):
        await io.err(b"sleep: invalid number\n")
        return 1
    await trio.sleep(seconds)
    return 0


async def _stty(sh: FakeShell, args: list[str], io: _Output) -> int:
    size = sh.p.pty_size
    if size is None:
        await io.err(b"stty: standard input: Not a tty\n")
        return 1
    if args != ["size"]:
        await io.err(b"stty: only 'stty size' is supported by the fake\n")
        return 1
    await io.out(f"{size.rows} {size.columns}\n".encode())
    return 0


async def _printenv(sh: FakeShell, args: list[str], io: _Output) -> int:
    if not args:
        await io.out("".join(f"{k}={v}\n" for k, v in sh.env.items()).encode())
        return 0
    env = sh.env
    values = [env[name] for name in args if name in env]
    if values:
        await io.out("".join(f"{v}\n" for v in values).encode())
    else:
        await trio.lowlevel.checkpoint()
    return 0 if len(values) == len(args) else 1


async def _kill(sh: FakeShell, args: list[str], io: _Output) -> int:
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
    if args and name not in HARMLESS_SIGNALS:
        raise Killed(name)
    await trio.lowlevel.checkpoint()
    return 0


_Builtin = Callable[[FakeShell, list[str], _Output], Awaitable[int]]
_BUILTINS: Final[Mapping[str, _Builtin]] = {
    "echo": _echo,
    "exit": _exit,
    "true": _true,
    ":": _true,
    "cd": _true,  # the fake has no file system: every directory is the same
    "false": _false,
    "cat": _cat,
    "head": _head,
    "sleep": _sleep,
    "stty": _stty,
    "printenv": _printenv,
    "kill": _kill,
}
