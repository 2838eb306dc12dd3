"""PodmanBackend: every sandbox is a hardened container on a rootless podman service.

Theory of operation
-------------------
Lifecycle calls (create, start, inspect, remove, exec create, list) go through podman-py in
worker threads under one ``trio.CapacityLimiter`` (:mod:`trissh.backend._podman_api`);
stdio streams are ours (:mod:`trissh.backend._podman_exec`).

A sandbox container runs ``catatonit -P`` (pause mode) under podman's own init
(``init=True`` bind-mounts catatonit at ``/run/podman-init``): PID 1 reaps and forwards
signals, the "main process" just waits, and nothing of it has to exist in the image, so
busybox, distro and distroless images all work. It is set as the *entrypoint*, so an image's
ENTRYPOINT/CMD cannot replace it. Sessions are execs in that container, except with direct
stdio and ``exec_agent``: then the main process is the bind-mounted ``trissh-exec --agent``
(:mod:`trissh.backend._agent`), which starts the programs on trissh's request.

Leaving ``open_sandbox`` removes the container with ``force=true&timeout=0`` inside a
bounded shielded scope. That includes a creation cancelled half-way: creation is not
abandoned on cancel, so once podman has answered we know the id and remove it; if the
create request itself failed ambiguously (timeout, dropped connection) we remove by the
name we chose, ignoring "no such container".

``sweep`` removes containers of other ``trissh.instance`` values, except those whose owner
is provably alive: each container carries ``trissh.owner`` = boot id, PID namespace, PID and
process start time of the trissh process that created it. When all four match a running
process on this host, that instance has not crashed (a second server, a test run) and its
sessions are left alone; when they cannot be checked (another host or namespace, no label)
the container is swept as the contract says.

With ``direct_stdio`` each container also gets its own host directory, bind-mounted
read-only, through which programs without a pty receive their stdio as pipes
(:mod:`trissh.backend._direct_stdio`); it is removed with the container, the root
directory when ``run`` ends, and roots left by a crashed trissh by ``sweep``.

Resource limits need cgroup controllers delegated to the podman user (cgroup v2). Where
``podman info`` lists no ``pids``/``memory`` controller (rootless on cgroup v1, as on the
development hosts) podman would silently ignore them; we leave them out, log
``resource_limit_skipped`` once, and ``health`` reports it.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
import trio

from trissh.backend._agent import Agent, AgentListener, AgentProcess, open_agent_process
from trissh.backend._common import ms_since, sandbox_labels
from trissh.backend._direct_stdio import CONTAINER_DIR as STDIO_DIR
from trissh.backend._direct_stdio import StdioRoot
from trissh.backend._podman_api import PodmanApi, map_podman_errors, socket_path
from trissh.backend._podman_exec import HELPER_PATH, HELPER_STATUS_DIR, PodmanProcess, open_exec
from trissh.backend._warm_pool import WarmPool
from trissh.backend.base import (
    LABEL_INSTANCE,
    ContainerSettings,
    ExitStatus,
    HealthCheck,
    ProcessSpec,
    SandboxSpec,
)
from trissh.backend.errors import BackendError, BackendUnavailable, ImageNotFound

__all__ = ["PodmanBackend", "PodmanSandbox", "map_podman_errors", "socket_path"]

log = structlog.get_logger("trissh.backend.podman")

#: Identifies the trissh process that created a container (see :func:`owner_token`).
LABEL_OWNER: Final = "trissh.owner"
#: Backoff for retrying removals that failed (podman restarting, say), in seconds.
ORPHAN_RETRY_MIN = 0.5
ORPHAN_RETRY_MAX = 15.0
#: Bound on removing one container at teardown (forced removal takes ~0.1 s).
REMOVE_BOUND: Final = 10.0
#: The sandbox's main process: catatonit in pause mode, from podman's init mount.
KEEPALIVE: Final = ("/run/podman-init", "-P")
_SERVICE_FIX: Final = (
    "run scripts/setup-host.sh as root, or `systemctl --user enable --now podman.socket`"
    " and point CONTAINER_HOST at $XDG_RUNTIME_DIR/podman/podman.sock"
)


@dataclass(frozen=True, slots=True)
class _HostCaps:
    controllers: frozenset[str]
    cgroup_version: str


class PodmanBackend:
    """A :class:`~trissh.backend.base.Backend` on a podman service's unix socket."""

    def __init__(
        self,
        url: str,
        *,
        limiter_capacity: int = 8,
        request_timeout: float = 60.0,
        scope_labels: Mapping[str, str] | None = None,
        exec_helper: str | None = None,
        observe: Callable[[str, float], None] | None = None,
        warm_pool: int = 0,
        direct_stdio: bool = False,
        stdio_dir: str = "",
        exec_agent: bool = False,
    ) -> None:
        """Args:
        url: ``unix:///path.sock``, ``unix:/path.sock`` or ``http+unix://%2Fpath.sock``.
        limiter_capacity: concurrent podman requests (worker threads).
        request_timeout: per-request bound inside the worker thread, so none hangs forever.
        scope_labels: put on every container *and* required by ``sweep``, so two
            deployments (or test runs) sharing one podman user never sweep each other.
        exec_helper: host path of the static ``trissh-exec`` (``helper/trissh-exec.c``),
            bind-mounted into every container as each program's parent so a death by
            signal can be told from an exit code; ``None`` or missing: exit codes only.
        observe: called with ("start" | "exec" | "spawn" | "remove", seconds) after each
            such operation (metrics; ``spawn``: a program started by the agent).
        warm_pool: containers to keep started ahead of logins (:mod:`._warm_pool`).
        direct_stdio: programs without a pty get pipes instead of podman's stream (needs
            ``exec_helper``; :mod:`._direct_stdio`).
        stdio_dir: where the per-container stdio directories go; ``""``: systemd's
            RuntimeDirectory, else $XDG_RUNTIME_DIR, else the temp dir. The podman user
            must be able to reach it.
        exec_agent: with direct stdio, programs are started by the
            container's agent instead of ``podman exec`` (:mod:`._agent`).
        """
        self._api = PodmanApi(
            url, limiter_capacity=limiter_capacity, request_timeout=request_timeout
        )
        self._scope_labels = dict(scope_labels or {})
        self._host: _HostCaps | None = None
        self._host_lock = trio.Lock()
        self._warned: set[str] = set()
        self._owner = owner_token()
        self._observe = observe or (lambda operation, seconds: None)
        self.exec_helper: str | None = None
        #: Containers whose removal failed, by id or name -> conn_id; ``run`` retries them.
        self._orphans: dict[str, str] = {}
        self._orphans_changed = trio.Event()
        self._pool = (
            WarmPool(warm_pool, start=self._start_container, remove=self._remove_at_exit)
            if warm_pool > 0
            else None
        )
        if exec_helper is not None:
            if os.access(exec_helper, os.X_OK):
                self.exec_helper = exec_helper
            else:
                log.warning("exec_helper_missing", path=exec_helper)
        self._direct_stdio_wanted = direct_stdio
        self._stdio_root = (
            StdioRoot(stdio_dir, owner=self._owner, alive=owner_alive)
            if direct_stdio and self.exec_helper is not None
            else None
        )
        #: Host stdio directory of each container we started, by container id.
        self._stdio_dirs: dict[str, str] = {}
        #: Cleared when podman turns out unable to mount the stdio directory.
        self._stdio_for_new_containers = self._stdio_root is not None
        #: The in-container agent of each container we started whose agent connected.
        self._agents: dict[str, Agent] = {}
        #: Cleared when an agent did not connect: its containers would each wait for it.
        self._agent_for_new_containers = exec_agent
        self._agent_wanted = exec_agent

    @property
    def socket_path(self) -> str:
        return self._api.path

    def close(self) -> None:
        """Release pooled HTTP connections, the agents and the stdio directories."""
        self._api.close()
        for agent in self._agents.values():
            agent.close()
        self._agents.clear()
        if self._stdio_root is not None:
            self._stdio_root.close()

    def keep_warm(self, settings: ContainerSettings, instance: str) -> None:
        if self._pool is not None:
            self._pool.set_template(settings, instance)

    @property
    def warm_containers(self) -> int:
        """Started containers waiting for a login."""
        return self._pool.ready if self._pool is not None else 0

    @asynccontextmanager
    async def open_sandbox(self, spec: SandboxSpec) -> AsyncIterator[PodmanSandbox]:
        """A hardened, started container (from the warm pool when it has one); leaving
        the context removes it.

        Raises:
            ImageNotFound: the image does not exist locally.
            BackendUnavailable: the podman socket does not answer.
            BackendError: podman refused to create or start the container.

        Cancellation: safe at any point; whatever was created is removed (bounded).
        """
        container_id = await self._take_warm(spec)
        if container_id is None:
            container_id = await self._start_container(spec)
        try:
            yield PodmanSandbox(
                self._api,
                container_id,
                spec,
                helper=self.exec_helper is not None,
                stdio_dir=self._stdio_dirs.get(container_id),
                agent=self._agents.get(container_id),
                observe=self._observe,
            )
        finally:
            await self._remove_at_exit(container_id, spec)

    async def _take_warm(self, spec: SandboxSpec) -> str | None:
        """A running container from the warm pool, now owned by ``spec``'s connection.

        A pooled container may have died while it waited (killed from outside, OOM): one
        inspection (a few ms, far less than a start) makes sure, and a dead one is removed
        and the next tried. Cancellation: a container already taken is removed.
        """
        while self._pool is not None:
            container_id = self._pool.take(spec.settings)
            if container_id is None:
                return None
            try:
                info = await self._api.request(
                    "GET", f"/containers/{container_id}/json", missing_ok=True
                )
            except BaseException:
                await self._remove_at_exit(container_id, spec)
                raise
            state = (info or {}).get("State") or {}
            if state.get("Running"):
                log.info(
                    "container_assigned",
                    container=container_id[:12],
                    conn_id=spec.conn_id,
                    user=spec.username,
                    remote=spec.remote,
                    image=spec.settings.image,
                )
                return container_id
            log.warning(
                "warm_container_lost",
                container=container_id[:12],
                status=str(state.get("Status", "gone")),
            )
            await self._remove_at_exit(container_id, spec)
        return None

    async def _start_container(self, spec: SandboxSpec) -> str:
        """Create and start a container; return its id.

        If podman cannot bind-mount the direct-stdio directory (it runs as another user
        who cannot reach it, in another mount namespace, on another machine), direct stdio
        is turned off for new containers, once, with one log line, and the container is
        made without it: a default that does not fit the host must not fail every login.
        """
        root = self._stdio_root if self._stdio_for_new_containers else None
        try:
            return await self._start_container_once(spec, root)
        except BackendError as exc:
            if root is None or root.path is None or root.path not in str(exc):
                raise
            if self._stdio_for_new_containers:
                self._stdio_for_new_containers = False
                log.warning("direct_stdio_unavailable", stdio_dir=root.parent, error=str(exc))
        return await self._start_container_once(spec, None)

    async def _start_container_once(self, spec: SandboxSpec, root: StdioRoot | None) -> str:
        """One attempt of :meth:`_start_container`, with a stdio directory from ``root``.

        Cancellation and failure: whatever was created is removed (bounded). Creation is
        not abandoned on cancel, so once podman has answered the id is known; if the create
        request itself failed ambiguously we remove by the name we chose.
        """
        started = time.monotonic()
        image = spec.settings.image
        name = _container_name(spec.conn_id)
        container_id: str | None = None
        maybe_created = False
        stdio_dir = root.make_dir() if root is not None else None
        listener = None
        try:
            if stdio_dir is not None and self._agent_for_new_containers:
                listener = AgentListener(stdio_dir, HELPER_PATH)
            kwargs = await self._create_kwargs(
                spec, name, stdio_dir, listener.entrypoint() if listener else None
            )
            maybe_created = True
            try:
                container = await self._api.call(
                    lambda: self._api.client.containers.create(image, **kwargs), image=image
                )
            except (ImageNotFound, BackendUnavailable):
                maybe_created = False
                raise
            container_id = str(container.id)
            if stdio_dir is not None:
                self._stdio_dirs[container_id] = stdio_dir
                stdio_dir = None  # now removed with the container
            await self._api.call(container.start)
            if listener is not None:
                await self._accept_agent(listener, container_id)
        except BaseException:
            if container_id is not None or maybe_created:
                await self._remove_at_exit(container_id or name, spec)
            if stdio_dir is not None:
                StdioRoot.remove_dir(stdio_dir)
            raise
        finally:
            if listener is not None:
                listener.close()
        self._observe("start", time.monotonic() - started)
        log.info(
            "container_created",
            container=container_id[:12],
            conn_id=spec.conn_id,
            user=spec.username,
            image=image,
            pooled=spec.pooled,
            duration_ms=ms_since(started),
        )
        return container_id

    async def _accept_agent(self, listener: AgentListener, container_id: str) -> None:
        """Keep the started container's agent; if none connects, give later containers
        none (each would wait for it), once, with one log line: ``podman exec`` works."""
        agent = await listener.accept(container=container_id[:12])
        if agent is not None:
            self._agents[container_id] = agent
        elif self._agent_for_new_containers:
            self._agent_for_new_containers = False
            log.warning("agent_unavailable", container=container_id[:12])

    async def sweep(self, *, keep_instance: str) -> int:
        """Remove containers labelled with another ``trissh.instance`` (and our scope),
        and stdio directories left by trissh processes that are gone."""
        if self._stdio_root is not None and (swept := self._stdio_root.sweep()):
            log.info("stdio_dirs_swept", count=swept)
        labels = {LABEL_INSTANCE: None, **self._scope_labels}
        others = [
            (container_id, found.get(LABEL_OWNER, ""))
            for container_id, found in await self._list(labels)
            if found.get(LABEL_INSTANCE) != keep_instance
        ]
        alive = await trio.to_thread.run_sync(
            lambda: {owner for _, owner in others if owner_alive(owner)}
        )
        stale = [container_id for container_id, owner in others if owner not in alive]
        removed = 0
        for container_id in stale:
            try:
                removed += await self.remove_container(container_id)
            except BackendUnavailable:
                raise
            except BackendError as exc:  # one stuck container must not stop the sweep
                log.error("container_remove_failed", container=container_id[:12], error=str(exc))
        log.info(
            "containers_swept",
            count=removed,
            kept_live_owners=len(others) - len(stale),
            keep_instance=keep_instance,
        )
        return removed

    async def list_container_ids(self, labels: Mapping[str, str | None]) -> list[str]:
        """Ids of all containers carrying ``labels`` (``None`` value: key present)."""
        return [container_id for container_id, _ in await self._list(labels)]

    async def remove_container(self, container_id: str) -> bool:
        """Force-remove now (``timeout=0``); False if it was already gone."""
        return await self._force_remove(container_id, abandon_on_cancel=False)

    async def _force_remove(self, ref: str, *, abandon_on_cancel: bool = True) -> bool:
        """Force-remove ``ref`` (id or name), no stop timeout; False if it was already gone."""
        result = await self._api.request(
            "DELETE",
            f"/containers/{ref}",
            params={"force": "true", "timeout": 0},
            abandon_on_cancel=abandon_on_cancel,
            missing_ok=True,
        )
        return result is not None

    async def health(self, image: str) -> list[HealthCheck]:
        """Service, runtime, cgroups, storage and image checks for ``trissh doctor``."""
        try:
            version = await self._api.request("GET", "/version", abandon_on_cancel=True)
            info = await self._api.request("GET", "/info", abandon_on_cancel=True)
        except BackendError as exc:
            return [HealthCheck(name="service", ok=False, detail=str(exc), fix=_SERVICE_FIX)]
        checks = [
            HealthCheck(
                name="service",
                ok=True,
                detail=f"podman {version.get('Version', '?')} at {self._api.path}",
            ),
            *_host_checks(info),
            self._stdio_check(),
        ]
        try:
            present = await self._api.request(
                "GET", f"/images/{image}/exists", abandon_on_cancel=True, missing_ok=True
            )  # 204 -> {}, 404 -> None
        except BackendError as exc:
            checks.append(HealthCheck(name="image", ok=False, detail=str(exc)))
            return checks
        found = present is not None
        checks.append(
            HealthCheck(
                name="image",
                ok=found,
                detail=f"{image} {'present' if found else 'not found'}",
                fix=""
                if found
                else "build it with scripts/setup-host.sh, or `podman pull` it as the podman user",
            )
        )
        return checks

    async def try_session(self, settings: ContainerSettings, name: str = "session") -> HealthCheck:
        """Start a container and run one program in it as a login would, for ``trissh
        doctor``: the configuration, the runtime and the stdio path, proven end to end.

        A fallback (stdio directory or agent unusable) is a warning that names it: logins
        work, only slower. A BackendError becomes a failed check; the container is removed.
        """
        spec = SandboxSpec(
            conn_id=f"doctor-{secrets.token_hex(4)}",
            username="doctor",
            remote="doctor",
            instance=f"doctor-{secrets.token_hex(4)}",
            settings=settings,
        )
        marker = "trissh-doctor"
        program = ProcessSpec(argv=[*settings.shell, "-c", f"echo {marker}"])
        started = time.monotonic()
        try:
            async with self.open_sandbox(spec) as sandbox:
                start_ms, started = ms_since(started), time.monotonic()
                via, fallback = self._stdio_path_of(sandbox.container_id)
                async with sandbox.open_process(program) as process:
                    output = await _read_bounded(process.stdout, 1024)
                    errors = await _read_bounded(process.stderr, 1024) if process.stderr else b""
                    status = await process.wait()
                run_ms, started = ms_since(started), time.monotonic()
        except BackendError as exc:
            return HealthCheck(name=name, ok=False, detail=f"no program ran: {exc}")
        if status != ExitStatus(code=0) or output.strip() != marker.encode():
            return HealthCheck(
                name=name,
                ok=False,
                detail=f"`echo {marker}` ended with {_outcome(status)};"
                f" stdout {output[:80]!r}, stderr {errors[:200]!r}",
                fix="check [container] shell and user: the shell must exist in the image",
            )
        detail = (
            f"a container started in {start_ms:.0f} ms, ran `echo` ({via}) in {run_ms:.0f} ms"
            f" and was removed in {ms_since(started):.0f} ms"
        )
        if fallback is None:
            return HealthCheck(name=name, ok=True, detail=detail)
        return HealthCheck(
            name=name,
            ok=True,
            warning=True,
            detail=f"{detail}; slower than configured: {fallback}",
            fix="see docs/deployment.md (direct stdio, the agent) and the log of `trissh doctor`",
        )

    def _stdio_path_of(self, container_id: str) -> tuple[str, str | None]:
        """How programs of this container get their stdio, and what fell back, if anything."""
        if container_id in self._agents:
            return "agent, pipes", None
        if container_id in self._stdio_dirs:
            fallback = "the container's agent did not connect" if self._agent_wanted else None
            return "podman exec, pipes", fallback
        unmounted = self._stdio_root is not None
        fallback = "podman could not mount the stdio directory" if unmounted else None
        return "podman exec, stream", fallback

    def _stdio_check(self) -> HealthCheck:
        """How programs' stdio travel, and whether the podman user can reach its directory."""
        root, wanted = self._stdio_root, self._direct_stdio_wanted
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
            ", programs started by each container's agent" if self._agent_for_new_containers else ""
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

    async def _create_kwargs(
        self,
        spec: SandboxSpec,
        name: str,
        stdio_dir: str | None,
        entrypoint: list[str] | None = None,
    ) -> dict[str, Any]:
        settings = spec.settings
        kwargs: dict[str, Any] = {
            "name": name,
            "entrypoint": entrypoint or list(KEEPALIVE),
            "command": [],
            "init": True,
            "cap_drop": ["ALL"],
            "no_new_privileges": True,
            "network_mode": settings.network,
            "labels": {
                **self._scope_labels,
                **sandbox_labels(spec),
                **({LABEL_OWNER: self._owner} if self._owner else {}),
            },
            "environment": dict(settings.env),
        }
        if settings.user:
            kwargs["user"] = settings.user
        if settings.workdir:
            kwargs["workdir"] = settings.workdir
        if settings.read_only:
            kwargs["read_only"] = True
        # podman-py builds mount options from these keys (size, read_only -> ro).
        mounts: list[dict[str, Any]] = [
            {
                "type": "tmpfs",
                "source": "tmpfs",
                "target": destination,
                "size": f"{size_mb}m",
                "mode": "1777",
            }
            for destination, size_mb in settings.tmpfs.items()
        ]
        mounts += [
            {
                "type": "bind",
                "source": volume.source,
                "target": volume.destination,
                "read_only": volume.read_only,
            }
            for volume in settings.volumes
        ]
        if self.exec_helper is not None:
            mounts += [
                {
                    "type": "bind",
                    "source": self.exec_helper,
                    "target": HELPER_PATH,
                    "read_only": True,
                },
                {  # any container user may be the one whose program dies
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "target": HELPER_STATUS_DIR,
                    "size": "1m",
                    "mode": "1777",
                },
            ]
        if stdio_dir is not None:
            mounts.append(
                {"type": "bind", "source": stdio_dir, "target": STDIO_DIR, "read_only": True}
            )
        if mounts:
            kwargs["mounts"] = mounts
        host = await self._host_caps()
        if settings.cpu_shares and self._supported(host, "cpu", "cpu_shares"):
            kwargs["cpu_shares"] = settings.cpu_shares
        if settings.pids_limit and self._supported(host, "pids", "pids_limit"):
            kwargs["pids_limit"] = settings.pids_limit
        if settings.memory_limit and self._supported(host, "memory", "memory_limit"):
            kwargs["mem_limit"] = settings.memory_limit
        return kwargs

    def _supported(self, host: _HostCaps, controller: str, setting: str) -> bool:
        if controller in host.controllers:
            return True
        if setting not in self._warned:
            self._warned.add(setting)
            log.warning(
                "resource_limit_skipped",
                setting=setting,
                cgroup_version=host.cgroup_version,
                controllers=sorted(host.controllers),
            )
        return False

    async def _host_caps(self) -> _HostCaps:
        async with self._host_lock:
            if self._host is None:
                info = await self._api.request("GET", "/info", abandon_on_cancel=True)
                host = info.get("host") or {}
                self._host = _HostCaps(
                    controllers=frozenset(host.get("cgroupControllers") or ()),
                    cgroup_version=str(host.get("cgroupVersion", "?")),
                )
            return self._host

    async def _list(self, labels: Mapping[str, str | None]) -> list[tuple[str, dict[str, str]]]:
        # podman-py takes several label filters only in its list form ("label=k=v"); they are
        # ANDed by podman. We check again here, so a looser server-side filter is harmless.
        wanted = [f"label={k}" if v is None else f"label={k}={v}" for k, v in labels.items()]
        found = await self._api.call(
            lambda: self._api.client.containers.list(all=True, filters=wanted),
            abandon_on_cancel=True,
        )
        out = []
        for container in found:
            have = dict(container.labels or {})
            if all(
                key in have and (value is None or have[key] == value)
                for key, value in labels.items()
            ):
                out.append((str(container.id), have))
        return out

    async def _remove_at_exit(self, ref: str, spec: SandboxSpec) -> None:
        """Remove ``ref`` (id or name) within :data:`REMOVE_BOUND`, even when cancelled."""
        stdio_dir = self._stdio_dirs.pop(ref, None)
        if stdio_dir is not None:
            StdioRoot.remove_dir(stdio_dir)
        agent = self._agents.pop(ref, None)
        if agent is not None:
            agent.close()
        started = time.monotonic()
        with trio.move_on_after(REMOVE_BOUND, shield=True) as scope:
            try:
                removed = await self._force_remove(ref)
            except BackendError as exc:
                self._defer_removal(ref, spec.conn_id, str(exc))
                return
            if removed:
                self._observe("remove", time.monotonic() - started)
                log.info(
                    "container_removed",
                    container=_short(ref),
                    conn_id=spec.conn_id,
                    duration_ms=ms_since(started),
                )
        if scope.cancelled_caught:
            self._defer_removal(ref, spec.conn_id, "timed out")

    def _defer_removal(self, ref: str, conn_id: str, error: str) -> None:
        """Podman could not remove it now (service restarting?): ``run`` keeps trying."""
        self._orphans[ref] = conn_id
        log.warning(
            "container_remove_deferred", container=_short(ref), conn_id=conn_id, error=error
        )
        self._orphans_changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the warm pool full and retry removals that failed, with backoff, for as
        long as the server runs.

        Cancellation: the pool's unassigned containers are removed, then one last bounded
        attempt at failed removals; what is still left is logged as leaked (the next
        start-up sweep removes it).
        """
        try:
            async with trio.open_nursery() as nursery:
                if self._pool is not None:
                    nursery.start_soon(self._pool.run)
                task_status.started()
                await self._retry_removals()
        finally:
            with trio.move_on_after(REMOVE_BOUND, shield=True):
                await self._remove_orphans()
            for ref, conn_id in self._orphans.items():
                log.error("container_leaked", container=_short(ref), conn_id=conn_id)
            if self._stdio_root is not None:
                self._stdio_root.close()

    async def _retry_removals(self) -> None:
        delay = ORPHAN_RETRY_MIN
        while True:
            with trio.move_on_after(delay):
                await self._orphans_changed.wait()
            self._orphans_changed = trio.Event()
            if not self._orphans:
                delay = ORPHAN_RETRY_MIN
                continue
            await trio.sleep(delay)
            removed_all = await self._remove_orphans()
            delay = ORPHAN_RETRY_MIN if removed_all else min(delay * 2, ORPHAN_RETRY_MAX)

    async def _remove_orphans(self) -> bool:
        """Try each deferred removal once; True when none is left."""
        for ref, conn_id in list(self._orphans.items()):
            try:
                await self._force_remove(ref)
            except BackendError:
                return False  # still unreachable: try the rest later too
            del self._orphans[ref]
            log.info("container_removed", container=_short(ref), conn_id=conn_id, deferred=True)
        return True


class PodmanSandbox:
    """One running container; processes are execs in it."""

    def __init__(
        self,
        api: PodmanApi,
        container_id: str,
        spec: SandboxSpec,
        *,
        helper: bool,
        stdio_dir: str | None = None,
        agent: Agent | None = None,
        observe: Callable[[str, float], None],
    ) -> None:
        self._api = api
        self._container_id = container_id
        self._spec = spec
        self._helper = helper
        self._stdio_dir = stdio_dir
        self._agent = agent
        self._observe = observe

    @property
    def container_id(self) -> str:
        return self._container_id

    def open_process(
        self, spec: ProcessSpec
    ) -> AbstractAsyncContextManager[PodmanProcess | AgentProcess]:
        """Start ``spec.argv`` through the container's agent, or (no agent) as an exec;
        leaving the context kills it if still running."""
        settings = self._spec.settings
        if self._agent is not None and not self._agent.broken:
            return open_agent_process(
                self._agent, spec, container=self._container_id, observe=self._observe
            )
        return open_exec(
            self._api,
            self._container_id,
            settings.shell,
            spec,
            user=settings.user,
            workdir=settings.workdir,
            helper=self._helper,
            stdio_dir=self._stdio_dir,
            observe=self._observe,
        )


def _outcome(status: ExitStatus) -> str:
    return f"signal {status.signal}" if status.signal else f"exit code {status.code}"


async def _read_bounded(stream: trio.abc.ReceiveStream, limit: int) -> bytes:
    """A program's output up to EOF, or its first ``limit`` bytes."""
    data = b""
    while len(data) < limit and (chunk := await stream.receive_some(limit - len(data))):
        data += chunk
    return data


