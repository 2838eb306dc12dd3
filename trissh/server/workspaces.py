"""Workspaces: one container per user name, shared by all of that user's connections and
sessions, kept ``[session] workspace_ttl`` seconds after the last connection ends.

Theory of operation
-------------------
A connection in ``workspace`` mode gets a :class:`~.workspace_source.WorkspaceSource` (its
``SandboxSource``).
At its first session channel the source *attaches* to the user's :class:`Workspace` from
the :class:`Workspaces` registry, which lives in the server's upkeep nursery and so
outlives every connection; a holder task in the connection's nursery detaches it when the
connection ends. The registry counts attached connections; a keeper task per workspace
holds the backend's sandbox context and, once nobody is attached, waits the TTL (an
attach in between restarts the wait) before leaving the context, which removes the
container. A login that finds the workspace alive *reattached* (log and metric say so).

Home volumes (``[workspaces] home_volume``): a named volume per user, mounted at
``home`` (also the programs' HOME), created with the labels the expiry finds it by. When
each was last used goes into the state file (:mod:`.workspace_state`); an hourly pass
removes those unused for ``home_volume_expiry_days``.

Across restarts: a graceful stop *keeps* the workspaces (``on_shutdown = "keep"``: the
backend leaves the containers running; programs trissh started are ended, daemons like a
tmux server go on) or removes them. At start-up the registry looks at every container
labelled ``trissh.workspace`` in its scope and **adopts** it when its user is still in
workspace mode and its settings hash (``trissh.workspace-recipe``) is what the user's
settings give now (its TTL then starts over); otherwise it **removes** it, saying why
(``settings_changed``, ``not_workspace_mode``, ``stopped``, ``duplicate``,
``over_limit``). After a crash the containers are simply there, and the same rules apply.
With a configuration server (``[auth.config_webhook]``) the start-up cannot know a user's
settings, so a kept workspace whose hash differs from the configuration's is held
*unclaimed*: the user's next login adopts it if its settings give the same hash, replaces it
otherwise, and one nobody claims within the TTL is removed (``unclaimed``). The state
file's lock (tried at each login while held) makes one live server their owner.

Nursery tree::

    Workspaces.run               the server's upkeep nursery
    └─ workspaces nursery
       ├─ _expire_volumes         hourly pass over home volumes (with home_volume)
       ├─ _keep (one each)        the sandbox context and the TTL of one workspace
       └─ _await_claim (each)     an unclaimed kept workspace: its TTL, then its removal
    WorkspaceSource._hold         in each connection's nursery: attached while it runs
                                  (:mod:`.workspace_source`)
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Final

import structlog
import trio

from trissh.backend import (
    Backend,
    BackendError,
    BackendUnavailable,
    FoundSandbox,
    Sandbox,
    SandboxSpec,
)
from trissh.backend.base import LABEL_INSTANCE, LABEL_RECIPE, LABEL_WORKSPACE
from trissh.config import ServerConfig, WorkspacesSection
from trissh.ops.metrics import Metrics
from trissh.server.workspace_entries import Unclaimed, Workspace
from trissh.server.workspace_recipe import (
    LABEL_HOME,
    LABEL_STATE,
    home_volume_of,
    state_label,
    workspace_mode_used,
    workspace_spec,
)
from trissh.server.workspace_state import StateLocked, WorkspaceState

log = structlog.get_logger("trissh.server.workspaces")

#: How often home volumes are checked for expiry.
EXPIRY_INTERVAL: Final = 3600.0
#: Seconds between attempts to adopt kept workspaces while podman cannot be reached.
ADOPTION_RETRY: Final = 10.0
#: A login waits for a deferred adoption's next try, and this much more.
DEFERRED_WAIT_MARGIN: Final = 5.0
#: How often a waiting login looks whether the adoption was deferred meanwhile.
ADOPTION_POLL: Final = 0.5
#: Bound on waiting to remove an unclaimed workspace's container (a request already sent
#: is bounded by the podman API's own request timeout).
DISCARD_BOUND: Final = 30.0


class AdoptionPending(Exception):
    """Kept workspaces are being taken over: attach once that is done."""


class Workspaces:
    """The registry: every live workspace by user name (module docstring)."""

    def __init__(
        self,
        backend: Backend,
        metrics: Metrics,
        settings: Callable[[], ServerConfig],
        *,
        instance: str,
    ) -> None:
        self._backend = backend
        self._metrics = metrics
        self._settings = settings
        self._instance = instance
        self._live: dict[str, Workspace] = {}
        self._unclaimed: dict[str, Unclaimed] = {}
        #: Home volumes the expiry pass is removing, each set once its removal is over: a
        #: start waits for its home's, then makes it anew (podman would, unlabelled).
        self._removing: dict[str, trio.Event] = {}
        #: Why the adoption of kept workspaces is being retried (podman's error), and
        #: whether a try is under way.
        self._deferred: str | None = None
        self._trying = False
        #: The server stops with ``on_shutdown = "keep"``.
        self._keeping = False
        self._nursery: trio.Nursery | None = None
        self._state: WorkspaceState | None = None
        #: Why this server holds no workspaces (the state is another server's), if so.
        self.unavailable: str | None = None
        #: Set once a late lock's adoption had its first try (None: no late lock).
        self._adopting: trio.Event | None = None

    @property
    def live(self) -> dict[str, Workspace]:
        return self._live

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Adopt or remove what earlier servers left, then keep workspaces until cancelled.
        A configuration without workspace mode leaves every kept workspace alone and takes
        no lock; a reload that turns it on takes the lock at the first login, and kept
        workspaces are adopted or removed only at the next start.

        Cancellation: each workspace is removed, or kept if :meth:`stop` said so.
        """
        settings = self._settings()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if workspace_mode_used(settings) and self._lock():
                    await self._adopt_or_defer()
                task_status.started()
                await self._expire_volumes()
        finally:
            self._nursery = None
            if self._state is not None:
                self._state.unlock()

    def _lock(self) -> bool:
        """Take the state file's lock; False (workspaces unavailable) while another server
        holds it. Tried at each login: once that server is gone, its kept workspaces are
        adopted, and logins wait for that (:meth:`adoption_settled`) before attaching."""
        if self._state is not None:
            return True
        state = WorkspaceState(self._settings().workspace_state_file())
        try:
            state.lock()
        except (StateLocked, OSError) as exc:
            if self.unavailable is None:
                log.error("workspaces_unavailable", error=str(exc))
            self.unavailable = str(exc)
            return False
        self._state = state
        if self.unavailable is not None and self._nursery is not None:
            self.unavailable = None
            log.info("workspaces_available")
            self._adopting = trio.Event()
            self._nursery.start_soon(self._adopt_or_defer)
        return True

    async def adoption_settled(self) -> None:
        """Until the adoption of kept workspaces (at the start, or a late lock's) is done.
        A try under way is waited for however slow (podman answering slowly); once a try
        was deferred (podman not answering), the wait ends at most one retry (and a
        margin) later.

        Raises:
            BackendError: still deferred then.
        """
        adopting = self._adopting
        deadline = math.inf
        while adopting is not None and not adopting.is_set():
            now = trio.current_time()
            if self._deferred is not None and not self._trying:
                deadline = min(deadline, now + ADOPTION_RETRY + DEFERRED_WAIT_MARGIN)
                if now >= deadline:
                    raise BackendError(f"workspaces are unavailable: {self._deferred}")
            with trio.move_on_after(ADOPTION_POLL):
                await adopting.wait()

    async def _adopt_or_defer(self, delay: float = 0.0) -> None:
        """:meth:`_adopt_leftovers`, retried while podman is unreachable (kept ones count).
        Logins wait meanwhile: one attached now would make a second workspace, and the
        adoption would then remove the kept one as a duplicate."""
        await trio.sleep(delay)
        deferred = False
        self._trying = True
        try:
            await self._adopt_leftovers(self._settings())
        except BackendError as exc:
            log.warning("workspace_adoption_deferred", error=str(exc), retry_in_s=ADOPTION_RETRY)
            self._deferred = str(exc)
            assert self._nursery is not None
            if self._adopting is None or self._adopting.is_set():
                self._adopting = trio.Event()
            deferred = True
            self._nursery.start_soon(self._adopt_or_defer, ADOPTION_RETRY)
        finally:
            self._trying = False
            if not deferred:
                self._deferred = None
                if self._adopting is not None:
                    self._adopting.set()

    def stop(self) -> None:
        """The server stops: with ``on_shutdown = "keep"`` the containers stay running
        (call before the registry's nursery is cancelled)."""
        keep = self._settings().workspaces.on_shutdown == "keep"
        self._keeping = keep
        for workspace in self._live.values():
            if keep and workspace.sandbox is not None:
                workspace.sandbox.keep()
                log.info("workspace_kept", user=workspace.user)

    # -- attach and detach ---------------------------------------------------------------

    def attach(self, spec: SandboxSpec, ttl: float, start_timeout: float) -> Workspace:
        """Count one more connection of the user; make the workspace if there is none (or
        adopt their unclaimed one).

        Raises:
            BackendError: workspaces are unavailable, or the maximum is reached.
        """
        user = spec.username
        if self._nursery is None or not self._lock():
            raise BackendError(f"workspaces are unavailable: {self.unavailable or 'stopping'}")
        if self._adopting is not None and not self._adopting.is_set():
            raise AdoptionPending
        workspace = self._live.get(user)
        reattached = workspace is not None
        if workspace is None:
            full = workspace_spec(self._settings(), user, self._instance, spec)
            claimed = user in self._unclaimed
            adopt = self._claim(user, full.recipe)
            reattached = adopt is not None
            limit = self._settings().workspaces.max_workspaces
            if not claimed and len(self._live) + len(self._unclaimed) >= limit:
                self._metrics.workspace_attached("refused")
                log.warning("workspace_refused", user=user, max_workspaces=limit)
                raise BackendError(f"the server holds its maximum of {limit} workspaces")
            workspace = self._start(
                Workspace(user, full, ttl, start_timeout=start_timeout, adopt=adopt)
            )
        workspace.attached += 1
        workspace.ttl = ttl  # the latest login's settings
        workspace.changed.set()
        self._metrics.workspace_attached("reattached" if reattached else "new")
        log.info(
            "workspace_attached",
            user=user,
            reattached=reattached,
            connections=workspace.attached,
        )
        return workspace

    def _claim(self, user: str, recipe: str) -> FoundSandbox | None:
        """The user's unclaimed kept container if its settings are ``recipe``; one that is
        not is removed (by its waiting task)."""
        unclaimed = self._unclaimed.pop(user, None)
        if unclaimed is None:
            return None
        unclaimed.scope.cancel()
        if unclaimed.found.labels.get(LABEL_RECIPE) != recipe:
            unclaimed.outcome = "settings_changed"
            return None
        unclaimed.outcome = None
        log.info("workspace_adopted", user=user, container=unclaimed.found.container_id[:12])
        return unclaimed.found

    def detach(self, workspace: Workspace) -> None:
        workspace.attached -= 1
        workspace.changed.set()
        log.info(
            "workspace_detached",
            user=workspace.user,
            connections=workspace.attached,
            ttl_s=workspace.ttl,
        )

    def _start(self, workspace: Workspace) -> Workspace:
        assert self._nursery is not None
        self._live[workspace.user] = workspace
        self._metrics.workspaces.set(len(self._live))
        self._nursery.start_soon(self._keep, workspace)
        return workspace

    # -- one workspace's life --------------------------------------------------------------

    async def _keep(self, workspace: Workspace) -> None:
        """Start (or adopt) the container, hold it while attached and for the TTL after.

        Cancellation: the container is removed (bounded, by the backend) unless kept.
        """
        structlog.contextvars.clear_contextvars()  # not the first connection's lines
        reason = "shutdown"
        try:
            with workspace.scope:
                async with contextlib.AsyncExitStack() as held:
                    sandbox = await self._open(workspace, held)
                    if sandbox is None:
                        reason = "failed"
                        return
                    workspace.sandbox = sandbox
                    workspace.ready.set()
                    await self._wait_idle(workspace)
                    reason = "ttl"
                    self._drop(workspace)  # no attach may get it while its container goes
            if workspace.scope.cancelled_caught:
                reason = "gone"
        finally:
            self._drop(workspace)
            workspace.sandbox = None
            workspace.ready.set()
            home = home_volume_of(workspace.spec)
            if home is not None and self._state is not None:
                self._state.used(home)
            if reason != "failed":
                log.info("workspace_ended", user=workspace.user, reason=reason)

    async def _open(self, workspace: Workspace, held: contextlib.AsyncExitStack) -> Sandbox | None:
        """The workspace's sandbox, entered into ``held``; None (failure recorded) if not.
        A kept container that cannot be taken over (it stopped meanwhile) is removed and a
        new one made in its place."""
        spec = workspace.spec
        timeout = workspace.start_timeout
        with trio.move_on_after(timeout):
            try:
                sandbox = None
                if workspace.adopt is not None:
                    sandbox = await self._adopt(workspace, held)
                if sandbox is None:
                    home = home_volume_of(spec)
                    if home is not None:
                        if home in self._removing:
                            await self._removing[home].wait()
                        labels = {
                            LABEL_HOME: workspace.user,
                            LABEL_STATE: state_label(self._settings()),
                        }
                        await self._backend.create_volume(home, labels)
                    sandbox = await held.enter_async_context(self._backend.open_sandbox(spec))
            except BackendError as exc:
                workspace.failure = exc
                log.warning("workspace_start_failed", user=workspace.user, error=str(exc))
                return None
            log.info(
                "workspace_started",
                user=workspace.user,
                container=sandbox.container_id[:12],
                adopted=workspace.adopt is not None,
            )
            return sandbox
        workspace.failure = BackendError(f"workspace did not start within {timeout:g} s")
        log.warning("workspace_start_failed", user=workspace.user, error="timeout")
        return None

    async def _adopt(self, workspace: Workspace, held: contextlib.AsyncExitStack) -> Sandbox | None:
        """The kept container, taken over; None (it is removed, the workspace is made anew)
        if it cannot be.

        Raises:
            BackendUnavailable: podman cannot be reached.
        """
        found = workspace.adopt
        assert found is not None
        try:
            return await held.enter_async_context(
                self._backend.adopt_sandbox(found, workspace.spec)
            )
        except BackendUnavailable:
            raise
        except BackendError as exc:
            log.warning(
                "workspace_adoption_failed", user=workspace.user,
                container=found.container_id[:12], error=str(exc),
            )  # fmt: skip
        workspace.adopt = None
        await self._discard(found, workspace.user, "adoption_failed")
        return None

    @staticmethod
    async def _wait_idle(workspace: Workspace) -> None:
        """Return once nobody has been attached for the workspace's TTL."""
        while True:
            workspace.changed = trio.Event()
            if workspace.attached > 0:
                await workspace.changed.wait()
                continue
            with trio.move_on_after(workspace.ttl):
                await workspace.changed.wait()
            if workspace.attached == 0 and not workspace.changed.is_set():
                return

    async def still_there(self, workspace: Workspace, sandbox: Sandbox) -> bool:
        """Whether the workspace's container still runs (an operator may have removed it);
        if not, the workspace is dropped, so the next attach makes a new one."""
        found = await self._backend.find_sandboxes({LABEL_WORKSPACE: workspace.user})
        if any(f.container_id == sandbox.container_id and f.running for f in found):
            return True
        log.warning("workspace_gone", user=workspace.user, container=sandbox.container_id[:12])
        self._drop(workspace)
        workspace.scope.cancel()
        return False

    def _held(self) -> set[str]:
        """The containers of workspaces this server adopted, runs or holds unclaimed."""
        held = {w.adopt.container_id for w in self._live.values() if w.adopt is not None}
        held |= {w.sandbox.container_id for w in self._live.values() if w.sandbox is not None}
        return held | {u.found.container_id for u in self._unclaimed.values()}

    def _drop(self, workspace: Workspace) -> None:
        workspace.closing = True
        if self._live.get(workspace.user) is workspace:
            del self._live[workspace.user]
            self._metrics.workspaces.set(len(self._live))

    # -- start-up and expiry -----------------------------------------------------------

    async def _adopt_leftovers(self, settings: ServerConfig) -> None:
        """Adopt, hold unclaimed or remove the workspaces earlier servers left (module
        docstring)."""
        assert self._nursery is not None
        per_login = settings.auth.config_webhook is not None
        ours = state_label(settings)
        found_now = await self._backend.find_sandboxes({LABEL_WORKSPACE: None})
        held = self._held()  # as the listing was taken: what the loop adopts is not in it
        for found in found_now:
            user = found.labels[LABEL_WORKSPACE]
            if found.labels.get(LABEL_INSTANCE) == self._instance or found.container_id in held:
                continue  # made or adopted by this server (a later try): live, not left
            if found.labels.get(LABEL_STATE, ours) != ours:  # another state file's server
                log.info("workspace_not_ours", user=user, container=found.container_id[:12])
                continue
            session = settings.session_for(user)  # [users] entries were checked at load
            spec = workspace_spec(settings, user, self._instance)
            same = found.labels.get(LABEL_RECIPE) == spec.recipe
            reason = None
            if session.execution_mode != "workspace":
                reason = "not_workspace_mode"
            elif not found.running:
                reason = "stopped"
            elif not same and not per_login:
                reason = "settings_changed"
            elif user in self._live or user in self._unclaimed:
                reason = "duplicate"
            elif len(self._live) + len(self._unclaimed) >= settings.workspaces.max_workspaces:
                reason = "over_limit"
            if reason is not None:
                await self._discard(found, user, reason)
            elif same:
                timeout = settings.container_for(user).start_timeout
                ttl = session.workspace_ttl
                self._start(Workspace(user, spec, ttl, timeout, adopt=found))
                log.info("workspace_adopted", user=user, container=found.container_id[:12])
            else:
                unclaimed = Unclaimed(found, session.workspace_ttl)
                self._unclaimed[user] = unclaimed
                self._nursery.start_soon(self._await_claim, user, unclaimed)
                log.info("workspace_unclaimed", user=user, container=found.container_id[:12])

    async def _await_claim(self, user: str, unclaimed: Unclaimed) -> None:
        """Remove an unclaimed workspace after its TTL, or once a login found its settings
        changed; as the server stops, unless it keeps workspaces.

        Cancellation: the removal is shielded and bounded.
        """
        stopping = True
        try:
            with unclaimed.scope:
                await trio.sleep(unclaimed.ttl)
            stopping = False
        finally:
            if self._unclaimed.get(user) is unclaimed:
                del self._unclaimed[user]
            reason = "shutdown" if stopping else unclaimed.outcome
            if reason is not None and not (stopping and self._keeping):
                with trio.move_on_after(DISCARD_BOUND) as bound:
                    bound.shield = True
                    with contextlib.suppress(BackendUnavailable):  # logged
                        await self._discard(unclaimed.found, user, reason)

    async def _discard(self, found: FoundSandbox, user: str, reason: str) -> None:
        """Remove a leftover not adopted; one podman refuses is logged and left (the next
        start tries again), so the leftovers after it are still adopted or removed.

        Raises:
            BackendUnavailable: podman cannot be reached (nothing more can be done now).
        """
        try:
            await self._backend.remove_sandbox(found.container_id)
        except BackendError as exc:
            log.warning(
                "workspace_discard_failed", user=user, reason=reason,
                container=found.container_id[:12], error=str(exc),
            )  # fmt: skip
            if isinstance(exc, BackendUnavailable):
                raise
            return
        log.info("workspace_discarded", user=user, reason=reason)

    async def _expire_volumes(self) -> None:
        """Now and every hour: remove home volumes unused for their expiry (once this server
        holds the state)."""
        while True:
            if self._state is not None:
                with contextlib.suppress(BackendError):
                    await self.expire_volumes(self._settings().workspaces)
            await trio.sleep(EXPIRY_INTERVAL)

    async def expire_volumes(self, section: WorkspacesSection, now: float | None = None) -> int:
        """One pass; returns how many went."""
        if not section.home_volume_expiry_days or self._state is None:
            return 0
        now = time.time() if now is None else now
        removed = 0
        ours = {LABEL_HOME: None, LABEL_STATE: state_label(self._settings())}
        for volume in await self._backend.find_volumes(ours):
            last = self._state.volumes.get(volume.name)
            if last is None:  # made before the state file was (lost, replaced): used now
                self._state.used(volume.name, now)
                continue
            idle_days = (now - last) / 86400
            if volume.in_use or idle_days < section.home_volume_expiry_days:
                continue
            # as it goes (a login may have started since the listing): no await in between
            if volume.name in {home_volume_of(w.spec) for w in self._live.values()}:
                continue
            removed_now = self._removing[volume.name] = trio.Event()
            try:
                await self._backend.remove_volume(volume.name)
            except BackendError as exc:
                log.warning("workspace_volume_remove_failed", volume=volume.name, error=str(exc))
                continue
            finally:
                del self._removing[volume.name]
                removed_now.set()
            self._state.forget(volume.name)
            removed += 1
            log.info("workspace_volume_expired", volume=volume.name, idle_days=round(idle_days, 1))
        return removed
