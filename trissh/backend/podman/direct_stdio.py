"""Direct stdio: a program's stdin, stdout and stderr as pipes handed into its container.

Theory of operation
-------------------
Through podman's REST exec stream every byte a program writes is copied by conmon, by the
API service and by our frame decoder (~400 MB/s at best here, ~220 MB/s end to end over
SSH). A pipe whose write end the program holds costs the kernel one copy. So, for programs
without a pty (a pty is conmon's), trissh makes three pipes (:mod:`.fd_pipes`) and passes
the program's ends into the container:

* each container gets its own host directory (:meth:`StdioRoot.make_dir`), bind-mounted
  read-only at :data:`CONTAINER_DIR`; no container sees another's;
* per program, :class:`DirectStdio` listens on a fresh unix socket in that directory and
  starts the program under ``trissh-exec --stdio SOCKET TOKEN`` (``helper/trissh-exec.c``);
* the helper connects, sends the 128-bit TOKEN, and receives the three pipe ends by
  ``SCM_RIGHTS`` (:meth:`DirectStdio.hand_over`), which it makes the program's fds 0, 1, 2;
* trissh then closes its copies of those ends, so the program's exit (and its children's)
  is EOF on stdout and stderr, and closing our stdin end is EOF on the program's stdin;
* the connection stays open, and the helper writes one line on it when the program ends
  (:meth:`DirectStdio.exit_status`): the exit status without waiting for podman's record.

The socket is reachable from inside the container, so the handover is bounded before it
trusts anything: at most :data:`MAX_ATTEMPTS` connections, :data:`TOKEN_TIMEOUT` each to
send a token compared in constant time, :data:`HANDOVER_TIMEOUT` in all; then the socket
is closed and unlinked. The podman exec (and its stream) still carries the helper's own
stdio, lifecycle and exit status; the helper's diagnostics reach the user's stderr.
"""

from __future__ import annotations

import array
import contextlib
import os
import secrets
import shutil
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable
from typing import Final

import structlog
import trio

from trissh.backend._common import signal_name
from trissh.backend.base import ExitStatus
from trissh.backend.podman.fd_pipes import ProgramPipes

__all__ = [
    "CONTAINER_DIR",
    "DirectStdio",
    "StdioRoot",
    "TokenListener",
    "parse_status_line",
    "receive_bounded",
]

log = structlog.get_logger("trissh.backend.podman")

#: Where a container sees its own stdio directory.
CONTAINER_DIR: Final = "/run/trissh-stdio"
#: Bounds on the handover (the helper waits the same 30 s on its side).
HANDOVER_TIMEOUT: Final = 30.0
TOKEN_TIMEOUT: Final = 5.0
MAX_ATTEMPTS: Final = 8
TOKEN_BYTES: Final = 16
#: The helper's exit line is ~20 bytes; more is not a status.
STATUS_LINE_LIMIT: Final = 64


