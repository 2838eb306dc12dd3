"""WorkspaceSource: where a connection in workspace mode takes its container from, the
user's workspace in the :class:`~.workspaces.Workspaces` registry (see that module for the
theory of operation)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

import structlog
import trio

from trissh.backend import BackendError, Sandbox, SandboxSpec
from trissh.server.workspace_entries import Workspace
from trissh.server.workspace_recipe import home_volume_of
from trissh.server.workspaces import AdoptionPending, Workspaces

#: Bound on what a connection does in its workspace as it leaves (removing its secrets).
LEAVE_TIMEOUT: Final = 15.0


class WorkspaceSource:
    """A connection's ``SandboxSource`` in workspace mode: attached from its first session
    channel until the connection ends (a holder task in the connection's nursery)."""

    def __init__(
        self,
        registry: Workspaces,
        spec: SandboxSpec,
        ttl: float,
        start_timeout: float,
        nursery: trio.Nursery,
    ) -> None:
        self._registry = registry
        #: Runs (bounded) before the connection leaves a workspace's container.
        self.on_leave: Callable[[Sandbox], Awaitable[None]] | None = None
        self._spec = spec
        self._ttl = ttl
        self._start_timeout = start_timeout
        self._nursery = nursery
        self._workspace: Workspace | None = None
        #: The holder task's scope: cancelled (detaching) when a failed workspace is left.
        self._holding: trio.CancelScope | None = None
        self._refusal: BackendError | None = None
        #: Reattached to a workspace made earlier: check once that its container is there.
        self._check = False

    def prepare(self, start_timeout: float) -> None:
        """Attach now: the workspace's start (if any) overlaps the client's round trip.
        (``start_timeout`` is the login's, which the source was made with.)"""
        if self._workspace is None and self._refusal is None:
            self._check = self._spec.username in self._registry.live
            try:
                self._workspace = self._registry.attach(self._spec, self._ttl, self._start_timeout)
            except AdoptionPending:
                return  # get() waits for it, then attaches
            except BackendError as exc:
                self._refusal = exc
                return
            if self._holding is not None:
                self._holding.cancel()  # attached to one that failed or ended
            self._holding = trio.CancelScope()
            self._nursery.start_soon(self._hold, self._workspace, self._holding)

    async def acquire(self, owned: contextlib.AsyncExitStack) -> Sandbox:
        """The user's workspace's container (never entered into ``owned``: not ours)."""
        return await self.get()

    def home(self) -> str | None:
        """Where the workspace's own home volume is mounted, if it has one: HOME for its
        programs (the settings it was made with, whatever a reload changed since)."""
        workspace = self._workspace
        if workspace is None:
            return None
        name = home_volume_of(workspace.spec)
        volumes = workspace.spec.settings.volumes
        return next((v.destination for v in volumes if v.named and v.source == name), None)

    def lost(self) -> None:
        """A session's program could not start there: check the container at the next."""
        self._check = True

    async def get(self) -> Sandbox:
        """The user's workspace's container (the container forwards reach, too).

        Raises:
            BackendError: the limit was reached, or it could not start (a later session
            of this connection tries again).
        """
        for _ in range(2):  # a workspace found gone is replaced once
            if self._workspace is not None and self._workspace.closing:
                self._workspace = None  # it failed or ended: attach to a new one
            self.prepare(self._start_timeout)
            if self._workspace is None and self._refusal is None:  # being adopted
                await self._registry.adoption_settled()
                self.prepare(self._start_timeout)
            if self._refusal is not None:
                refusal, self._refusal = self._refusal, None
                raise refusal
            assert self._workspace is not None
            sandbox = await self._workspace.sandbox_or_failure()
            if not self._check:
                return sandbox
            self._check = False
            if await self._registry.still_there(self._workspace, sandbox):
                return sandbox
        raise BackendError("the workspace's container is gone")

    async def _hold(self, workspace: Workspace, scope: trio.CancelScope) -> None:
        """Attached while the connection runs (cancelled with its nursery), or until the
        connection attaches to a new workspace."""
        structlog.contextvars.unbind_contextvars("channel", "container")
        try:
            with scope:
                await trio.sleep_forever()
        finally:
            try:
                if self.on_leave is not None and workspace.sandbox is not None:
                    with trio.move_on_after(LEAVE_TIMEOUT, shield=True):
                        await self.on_leave(workspace.sandbox)
            finally:
                self._registry.detach(workspace)
