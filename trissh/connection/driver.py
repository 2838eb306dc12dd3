"""serve_connection: one nursery per TCP connection, one reader and one writer.

Theory of operation
-------------------
``_receive_loop`` is the only task that reads the socket. Writes happen in two ways, in
order: ``flush_now`` writes queued output synchronously from the channel task that produced
it (a bulk pump) as far as the socket takes it without waiting, and ``_send_loop`` sends the
rest once the socket is writable again. The reader only rings the doorbell, so the small
replies of a batch of events (window adjusts, acks) leave in one write, not one each. Only
``_send_loop`` ever awaits a write, so a write is never cancelled half-way except when the
whole connection is going down (a half-written packet leaves an encrypted stream unusable).
Channel tasks otherwise only mutate the sans-IO core and ring the writer's doorbell.

The receive loop awaits the socket and authentication decisions, nothing else: every other event
is dispatched synchronously (start a task, feed a channel handle, wake senders), so a slow
container never stalls key exchange or other channels. Its wait for the socket is also the
connection's clock: once authenticated it reads under a cancel scope whose deadline is the
next timer (time-based rekey, ClientAlive probe), runs the timer at that deadline and goes
back to reading. A task per connection for two timers that rarely fire cost ~2 % of a short
login's CPU; a read cancelled by the clock consumes nothing (``SocketReader``), and no
authentication decision is awaited once the clock runs.

Nursery tree::

    serve_connection            binds conn_id/remote for every log line below
    └─ login-grace scope        deadline until authentication, then none
       └─ connection nursery
          ├─ _receive_loop      socket → core → events; after authentication also the
          │                     timers (time-based rekeying, ClientAlive)
          ├─ _send_loop         doorbell → what flush_now left → socket (started at the
          │                     first ring: most connections never fill the socket)
          ├─ sandbox keeper     starts and holds the connection's container (sandboxes.py)
          │                     from the first session channel's opening
          ├─ tell_user          shutdown notice to a busy session (bounded)
          └─ run_session (one each)    one per session channel (session.py)

Leaving the nursery (EOF, DISCONNECT, protocol error, cancellation) cancels every session
and the keeper; their ``finally`` blocks remove processes and the container, bounded and
shielded. Then a last flush sends any queued DISCONNECT and the socket is closed.
"""

from __future__ import annotations

import contextlib
import math
import socket
import time
from dataclasses import dataclass, field
from typing import assert_never

import structlog
import trio

from trissh.auth.login import LoginConversation
from trissh.auth.policy import AuthPolicy, Grant, LoginRequest
from trissh.backend import Backend, SandboxSpec
from trissh.channels.session import run_session, tell_user
from trissh.config import ContainerSection, ServerConfig, SessionSection, container_settings
from trissh.connection.channel import ChannelHandle
from trissh.connection.sandboxes import ConnectionSandbox
from trissh.connection.scatter_write import Chunk, send_chunks, socket_fd, write_now
from trissh.connection.socket_reads import SocketReader
from trissh.ops.metrics import Metrics
from trissh.ops.recording import Recorder
from trissh.protocol import (
    Authenticated,
    AuthFailed,
    AuthPartiallySucceeded,
    ChannelCloseReceived,
    ChannelDataReceived,
    ChannelEOFReceived,
    ChannelId,
    ChannelOpenFailureReason,
    ChannelOpenRequested,
    ChannelWindowAdjusted,
    ConnectionLost,
    DisconnectReason,
    DisconnectReceived,
    Event,
    KeyboardInteractiveAuthRequested,
    KeyboardInteractiveResponsesReceived,
    KeyExchangeCompleted,
    PasswordAuthRequested,
    ProtocolConfig,
    PublicKeyAuthRequested,
    RemoteProtocolError,
    RequestRefused,
    ServerConnection,
    SessionRequested,
    SignalReceived,
    VersionReceived,
    WindowChanged,
)

log = structlog.get_logger("trissh.connection.driver")

