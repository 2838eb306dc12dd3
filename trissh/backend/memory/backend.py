"""MemoryBackend: an in-process fake of the backend contract, shipped like httpcore's MockBackend.

Theory of operation
-------------------
Fast driver tests and benchmarks need sandboxes and processes that start in microseconds
and behave like a container's shell in the ways the SSH layer can observe: stdout/stderr
separation, exit codes, signals, stdin EOF, pty size, backpressure. A "sandbox" here is a
dict entry with labels; a "process" is a task running a tiny shell interpreter
(:mod:`.shell`) in a nursery owned by the process context, talking to the session through
bounded memory pipes (:mod:`trissh.backend._pipe`), so a lagging consumer really stops the
producer.

With a pty, stderr is merged into stdout; closing ``stdin`` is *not* an EOF (as with sshd,
and podman, whose service a tty half-close takes down); input is not echoed.

Each sandbox has its own fake loopback network (:mod:`.network`): ``listen`` and
``connect`` reach only listeners of the same sandbox.

Workspaces: a kept sandbox (``keep``) stays in ``containers`` and in ``kept`` when its
context ends, as a container left running for the next server; ``find_sandboxes`` reports
it with no live owner and ``adopt_sandbox`` takes it over. Named volumes are entries in
``volumes``, in use while a sandbox that mounts them exists.

Test hooks: ``fail_next_sandbox``, ``stall_sandbox_start``, ``stall_process_start``,
``hold_removal``, ``unavailable``, ``images``, ``add_orphan()``; counters ``live_sandboxes`` and
``live_processes`` must return to 0 after every test.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final

import structlog
import trio

from trissh.backend._common import (
    labels_match,
    ms_since,
    process_env,
    sandbox_labels,
    signal_name,
    signal_number,
)
from trissh.backend._pipe import (
    MemoryPipeReceiveStream,
    ProcessStdin,
    open_memory_pipe,
    open_task_nursery,
)
from trissh.backend.base import (
    LABEL_INSTANCE,
    LABEL_WORKSPACE,
    ContainerSettings,
    ExitStatus,
    FoundSandbox,
    FoundVolume,
    HealthCheck,
    LaunchPath,
    ProcessSpec,
    SandboxListener,
    SandboxSpec,
    SocketAddress,
    TerminalSize,
)
from trissh.backend.errors import BackendError, BackendUnavailable, ImageNotFound, ImagePullFailed
from trissh.backend.memory.network import FakeNetwork
from trissh.backend.memory.shell import HARMLESS_SIGNALS, FakeShell, Killed

__all__ = ["MemoryBackend", "MemoryProcess", "MemorySandbox"]

log = structlog.get_logger(__name__)

#: Teardown bound; nothing in the fake blocks, but the contract says bounded.
_CLEANUP_BOUND: Final = 5.0


class MemoryBackend:
    """An in-memory :class:`~trissh.backend.base.Backend`: fast, deterministic, leak-checked."""

    def __init__(
        self,
        *,
        images: Collection[str] | None = None,
        pipe_limit: int = 128 * 1024,
        pullable: Collection[str] = (),
    ) -> None:
        """Args:
        images: images that exist; ``None`` means every image does.
        pipe_limit: bytes buffered per stdio pipe before the writer blocks.
        pullable: images a pull finds in the (pretend) registry.
        """
        self.images = None if images is None else frozenset(images)
        self.pullable = frozenset(pullable)
        #: Every image pulled, in order (the pull policy's effect).
        self.pulls: list[str] = []
        self.pipe_limit = pipe_limit
        #: Raised (once) by the next ``open_sandbox``.
        self.fail_next_sandbox: BackendError | None = None
        #: ``open_sandbox`` creates the container, then blocks forever before "starting" it.
        self.stall_sandbox_start = False
        #: ``open_process`` blocks forever before the program starts.
        self.stall_process_start = False
        #: When set, removing a sandbox first waits (bounded) until this event is set: a
        #: slow container removal, for tests of what must not wait for one.
        self.hold_removal: trio.Event | None = None
        #: Behave as if the container service cannot be reached.
        self.unavailable = False
        #: Labels of every existing container, by id (includes orphans).
        self.containers: dict[str, dict[str, str]] = {}
        #: Every spec ever opened, for tests that check what the driver asked for.
        self.sandbox_specs: list[SandboxSpec] = []
        self.process_specs: list[ProcessSpec] = []
        self.live_sandboxes = 0
        self.live_processes = 0
        #: Containers left running by a kept sandbox, with the spec they were made from.
        self.kept: dict[str, SandboxSpec] = {}
        #: Files written into containers (``put_files``), by container id.
        self.files: dict[str, dict[str, bytes]] = {}
        #: Named volumes: name -> (labels, creation time).
        self.volumes: dict[str, tuple[dict[str, str], float]] = {}
        #: Sandboxes held by a context now, by container id.
        self._held: dict[str, MemorySandbox] = {}
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return "memory:"

    @property
    def warm_containers(self) -> int:
        return 0

    @property
    def starts_waiting(self) -> int:
        return 0  # sandboxes start at once, no queue

    @property
    def starts_running(self) -> int:
        return 0

    def close(self) -> None:
        """Nothing to release."""

    def add_orphan(self, *, instance: str) -> str:
        """Pretend a crashed trissh ``instance`` left a container behind; return its id."""
        container_id = f"mem{next(self._ids):08x}"
        self.containers[container_id] = {LABEL_INSTANCE: instance}
        return container_id

    @asynccontextmanager
    async def open_sandbox(self, spec: SandboxSpec) -> AsyncIterator[MemorySandbox]:
        """Create and "start" a fake container; leaving the context removes it.

        Cancellation: safe at any point; a created container is always removed.
        """
        await trio.lowlevel.checkpoint()
        self._check_available()
        if self.fail_next_sandbox is not None:
            error, self.fail_next_sandbox = self.fail_next_sandbox, None
            raise error
        self._apply_pull_policy(spec.settings.image, spec.settings.pull_policy)
        started = time.monotonic()
        container_id = f"mem{next(self._ids):08x}"
        self.containers[container_id] = sandbox_labels(spec)
        for volume in spec.settings.volumes:
            if volume.named:  # as podman does: a missing named volume is created, unlabelled
                self.volumes.setdefault(volume.source, ({}, time.time()))
        self.sandbox_specs.append(spec)
        async with self._hold(container_id, spec) as sandbox:
            if self.stall_sandbox_start:
                await trio.sleep_forever()
            log.debug(
                "container_created",
                container=container_id,
                conn_id=spec.conn_id,
                user=spec.username,
                duration_ms=ms_since(started),
            )
            yield sandbox

    def _apply_pull_policy(self, image: str, policy: str) -> None:
        """As the podman backend does: ``localhost/`` and ``never`` never pull."""
        local = image.startswith("localhost/")
        missing = self.images is not None and image not in self.images
        wanted = policy == "always" or (policy == "if-not-present" and missing)
        if not local and wanted:
            if image not in self.pullable:
                raise ImagePullFailed(image, "manifest unknown")
            self.pulls.append(image)
            if self.images is not None:
                self.images = self.images | {image}
            return
        if missing:
            why = "localhost/ images are never pulled" if local else ""
            raise ImageNotFound(image, why or ("pull_policy is never" if policy == "never" else ""))

    @asynccontextmanager
    async def adopt_sandbox(
        self, found: FoundSandbox, spec: SandboxSpec
    ) -> AsyncIterator[MemorySandbox]:
        """Take over a kept container (one no context holds)."""
        await trio.lowlevel.checkpoint()
        self._check_available()
        if self.kept.pop(found.container_id, None) is None:
            raise BackendError(f"container {found.container_id} is gone")
        async with self._hold(found.container_id, spec) as sandbox:
            yield sandbox

    @asynccontextmanager
    async def _hold(self, container_id: str, spec: SandboxSpec) -> AsyncIterator[MemorySandbox]:
        """A context over an existing container: its removal (or keeping) on the way out."""
        self.live_sandboxes += 1
        sandbox = MemorySandbox(self, container_id, spec)
        self._held[container_id] = sandbox
        try:
            yield sandbox
        finally:
            if self.hold_removal is not None:
                with trio.move_on_after(_CLEANUP_BOUND, shield=True):
                    await self.hold_removal.wait()
            with trio.move_on_after(_CLEANUP_BOUND, shield=True):
                removed = time.monotonic()
                sandbox.closed = True
                sandbox.network.close()
                del self._held[container_id]
                self.live_sandboxes -= 1
                if sandbox.kept and container_id in self.containers:
                    self.kept[container_id] = spec
                else:
                    self.containers.pop(container_id, None)
                    self.files.pop(container_id, None)
                await trio.lowlevel.checkpoint()
                log.debug(
                    "container_removed",
                    container=container_id,
                    conn_id=spec.conn_id,
                    kept=sandbox.kept,
                    duration_ms=ms_since(removed),
                )

    async def find_sandboxes(self, labels: Mapping[str, str | None]) -> list[FoundSandbox]:
        await trio.lowlevel.checkpoint()
        self._check_available()
        return [
            FoundSandbox(
                container_id=cid,
                labels=dict(have),
                running=cid in self.kept or cid in self._held,
            )
            for cid, have in self.containers.items()
            if labels_match(have, labels)
        ]

    async def remove_sandbox(self, container_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        self._check_available()
        self.kept.pop(container_id, None)
        held = self._held.get(container_id)
        if held is not None:
            held.closed = True  # its programs can no longer start, as in a removed container
        return self.containers.pop(container_id, None) is not None

    async def create_volume(self, name: str, labels: Mapping[str, str]) -> None:
        await trio.lowlevel.checkpoint()
        self._check_available()
        self.volumes.setdefault(name, (dict(labels), time.time()))

    async def find_volumes(self, labels: Mapping[str, str | None]) -> list[FoundVolume]:
        await trio.lowlevel.checkpoint()
        self._check_available()
        return [
            FoundVolume(name=name, labels=dict(have), created=created, in_use=self._mounted(name))
            for name, (have, created) in self.volumes.items()
            if labels_match(have, labels)
        ]

    async def remove_volume(self, name: str) -> bool:
        await trio.lowlevel.checkpoint()
        self._check_available()
        if self._mounted(name):
            raise BackendError(f"volume {name} is being used")
        return self.volumes.pop(name, None) is not None

    def _mounted(self, name: str) -> bool:
        """A container that exists (held or kept) mounts the volume."""
        specs = [held.spec for held in self._held.values()] + list(self.kept.values())
        return any(v.named and v.source == name for spec in specs for v in spec.settings.volumes)

    def keep_warm(self, settings: ContainerSettings, instance: str) -> None:
        """Creating a sandbox in memory costs nothing: no pool."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to maintain: removal in memory cannot fail."""
        task_status.started()
        await trio.sleep_forever()

    async def sweep(self, *, keep_instance: str) -> int:
        """Remove containers labelled with another instance (see :meth:`add_orphan`)."""
        await trio.lowlevel.checkpoint()
        self._check_available()
        stale = [
            cid
            for cid, labels in self.containers.items()
            if LABEL_INSTANCE in labels
            and labels[LABEL_INSTANCE] != keep_instance
            and LABEL_WORKSPACE not in labels
            and cid not in self._held
        ]
        for cid in stale:
            del self.containers[cid]
            self.kept.pop(cid, None)
        log.info("containers_swept", count=len(stale), keep_instance=keep_instance)
        return len(stale)

    async def host_limits(self, settings: ContainerSettings) -> list[HealthCheck]:
        return []  # in-process: no host resources per sandbox worth a ceiling

    async def health(self, settings: ContainerSettings) -> list[HealthCheck]:
        """One check for the "service" and one for the image, like the real backend's."""
        await trio.lowlevel.checkpoint()
        image = settings.image
        if self.unavailable:
            return [
                HealthCheck(
                    name="service",
                    ok=False,
                    detail="in-memory backend marked unavailable",
                    fix="set MemoryBackend.unavailable = False",
                )
            ]
        present = self.images is None or image in self.images
        return [
            HealthCheck(name="service", ok=True, detail="in-memory backend"),
            HealthCheck(
                name="image",
                ok=present,
                detail=f"{image} {'present' if present else 'missing'}",
                fix="" if present else "add it to MemoryBackend(images=...)",
            ),
        ]

    async def ready(self, image: str) -> str | None:
        await trio.lowlevel.checkpoint()
        if self.unavailable:
            return "container backend unavailable: in-memory backend is down"
        if self.images is not None and image not in self.images:
            return f"image {image} not found"
        return None

    def _check_available(self) -> None:
        if self.unavailable:
            raise BackendUnavailable("container backend unavailable: in-memory backend is down")


