"""How a container's programs start: chosen once per container, when it is created.

Theory of operation
-------------------
Three ways, fastest first:

* :class:`AgentLauncher`: the container's main process is ``trissh-exec --agent``
  (:mod:`.agent`), which starts each program on trissh's request with the pipes (or the
  pty) it is given: no ``podman exec`` at all;
* :class:`PipeLauncher`: each program is a ``podman exec`` of the helper, which fetches
  the program's pipes from the container's stdio directory (:mod:`.direct_stdio`);
* :class:`StreamLauncher`: a ``podman exec`` whose stdio is podman's stream
  (:mod:`.exec_stdio`), under the helper when there is one.

With a pty, the pipe and stream ways are the same (the terminal is conmon's). The
configuration asks for a way (``[podman] exec_helper``, ``direct_stdio``, ``exec_agent``);
:class:`NewContainers` holds what containers made from now on get. The host can narrow
that, each time once with one log line, and never fails a login for it: when podman cannot
bind-mount the stdio directory (it runs as a user who cannot reach it, in another mount
namespace, on another machine: ``direct_stdio_unavailable``) new containers get streams;
when a container's agent does not connect (``agent_unavailable``) new containers get pipes
without an agent, since each would wait for its agent in vain.

A container's :class:`LaunchSetup` makes what its way needs before the container exists (a
stdio directory, the agent's listening socket; the mounts and main process that go into
the create request) and, once the container runs, its :class:`Launcher`, which the sandbox
keeps. An agent that goes away later (:attr:`.agent.Agent.broken`) leaves its container's
programs to ``podman exec`` with pipes. Each launcher says how its programs start and what
fell back (:class:`~trissh.backend.base.LaunchPath`, in ``trissh doctor``);
:meth:`NewContainers.health_check` says it for the containers to come.
"""

from __future__ import annotations

import os
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

import structlog

from trissh.backend.base import HealthCheck, LaunchPath, Process, ProcessSpec
from trissh.backend.errors import BackendError
from trissh.backend.podman.agent import Agent, AgentListener, open_agent_process
from trissh.backend.podman.direct_stdio import CONTAINER_DIR, StdioRoot
from trissh.backend.podman.exec import HELPER_PATH, HELPER_STATUS_DIR, ExecTarget, open_exec
from trissh.backend.podman.owner import owner_alive
from trissh.backend.podman.sockets import AgentSockets, NoSockets, SandboxSockets
from trissh.backend.podman.spec import KEEPALIVE, tmpfs_mount

__all__ = [
    "AgentLauncher",
    "LaunchSetup",
    "Launcher",
    "NewContainers",
    "PipeLauncher",
    "StreamLauncher",
]

log = structlog.get_logger("trissh.backend.podman")

_MOUNT_FAILED: Final = "podman could not mount the stdio directory"
_AGENT_FAILED: Final = "the container's agent did not connect"
_FALLBACK_FIX: Final = (
    "see docs/deployment.md (direct stdio, the agent) and the log of `trissh doctor`"
)


class Launcher(Protocol):
    """How one container's programs start."""

    @property
    def path(self) -> LaunchPath: ...

    @property
    def sockets(self) -> SandboxSockets:
        """How the container makes sockets inside (forwarding): only an agent can."""

    def open_process(self, spec: ProcessSpec) -> AbstractAsyncContextManager[Process]:
        """Start ``spec.argv``; leaving the context kills it if still running.

        Raises:
            BackendError: the program could not be started.
        """

    def close(self) -> None:
        """The container is going: release what the launcher holds. No checkpoint."""


class StreamLauncher:
    """Each program a ``podman exec`` with podman's stream, under the helper if any."""

    def __init__(self, target: ExecTarget, *, helper: bool, fallback: str | None) -> None:
        self._target = target
        self._helper = helper
        self.sockets = NoSockets()
        self.path = LaunchPath(
            via="podman exec, stream", fallback=fallback, fix=_FALLBACK_FIX if fallback else ""
        )

    def open_process(self, spec: ProcessSpec) -> AbstractAsyncContextManager[Process]:
        return open_exec(self._target, spec, helper=self._helper)

    def close(self) -> None:
        """Nothing to release."""


class PipeLauncher:
    """Each program a ``podman exec`` of the helper, with pipes through ``stdio_dir`` (the
    host side of the container's stdio directory, removed by :meth:`close`)."""

    def __init__(self, target: ExecTarget, stdio_dir: str, *, fallback: str | None) -> None:
        self._target = target
        self.stdio_dir = stdio_dir
        self.sockets = NoSockets()
        self.path = LaunchPath(
            via="podman exec, pipes", fallback=fallback, fix=_FALLBACK_FIX if fallback else ""
        )

    def open_process(self, spec: ProcessSpec) -> AbstractAsyncContextManager[Process]:
        return open_exec(self._target, spec, helper=True, stdio_dir=self.stdio_dir)

    def close(self) -> None:
        StdioRoot.remove_dir(self.stdio_dir)


