"""The workspace registry's records: a live workspace, and a kept one waiting for its
user's next login (:mod:`.workspaces`)."""

from __future__ import annotations

import dataclasses

import trio

from trissh.backend import BackendError, FoundSandbox, Sandbox, SandboxSpec


@dataclasses.dataclass(eq=False)
class Workspace:
    """One user's workspace while the registry holds it."""

    user: str
    spec: SandboxSpec
    ttl: float
    #: Bound on starting (or adopting) its container: the first login's ``start_timeout``.
    start_timeout: float
    #: The kept container to take over instead of making one (start-up adoption).
    adopt: FoundSandbox | None = None
    attached: int = 0
    sandbox: Sandbox | None = None
    failure: BackendError | None = None
    ready: trio.Event = dataclasses.field(default_factory=trio.Event)
    changed: trio.Event = dataclasses.field(default_factory=trio.Event)
    #: Out of the registry: no new attach may have it (it is being removed).
    closing: bool = False
    #: The keeper's scope: cancelled when the container turned out gone.
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)

    async def sandbox_or_failure(self) -> Sandbox:
        await self.ready.wait()
        if self.sandbox is None:
            raise self.failure or BackendError(f"workspace of {self.user} is gone")
        return self.sandbox


@dataclasses.dataclass(eq=False)
class Unclaimed:
    """A kept workspace waiting for its user's next login to say whether its settings are
    still theirs (module docstring)."""

    found: FoundSandbox
    ttl: float
    #: Cancelled by the login that claims it.
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    #: Why it is to go, or None once a login adopted it.
    outcome: str | None = "unclaimed"
