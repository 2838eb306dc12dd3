"""The backend contract: where SSH sessions run, seen without any SSH in it.

Theory of operation
-------------------
A *sandbox* is one container. A *process* is one program running in it, with stdio.
The driver never sees podman; it sees these protocols, so the same session code runs
against rootless podman in production and against :mod:`trissh.backend.memory` in fast
tests.

Ownership follows the nursery tree. ``Backend.open_sandbox`` and ``Sandbox.open_process``
return async context managers, and leaving the context is the *only* way a container or
process goes away: it always stops and removes what it created, even when cancelled, under
a bounded shielded scope (trio's ``aclose`` contract: an error there means grace failed,
never that something leaked). Two execution modes are built from the same two calls:

* ``connection`` mode: the connection task owns one sandbox (opened with its first session channel)
  and every session channel opens a process in it.
* ``session`` mode: each session task opens its own sandbox and one process in it.

Sockets for forwarding are made *inside* the sandbox (``Sandbox.connect`` and
``Sandbox.listen``): in its network namespace, so ``localhost`` is the container's loopback
and never the host's, and a unix socket path is in the container's filesystem. What a
sandbox can reach is what a program in it can reach.

A third owner is the server's workspace registry (``workspace`` mode,
:mod:`trissh.server.workspaces`): one sandbox per user, kept between connections. For it a
sandbox may be *kept* (``Sandbox.keep``: leaving the context leaves the container running,
for the next server process), found again by its labels (``find_sandboxes``) and
*adopted* (``adopt_sandbox``: the same context contract as ``open_sandbox``); its home
directory can be a named volume that outlives it (``create_volume``, ``find_volumes``,
``remove_volume``). ``sweep`` leaves workspaces to that registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Final, Protocol

import trio

from trissh.addresses import join_host_port

#: The image sessions run in unless the configuration names another (scripts/build-image.sh
#: builds it without a registry).
DEFAULT_IMAGE = "localhost/trissh-base:latest"

#: Called with (operation, seconds) after each container operation, for metrics:
#: ``start``, ``exec``, ``spawn`` (a program its container's agent started) or ``remove``.
Observe = Callable[[str, float], None]

#: Seconds a connection (name resolution included) or listener inside a sandbox may take
#: to be made before it fails with ``ForwardError("timeout")``.
SOCKET_TIMEOUT: Final = 10.0

#: Label keys put on every container so leftovers can be found and removed.
LABEL_CONN_ID = "trissh.conn_id"
LABEL_USER = "trissh.user"
LABEL_REMOTE = "trissh.remote"
LABEL_INSTANCE = "trissh.instance"
#: On containers started ahead of any login (the warm pool), in place of a user.
LABEL_POOL = "trissh.pool"
#: On a workspace's container: whose it is, and a hash of the settings it was made with.
LABEL_WORKSPACE = "trissh.workspace"
LABEL_RECIPE = "trissh.workspace-recipe"


@dataclass(frozen=True, slots=True, kw_only=True)
class TerminalSize:
    """A terminal's size as SSH reports it (RFC 4254 §6.2, §6.7)."""

    columns: int
    rows: int
    width_px: int = 0
    height_px: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PtySpec:
    """A pseudo-terminal the client asked for with ``pty-req``."""

    term: str
    size: TerminalSize
    #: Encoded terminal modes (RFC 4254 §8), passed through opaque.
    modes: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Volume:
    """A host directory bind-mounted into the container, or (``named``) a volume of the
    container service by that name (created if missing)."""

    source: str
    destination: str
    read_only: bool = True
    named: bool = False
    #: Its files are handed to the container's own ids at every start (podman's ``U``): for
    #: a volume one container at a time uses (a home), as each container gets its own id
    #: range and the files of the last one would belong to nobody here.
    owned: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerSettings:
    """How a sandbox's container is built. Hardened by default; callers may loosen."""

    image: str = DEFAULT_IMAGE
    #: ``always``, ``if-not-present`` or ``never``: whether ``open_sandbox`` pulls the image
    #: first (a ``localhost/`` image names local storage and is never pulled).
    pull_policy: str = "if-not-present"
    #: ``none`` by default: no network unless the operator says otherwise.
    network: str = "none"
    #: Processes (threads included): the pids controller where cgroups delegate it, and
    #: per user inside the container with a user namespace of its own.
    pids_limit: int = 256
    #: Bytes; ``None``: no limit. Per container where cgroups delegate the memory
    #: controller, else per process (heap).
    memory_limit: int | None = 1024 * 1024 * 1024
    #: IDs of the container's own user namespace (a range no other container has);
    #: 0: the podman user's namespace, shared by every container.
    userns_size: int = 65536
    #: Open files per process.
    nofile_limit: int = 4096
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    #: The shell used for ``shell`` sessions and to run ``exec`` command strings.
    shell: Sequence[str] = ("/bin/sh",)
    user: str | None = None
    workdir: str | None = None
    #: Relative CPU weight (cgroup cpu.shares); ``None`` leaves podman's default.
    cpu_shares: int | None = None
    #: A read-only root filesystem; writable places come from ``tmpfs`` and ``volumes``.
    read_only: bool = False
    #: tmpfs mounts: destination -> size in MiB.
    tmpfs: Mapping[str, int] = field(default_factory=dict)
    volumes: Sequence[Volume] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxSpec:
    """Everything needed to create one container, including the labels that identify it."""

    conn_id: str
    username: str
    remote: str
    #: Identifies this trissh process; the startup sweep removes other instances' leftovers.
    instance: str
    settings: ContainerSettings = field(default_factory=ContainerSettings)
    #: Started ahead of any login for the warm pool: no user or remote yet.
    pooled: bool = False
    #: A workspace's container: this user's (label ``trissh.workspace``), never a pooled one.
    workspace: str | None = None
    #: A hash of the settings a workspace was made with (label ``trissh.workspace-recipe``).
    recipe: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class FoundSandbox:
    """A container found by its labels (``Backend.find_sandboxes``)."""

    container_id: str
    labels: Mapping[str, str]
    running: bool
    #: Seconds since the epoch.
    created: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FoundVolume:
    """A named volume found by its labels (``Backend.find_volumes``)."""

    name: str
    labels: Mapping[str, str]
    #: Seconds since the epoch.
    created: float = 0.0
    #: Containers (of any state) that mount it.
    in_use: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSpec:
    """One program to run in a sandbox.

    ``argv`` is the full argument vector (the session layer turns ``shell``/``exec``/
    ``subsystem`` into one), so backends never parse command strings.
    """

    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    pty: PtySpec | None = None
    #: For logs and labels only.
    channel_id: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitStatus:
    """How a process ended: an exit code, or the signal that killed it."""

    code: int | None = None
    #: Signal name without ``SIG`` (RFC 4254 §6.10), e.g. ``"TERM"``.
    signal: str | None = None
    core_dumped: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SocketAddress:
    """Where a socket inside a sandbox connects or listens: TCP ``host``/``port``, or a unix
    socket ``path`` (then ``host`` and ``port`` are unused)."""

    #: A name or address as the client wrote it; listening, ``""`` (or ``"*"``) is every
    #: address and ``"localhost"``/``"127.0.0.1"`` the loopback.
    host: str = ""
    #: 0 with ``listen``: any free port (the listener's ``port`` says which).
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        return self.path or join_host_port(self.host, self.port)


