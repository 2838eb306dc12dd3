"""Key files read at the start and again at each SIGHUP. Deleting one and reloading is how
the keys it held are revoked, as with sshd's files; at the start a missing file is a typo
that stops it."""

from __future__ import annotations

from pathlib import Path

import structlog

log = structlog.get_logger("trissh.auth")


def deleted_since_start(path: Path, *, reloading: bool) -> bool:
    """Whether ``path`` is gone at a reload (logged): then it holds no key any more."""
    if not reloading or path.exists():
        return False
    log.warning("key_file_deleted", path=str(path))
    return True