def _host_checks(info: dict[str, Any]) -> list[HealthCheck]:
    host = info.get("host") or {}
    runtime = host.get("ociRuntime") or {}
    runtime_version = str(runtime.get("version", "")).splitlines()[:1]
    controllers = sorted(host.get("cgroupControllers") or ())
    rootless = bool((host.get("security") or {}).get("rootless"))
    driver = str((info.get("store") or {}).get("graphDriverName", "?"))
    limits_ok = "pids" in controllers
    return [
        HealthCheck(
            name="runtime",
            ok=bool(runtime.get("name")),
            detail=f"{runtime.get('name', '?')} ({' '.join(runtime_version) or '?'}), "
            f"{'rootless' if rootless else 'ROOTFUL'}",
            fix="" if rootless else "run the podman service as an unprivileged user",
        ),
        # Not a failure: DESIGN asks for limits "where the host's cgroups allow it". The
        # detail says plainly when they do not, and how to get them.
        HealthCheck(
            name="cgroups",
            ok=True,
            warning=not limits_ok,
            detail=f"cgroup {host.get('cgroupVersion', '?')} ({host.get('cgroupManager', '?')}), "
            f"delegated controllers: {', '.join(controllers) or 'none'}"
            + ("" if limits_ok else "; pids/memory limits are NOT enforced"),
            fix=""
            if limits_ok
            else "use cgroup v2 with the systemd cgroup manager and delegate the pids and "
            "memory controllers to the podman user",
        ),
        HealthCheck(
            name="storage",
            ok=driver != "vfs",
            detail=f"storage driver {driver}",
            fix=""
            if driver != "vfs"
            else 'set driver = "overlay" in ~/.config/containers/storage.conf of the podman '
            "user, then `podman system reset`",
        ),
    ]


