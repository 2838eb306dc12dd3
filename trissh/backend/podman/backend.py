"""PodmanBackend: every sandbox is a hardened container on a rootless podman service.

Theory of operation
-------------------
``open_sandbox`` takes a started container from the warm pool (:mod:`.warm_pool`) or
creates one: :class:`~.launch.NewContainers` says how its programs will start, its
:class:`~.launch.LaunchSetup` adds what that needs to the create arguments
(:mod:`.spec`), and once the container runs the setup yields the container's
:class:`~.launch.Launcher`, which the :class:`PodmanSandbox` uses for every program.

Leaving ``open_sandbox`` removes the container with ``force=true&timeout=0`` inside a
bounded shielded scope (:mod:`.removal`), and releases its launcher (agent, stdio
directory). That includes a creation cancelled half-way: creation is not abandoned on
cancel, so once podman has answered we know the id and remove it; if the create request
itself failed ambiguously (timeout, dropped connection) we remove by the name we chose,
ignoring "no such container".

Nursery tree: ``run`` (the server's upkeep task) holds the warm pool's refill task and the
retry loop of deferred removals; every other call runs in its caller's task.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import structlog
import trio

from trissh.backend._common import ms_since
from trissh.backend.base import (
    ContainerSettings,
    FoundSandbox,
    FoundVolume,
    HealthCheck,
    LaunchPath,
    Observe,
    Process,
    ProcessSpec,
    SandboxListener,
    SandboxSpec,
    SocketAddress,
)
from trissh.backend.errors import BackendError, BackendUnavailable, ImageNotFound
from trissh.backend.podman import keeping
from trissh.backend.podman.api import PodmanApi, create_body
from trissh.backend.podman.containment import explained
from trissh.backend.podman.exec import ExecTarget
from trissh.backend.podman.health import check_podman
from trissh.backend.podman.images import Images, Registry
from trissh.backend.podman.launch import (
    AgentLauncher,
    Launcher,
    LaunchSetup,
    NewContainers,
    StreamLauncher,
)
from trissh.backend.podman.limits import host_limits
from trissh.backend.podman.owner import owner_token, sweep
from trissh.backend.podman.removal import Removals
from trissh.backend.podman.renames import Renames
from trissh.backend.podman.spec import ContainerSpecs, container_name
from trissh.backend.podman.starts import StartQueue
from trissh.backend.podman.warm_pool import WarmPool

__all__ = ["PodmanBackend", "PodmanSandbox"]

log = structlog.get_logger("trissh.backend.podman")


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
        observe: Observe | None = None,
        warm_pool: int = 0,
        warm_pool_idle: int | None = None,
        max_concurrent_starts: int = 4,
        direct_stdio: bool = False,
        stdio_dir: str = "",
        exec_agent: bool = False,
        registries: Mapping[str, Registry] | None = None,
    ) -> None:
        """Args:
        url: ``unix:///path.sock``, ``unix:/path.sock`` or ``http+unix://%2Fpath.sock``.
        limiter_capacity, request_timeout: concurrent podman requests, and each one's bound.
        scope_labels: put on every container *and* required by ``sweep``, so two
            deployments (or test runs) sharing one podman user never sweep each other.
        exec_helper: host path of the static ``trissh-exec`` (``helper/trissh-exec.c``),
            bind-mounted into every container as each program's parent so a death by
            signal can be told from an exit code; ``None`` or missing: exit codes only.
        observe: told how long each container operation took (metrics).
        warm_pool, warm_pool_idle: the most containers kept started ahead of logins, and
            the fewest, when no one logs in (:mod:`.warm_pool`; default: ``warm_pool``).
        max_concurrent_starts: containers created at once; more wait (:mod:`.starts`).
        direct_stdio: programs without a pty get pipes instead of podman's stream (needs
            ``exec_helper``; :mod:`.direct_stdio`).
        stdio_dir: where the per-container stdio directories go; ``""``: systemd's
            RuntimeDirectory, else $XDG_RUNTIME_DIR, else the temp dir. The podman user
            must be able to reach it.
        exec_agent: with direct stdio, programs are started by the container's agent
            instead of ``podman exec`` (:mod:`.agent`).
        registries: credentials and TLS of registries, by ``HOST[:PORT]`` (:mod:`.images`).
        """
        self._url = url
        self._api = PodmanApi(
            url, limiter_capacity=limiter_capacity, request_timeout=request_timeout
        )
        self._scope_labels = dict(scope_labels or {})
        self._owner = owner_token()
        self._observe: Observe = observe or (lambda operation, seconds: None)
        self._specs = ContainerSpecs(self._api, scope_labels=self._scope_labels, owner=self._owner)
        self._removals = Removals(self._api, self._observe)
        self._renames = Renames(self._api)
        self._images = Images(self._api, registries or {})
        self._launch = NewContainers.configure(
            exec_helper=exec_helper,
            direct_stdio=direct_stdio,
            stdio_dir=stdio_dir,
            exec_agent=exec_agent,
            owner=self._owner,
        )
        #: How programs start in each container we started, by container id.
        self._launchers: dict[str, Launcher] = {}
        self._starts = StartQueue(max_concurrent_starts, self._observe)
        self._pool = self._warm_pool(warm_pool, warm_pool_idle)

    def _warm_pool(self, size: int, idle: int | None) -> WarmPool | None:
        """Refills start when the start queue has a slot no login waits for."""
        if size <= 0:
            return None
        return WarmPool(
            size,
            start=self._start_pooled,
            remove=self._remove_at_exit,
            idle=idle,
            turn=self._starts.spare_turn,
            prepare=self._ensure_image,
        )

    @property
    def url(self) -> str:
        return self._url

    @property
    def socket_path(self) -> str:
        return self._api.path

    @property
    def warm_containers(self) -> int:
        """Started containers waiting for a login."""
        return self._pool.ready if self._pool is not None else 0

    @property
    def starts_waiting(self) -> int:
        """Logins waiting for their turn to start a container."""
        return self._starts.waiting

    @property
    def starts_running(self) -> int:
        """Container starts in progress (logins' and the warm pool's)."""
        return self._starts.running

    def close(self) -> None:
        """Release pooled HTTP connections, the agents and the stdio directories."""
        self._api.close()
        for launcher in self._launchers.values():
            launcher.close()
        self._launchers.clear()
        self._launch.close()

    def keep_warm(self, settings: ContainerSettings, instance: str) -> None:
        if self._pool is not None:
            self._pool.set_template(settings, instance)

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
        container_id = None if spec.workspace else await self._take_warm(spec)
        if container_id is None:
            container_id = await self._start_for_login(spec)
        sandbox = PodmanSandbox(container_id, self._launchers[container_id], self._api)
        try:
            yield sandbox
        finally:
            await self._leave(sandbox, spec)

    @asynccontextmanager
    async def adopt_sandbox(
        self, found: FoundSandbox, spec: SandboxSpec
    ) -> AsyncIterator[PodmanSandbox]:
        """A running container an earlier trissh kept (:mod:`.keeping`); leaving the
        context removes it unless kept again.

        Raises:
            BackendError: it is gone or not running.
        """
        container_id = found.container_id
        helper = await keeping.inspect_for_adoption(self._api, container_id)
        launcher = StreamLauncher(self._target(container_id, spec), helper=helper, fallback=None)
        self._launchers[container_id] = launcher
        log.info("container_adopted", container=container_id[:12], user=spec.username)
        sandbox = PodmanSandbox(container_id, launcher, self._api)
        try:
            yield sandbox
        finally:
            await self._leave(sandbox, spec)

    async def _leave(self, sandbox: PodmanSandbox, spec: SandboxSpec) -> None:
        """A sandbox's context ends: remove its container, or (kept) only let it go."""
        if not sandbox.kept:
            await self._remove_at_exit(sandbox.container_id, spec)
            return
        launcher = self._launchers.pop(sandbox.container_id, None)
        if launcher is not None:
            launcher.close()
        log.info("container_kept", container=sandbox.container_id[:12], user=spec.username)

    async def _take_warm(self, spec: SandboxSpec) -> str | None:
        """A running container from the warm pool, now owned by ``spec``'s connection.

        A pooled container may have died while it waited (killed from outside, OOM): its
        agent's socket says so at no cost (:meth:`.agent.Agent.connected`); without an
        agent one inspection asks podman (a few ms, far less than a start). A dead one is
        removed and the next tried. Cancellation: a container already taken is removed.
        """
        while self._pool is not None:
            container_id = self._pool.take(spec.settings)
            if container_id is None:
                return None
            try:
                status = await self._warm_status(container_id)
            except BaseException:
                await self._remove_at_exit(container_id, spec)
                raise
            if status is None:
                self._renames.rename(container_id, container_name(spec))  # in run()
                log.info(
                    "container_assigned",
                    container=container_id[:12],
                    conn_id=spec.conn_id,
                    user=spec.username,
                    remote=spec.remote,
                    image=spec.settings.image,
                )
                return container_id
            log.warning("warm_container_lost", container=container_id[:12], status=status)
            await self._remove_at_exit(container_id, spec)
        return None

    async def _warm_status(self, container_id: str) -> str | None:
        """``None`` if the pooled container still runs, else what became of it."""
        launcher = self._launchers.get(container_id)
        if isinstance(launcher, AgentLauncher) and not launcher.agent.broken:
            return None if launcher.agent.connected() else "agent gone"
        info = await self._api.request("GET", f"/containers/{container_id}/json", missing_ok=True)
        state = (info or {}).get("State") or {}
        return None if state.get("Running") else str(state.get("Status", "gone"))

    async def _ensure_image(self, spec: SandboxSpec) -> None:
        """Pull ``spec``'s image if its policy says so; outside any start slot (a pull may
        take minutes, and other logins' starts must not wait behind it)."""
        await self._images.ensure(spec.settings.image, spec.settings.pull_policy)

    async def _start_pooled(self, spec: SandboxSpec) -> str:
        """A warm-pool refill, in a spare start slot, its image ensured before (``prepare``);
        an image gone since fails this refill and the next one pulls it."""
        try:
            return await self._start_container(spec)
        except ImageNotFound:
            self._images.forget(spec.settings.image)
            raise

    async def _start_for_login(self, spec: SandboxSpec) -> str:
        """A login's own start: its image, then its turn for a start slot. An image podman
        lost since it was seen (removed by an operator) is ensured once more, for every start
        that found it missing at once."""
        image, policy = spec.settings.image, spec.settings.pull_policy
        await self._ensure_image(spec)
        try:
            return await self._start_in_turn(spec)
        except ImageNotFound:
            self._images.forget(image)
            if not self._images.may_pull(image, policy):
                raise
        await self._ensure_image(spec)
        return await self._start_in_turn(spec)

    async def _start_in_turn(self, spec: SandboxSpec) -> str:
        async with self._starts.turn(spec.conn_id, spec.username) as queued:
            return await self._start_container(spec, queued=queued)

    async def _start_container(self, spec: SandboxSpec, *, queued: float = 0.0) -> str:
        """Create and start a container; return its id.

        If podman cannot bind-mount the stdio directory, new containers get none from now
        on (:meth:`NewContainers.cannot_mount`) and this one is made again without it: a
        default that does not fit the host must not fail every login.
        """
        pipes = self._launch.pipes
        try:
            return await self._start_container_once(spec, self._launch.setup(pipes=pipes), queued)
        except BackendError as exc:
            if not (pipes and self._launch.cannot_mount(exc)):
                raise
        return await self._start_container_once(spec, self._launch.setup(pipes=False), queued)

    async def _start_container_once(
        self, spec: SandboxSpec, launch: LaunchSetup, queued: float
    ) -> str:
        """One attempt of :meth:`_start_container`; ``launch`` is released either way.

        Cancellation and failure: whatever was created is removed (bounded). Creation is
        not abandoned on cancel, so once podman has answered the id is known; if the create
        request itself failed ambiguously we remove by the name we chose.
        """
        started = time.monotonic()
        image = spec.settings.image
        policy = spec.settings.pull_policy
        name = container_name(spec)
        container_id: str | None = None
        maybe_created = False
        try:
            kwargs = await self._specs.create_kwargs(
                spec, name, entrypoint=launch.entrypoint(), mounts=launch.mounts()
            )
            maybe_created = True
            try:
                created = await self._api.request(
                    "POST", "/containers/create", body=create_body(image, kwargs), image=image
                )
            except ImageNotFound:
                maybe_created = False
                raise self._images.missing(image, policy) from None
            except BackendUnavailable:
                maybe_created = False
                raise
            except BackendError as exc:
                raise explained(exc, spec.settings) from exc
            container_id = str(created["Id"])
            await self._api.request("POST", f"/containers/{container_id}/start")
            self._launchers[container_id] = await launch.launcher(self._target(container_id, spec))
        except BaseException:
            if container_id is not None or maybe_created:
                await self._remove_at_exit(container_id or name, spec)
            if container_id is None and maybe_created:  # podman may still make it
                self._removals.watch(name, spec.conn_id, window=2 * self._api.timeout)
            raise
        finally:
            launch.close()
        self._observe("start", time.monotonic() - started)
        log.info(
            "container_created",
            container=container_id[:12],
            conn_id=spec.conn_id,
            user=spec.username,
            image=image,
            pooled=spec.pooled,
            duration_ms=ms_since(started),
            queued_ms=round(queued * 1000, 1),
        )
        return container_id

    def _target(self, container_id: str, spec: SandboxSpec) -> ExecTarget:
        settings = spec.settings
        return ExecTarget(
            api=self._api,
            container_id=container_id,
            shell=tuple(settings.shell),
            user=settings.user,
            workdir=settings.workdir,
            observe=self._observe,
        )

    async def _remove_at_exit(self, ref: str, spec: SandboxSpec) -> None:
        """Release ``ref``'s launcher, remove it when starts let it (:mod:`.starts`), bounded
        and shielded; deferred on failure."""
        self._renames.forget(ref)
        launcher = self._launchers.pop(ref, None)
        if launcher is not None:
            launcher.close()
        with trio.CancelScope(shield=True):  # the turn's wait is bounded (starts.py)
            async with self._starts.removal_turn():
                await self._removals.remove_at_exit(ref, spec.conn_id)

    async def sweep(self, *, keep_instance: str) -> int:
        """Remove containers labelled with another ``trissh.instance`` (and our scope)
        whose owner is gone (:mod:`.owner`), and stdio directories of trissh processes
        that are gone."""
        root = self._launch.stdio_root
        if root is not None and (swept := root.sweep()):
            log.info("stdio_dirs_swept", count=swept)
        return await sweep(
            self._api,
            self._scope_labels,
            keep_instance=keep_instance,
            remove=self._removals.remove_now,
        )

    async def find_sandboxes(self, labels: Mapping[str, str | None]) -> list[FoundSandbox]:
        return await keeping.find_containers(self._api, {**self._scope_labels, **labels})

    async def remove_sandbox(self, container_id: str) -> bool:
        return await self._removals.remove_now(container_id)

    async def create_volume(self, name: str, labels: Mapping[str, str]) -> None:
        await keeping.create_volume(self._api, name, {**self._scope_labels, **labels})

    async def find_volumes(self, labels: Mapping[str, str | None]) -> list[FoundVolume]:
        return await keeping.find_volumes(self._api, {**self._scope_labels, **labels})

    async def remove_volume(self, name: str) -> bool:
        return await keeping.remove_volume(self._api, name)

    async def health(self, settings: ContainerSettings) -> list[HealthCheck]:
        """Service, runtime, cgroups, containment, storage, stdio, forwarding and image
        checks for ``trissh doctor``, for containers of ``settings``."""
        launch = [self._launch.health_check(), self._launch.forwarding_check()]
        return await check_podman(self._api, settings, launch)

    async def ready(self, image: str) -> str | None:
        """One cheap request answers both: podman serves, and the image exists (podman's
        ``/version`` and ``/info``, which ``health`` asks, take ~0.5 s together)."""
        try:
            present = await self._api.request(
                "GET", f"/images/{image}/exists", abandon_on_cancel=True, missing_ok=True
            )
        except BackendError as exc:
            return str(exc)
        return None if present is not None else f"image {image} not found"

    async def host_limits(self, settings: ContainerSettings) -> list[HealthCheck]:
        """How many containers the host allows at once, by each ceiling (:mod:`.limits`);
        what one container costs is measured while a probe of ``settings`` runs."""
        info = await self._api.request("GET", "/info", abandon_on_cancel=True)
        spec = SandboxSpec(
            conn_id=f"limits-{secrets.token_hex(4)}",
            username="doctor",
            remote="doctor",
            instance=f"doctor-{secrets.token_hex(4)}",
            settings=settings,
        )
        probe = functools.partial(self.open_sandbox, spec)
        return await host_limits(info, self._api.path, probe, settings.userns_size)

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
                    nursery.start_soon(self._renames.run)
                task_status.started()
                await self._removals.retry()
        finally:
            await self._removals.finish()
            self._launch.close()