class AgentLauncher:
    """Programs started by the container's agent; by ``pipes`` once the agent is gone."""

    def __init__(self, target: ExecTarget, agent: Agent, pipes: PipeLauncher) -> None:
        self.path = LaunchPath(via="agent, pipes")
        self._target = target
        self.agent = agent
        self._pipes = pipes
        self.sockets = AgentSockets(agent, target.container_id)

    def open_process(self, spec: ProcessSpec) -> AbstractAsyncContextManager[Process]:
        if self.agent.broken:
            return self._pipes.open_process(spec)
        target = self._target
        return open_agent_process(
            self.agent, spec, container=target.container_id, observe=target.observe
        )

    def close(self) -> None:
        """The agent kills what it started; listeners close; the stdio directory goes."""
        self.sockets.close()
        self.agent.close()
        self._pipes.close()


class NewContainers:
    """What containers made from now on get: the configured way, narrowed (never widened)
    by what the host turned out unable to do."""

    def __init__(
        self,
        *,
        helper: str | None,
        stdio_root: StdioRoot | None,
        direct_stdio: bool,
        agent: bool,
    ) -> None:
        """Args:
        helper: host path of the exec helper; ``None``: exit codes only, no pipes.
        stdio_root: where containers' stdio directories go; ``None``: no pipes.
        direct_stdio, agent: what the configuration asked for.
        """
        self.helper = helper
        self.stdio_root = stdio_root
        self._direct_stdio_wanted = direct_stdio
        self._agent_wanted = agent
        #: Cleared when podman turns out unable to mount the stdio directory.
        self.pipes = stdio_root is not None
        #: Cleared when an agent did not connect: its containers would each wait for it.
        self.agent = agent

    @classmethod
    def configure(
        cls,
        *,
        exec_helper: str | None,
        direct_stdio: bool,
        stdio_dir: str,
        exec_agent: bool,
        owner: str,
    ) -> NewContainers:
        """From the backend's options; a helper that is not executable is left out (logged)."""
        helper = None
        if exec_helper is not None:
            if os.access(exec_helper, os.X_OK):
                helper = exec_helper
            else:
                log.warning("exec_helper_missing", path=exec_helper)
        root = (
            StdioRoot(stdio_dir, owner=owner, alive=owner_alive)
            if direct_stdio and helper is not None
            else None
        )
        return cls(helper=helper, stdio_root=root, direct_stdio=direct_stdio, agent=exec_agent)

    def setup(self, *, pipes: bool) -> LaunchSetup:
        """What one container about to be made needs; ``pipes=False``: no stdio directory
        (hence no agent) whatever :attr:`pipes` says."""
        return LaunchSetup(self, self.stdio_root if pipes else None)

    def cannot_mount(self, error: BaseException) -> bool:
        """Whether ``error`` (from creating a container with a stdio directory) is podman
        failing to mount it; if so, new containers get none from now on."""
        root = self.stdio_root
        if root is None or root.path is None or root.path not in str(error):
            return False
        if self.pipes:
            self.pipes = False
            log.warning("direct_stdio_unavailable", stdio_dir=root.parent, error=str(error))
        return True

    def no_agent(self, container_id: str) -> None:
        """A container's agent did not connect: new containers get none."""
        if self.agent:
            self.agent = False
            log.warning("agent_unavailable", container=container_id[:12])

    def fallback_without_pipes(self) -> str | None:
        """Why a container without a stdio directory has none, when it was asked for."""
        return _MOUNT_FAILED if self.stdio_root is not None else None

    def fallback_without_agent(self) -> str | None:
        """Why a container with pipes has no agent, when one was asked for."""
        return _AGENT_FAILED if self._agent_wanted else None

    def health_check(self) -> HealthCheck:
        """How programs' stdio travel, and whether the podman user can reach its directory."""
        root, wanted = self.stdio_root, self._direct_stdio_wanted
        if root is None:
            why = "exec helper missing" if wanted else "direct_stdio = false"
            return HealthCheck(
                name="stdio",
                ok=True,
                warning=wanted,
                detail=f"podman's exec stream ({why}): bulk output ~2x slower",
                fix="build the helper with scripts/setup-host.sh" if wanted else "",
            )
        via = f"pipes handed into containers via {root.parent}" + (
            ", programs started by each container's agent" if self.agent else ""
        )
        if root.passable_by_others():
            return HealthCheck(name="stdio", ok=True, detail=via)
        return HealthCheck(
            name="stdio",
            ok=True,
            warning=True,
            detail=f"{via}; {root.parent} is out of other users' reach:"
            " fine only if podman runs as trissh's user",
            fix="set [podman] stdio_dir to a directory every user may pass through (o+x)",
        )

    def forwarding_check(self) -> HealthCheck:
        """Whether containers made now can make sockets inside: only their agent can."""
        setup = "set [podman] direct_stdio and exec_agent to true; build the helper with"
        setup += " scripts/setup-host.sh"
        why, fix = "", _FALLBACK_FIX
        if not self._agent_wanted:
            why, fix = "exec_agent = false", setup
        elif self.stdio_root is None:
            why, fix = "no direct stdio: direct_stdio = false, or no exec helper", setup
        elif not self.pipes:
            why = _MOUNT_FAILED
        elif not self.agent:
            why = _AGENT_FAILED
        if not why:
            detail = "ports and unix sockets inside each container, made by its agent"
            return HealthCheck(name="forwarding", ok=True, detail=detail)
        return HealthCheck(
            name="forwarding",
            ok=True,
            warning=True,
            detail=f"unavailable ({why}): forwarding requests are refused",
            fix=fix,
        )

    def close(self) -> None:
        """Remove the stdio directories (the root with everything in it)."""
        if self.stdio_root is not None:
            self.stdio_root.close()