class SandboxListener(Protocol):
    """A listening socket inside a sandbox (from :meth:`Sandbox.listen`)."""

    @property
    def port(self) -> int:
        """The bound TCP port (the one chosen for port 0); 0 for a unix socket."""

    async def accept(self) -> tuple[trio.abc.HalfCloseableStream, str]:
        """The next connection and its peer's ``host:port`` (``""`` for a unix socket).

        Raises:
            trio.ClosedResourceError: the listener (or its sandbox) was closed.
            ForwardError: accepting failed (``failed``: e.g. out of descriptors).

        Cancellation: safe; no connection is lost.
        """


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    """One line of ``trissh doctor``: what was checked, whether it passed, how to fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    #: Works, but short of what the operator asked for (for example limits not enforced).
    warning: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchPath:
    """How a sandbox's programs start and how their stdio travel, for ``trissh doctor``."""

    #: e.g. ``"agent, pipes"``.
    via: str
    #: What the configuration asked for but this sandbox could not have, and why.
    fallback: str | None = None
    #: Where to look when there was a fallback.
    fix: str = ""


class Process(Protocol):
    """A running program with stdio.

    ``stdout`` and ``stderr`` end (``receive_some`` returns ``b""``) when the program has
    exited and its output is drained. ``stderr`` is ``None`` with a pty: the terminal
    merges it into ``stdout``. Closing ``stdin`` delivers EOF to the program, except on a
    pty: there, as with sshd, it only stops input (the user ends input with ^D).
    """

    @property
    def stdin(self) -> trio.abc.SendStream: ...

    @property
    def stdout(self) -> trio.abc.ReceiveStream: ...

    @property
    def stderr(self) -> trio.abc.ReceiveStream | None: ...

    async def resize(self, size: TerminalSize) -> None:
        """Resize the pty. No-op without one."""

    async def send_signal(self, signal: str) -> None:
        """Deliver a signal (name without ``SIG``) to the program."""

    async def wait(self) -> ExitStatus:
        """Wait until the program has exited and return how it ended.

        Cancellation: safe; the program keeps running until the context exits.
        """