class PodmanSandbox:
    """One running container; its launcher starts the programs."""

    def __init__(self, container_id: str, launcher: Launcher, api: PodmanApi) -> None:
        self._container_id = container_id
        self._launcher = launcher
        self._api = api
        #: Left running when its context ends (:meth:`keep`).
        self.kept = False

    def keep(self) -> None:
        self.kept = True

    async def put_files(self, files: Mapping[str, bytes]) -> None:
        """One tar upload (:func:`.keeping.archive_of`)."""
        await self._api.put_archive(self._container_id, keeping.archive_of(files))

    @property
    def container_id(self) -> str:
        return self._container_id

    @property
    def launch_path(self) -> LaunchPath:
        return self._launcher.path

    @property
    def launcher(self) -> Launcher:
        return self._launcher

    def open_process(self, spec: ProcessSpec) -> AbstractAsyncContextManager[Process]:
        """Start ``spec.argv`` as the container's launcher does; leaving the context kills
        it if still running."""
        return self._launcher.open_process(spec)

    async def connect(self, address: SocketAddress) -> trio.abc.HalfCloseableStream:
        """A connection made inside the container by its agent (:mod:`.sockets`).

        Raises: ForwardError (``unsupported`` without an agent).
        """
        return await self._launcher.sockets.connect(address)

    def listen(self, address: SocketAddress) -> AbstractAsyncContextManager[SandboxListener]:
        """A listener made inside the container by its agent (:mod:`.sockets`).

        Raises: ForwardError (``unsupported`` without an agent).
        """
        return self._launcher.sockets.listen(address)
