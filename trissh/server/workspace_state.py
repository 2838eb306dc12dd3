"""The workspace registry's state on disk: when each home volume was last used, under a lock
that makes one server the owner of a deployment's workspaces.

Why a file: podman's labels cannot change once set, and a volume has no "last used" time;
the server that detaches a home volume knows, and writes it down (atomically: a temporary
file renamed over the old one). Why a lock: two live servers adopting the same kept
containers would each think it owns them. The lock is ``flock`` on ``FILE.lock``, held for
the server's life and released by the kernel when the process dies, so a crash never
leaves a stale lock. ``trissh workspaces`` uses it to say whether a server is running.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

import structlog

log = structlog.get_logger("trissh.server.workspaces")

__all__ = ["StateLocked", "WorkspaceState", "server_running"]


class StateLocked(Exception):
    """Another live server holds the state file's lock."""


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def server_running(path: Path) -> bool:
    """Whether a live server holds the lock of ``path`` (False if nothing is there)."""
    try:
        fd = os.open(_lock_path(path), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class WorkspaceState:
    """Last-use times of home volumes, read at start and written on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.volumes: dict[str, float] = {}

    def lock(self) -> None:
        """Take the lock and read the state.

        Raises:
            StateLocked: another live server holds it.
            OSError: the directory cannot be made or the file cannot be opened.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(_lock_path(self.path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateLocked(f"{self.path} is held by another trissh server") from None
        self._fd = fd
        self.volumes = self._read()

    def unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            volumes = data.get("volumes", {})
            return {str(k): float(v) for k, v in volumes.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            log.warning("workspace_state_unreadable", path=str(self.path), error=str(exc))
            return {}

    def used(self, volume: str, when: float | None = None) -> None:
        """``volume`` was in use until ``when`` (now)."""
        self.volumes[volume] = time.time() if when is None else when
        self._write()

    def forget(self, volume: str) -> None:
        if self.volumes.pop(volume, None) is not None:
            self._write()

    def _write(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            temporary.write_text(json.dumps({"volumes": self.volumes}, sort_keys=True))
            temporary.replace(self.path)
        except OSError as exc:
            log.warning("workspace_state_unwritable", path=str(self.path), error=str(exc))
            with contextlib.suppress(OSError):
                temporary.unlink()