class Sandbox(Protocol):
    """One container that processes run in."""

    @property
    def container_id(self) -> str: ...

    @property
    def launch_path(self) -> LaunchPath:
        """How this sandbox's programs start (chosen when its container was made)."""

    def open_process(self, spec: ProcessSpec) -> AbstractAsyncContextManager[Process]:
        """Start a program; leaving the context kills it if still running.

        Raises:
            BackendError: the program could not be started.
        """

    async def connect(self, address: SocketAddress) -> trio.abc.HalfCloseableStream:
        """A stream to ``address`` as seen from inside the container: its loopback, its
        names, its networks. Bounded by :data:`SOCKET_TIMEOUT`. The stream is the caller's
        to close; ``send_eof`` half-closes it (the peer reads EOF).

        Raises:
            ForwardError: no connection (its ``reason`` says why).

        Cancellation: safe; nothing is left open.
        """

    def listen(self, address: SocketAddress) -> AbstractAsyncContextManager[SandboxListener]:
        """Listen inside the container (``host`` as given: ``"127.0.0.1"``/``"localhost"``
        for its loopback). Leaving the context stops listening and removes a unix socket's
        file (bounded, shielded). A unix socket is made with mode 0600 (as sshd's
        ``StreamLocalBindMask``); an existing file at ``path`` is an error, as with sshd.

        Raises:
            ForwardError: cannot listen there (``failed``: address in use, no such address;
                ``unknown_host``; ``unsupported``).
        """

    def keep(self) -> None:
        """Leaving the sandbox's context will leave its container running (its programs
        started through trissh are still ended): a workspace kept across a restart."""

    async def put_files(self, files: Mapping[str, bytes]) -> None:
        """Write files (absolute path -> content, mode 0644, owned by the container's root)
        into the container, creating missing parent directories; existing files are
        replaced.

        Raises:
            BackendError: a path is not absolute, or the container refused the write.
        """


class Backend(Protocol):
    """Creates sandboxes. One instance serves the whole server.

    A new kind of backend is a package beside :mod:`trissh.backend.podman` and one entry in
    :mod:`trissh.backend.registry`; ``tests/backend/conformance.py`` checks it.
    """

    @property
    def url(self) -> str:
        """Where the container service is, as ``trissh doctor`` reports it."""

    @property
    def warm_containers(self) -> int:
        """Started containers waiting for a login (see :meth:`keep_warm`); a gauge."""

    @property
    def starts_waiting(self) -> int:
        """Logins waiting for their turn to start a container; a gauge (0 without a queue)."""

    @property
    def starts_running(self) -> int:
        """Container starts in progress; a gauge."""

    def open_sandbox(self, spec: SandboxSpec) -> AbstractAsyncContextManager[Sandbox]:
        """Create and start a container; leaving the context removes it (bounded, shielded).

        Raises:
            ImageNotFound: the image does not exist (and the pull policy does not pull it).
            ImagePullFailed: the pull policy asked for a pull, and it failed.
            BackendUnavailable: the container service cannot be reached.
            BackendError: anything else that stopped the container from starting.
        """

    def keep_warm(self, settings: ContainerSettings, instance: str) -> None:
        """Containers built from ``settings`` may be started ahead of logins (a hint).

        Called before ``run`` and again on every configuration reload. A backend without a
        warm pool ignores it.
        """

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background upkeep for the server's lifetime (retrying removals that failed).

        ``serve`` starts it before the first connection and cancels it after the last;
        cancellation makes a last bounded attempt at anything still pending.
        """

    async def sweep(self, *, keep_instance: str) -> int:
        """Remove containers left by other (crashed) trissh instances; return how many.
        Workspaces (label ``trissh.workspace``) are left to the workspace registry."""

    async def find_sandboxes(self, labels: Mapping[str, str | None]) -> list[FoundSandbox]:
        """This backend's containers carrying ``labels`` (a ``None`` value: the key only).

        Raises:
            BackendUnavailable: the container service cannot be reached.
        """

    def adopt_sandbox(
        self, found: FoundSandbox, spec: SandboxSpec
    ) -> AbstractAsyncContextManager[Sandbox]:
        """Take over a running container an earlier trissh process kept; leaving the
        context removes it (unless kept), as with ``open_sandbox``.

        Raises:
            BackendError: it is gone or not running.
        """

    async def remove_sandbox(self, container_id: str) -> bool:
        """Remove a container nobody holds (an operator's order, a stale workspace);
        False if it was already gone."""

    async def create_volume(self, name: str, labels: Mapping[str, str]) -> None:
        """Create a named volume unless it exists (then its labels are left as they are)."""

    async def find_volumes(self, labels: Mapping[str, str | None]) -> list[FoundVolume]:
        """This backend's named volumes carrying ``labels``."""

    async def remove_volume(self, name: str) -> bool:
        """Remove a named volume no container uses; False if it was already gone.

        Raises:
            BackendError: a container still uses it, or the service failed.
        """

    async def health(self, settings: ContainerSettings) -> list[HealthCheck]:
        """Check the service, runtime, containment and image of containers built from
        ``settings``, for ``trissh doctor`` (slow: seconds)."""

    async def ready(self, image: str) -> str | None:
        """Whether a login could get a container now: None, or why not (the service does
        not answer, the image is missing). Cheap (milliseconds): the server asks every
        second or so to keep ``/readyz`` current. Never raises but ``Cancelled``."""

    async def host_limits(self, settings: ContainerSettings) -> list[HealthCheck]:
        """The host's ceilings on sandboxes at once, each with how to raise it, for
        ``trissh doctor`` (may start one sandboxed probe of ``settings``; too slow for
        readiness checks)."""

    def close(self) -> None:
        """Release connections and host resources (no checkpoint) once the backend is no
        longer used; its containers are gone by then (``run`` ended, or never ran)."""