class MemorySandbox:
    """A fake container: a pid counter and the processes opened in it."""

    def __init__(self, backend: MemoryBackend, container_id: str, spec: SandboxSpec) -> None:
        self._backend = backend
        self._container_id = container_id
        self.spec = spec
        self.closed = False
        #: Its own loopback; a test may add names to ``network.hosts``.
        self.network = FakeNetwork(backend.pipe_limit)
        self.kept = False
        self._pids = itertools.count(2)

    def keep(self) -> None:
        self.kept = True

    async def put_files(self, files: Mapping[str, bytes]) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise BackendError(f"container {self._container_id} is gone")
        for path in files:
            if not path.startswith("/"):
                raise BackendError(f"file path {path!r} is not an absolute file path")
        self._backend.files.setdefault(self._container_id, {}).update(files)

    @property
    def container_id(self) -> str:
        return self._container_id

    @property
    def launch_path(self) -> LaunchPath:
        return LaunchPath(via="in-memory fake shell")

    async def connect(self, address: SocketAddress) -> trio.abc.HalfCloseableStream:
        """A connection to a listener of this sandbox. Raises: ForwardError."""
        return await self.network.connect(address)

    def listen(self, address: SocketAddress) -> AbstractAsyncContextManager[SandboxListener]:
        """A listener in this sandbox's fake network. Raises: ForwardError."""
        return self.network.listen(address)

    @asynccontextmanager
    async def open_process(self, spec: ProcessSpec) -> AsyncIterator[MemoryProcess]:
        """Run ``spec.argv`` through the fake shell; leaving the context kills it.

        Cancellation: safe; the program task is cancelled and the pipes closed.
        """
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise BackendError(f"container {self._container_id} is gone")
        backend = self._backend
        env = {**self.spec.settings.env, **process_env(spec)}
        process = MemoryProcess(spec, env, next(self._pids), backend.pipe_limit)
        process.files = backend.files.setdefault(self._container_id, {})
        backend.process_specs.append(spec)
        backend.live_processes += 1
        try:
            if backend.stall_process_start:
                await trio.sleep_forever()
            async with open_task_nursery() as nursery:
                nursery.start_soon(process._run, self.spec.settings.shell)
                try:
                    yield process
                finally:
                    process._kill_now()
        finally:
            process._close_pipes()
            backend.live_processes -= 1