#: Bytes asked of the socket per read.
RECEIVE_SIZE = 256 * 1024
#: Channel writers wait while this much output is queued in the core.
OUTPUT_HIGH_WATER = 1024 * 1024
#: Bound on the final flush of a DISCONNECT and on closing the socket.
CLOSE_TIMEOUT = 2.0
SHUTDOWN_MESSAGE = "server shutting down"
#: Refused requests logged per connection: a client looping on them cannot flood the log
#: (``connection_closed`` counts them all).
MAX_REFUSALS_LOGGED = 10


def _count_down(counts: dict[str, int], key: str) -> None:
    """Take one from ``counts[key]``, forgetting the key at zero."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


@dataclass(slots=True)
class ServerState:
    """Live numbers of a running server, for the debug statistic and tests."""

    #: Connections not yet authenticated, per source address (MaxStartups).
    unauthenticated_by_source: dict[str, int] = field(default_factory=dict)
    #: The context new connections get; a reload (SIGHUP) replaces it, live ones keep theirs.
    context: ServerContext | None = None
    #: Live connections, so a shutdown can tell their users and end the idle ones.
    drivers: set[ConnectionDriver] = field(default_factory=set)
    shutting_down: bool = False
    #: The nursery that connections run in (set by ``serve``).
    connections_nursery: trio.Nursery | None = None
    #: The task running ``serve_listeners`` (its accept loops are not connection work).
    listener_task: trio.lowlevel.Task | None = None

    @property
    def live_connections(self) -> int:
        return len(self.drivers)

    @property
    def unauthenticated(self) -> int:
        """Connections not yet authenticated, from every source."""
        return sum(self.unauthenticated_by_source.values())

    def claim_startup(self, source: str) -> None:
        self.unauthenticated_by_source[source] = self.unauthenticated_by_source.get(source, 0) + 1

    def release_startup(self, source: str) -> None:
        _count_down(self.unauthenticated_by_source, source)

    def statistics(self) -> dict[str, int]:
        """``connections``, and ``tasks``: every task under the connections nursery but
        the listener's. Both are 0 on an idle server: anything else is a leak."""
        tasks = 0
        pending = list(self.connections_nursery.child_tasks) if self.connections_nursery else []
        while pending:
            task = pending.pop()
            if task is self.listener_task:
                continue
            tasks += 1
            for nursery in task.child_nurseries:
                pending.extend(nursery.child_tasks)
        return {"connections": self.live_connections, "tasks": tasks}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerContext:
    """What every connection of one server shares."""

    settings: ServerConfig
    protocol: ProtocolConfig
    auth: AuthPolicy
    backend: Backend
    instance: str
    metrics: Metrics = field(default_factory=Metrics)
    #: Session recordings, when ``[recording] enabled``.
    recorder: Recorder | None = None
    #: Live authenticated connections per user name (``max_connections_per_user``).
    user_connections: dict[str, int] = field(default_factory=dict)
    state: ServerState = field(default_factory=ServerState)


