"""Where a connection's sessions get their container: ``SandboxSource``.

In ``session`` execution mode each session opens its own (``SessionSandboxes``). In
``connection`` mode the connection owns one (``ConnectionSandbox``), described below.

The container is started when the first session channel opens (``prepare``), so that its
start overlaps the client's round trip to its request instead of following it; a
connection that never opens a session gets none. A keeper task in the connection nursery
starts it and then holds the backend's sandbox context open, so the owner is a nursery one
can point to, and cancellation of the connection is what removes the container. If
creation fails (podman down, image missing), nothing is kept: the first session to ask
reports that failure, and the next one starts a container itself, under its own bound.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog
import trio

from trissh.backend import Backend, BackendError, Sandbox, SandboxSpec

log = structlog.get_logger("trissh.connection.sandboxes")

#: Bound on a session's wait for the listens asked for before it (each is bounded too).
LISTENS_WAIT = 30.0


class SandboxSource(Protocol):
    def prepare(self, start_timeout: float) -> None:
        """A session channel opened: a container may be started ahead of its request."""

    async def acquire(self, owned: contextlib.AsyncExitStack) -> Sandbox:
        """The container a session runs in; one it alone owns is entered into ``owned``.

        Raises:
            BackendError: it could not be had.
        """
        ...

    def lost(self) -> None:
        """A program could not start in the container ``acquire`` gave (it may be gone)."""

    def home(self) -> str | None:
        """HOME for programs in the container ``acquire`` gave, when trissh decides it (a
        workspace's home volume); ``None``: the image's."""


class SessionSandboxes:
    """``session`` mode: each session owns its own container."""

    def __init__(self, backend: Backend, spec: SandboxSpec) -> None:
        self._backend = backend
        self._spec = spec

    def prepare(self, start_timeout: float) -> None:
        pass  # the container is the session's own, started by its request

    def lost(self) -> None:
        pass  # the next session gets a container of its own anyway

    async def acquire(self, owned: contextlib.AsyncExitStack) -> Sandbox:
        return await owned.enter_async_context(self._backend.open_sandbox(self._spec))

    def home(self) -> str | None:
        return None


class ConnectionSandbox:
    """``connection`` mode: one container for all of the connection's sessions."""

    def __init__(self, backend: Backend, spec: SandboxSpec, nursery: trio.Nursery) -> None:
        self._backend = backend
        self._spec = spec
        self._nursery = nursery
        self._lock = trio.Lock()
        self._sandbox: Sandbox | None = None
        #: Why the container started by ``prepare`` failed, for the next session to report.
        self._failure: BackendError | None = None
        #: Set when the start ``prepare`` began has the container running or gave up.
        self._prepared: trio.Event | None = None

    def prepare(self, start_timeout: float) -> None:
        """Start the container now, in the background; ``get`` waits for it."""
        starting = self._lock.locked()  # a start ``get`` began (a forward's) is enough
        if (
            self._sandbox is None
            and self._failure is None
            and self._prepared is None
            and not starting
        ):
            self._prepared = trio.Event()
            self._nursery.start_soon(self._keep_prepared, start_timeout, self._prepared)

    async def acquire(self, owned: contextlib.AsyncExitStack) -> Sandbox:
        return await self.get()

    def lost(self) -> None:
        pass  # the connection's own container: it has no other to give

    async def get(self) -> Sandbox:
        """The connection's sandbox, created on first use.

        Raises:
            BackendError: it could not be created; a later call tries again.

        Cancellation: safe; a half-created container is removed by the backend.
        """
        if self._sandbox is not None:
            return self._sandbox  # running (a failure is recorded only while there is none)
        if self._prepared is not None:
            await self._prepared.wait()  # the start begun by prepare, bounded there
        async with self._lock:
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            if self._sandbox is None:
                # The caller's own start: cancelling the caller (its bound) cancels it.
                self._sandbox = await self._nursery.start(self._keep)
            return self._sandbox

    async def _keep_prepared(self, start_timeout: float, prepared: trio.Event) -> None:
        """``prepare``'s keeper: starts the container with its own bound (a start that hangs
        lets the waiting session try once more within its own), then holds it as
        ``_keep`` does. One task, where a task waiting on ``get`` would be two."""
        structlog.contextvars.unbind_contextvars("channel", "container")
        try:
            async with contextlib.AsyncExitStack() as held:
                with trio.move_on_after(start_timeout) as bound:
                    try:
                        sandbox = await held.enter_async_context(
                            self._backend.open_sandbox(self._spec)
                        )
                    except BackendError as exc:
                        self._failure = exc
                        log.warning("container_start_failed", error=str(exc))
                        return
                if bound.cancelled_caught:
                    error = f"did not start within {start_timeout:g} s"
                    log.warning("container_start_failed", error=error)
                    return
                self._sandbox = sandbox
                prepared.set()
                try:
                    await trio.sleep_forever()
                finally:
                    self._sandbox = None
        finally:
            self._prepared = None
            prepared.set()

    async def _keep(self, *, task_status: trio.TaskStatus[Sandbox]) -> None:
        # Started from a session task: a channel is not the container's business.
        structlog.contextvars.unbind_contextvars("channel", "container")
        try:
            async with self._backend.open_sandbox(self._spec) as sandbox:
                task_status.started(sandbox)
                await trio.sleep_forever()
        finally:
            self._sandbox = None

    def home(self) -> str | None:
        return None


class AfterListens:
    """A source whose sessions run their programs only once the listens (``ssh -R``) the
    connection asked for before them are answered (bounded), as with sshd, which listens
    before it reads the next request: ``ssh -R 9000:... host 'curl localhost:9000'``."""

    def __init__(self, source: SandboxSource, settled: Callable[[], Awaitable[None]]) -> None:
        self._source = source
        self._settled = settled

    def prepare(self, start_timeout: float) -> None:
        self._source.prepare(start_timeout)

    async def acquire(self, owned: contextlib.AsyncExitStack) -> Sandbox:
        sandbox = await self._source.acquire(owned)
        with trio.move_on_after(LISTENS_WAIT):
            await self._settled()
        return sandbox

    def lost(self) -> None:
        self._source.lost()

    def home(self) -> str | None:
        return self._source.home()