class MemoryProcess:
    """A fake program's handle: bounded pipes, a status, a cancel scope for signals."""

    def __init__(self, spec: ProcessSpec, env: dict[str, str], pid: int, limit: int) -> None:
        self.spec = spec
        self.env = env
        self.pid = pid
        self._pty_size = None if spec.pty is None else spec.pty.size
        self._stdin_w, self._stdin_r = open_memory_pipe(limit)
        self._stdin: trio.abc.SendStream = (
            self._stdin_w if spec.pty is None else ProcessStdin(self._stdin_w)
        )
        self._stdout_w, self._stdout_r = open_memory_pipe(limit)
        if spec.pty is None:
            self._stderr_w, stderr_r = open_memory_pipe(limit)
            self._stderr_r: MemoryPipeReceiveStream | None = stderr_r
        else:
            self._stderr_w, self._stderr_r = self._stdout_w, None
        self._scope = trio.CancelScope()
        #: Its container's files (``MemorySandbox.put_files``).
        self.files: Mapping[str, bytes] = {}
        self._signal: str | None = None
        self._status: ExitStatus | None = None
        self._error: BaseException | None = None
        self._done = trio.Event()

    @property
    def stdin(self) -> trio.abc.SendStream:
        return self._stdin

    @property
    def stdout(self) -> trio.abc.ReceiveStream:
        return self._stdout_r

    @property
    def stderr(self) -> trio.abc.ReceiveStream | None:
        return self._stderr_r

    @property
    def pty_size(self) -> TerminalSize | None:
        """The current terminal size, as ``stty size`` would report it."""
        return self._pty_size

    @property
    def program_stdin(self) -> MemoryPipeReceiveStream:
        """The program's end of stdin (what the fake shell reads)."""
        return self._stdin_r

    @property
    def program_stdout(self) -> trio.abc.SendStream:
        return self._stdout_w

    @property
    def program_stderr(self) -> trio.abc.SendStream:
        """The program's stderr; with a pty, its stdout."""
        return self._stderr_w

    async def resize(self, size: TerminalSize) -> None:
        """Update the size ``stty size`` reports. No-op without a pty."""
        await trio.lowlevel.checkpoint()
        if self._pty_size is not None:
            self._pty_size = size

    async def send_signal(self, signal: str) -> None:
        """Terminate the program with ``signal`` unless its default action is to ignore it.

        Raises:
            BackendError: not a signal name.
        """
        await trio.lowlevel.checkpoint()
        try:
            name = signal_name(signal_number(signal))
        except ValueError as exc:
            raise BackendError(f"cannot send signal {signal!r}: {exc}") from None
        if self._done.is_set() or name in HARMLESS_SIGNALS:
            return
        self._signal = name
        self._scope.cancel()

    async def wait(self) -> ExitStatus:
        """Wait for the program to end.

        Cancellation: safe; the program keeps running until the context exits.

        Raises:
            BackendError: the fake program itself crashed (a bug in the fake or its input).
        """
        await self._done.wait()
        if self._error is not None:
            raise BackendError(f"fake program crashed: {self._error!r}") from self._error
        assert self._status is not None
        return self._status

    async def _run(self, shell: Collection[str]) -> None:
        shell_io = FakeShell(self, tuple(shell))
        status: ExitStatus | None = None
        try:
            with self._scope:
                status = ExitStatus(code=await shell_io.run_argv(list(self.spec.argv)))
        except Killed as killed:
            status = ExitStatus(signal=killed.signal)
        except trio.BrokenResourceError:
            status = ExitStatus(signal="PIPE")
        except Exception as exc:
            self._error = exc
            status = ExitStatus(code=70)
        finally:
            if status is None:
                status = ExitStatus(signal=self._signal or "KILL")
            self._status = status
            self._close_pipes()
            self._done.set()

    def _kill_now(self) -> None:
        if not self._done.is_set():
            self._signal = self._signal or "KILL"
            self._scope.cancel()

    def _close_pipes(self) -> None:
        self._stdin_r.close()
        self._stdout_w.close()
        self._stderr_w.close()