class _Doorbell:
    """Wakes the writer; a ring between two waits is never lost."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def ring(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


class ConnectionDriver:
    """Runs one connection: the core, its reader and writer, and its channel tasks."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        ctx: ServerContext,
        *,
        conn_id: str,
        remote: str,
        initial_data: bytes = b"",
    ) -> None:
        self.ctx = ctx
        self.conn_id = conn_id
        self.remote = remote
        self.conn = ServerConnection(ctx.protocol)
        self.username: str | None = None
        #: The authenticated user's effective settings (server-wide merged with theirs).
        self.container_settings: ContainerSection = ctx.settings.container
        self.session_settings: SessionSection = ctx.settings.session
        self._sandbox: ConnectionSandbox | None = None
        self.close_reason = "closed"
        self._stream = stream
        self._reader = SocketReader(stream)
        self._doorbell = _Doorbell()
        self.space_changed = trio.Event()
        self._handles: dict[ChannelId, ChannelHandle] = {}
        self._nursery: trio.Nursery | None = None
        self._writing = False
        self._writer_started = False
        self._fd = socket_fd(stream)
        #: Output taken from the core that the socket did not accept yet (``flush_now``).
        self._backlog: list[Chunk] = []
        self._backlog_size = 0
        self._ended = False
        self._quickack = True
        self._last_received = trio.current_time()
        self._keys_since = trio.current_time()
        #: The connection's timers (0 turns one off), set at authentication (``_arm_clock``).
        self._rekey_interval = 0.0
        self._alive_interval = 0.0
        self._alive_count_max = 0
        self._probe_at = math.inf
        #: The cancel scope the receive loop reads under; its deadline is the next timer.
        self._clock: trio.CancelScope | None = None
        remote_ip = remote.rsplit(":", 1)[0].strip("[]")
        self._login = LoginConversation(
            ctx.auth,
            self.conn,
            lambda username, metadata: LoginRequest(
                username,
                remote_ip,
                conn_id,
                remote=remote,
                client_version=self.conn.client_version or "",
                metadata=metadata,
            ),
        )
        #: Restrictions of the login (forced command, no pty, environment) for sessions.
        self.grant = Grant()
        self.remote_ip = remote_ip
        self._accepted_at = trio.current_time()
        self._handshake_done = False
        self._metrics = ctx.metrics.connection_opened()
        ctx.state.claim_startup(remote_ip)
        self._startup_claimed = True
        if initial_data:  # bytes read past a PROXY header belong to SSH
            self.conn.receive_data(initial_data)
        self._counted_user: str | None = None
        self.requests_refused = 0

    # -- called by channel streams and sessions (sync: write what the socket takes, never wait)

    def ring(self) -> None:
        """Wake the writer task, starting it the first time it is needed."""
        if not self._writer_started and self._nursery is not None:
            self._writer_started = True
            self._nursery.start_soon(self._send_loop)
        self._doorbell.ring()

    def _space_changed(self) -> None:
        self.space_changed.set()
        self.space_changed = trio.Event()

    def send_room(self, channel_id: ChannelId) -> int:
        """Bytes a channel may write now; ``-1`` once it can never write again."""
        window = self.conn.send_window(channel_id)
        if window is None:
            return -1
        queued = self.conn.pending_output_size + self._backlog_size
        return max(0, min(window, OUTPUT_HIGH_WATER - queued))

    def send_channel_data(self, channel_id: ChannelId, data: memoryview, *, stderr: bool) -> int:
        """Queue channel data; the caller then calls ``flush_now``."""
        return self.conn.send_channel_data(channel_id, data, stderr=stderr)

    def flush_now(self) -> None:
        """Write queued output from the calling task as far as the socket takes it now.

        Saves a hand-off to the writer task per chunk of bulk data. Whatever remains (a full
        socket, a write in progress, a stream that is not a socket) is left to
        ``_send_loop``, behind anything it already holds, so the order never changes.
        """
        if not self.conn.pending_output_size:
            return  # nothing new; a backlog already has the writer's attention
        if self._writing or self._backlog or self._fd is None:
            self.ring()
            return
        chunks = self.conn.take_output()
        if not chunks:
            return
        rest = write_now(self._fd, chunks)
        if rest:
            self._backlog = rest
            self._backlog_size = sum(map(len, rest))
            self.ring()
        self._space_changed()

    def send_channel_eof(self, channel_id: ChannelId) -> None:
        self.conn.send_channel_eof(channel_id)
        self.flush_now()

    def acknowledge(self, channel_id: ChannelId, amount: int) -> None:
        self.conn.acknowledge_channel_data(channel_id, amount)
        self.flush_now()

    def reply_session_request(self, channel_id: ChannelId, ok: bool) -> None:
        self.conn.reply_session_request(channel_id, ok)
        self.flush_now()

    def finish_channel(
        self, handle: ChannelHandle, *, code: int | None, signal: str | None
    ) -> None:
        """Exit status, EOF and CLOSE, in sshd's order; then forget the handle.

        The output is already sent: sessions finish only after their program's stdout and
        stderr reached EOF.
        """
        conn = self.conn
        if signal is not None:
            conn.send_exit_signal(handle.id, signal)
        elif code is not None:
            conn.send_exit_status(handle.id, code)
        conn.send_channel_eof(handle.id)
        conn.close_channel(handle.id)
        self._handles.pop(handle.id, None)
        self._space_changed()
        self.flush_now()

    # -- the connection's life ------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends; never raises except ``Cancelled``."""
        grace = trio.CancelScope(
            deadline=trio.current_time() + self.ctx.settings.limits.login_grace_time
        )
        self._grace = grace
        try:
            with grace:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await self._receive_loop()
                    nursery.cancel_scope.cancel()
            if grace.cancelled_caught:
                self.close_reason = "login_grace_timeout"
                log.info("login_grace_expired")
                self.conn.disconnect(
                    DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE, "login grace time exceeded"
                )
        except* RemoteProtocolError as group:
            error = group.exceptions[0]
            assert isinstance(error, RemoteProtocolError)
            self.close_reason = "protocol_error"
            log.warning("protocol_error", reason=error.reason.name.lower(), description=str(error))
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.close_reason = "connection_reset"
        except* Exception:
            self.close_reason = "internal_error"
            log.exception("connection_failed")
            self.conn.disconnect(DisconnectReason.BY_APPLICATION, "internal server error")
        finally:
            self._writer_started = True  # the nursery is closed; the last flush writes
            self._release_user_slot()
            self._release_startup()
            if not self._handshake_done:
                self.ctx.metrics.handshake_failed()
            if self.ctx.state.shutting_down and not self._ended and not self.conn.closed:
                self.close_reason = "server_shutdown"  # cut short, not ended on its own
                self.conn.disconnect(DisconnectReason.BY_APPLICATION, SHUTDOWN_MESSAGE)
            await self._flush_and_close()

    def metrics_closed(self, bytes_in: int, bytes_out: int) -> None:
        self._metrics.closed(self.close_reason, bytes_in, bytes_out)

    def _release_startup(self) -> None:
        """No longer an unauthenticated connection (MaxStartups counts only those)."""
        if self._startup_claimed:
            self._startup_claimed = False
            self.ctx.state.release_startup(self.remote_ip)

    def _claim_user_slot(self, username: str) -> bool:
        """Count this connection against the user's limit; False if the limit is reached."""
        limit = self.session_settings.max_connections_per_user
        live = self.ctx.user_connections.get(username, 0)
        if limit and live >= limit:
            return False
        self.ctx.user_connections[username] = live + 1
        self._counted_user = username
        return True

    def _release_user_slot(self) -> None:
        if self._counted_user is None:
            return
        _count_down(self.ctx.user_connections, self._counted_user)
        self._counted_user = None

    def shutting_down(self) -> None:
        """The server stops: idle connections end now; users of sessions are told, and
        their sessions get the shutdown grace (the connections nursery's deadline)."""
        busy = [handle for handle in self._handles.values() if handle.session_started]
        if not busy:
            self._end(DisconnectReason.BY_APPLICATION, SHUTDOWN_MESSAGE, "server_shutdown")
            return
        assert self._nursery is not None
        for handle in busy:
            self._nursery.start_soon(tell_user, handle, f"\r\ntrissh: {SHUTDOWN_MESSAGE}\r\n")

    def _end(self, reason: DisconnectReason, description: str, close_reason: str) -> None:
        """Disconnect on our own initiative: queue DISCONNECT, stop reading, cancel tasks."""
        log.info("connection_ended_by_server", reason=close_reason, description=description)
        self.close_reason = close_reason
        self.conn.disconnect(reason, description)
        self._ended = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _next_timer(self) -> float:
        rekey = self._keys_since + self._rekey_interval if self._rekey_interval else math.inf
        return min(rekey, self._probe_at)

    def _arm_clock(self, rekey_interval: float, alive_interval: float, count_max: int) -> None:
        """Start the connection's two timers (0 turns either off).

        Time-based rekeying (the core rekeys by volume itself): no key lives longer than
        ``rekey_interval``. sshd's ClientAlive: a client silent for ``alive_interval`` is
        asked to answer; one that leaves ``count_max`` probes unanswered is gone, and its
        containers with it. Before authentication the login grace time bounds a connection.
        """
        self._rekey_interval = rekey_interval
        self._alive_interval = alive_interval
        self._alive_count_max = count_max
        self._probe_at = trio.current_time() + alive_interval if alive_interval else math.inf
        self._reset_clock()

    def _reset_clock(self) -> None:
        """The timers changed: the receive loop's clock wakes at the next one."""
        if self._clock is not None:
            self._clock.deadline = self._next_timer()

    def _on_timer(self) -> None:
        """The clock's deadline passed: rekey, probe or give up on the client, as due."""
        now = trio.current_time()
        if self._rekey_interval and now >= self._keys_since + self._rekey_interval:
            self.conn.request_rekey()
            self.flush_now()
            self._keys_since = now  # until the exchange completes
        if now < self._probe_at:
            return
        self._probe_at = now + self._alive_interval
        if now - self._last_received < self._alive_interval:
            return
        if self.conn.keepalives_unanswered >= self._alive_count_max:
            self._end(
                DisconnectReason.CONNECTION_LOST,
                "timeout, client not responding",
                "client_alive_timeout",
            )
            return
        self.conn.send_keepalive()
        self.flush_now()

    def sandbox_spec(self) -> SandboxSpec:
        """What a container of this connection's user looks like, labels included."""
        assert self.username is not None
        return SandboxSpec(
            conn_id=self.conn_id,
            username=self.username,
            remote=self.remote,
            instance=self.ctx.instance,
            settings=container_settings(self.container_settings),
        )

    @property
    def sandbox(self) -> ConnectionSandbox:
        """The connection's container owner (``connection`` mode), made after authentication."""
        if self._sandbox is None:
            assert self._nursery is not None
            self._sandbox = ConnectionSandbox(self.ctx.backend, self.sandbox_spec(), self._nursery)
        return self._sandbox

    async def _flush_and_close(self) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            chunks = self._take_unsent()
            if chunks and not self._writing:
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError
                ):
                    await send_chunks(self._stream, chunks)
        if isinstance(self._stream, trio.SocketStream):
            # What aclose_forcefully does, minus the Cancelled it raises and catches: closing
            # a socket never blocks, and this runs once per connection.
            self._stream.socket.close()
        else:
            await trio.aclose_forcefully(self._stream)

    async def _send_loop(self) -> None:
        while True:
            await self._doorbell.wait()
            chunks = self._take_unsent()
            if chunks:
                self._writing = True
                await send_chunks(self._stream, chunks)
                self._writing = False
                self._space_changed()

    def _take_unsent(self) -> list[Chunk]:
        """The backlog, then what the core queued since: everything not yet written."""
        chunks: list[Chunk] = [*self._backlog, *self.conn.take_output()]
        self._backlog, self._backlog_size = [], 0
        return chunks

    async def _receive_loop(self) -> None:
        """Read and process until the connection ends, running its timers when they are due
        (why here: the module docstring)."""
        while not self._ended:
            with trio.CancelScope(deadline=self._next_timer()) as clock:
                self._clock = clock
                await self._receive_until_end()
                return
            self._on_timer()

    async def _receive_until_end(self) -> None:
        conn = self.conn
        while True:
            await self._process_events()
            if self._ended or conn.closed:
                return
            try:
                data = await self._reader.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, OSError):
                data = b""
            if self._quickack and data:
                self._rearm_quickack()
            self._last_received = trio.current_time()
            conn.receive_data(data)

    def _rearm_quickack(self) -> None:
        """Delayed ACKs stall handshake round trips by ~40 ms; ask for quick ones meanwhile."""
        sock = getattr(self._stream, "socket", None)
        if sock is None or not hasattr(socket, "TCP_QUICKACK"):
            self._quickack = False
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            self._quickack = False

    async def _process_events(self) -> None:
        conn = self.conn
        while (event := conn.next_event()) is not None:
            if isinstance(
                event,
                PublicKeyAuthRequested
                | PasswordAuthRequested
                | KeyboardInteractiveAuthRequested
                | KeyboardInteractiveResponsesReceived,
            ):
                await self._login.decide(event)
            else:
                self._dispatch(event)
        self.flush_now()

    def _dispatch(self, event: Event) -> None:
        match event:
            case ChannelDataReceived():
                if (handle := self._handles.get(event.channel_id)) is not None:
                    handle.feed(event.data)
            case ChannelWindowAdjusted():
                self._space_changed()
            case ChannelEOFReceived():
                if (handle := self._handles.get(event.channel_id)) is not None:
                    handle.feed_eof()
            case ChannelCloseReceived():
                self._on_channel_close(event.channel_id)
            case WindowChanged():
                if (handle := self._handles.get(event.channel_id)) is not None:
                    handle.feed_control(event.size)
            case SignalReceived():
                if (handle := self._handles.get(event.channel_id)) is not None:
                    handle.feed_control(event.signal)
            case ChannelOpenRequested():
                self._on_channel_open(event.channel_id)
            case RequestRefused():
                self._note_refused(event.request, event.reason, event.channel_id, event.target)
            case SessionRequested():
                self._on_session_requested(event)
            case VersionReceived():
                structlog.contextvars.bind_contextvars(client_version=event.version)
            case KeyExchangeCompleted():
                self._keys_since = trio.current_time()
                self._reset_clock()
                if not event.is_rekey:
                    self._handshake_done = True
                    self.ctx.metrics.handshake_done(
                        event.algorithms.kex, trio.current_time() - self._accepted_at
                    )
                algorithms = event.algorithms
                log.info(
                    "kex_completed",
                    rekey=event.is_rekey,
                    kex=algorithms.kex,
                    host_key=algorithms.host_key,
                    cipher_in=algorithms.cipher_client_to_server,
                    cipher_out=algorithms.cipher_server_to_client,
                    strict_kex=algorithms.strict_kex,
                )
            case AuthFailed():
                self.ctx.metrics.auth_attempt(event.method, "failure")
                log.info(
                    "auth_failed",
                    user=event.username,
                    method=event.method,
                    reason=event.reason,
                    key_fingerprint=event.key_fingerprint,
                )
            case Authenticated():
                self._on_authenticated(event)
            case DisconnectReceived():
                self._ended = True
                self.close_reason = "client_disconnected"
            case ConnectionLost():
                self._ended = True
                self.close_reason = "connection_lost"
            case AuthPartiallySucceeded():
                self._login.confirmed(event)
                self.ctx.metrics.auth_attempt(event.method, "partial")
                log.info(
                    "auth_partially_succeeded",
                    user=event.username,
                    method=event.method,
                    remaining=list(event.remaining),
                    key_fingerprint=event.key_fingerprint,
                )
            case (
                PublicKeyAuthRequested()
                | PasswordAuthRequested()
                | KeyboardInteractiveAuthRequested()
                | KeyboardInteractiveResponsesReceived()
            ):
                raise AssertionError("decisions are answered by _process_events")
            case _:
                assert_never(event)

    def _on_authenticated(self, event: Authenticated) -> None:
        self._login.confirmed(event)
        self._release_startup()
        self.ctx.metrics.auth_attempt(event.method, "success")
        self.grant = self._login.grant
        if not self.grant.allow_pty:
            self.conn.forbid_pty()
        # A webhook may have verified another name (ContainerSSH's authenticatedUsername):
        # that is who the containers, labels, limits and logs are for.
        username = self.grant.username or event.username
        self.username = username
        self.container_settings = self.ctx.settings.with_container_overrides(
            username, self.grant.container
        )
        self.session_settings = self.ctx.settings.session_for(username)
        self._grace.deadline = math.inf
        structlog.contextvars.bind_contextvars(user=username)
        log.info(
            "auth_succeeded",
            method=event.method,
            key_fingerprint=event.key_fingerprint,
            **self._login.log_fields,
        )
        if not self._claim_user_slot(username):
            self.ctx.metrics.connection_rejected("rejected_limit")
            self._end(
                DisconnectReason.TOO_MANY_CONNECTIONS,
                f"too many connections for user {username}",
                "user_connection_limit",
            )
            return
        self._arm_clock(
            self.ctx.settings.ssh.rekey_interval,
            self.session_settings.client_alive_interval,
            self.session_settings.client_alive_count_max,
        )

    def _note_refused(
        self, request: str, reason: str, channel: int | None = None, target: str | None = None
    ) -> None:
        """One line per refused request (port forwarding is what operators look for), up to
        a bound per connection."""
        self.requests_refused += 1
        if self.requests_refused <= MAX_REFUSALS_LOGGED:
            log.info(
                "request_refused", request=request, reason=reason, channel=channel, target=target
            )

    def _on_channel_open(self, channel_id: ChannelId) -> None:
        if self.ctx.state.shutting_down:
            self.conn.reject_channel(
                channel_id, ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED, SHUTDOWN_MESSAGE
            )
            self._note_refused("session", SHUTDOWN_MESSAGE)
            return
        limit = self.session_settings.max_sessions_per_connection
        if len(self._handles) >= limit:
            reason = f"at most {limit} sessions per connection"
            self.conn.reject_channel(channel_id, ChannelOpenFailureReason.RESOURCE_SHORTAGE, reason)
            self._note_refused("session", reason)
            return
        self.conn.accept_channel(channel_id)
        self._handles[channel_id] = ChannelHandle(self, channel_id)
        if self.session_settings.execution_mode == "connection":
            # The client sends its request only after our confirmation: start the
            # container now and that round trip hides part of its start.
            self.sandbox.prepare(self.container_settings.start_timeout)

    def _on_channel_close(self, channel_id: ChannelId) -> None:
        handle = self._handles.get(channel_id)
        if handle is None:
            self.conn.close_channel(channel_id)
            return
        handle.peer_close()
        if not handle.session_started:
            self.finish_channel(handle, code=None, signal=None)

    def _on_session_requested(self, event: SessionRequested) -> None:
        handle = self._handles.get(event.channel_id)
        assert self._nursery is not None
        if handle is None:
            self.conn.reply_session_request(event.channel_id, False)
            return
        handle.session_started = True
        self._quickack = False
        self._nursery.start_soon(run_session, self, handle, event)


async def serve_connection(
    stream: trio.abc.Stream,
    ctx: ServerContext,
    *,
    conn_id: str,
    remote: str,
    initial_data: bytes = b"",
) -> None:
    """Serve one client until it leaves; log its life in ``connection_*`` events.

    Cancellation: tears the connection down (sessions, container, socket) within bounds.
    """
    started = time.monotonic()
    with structlog.contextvars.bound_contextvars(conn_id=conn_id, remote=remote):
        log.info("connection_accepted")
        driver = ConnectionDriver(
            stream, ctx, conn_id=conn_id, remote=remote, initial_data=initial_data
        )
        ctx.state.drivers.add(driver)
        try:
            await driver.run()
        finally:
            ctx.state.drivers.discard(driver)
            stats = driver.conn.statistics()
            driver.metrics_closed(stats.bytes_received, stats.bytes_sent)
            log.info(
                "connection_closed",
                reason=driver.close_reason,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
                bytes_in=stats.bytes_received,
                bytes_out=stats.bytes_sent,
                requests_refused=driver.requests_refused,
            )
