"""Small pieces both backends need, so the fake and the real one cannot drift apart."""

from __future__ import annotations

import signal as _signal
import time
from collections.abc import Mapping

from trissh.backend.base import (
    LABEL_CONN_ID,
    LABEL_INSTANCE,
    LABEL_POOL,
    LABEL_RECIPE,
    LABEL_REMOTE,
    LABEL_USER,
    LABEL_WORKSPACE,
    ProcessSpec,
    SandboxSpec,
)

__all__ = [
    "labels_match",
    "ms_since",
    "process_env",
    "sandbox_labels",
    "signal_name",
    "signal_number",
]


def sandbox_labels(spec: SandboxSpec) -> dict[str, str]:
    """The operator's labels plus ours; ours win so the sweep can always find the container."""
    return {
        **spec.settings.labels,
        LABEL_CONN_ID: spec.conn_id,
        LABEL_USER: spec.username,
        LABEL_REMOTE: spec.remote,
        LABEL_INSTANCE: spec.instance,
        **({LABEL_POOL: "true"} if spec.pooled else {}),
        **({LABEL_WORKSPACE: spec.workspace, LABEL_RECIPE: spec.recipe} if spec.workspace else {}),
    }


def labels_match(have: Mapping[str, str], labels: Mapping[str, str | None]) -> bool:
    """Whether ``have`` carries ``labels`` (a ``None`` value: the key with any value).
    podman ANDs label filters; callers check again so a looser server filter is harmless."""
    return all(k in have and (v is None or have[k] == v) for k, v in labels.items())


def process_env(spec: ProcessSpec) -> dict[str, str]:
    """The process's own environment; ``TERM`` comes from the pty request, as sshd does."""
    env = dict(spec.env)
    if spec.pty is not None and spec.pty.term:
        env["TERM"] = spec.pty.term
    return env


def signal_number(name: str) -> int:
    """``"TERM"``/``"SIGTERM"``/``"15"`` -> 15.

    Raises:
        ValueError: not a signal this platform knows.
    """
    name = name.strip().upper().removeprefix("-")
    if name.isdigit():
        return int(_signal.Signals(int(name)))
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(_signal.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


def signal_name(number: int) -> str:
    """15 -> ``"TERM"`` (RFC 4254 §6.10 names carry no ``SIG`` prefix); a signal with no
    name (most real-time ones) -> ``"SIG@openssh.com"``, as sshd reports it."""
    try:
        return _signal.Signals(number).name.removeprefix("SIG")
    except ValueError:
        return "SIG@openssh.com"


def ms_since(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.monotonic()`` reading), for ``duration_ms`` logs."""
    return round((time.monotonic() - start) * 1000, 3)