class LaunchSetup:
    """One container's way of starting programs while the container is made: the mounts
    and main process to create it with, then (:meth:`launcher`) its :class:`Launcher`.
    :meth:`close` releases what no launcher took over."""

    def __init__(self, new: NewContainers, root: StdioRoot | None) -> None:
        """Raises: BackendError: the host cannot give the container its stdio directory or
        its agent's socket (a full disk, no file descriptors left)."""
        self._new = new
        self._stdio_dir: str | None = None
        self._listener: AgentListener | None = None
        try:
            self._stdio_dir = root.make_dir() if root is not None else None
            if self._stdio_dir is not None and new.agent:
                self._listener = AgentListener(self._stdio_dir, HELPER_PATH)
        except BaseException as exc:
            self.close()
            if isinstance(exc, OSError):
                raise BackendError(f"cannot prepare the container's stdio: {exc}") from exc
            raise

    @property
    def stdio_dir(self) -> str | None:
        """The container's stdio directory on the host, until a launcher owns it."""
        return self._stdio_dir

    def entrypoint(self) -> list[str]:
        """The container's main process: its agent, or a pause."""
        return self._listener.entrypoint() if self._listener is not None else list(KEEPALIVE)

    def mounts(self) -> list[dict[str, Any]]:
        """The helper, its status files' tmpfs and the stdio directory, as this way needs."""
        mounts: list[dict[str, Any]] = []
        if self._new.helper is not None:
            mounts += [
                {
                    "type": "bind",
                    "source": self._new.helper,
                    "target": HELPER_PATH,
                    "read_only": True,
                },
                # any container user may be the one whose program dies
                tmpfs_mount(HELPER_STATUS_DIR, "1m"),
            ]
        if self._stdio_dir is not None:
            mounts.append(
                {
                    "type": "bind",
                    "source": self._stdio_dir,
                    "target": CONTAINER_DIR,
                    "read_only": True,
                }
            )
        return mounts

    async def launcher(self, target: ExecTarget) -> Launcher:
        """The started container's launcher; with an agent, once it connected or did not
        (bounded: :data:`.agent.CONNECT_TIMEOUT`).

        Cancellation: safe; what the launcher would have owned is released.
        """
        new = self._new
        if self._stdio_dir is None:
            helper = new.helper is not None
            return StreamLauncher(target, helper=helper, fallback=new.fallback_without_pipes())
        stdio_dir, self._stdio_dir = self._stdio_dir, None
        pipes = PipeLauncher(target, stdio_dir, fallback=new.fallback_without_agent())
        if self._listener is None:
            return pipes
        try:
            agent = await self._listener.accept(container=target.container_id[:12])
        except BaseException as exc:
            pipes.close()
            if isinstance(exc, OSError):
                raise BackendError(f"cannot accept the container's agent: {exc}") from exc
            raise
        if agent is None:
            new.no_agent(target.container_id)
            return pipes
        return AgentLauncher(target, agent, pipes)

    def close(self) -> None:
        """Stop listening for an agent; remove a stdio directory no launcher took."""
        if self._listener is not None:
            self._listener.close()
        if self._stdio_dir is not None:
            StdioRoot.remove_dir(self._stdio_dir)
            self._stdio_dir = None
