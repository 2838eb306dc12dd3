"""What a user's workspace is made of: its spec, the hash that tells whether kept containers
still match it (``trissh.workspace-recipe``), and its home volume's name and label."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Final

from trissh.backend import SandboxSpec, Volume
from trissh.config import ServerConfig, container_settings

#: Label of home volumes: whose it is.
LABEL_HOME: Final = "trissh.home"
#: Label of workspace containers: which state file (so which deployment) they belong to;
#: the lock on that file makes one live server their owner.
LABEL_STATE: Final = "trissh.workspace-state"


def state_label(settings: ServerConfig) -> str:
    """The value of :data:`LABEL_STATE` for this configuration's state file."""
    path = str(settings.workspace_state_file().absolute())
    return hashlib.sha256(path.encode()).hexdigest()[:16]


def _safe(user: str) -> str:
    """The user name with what podman refuses in a volume name replaced, shortened."""
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", user)[:40].strip("-.") or "user"


def home_volume_name(user: str, scope: str) -> str:
    """``trissh-home-NAME-HASH``: readable, valid for podman, unique per user name and
    deployment (``scope``: its :func:`state_label`). NAME is the name made safe, which
    several names share, so HASH (128 bits of both) alone tells them apart."""
    digest = hashlib.sha256(f"{scope}\0{user}".encode()).hexdigest()[:32]
    return f"trissh-home-{_safe(user)}-{digest}"


def legacy_home_volume_name(user: str) -> str:
    """The name a home volume had before homes were a deployment's own (an 8-digit hash of
    the user name alone, no :data:`LABEL_STATE`): listed and removed, never mounted."""
    return f"trissh-home-{_safe(user)}-{hashlib.sha256(user.encode()).hexdigest()[:8]}"


def recipe_of(spec: SandboxSpec) -> str:
    """A hash of what a workspace's container is made of: a change means a new one."""
    settings = json.dumps(dataclasses.asdict(spec.settings), sort_keys=True, default=str)
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


def workspace_spec(
    settings: ServerConfig, user: str, instance: str, spec: SandboxSpec | None = None
) -> SandboxSpec:
    """The spec of ``user``'s workspace: the login's container settings (``spec``, else the
    configuration's), the home volume, the workspace labels."""
    if spec is None:
        spec = SandboxSpec(
            conn_id="",
            username=user,
            remote="",
            instance=instance,
            settings=container_settings(settings.container_for(user)),
        )
    section = settings.workspaces
    scope = state_label(settings)
    container = dataclasses.replace(
        spec.settings, labels={**spec.settings.labels, LABEL_STATE: scope}
    )
    if section.home_volume:
        home = Volume(
            source=home_volume_name(user, scope),
            destination=section.home,
            read_only=False,
            named=True,
            owned=True,
        )
        container = dataclasses.replace(container, volumes=(*container.volumes, home))
    made = dataclasses.replace(
        spec, conn_id=f"ws-{user}", remote="", settings=container, workspace=user
    )
    return dataclasses.replace(made, recipe=recipe_of(made))


def workspace_mode_used(settings: ServerConfig) -> bool:
    """Whether any user (the default included) is in workspace mode."""
    if settings.session.execution_mode == "workspace":
        return True
    return any(
        user.session.get("execution_mode") == "workspace" for user in settings.users.values()
    )


def home_volume_of(spec: SandboxSpec) -> str | None:
    """The name of the workspace's home volume, if it has one."""
    return next((v.source for v in spec.settings.volumes if v.named), None)
