"""Process limits trissh sets for itself."""

from __future__ import annotations

import resource
from pathlib import Path

__all__ = ["open_files_target", "raise_open_files"]


def open_files_target(hard: int) -> int:
    """What the server sets its soft RLIMIT_NOFILE to: the hard limit, bounded."""
    if hard == resource.RLIM_INFINITY:
        hard = _nr_open() or 1 << 20
    return min(hard, 1 << 20)


def raise_open_files() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (Python and systemd start
    at 1,024: a few hundred sessions); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = open_files_target(hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft
        return target
    return soft


def _nr_open() -> int | None:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return None
