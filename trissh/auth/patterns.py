"""OpenSSH's patterns (``match_pattern``): ``*`` and ``?`` only, every other character is
itself, as in authorized_keys ``from=`` and sshd's PermitListen."""

from __future__ import annotations

import functools
import re


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def wildcard_matches(pattern: str, text: str) -> bool:
    """Whether all of ``text`` matches ``pattern``."""
    return _compiled(pattern).fullmatch(text) is not None