def owner_token() -> str:
    """``boot-id/pid-namespace/pid/start-time`` of this process; ``""`` if /proc cannot tell.

    Start time and boot id make a recycled PID or a reboot look dead.
    """
    try:
        return "/".join((*_here(), str(os.getpid()), _start_time(os.getpid())))
    except (OSError, ValueError, IndexError):
        return ""


def owner_alive(token: str) -> bool:
    """True only if ``token`` names a process running now in our boot and PID namespace."""
    try:
        boot, namespace, pid, start = token.split("/")
        return (boot, namespace) == _here() and _start_time(int(pid)) == start
    except (OSError, ValueError, IndexError):
        return False


def _here() -> tuple[str, str]:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return boot, os.readlink("/proc/self/ns/pid").strip("pid:[]")


def _start_time(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Field 22 (starttime); the command name in field 2 may contain spaces and ")".
    return stat.rsplit(")", 1)[1].split()[19]


def _container_name(conn_id: str) -> str:
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", conn_id)[:40].strip("-.") or "conn"
    return f"trissh-{safe}-{secrets.token_hex(4)}"


def _short(ref: str) -> str:
    """Container ids shortened as ``podman ps`` shows them; names left whole."""
    return ref[:12] if re.fullmatch(r"[0-9a-f]{64}", ref) else ref
