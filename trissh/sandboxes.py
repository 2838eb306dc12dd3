"""The connection's container in ``connection`` execution mode.

The container is created when the first session asks for it and removed when the
connection nursery exits: a keeper task in that nursery holds the backend's sandbox
context open, so the owner is a nursery one can point to, and cancellation of the
connection is what removes the container. If creation fails (podman down, image
missing), nothing is kept and the next session tries again.
"""

from __future__ import annotations

import structlog
import trio

from trissh.backend import Backend, Sandbox, SandboxSpec


class ConnectionSandbox:
    def __init__(self, backend: Backend, spec: SandboxSpec, nursery: trio.Nursery) -> None:
        self._backend = backend
        self._spec = spec
        self._nursery = nursery
        self._lock = trio.Lock()
        self._sandbox: Sandbox | None = None

    async def get(self) -> Sandbox:
        """The connection's sandbox, created on first use.

        Raises:
            BackendError: it could not be created; a later call tries again.

        Cancellation: safe; a half-created container is removed by the backend.
        """
        async with self._lock:
            if self._sandbox is None:
                self._sandbox = await self._nursery.start(self._keep)
            return self._sandbox

    async def _keep(self, *, task_status: trio.TaskStatus[Sandbox]) -> None:
        # Started from a session task: its channel is not this container's business.
        structlog.contextvars.unbind_contextvars("channel", "container")
        try:
            async with self._backend.open_sandbox(self._spec) as sandbox:
                task_status.started(sandbox)
                await trio.sleep_forever()
        finally:
            self._sandbox = None
