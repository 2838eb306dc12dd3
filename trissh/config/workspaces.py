"""``[workspaces]``: the server-wide rules of ``execution_mode = "workspace"``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from trissh.config.base import Model


class WorkspacesSection(Model):
    """How many workspaces, what a stop does with them, and their home volumes."""

    #: Workspaces at once (one container each); a new user's login past it is refused.
    max_workspaces: int = Field(64, ge=1, le=100_000)
    #: What a graceful stop does with them: ``keep`` (left running; the next start adopts
    #: those whose settings still match) or ``remove``.
    on_shutdown: Literal["keep", "remove"] = "keep"
    #: A named volume per user mounted at ``home``: it outlives the workspace.
    home_volume: bool = False
    #: Where the home volume is mounted; with one, HOME of the workspace's programs.
    home: str = "/root"
    #: Days a home volume is kept after its last workspace ended; 0: kept forever.
    home_volume_expiry_days: float = Field(30.0, ge=0)
    #: The registry's state (when each home volume was last used) and lock: one server per
    #: file. Default: workspaces.json in the state directory (/var/lib/trissh as root).
    state_file: Path | None = None

    @field_validator("home")
    @classmethod
    def _check_home(cls, value: str) -> str:
        if not value.startswith("/") or value == "/":
            raise ValueError("home must be an absolute path below /")
        return value.rstrip("/")