class StdioRoot:
    """A host directory holding one directory per container (created on first use).

    Directories are mode 0711: the podman user and container users may pass through them
    (to bind-mount, to connect), nobody but us may list them. The root holds an ``owner``
    file (the creating process, as :func:`~trissh.backend.podman.owner.owner_token` names it)
    so :meth:`sweep` can tell a crashed trissh's root from a running one's.
    """

    PREFIX: Final = "trissh-stdio-"

    def __init__(self, parent: str, *, owner: str, alive: Callable[[str], bool]) -> None:
        self._parent = parent or _default_parent()
        self._owner = owner
        self._alive = alive
        self._path: str | None = None

    @property
    def parent(self) -> str:
        return self._parent

    @property
    def path(self) -> str | None:
        """The root itself, once the first directory was made."""
        return self._path

    def passable_by_others(self) -> bool:
        """Whether a user other than us (the podman user) can reach the parent."""
        return passable_by_others(self._parent)

    def make_dir(self) -> str:
        """A new, empty directory for one container; its host path. A root removed under
        us (a temp cleaner) is made again.

        Raises:
            OSError: the directory cannot be made.
        """
        if self._path is not None and not os.path.isdir(self._path):
            log.warning("stdio_root_gone", path=self._path)
            self._path = None
        if self._path is None:
            self._path = tempfile.mkdtemp(prefix=self.PREFIX, dir=self._parent)
            os.chmod(self._path, 0o711)  # noqa: S103 - pass-through only, no listing
            with open(os.path.join(self._path, "owner"), "x") as file:
                file.write(self._owner)
        path = tempfile.mkdtemp(dir=self._path)
        os.chmod(path, 0o711)  # noqa: S103 - pass-through only, no listing
        return path

    @staticmethod
    def remove_dir(path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None

    def sweep(self) -> int:
        """Remove roots (ours by uid) whose owner is not running any more; how many."""
        removed = 0
        with contextlib.suppress(OSError), os.scandir(self._parent) as entries:
            for entry in entries:
                if (
                    not entry.name.startswith(self.PREFIX)
                    or entry.path == self._path
                    or not entry.is_dir(follow_symlinks=False)
                    or entry.stat(follow_symlinks=False).st_uid != os.getuid()
                ):
                    continue
                try:
                    with open(os.path.join(entry.path, "owner")) as file:
                        owner = file.read(256)
                except OSError:
                    owner = ""
                if not self._alive(owner):
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
        return removed


def passable_by_others(directory: str) -> bool:
    """Whether a user other than us can reach ``directory``: it and every directory above
    it searchable by others (a bind mount of it by the podman user needs exactly that)."""
    path = os.path.realpath(directory)
    while True:
        try:
            if not os.stat(path).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        if path == os.path.dirname(path):
            return True
        path = os.path.dirname(path)


def _default_parent() -> str:
    """systemd's RuntimeDirectory, else the user's runtime directory, else the temp dir.

    Only a directory others may reach will do: the podman user is often not us, and
    /run/user/UID (what a root login session sets XDG_RUNTIME_DIR to) is mode 0700.
    """
    for name in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        value = os.environ.get(name, "").split(":")[0]
        if value and os.path.isdir(value) and passable_by_others(value):
            return value
    return tempfile.gettempdir()


class TokenListener:
    """A unix socket in a container's stdio directory that lets in only a peer sending
    the right token: at most :data:`MAX_ATTEMPTS` connections, :data:`TOKEN_TIMEOUT` each
    to send it (compared in constant time); afterwards the socket is closed and unlinked.
    The direct-stdio handover and the agent's connection both come through one."""

    def __init__(self, path: str, kind: int) -> None:
        self.path = path
        self.token = secrets.token_hex(TOKEN_BYTES).encode()
        raw = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
        self._listener: trio.socket.SocketType | None = trio.socket.from_stdlib_socket(raw)
        try:
            raw.bind(path)
            # The container's user is not us; the token, not the mode, guards the socket.
            os.chmod(path, 0o666)  # noqa: S103
            raw.listen(MAX_ATTEMPTS)
        except BaseException:
            self.close()
            raise

    async def accept(
        self,
        refused: Callable[[], None],
        serve: Callable[[trio.socket.SocketType], Awaitable[bool]] | None = None,
    ) -> trio.socket.SocketType | None:
        """The first connection that sends the token (and that ``serve``, if given, is
        done with); ``None`` once every attempt failed. ``refused`` is called for each
        wrong or missing token (its log line). The caller bounds the whole wait; the
        listening socket is gone afterwards either way."""
        try:
            for _ in range(MAX_ATTEMPTS):
                assert self._listener is not None
                conn, _ = await self._listener.accept()
                token = b""
                with trio.move_on_after(TOKEN_TIMEOUT):
                    token = await receive_bounded(conn, len(self.token))
                if not secrets.compare_digest(token, self.token):
                    refused()
                elif serve is None or await serve(conn):
                    return conn
                conn.close()
            return None
        finally:
            self.close()

    def close(self) -> None:
        """Idempotent, no checkpoint."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class DirectStdio:
    """One program's three pipes and the single-use socket that hands them over.

    Our ends are :attr:`stdin`, :attr:`stdout` and :attr:`stderr` (see
    :class:`ProgramPipes`). :meth:`close` releases everything; it is idempotent.
    """

    def __init__(self, host_dir: str, **log_fields: object) -> None:
        """``log_fields`` (container, channel) go on this handover's log lines."""
        self._log_fields = log_fields
        name = f"{secrets.token_hex(8)}.sock"
        self.host_path = os.path.join(host_dir, name)
        self.container_path = f"{CONTAINER_DIR}/{name}"
        self._status_conn: trio.socket.SocketType | None = None
        self._pipes = ProgramPipes()
        self.stdin = self._pipes.stdin
        self.stdout = self._pipes.stdout
        self.stderr = self._pipes.stderr
        try:
            self._listener = TokenListener(self.host_path, socket.SOCK_STREAM)
        except BaseException:
            self._pipes.close()
            raise

    def helper_args(self) -> list[str]:
        """``trissh-exec`` options that make it fetch the pipes."""
        return ["--stdio", self.container_path, self._listener.token.decode()]

    async def hand_over(self) -> bool:
        """Serve the helper's connection: True once the pipes were passed.

        Bounded as the module docstring says; the socket is gone afterwards either way, and
        so are our copies of the program's ends (a failed handover is EOF on our side).
        """
        conn = None
        try:
            with trio.move_on_after(HANDOVER_TIMEOUT):
                conn = await self._listener.accept(self._refused, self._send_pipes)
        finally:
            self._pipes.release_child_ends()
        self._status_conn = conn  # the helper reports the exit here
        return conn is not None

    async def exit_status(self) -> ExitStatus | None:
        """How the program ended, as the helper reports it on the handover connection the
        moment it knows; ``None`` if the helper went away without saying (killed), or said
        something that is not a status line (then podman's record is the answer).

        Waits as long as the program runs: call it from a task that teardown cancels.
        """
        conn = self._status_conn
        if conn is None:
            await trio.lowlevel.checkpoint()
            return None
        return parse_status_line(await receive_bounded(conn, STATUS_LINE_LIMIT, until=b"\n"))

    def _refused(self) -> None:
        log.warning("stdio_handover_refused", reason="bad or missing token", **self._log_fields)

    async def _send_pipes(self, conn: trio.socket.SocketType) -> bool:
        try:
            await conn.sendmsg(
                [b"\0"],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", self._pipes.child_ends))],
            )
        except OSError:
            return False  # the helper went away; it exits 126 and says why
        return True

    def close(self) -> None:
        """Close the sockets and every pipe end we still hold (no checkpoint)."""
        self._listener.close()
        if self._status_conn is not None:
            self._status_conn.close()
        self._pipes.close()


async def receive_bounded(
    conn: trio.socket.SocketType, limit: int, *, until: bytes | None = None
) -> bytes:
    """Up to ``limit`` bytes from ``conn``: fewer at EOF, on an error, or once ``until``
    has arrived. What a peer in a container sends us is never read without a bound."""
    data = b""
    with contextlib.suppress(OSError):
        while len(data) < limit and (until is None or until not in data):
            chunk = await conn.recv(limit - len(data))
            if not chunk:
                break
            data += chunk
    return data


#: Signal numbers a program can die of on Linux are 1..64.
_NSIG: Final = 65


def parse_status_line(line: bytes) -> ExitStatus | None:
    """``exit N`` or ``signal N core C`` (one line, as ``trissh-exec`` writes it)."""
    match line.split():
        case [b"exit", code] if code.isdigit() and int(code) <= 255:
            return ExitStatus(code=int(code))
        case [b"signal", number, b"core", core] if (
            number.isdigit() and 0 < int(number) < _NSIG and core in (b"0", b"1")
        ):
            return ExitStatus(signal=signal_name(int(number)), core_dumped=core == b"1")
        case _:
            return None
