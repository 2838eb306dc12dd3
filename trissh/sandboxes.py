"""The connection's container in ``connection`` execution mode.

The container is started when the first session channel opens (``prepare``), so that its
start overlaps the client's round trip to its request instead of following it; a
connection that never opens a session gets none. A keeper task in the connection nursery
holds the backend's sandbox context open, so the owner is a nursery one can point to, and
cancellation of the connection is what removes the container. If creation fails (podman
down, image missing), nothing is kept: the first session to ask reports that failure, and
the next one tries again.
"""

from __future__ import annotations

import structlog
import trio

from trissh.backend import Backend, BackendError, Sandbox, SandboxSpec

log = structlog.get_logger("trissh.sandboxes")


class ConnectionSandbox:
    def __init__(self, backend: Backend, spec: SandboxSpec, nursery: trio.Nursery) -> None:
        self._backend = backend
        self._spec = spec
        self._nursery = nursery
        self._lock = trio.Lock()
        self._sandbox: Sandbox | None = None
        #: Why the container started by ``prepare`` failed, for the next session to report.
        self._failure: BackendError | None = None
        self._preparing = False

    def prepare(self, start_timeout: float) -> None:
        """Start the container now, in the background; ``get`` waits for it."""
        if self._sandbox is None and self._failure is None and not self._preparing:
            self._preparing = True
            self._nursery.start_soon(self._prepare, start_timeout)

    async def get(self) -> Sandbox:
        """The connection's sandbox, created on first use.

        Raises:
            BackendError: it could not be created; a later call tries again.

        Cancellation: safe; a half-created container is removed by the backend.
        """
        if self._sandbox is not None:
            return self._sandbox  # running (a failure is recorded only while there is none)
        async with self._lock:
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            if self._sandbox is None:
                self._sandbox = await self._nursery.start(self._keep)
            return self._sandbox

    async def _prepare(self, start_timeout: float) -> None:
        # Bounded like a session's wait: a start that hangs gives the lock back, and the
        # session waiting for it tries once more within its own bound.
        try:
            with trio.move_on_after(start_timeout) as bound:
                await self.get()
        except BackendError as exc:
            self._failure = exc
            log.warning("container_start_failed", error=str(exc))
        finally:
            self._preparing = False
        if bound.cancelled_caught:
            log.warning("container_start_failed", error=f"did not start within {start_timeout:g} s")

    async def _keep(self, *, task_status: trio.TaskStatus[Sandbox]) -> None:
        # Started from a session or prepare task: a channel is not the container's business.
        structlog.contextvars.unbind_contextvars("channel", "container")
        try:
            async with self._backend.open_sandbox(self._spec) as sandbox:
                task_status.started(sandbox)
                await trio.sleep_forever()
        finally:
            self._sandbox = None
