"""Files a login brings into its container before the first program runs (a delegated
Kerberos ccache): written once per container, by a program run through the backend
contract like any session's, so every backend and image with a POSIX ``sh`` works.

The content goes through the program's stdin into a temporary file (mode 0600, as the
container's user), renamed into place, so a session never sees half a file. A file that
cannot be written is logged and the session goes on without it. A container that outlives
the connection (a workspace) loses the connection's secret files when the connection ends,
as sshd's GSSAPICleanupCredentials removes the ccache at logout.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import structlog
import trio

from trissh.backend import BackendError, ProcessSpec, Sandbox

log = structlog.get_logger("trissh.channels.files")

#: Bound on writing one file (a container's exec, a few KiB through stdin).
WRITE_TIMEOUT = 10.0
_SCRIPT = 'umask 077 && mkdir -p "${1%/*}" && cat > "$1.trissh-new" && mv -f "$1.trissh-new" "$1"'
#: Each file, and what a write cut short may have left beside it.
_REMOVE_SCRIPT = 'for f; do rm -f -- "$f" "$f.trissh-new"; done'
#: What a failing write may print (its reason) before the rest is dropped.
_MAX_MESSAGE = 4096


class ContainerFiles:
    """What of one connection's files each of its containers has already: each kind once
    per container, however many sessions start there at once."""

    def __init__(self) -> None:
        self._done: set[tuple[str, str]] = set()
        self._lock = trio.Lock()
        #: Where secret files went, by container id: the container, their paths, its shell.
        self._secrets: dict[str, tuple[Sandbox, tuple[str, ...], str]] = {}

    async def once(self, kind: str, sandbox: Sandbox, write: Callable[[], Awaitable[None]]) -> None:
        """Run ``write`` unless ``kind`` went into ``sandbox`` before; a concurrent session
        waits until it has (or has failed: ``write`` logs that itself)."""
        key = (kind, sandbox.container_id)
        if key in self._done:
            return
        async with self._lock:
            if key in self._done:
                return
            await write()
            self._done.add(key)  # only once written: a cancelled write is done again

    async def provide(self, sandbox: Sandbox, files: Mapping[str, bytes], shell: str) -> None:
        """Write the login's secret ``files`` into ``sandbox`` once."""

        async def write() -> None:
            self._secrets[sandbox.container_id] = (sandbox, tuple(files), shell)
            await _write_each(sandbox, files, shell)

        if files:
            await self.once("secret", sandbox, write)

    async def remove_secrets(self, left: Sandbox) -> None:
        """Remove the secret files from ``left``, a container that outlives the connection
        (bounded; a failure is logged)."""
        entry = self._secrets.pop(left.container_id, None)
        if entry is None:
            return
        sandbox, paths, shell = entry
        self._done.discard(("secret", sandbox.container_id))
        try:
            with trio.fail_after(WRITE_TIMEOUT):
                argv = [shell, "-c", _REMOVE_SCRIPT, "sh", *paths]
                await _run(sandbox, argv, f"removing {', '.join(paths)}")
        except (BackendError, OSError, trio.TooSlowError) as exc:
            log.warning("container_file_remove_failed", paths=paths, error=str(exc) or "timeout")
        else:
            log.info("container_file_removed", paths=paths)


async def _write_each(sandbox: Sandbox, files: Mapping[str, bytes], shell: str) -> None:
    for path, data in files.items():
        try:
            with trio.fail_after(WRITE_TIMEOUT):
                await write_file(sandbox, path, data, shell)
        except (BackendError, OSError, trio.TooSlowError) as exc:
            log.warning("container_file_failed", path=path, error=str(exc) or "timeout")
        else:
            log.info("container_file_written", path=path, size=len(data))


async def write_file(sandbox: Sandbox, path: str, data: bytes, shell: str) -> None:
    """Write ``data`` to ``path`` in the container (mode 0600, atomically).

    Raises:
        BackendError: the program could not run, or exited with an error.
    """
    await _run(sandbox, [shell, "-c", _SCRIPT, "sh", path], f"writing {path}", data)


async def _run(sandbox: Sandbox, argv: list[str], what: str, stdin: bytes = b"") -> None:
    """Run ``argv`` in the container with ``stdin`` until it exits; ``what`` it does names
    a failure.

    Raises:
        BackendError: the program could not run, or exited with an error (its output says
        why).
    """
    broken: Exception | None = None
    async with sandbox.open_process(ProcessSpec(argv=argv)) as process:
        output = bytearray()

        async def drain(stream: trio.abc.ReceiveStream | None) -> None:
            while stream is not None and (chunk := await stream.receive_some(_MAX_MESSAGE)):
                output.extend(chunk[: max(0, _MAX_MESSAGE - len(output))])

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, process.stdout)
                nursery.start_soon(drain, process.stderr)
                await process.stdin.send_all(stdin)
                await process.stdin.aclose()
        except* (
            BackendError,
            OSError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ) as group:
            broken = group.exceptions[0]
        if broken is None:
            status = await process.wait()
    if broken is not None:
        why = str(broken) or str(broken.__cause__ or "") or type(broken).__name__
        raise BackendError(f"{what} failed: {why}")
    if status.code != 0:
        message = output.decode("utf-8", "replace").strip()
        raise BackendError(f"{what} failed ({status.code}): {message}")
