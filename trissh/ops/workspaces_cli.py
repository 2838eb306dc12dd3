"""``trissh workspaces``: what an operator sees of users' workspaces, and their removal.

It asks the backend directly (a running server is not needed), so it works on kept
workspaces between a stop and the next start too. Whether a live server holds the
deployment's workspaces comes from the state file's lock (:mod:`trissh.server.workspace_state`).

    trissh workspaces [list]               one line per workspace and per home volume
    trissh workspaces remove USER          remove USER's workspace container (their sessions end;
                                           the next login starts a fresh one)
    trissh workspaces remove --volume USER also remove USER's home volume (after the container)
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from trissh.backend import Backend, BackendError
from trissh.backend.base import LABEL_RECIPE, LABEL_WORKSPACE
from trissh.backend.registry import make_backend
from trissh.config import ServerConfig
from trissh.server.workspace_recipe import (
    LABEL_HOME,
    LABEL_STATE,
    home_volume_name,
    legacy_home_volume_name,
    state_label,
)
from trissh.server.workspace_state import server_running

USAGE = "usage: trissh workspaces [list] | remove [--volume] USER"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


async def list_workspaces(backend: Backend, settings: ServerConfig) -> list[str]:
    """The lines ``trissh workspaces list`` prints."""
    now = time.time()
    state = settings.workspace_state_file()
    held = "a running server holds them" if server_running(state) else "no server holds them"
    lines = [f"workspaces ({held}; state {state}):"]
    scope = state_label(settings)
    found = sorted(
        await backend.find_sandboxes({LABEL_WORKSPACE: None, LABEL_STATE: scope}),
        key=lambda f: f.labels[LABEL_WORKSPACE],
    )
    for item in found:
        lines.append(
            f"  {item.labels[LABEL_WORKSPACE]:<20} {item.container_id[:12]}"
            f"  {'running' if item.running else 'stopped':<8} up {_age(now - item.created)}"
            f"  recipe {item.labels.get(LABEL_RECIPE, '?')}"
        )
    if not found:
        lines.append("  (none)")
    homes = sorted(await backend.find_volumes({LABEL_HOME: None}), key=lambda v: v.name)
    volumes = [volume for volume in homes if volume.labels.get(LABEL_STATE) == scope]
    lines.append("home volumes:")
    for volume in volumes:
        lines.append(
            f"  {volume.labels.get(LABEL_HOME, '?'):<20} {volume.name}"
            f"  {'in use' if volume.in_use else 'unused':<6}  made {_age(now - volume.created)} ago"
        )
    if not volumes:
        lines.append("  (none)")
    legacy = [volume for volume in homes if LABEL_STATE not in volume.labels]
    if legacy:
        lines.append("home volumes of an earlier version (not mounted; README, Workspaces):")
    for volume in legacy:
        lines.append(f"  {volume.labels.get(LABEL_HOME, '?'):<20} {volume.name}")
    return lines


async def remove_workspace(
    backend: Backend, settings: ServerConfig, user: str, *, volume: bool
) -> list[str]:
    """Remove ``user``'s workspace container (and home volume) of this configuration's
    deployment (its state file); the lines to print.

    Raises:
        BackendError: podman failed (a volume still in use, for one).
    """
    lines = []
    scope = state_label(settings)
    for item in await backend.find_sandboxes({LABEL_WORKSPACE: user, LABEL_STATE: scope}):
        if await backend.remove_sandbox(item.container_id):
            lines.append(f"removed workspace container {item.container_id[:12]} of {user}")
    if volume:
        names = [home_volume_name(user, scope)]
        old = legacy_home_volume_name(user)  # an earlier version's: only if it says whose
        names += [
            found.name
            for found in await backend.find_volumes({LABEL_HOME: user})
            if found.name == old and LABEL_STATE not in found.labels
        ]
        for name in names:
            if await backend.remove_volume(name):
                lines.append(f"removed home volume {name}")
    return lines or [f"nothing to remove for {user}"]


async def workspaces_command(settings: ServerConfig, args: Sequence[str], volume: bool) -> int:
    """Run ``trissh workspaces ARGS`` (``--volume``: ``volume``); the exit code (2: usage,
    1: the backend failed)."""
    words = list(args) or ["list"]
    if words == ["list"] and not volume:
        run_list = True
    elif len(words) == 2 and words[0] == "remove":
        run_list = False
    else:
        print(USAGE)
        return 2
    backend = make_backend(settings)
    try:
        if run_list:
            lines = await list_workspaces(backend, settings)
        else:
            lines = await remove_workspace(backend, settings, words[1], volume=volume)
    except BackendError as exc:
        print(f"trissh: {exc}")
        return 1
    finally:
        backend.close()
    print("\n".join(lines))
    return 0
