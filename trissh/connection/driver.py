"""serve_connection: one nursery per TCP connection, one reader, one writer, a task each.

Theory of operation
-------------------
``_receive_loop`` is the only task that reads the socket. It feeds the sans-IO core and
routes each event (``_dispatch``, a plain router): authentication decisions are awaited
(the only thing awaited besides the socket), channel data to the channel's handle, channel
opens and requests to the handler of the channel's kind (sessions: ``SessionChannels``),
handshake and login facts to their log lines. A slow container never stalls key exchange
or other channels: handlers run in tasks of their own and act through the
``ConnectionPort``, never the driver. Writing is the ``OutputWriter``'s (writer.py).

The receive loop's wait for the socket is also the connection's clock: once authenticated
it reads under a cancel scope whose deadline is the next timer (clock.py), runs the timer
at that deadline and goes back to reading. A read cancelled by the clock consumes nothing
(``SocketReader``), and no authentication decision is awaited once the clock runs.

Nursery tree::

    serve_connection            binds conn_id/remote for every log line below
    └─ login-grace scope        deadline until authentication, then none
       └─ connection nursery
          ├─ _receive_loop      socket → core → events; after authentication also the
          │                     timers (time-based rekeying, ClientAlive)
          ├─ writer's send loop what flush_now left → socket (writer.py; from the first ring)
          ├─ sandbox keeper     the connection's container, from the first session (sandboxes.py)
          ├─ tell_user          shutdown notice to a busy session (bounded)
          └─ run_session (one each)    one per session channel (channels/session.py)

Leaving the nursery (EOF, DISCONNECT, protocol error, cancellation) cancels every channel
task and the keeper; their ``finally`` blocks remove processes and the container, bounded
and shielded. Then a last flush sends any queued DISCONNECT and the socket is closed.
"""

from __future__ import annotations

import math
import time
from typing import assert_never

import structlog
import trio

from trissh.addresses import host_of
from trissh.admin.live import ConnectionView, LiveSession, LiveSessions
from trissh.auth.login import LoginConversation
from trissh.auth.policy import LoginRequest
from trissh.connection import handshake
from trissh.connection.clock import ConnectionClock, TimerAction
from trissh.connection.handshake import Login
from trissh.connection.kinds import ChannelKinds, Connection, channel_kinds
from trissh.connection.port import ConnectionPort, Refusal
from trissh.connection.socket_reads import SocketReader, ask_quick_acks
from trissh.connection.writer import OutputWriter
from trissh.ops.log_quota import LogQuota
from trissh.ops.metrics import BYTES_REPORT_INTERVAL
from trissh.protocol import (
    AgentForwardingRequested,
    AuthDecisionRequested,
    Authenticated,
    AuthFailed,
    AuthPartiallySucceeded,
    ChannelCloseReceived,
    ChannelDataReceived,
    ChannelEOFReceived,
    ChannelOpenConfirmed,
    ChannelOpenFailed,
    ChannelOpenFailureReason,
    ChannelOpenRequested,
    ChannelWindowAdjusted,
    ConnectionLost,
    DisconnectReason,
    DisconnectReceived,
    Event,
    GlobalRequestReceived,
    InputPaused,
    KeyExchangeCompleted,
    RemoteProtocolError,
    RequestRefused,
    ServerConnection,
    SessionRequested,
    SignalReceived,
    VersionReceived,
    WindowChanged,
)
from trissh.protocol.forwarding import DIRECT_STREAMLOCAL, DIRECT_TCPIP
from trissh.protocol.session_channel import SESSION
from trissh.server.state import ServerContext

log = structlog.get_logger("trissh.connection.driver")

#: Bytes asked of the socket per read.
RECEIVE_SIZE = 256 * 1024
#: Reading stops while more than this much output is unsent: before login, and after it
#: (above what bulk channel output queues, OUTPUT_HIGH_WATER plus one chunk).
UNSENT_BEFORE_LOGIN = 64 * 1024
UNSENT_BEFORE_READING = 4 * 1024 * 1024
#: After a key re-exchange the connection waits this many times the CPU it cost (up to
#: ~100 ms with diffie-hellman-group18, in the one event loop), at most REKEY_PAUSE_MAX:
#: a connection's re-exchanges take at most a fifth of the loop, whoever started them (the
#: client's bytes start the server's, with rekey_bytes); curve25519 (~1 ms) barely waits.
REKEY_PACING = 4.0
REKEY_PAUSE_MAX = 2.0
SHUTDOWN_MESSAGE = "server shutting down"
#: Why a connection ended when the client ended it (its DISCONNECT, or its socket closed).
PEER_ENDED = frozenset({"client_disconnected", "connection_lost"})
#: Refused requests logged per connection: a client looping on them cannot flood the log
#: (``connection_closed`` counts them all).
MAX_REFUSALS_LOGGED = 10
#: Other lines a client's requests cause (forward_failed, subsystem_refused, signals).
MAX_CLIENT_LINES = 100


class ConnectionDriver:
    """Runs one connection: the core, its reader, and the handlers of its channels."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        ctx: ServerContext,
        *,
        conn_id: str,
        remote: str,
        local: str = "",
        initial_data: bytes = b"",
        greeted: bool = False,
    ) -> None:
        self.ctx = ctx
        self.local = local
        self.conn_id = conn_id
        self.remote = remote
        self.remote_ip = host_of(remote)
        self.conn = ServerConnection(ctx.protocol, greeted=greeted)
        self.close_reason = "closed"
        #: Refused requests: the first MAX_REFUSALS_LOGGED logged, all counted.
        self.refusals = LogQuota(MAX_REFUSALS_LOGGED)
        self.client_lines = LogQuota(MAX_CLIENT_LINES)
        self.login: Login | None = None
        #: Its running sessions as operators see them (``trissh sessions``, ``watch``).
        self.live = LiveSessions()
        self._connected_at = time.time()
        self._stream = stream
        self._reader = SocketReader(stream)
        self._writer = OutputWriter(stream, self.conn)
        self._port = ConnectionPort(self.conn, self._writer)
        self._clock = ConnectionClock()
        #: The handlers of each channel kind, from authentication on.
        self._kinds: ChannelKinds | None = None
        self._nursery: trio.Nursery | None = None
        self._grace = trio.CancelScope(
            deadline=trio.current_time() + ctx.settings.limits.login_grace_time
        )
        self._ended = False
        self._quickack = True
        self._accepted_at = trio.current_time()
        self._handshake_done = False
        self._kex = ctx.state.kex_budget.account()
        #: Until when the last re-exchange holds the connection (REKEY_PACING).
        self._paused_until = 0.0
        self._metrics = ctx.metrics.connection_opened()
        self._bytes_reported_at = trio.current_time()
        self._login = LoginConversation(lambda: ctx.latest, self.conn, self._login_request)
        ctx.state.claim_startup(self.remote_ip)
        self._startup_claimed = True
        self._counted_user: str | None = None
        if initial_data:  # bytes read past a PROXY header belong to SSH: the first read's
            self.conn.receive_data(initial_data)
        self._initial_data = initial_data

    def _login_request(self, username: str, metadata: object) -> LoginRequest:
        return LoginRequest(
            username,
            self.remote_ip,
            self.conn_id,
            remote=self.remote,
            client_version=self.conn.client_version or "",
            metadata=metadata,  # type: ignore[arg-type]
        )

    # -- the connection's life ------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends; never raises except ``Cancelled``."""
        try:
            with self._grace:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._writer.attach(nursery)
                    await self._receive_loop()
                    if self.close_reason in PEER_ENDED:
                        self._writer.peer_left()
                    nursery.cancel_scope.cancel()
            if self._grace.cancelled_caught:
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
            if self.close_reason not in PEER_ENDED:
                self.close_reason = "connection_reset"
        except* Exception:
            self.close_reason = "internal_error"
            log.exception("connection_failed")
            self.conn.disconnect(DisconnectReason.BY_APPLICATION, "internal server error")
        finally:
            self._release_claims()
            if not self._handshake_done:
                self.ctx.metrics.handshake_failed()
            if self.ctx.state.shutting_down and not self._ended and not self.conn.closed:
                self.close_reason = "server_shutdown"  # cut short, not ended on its own
                self.conn.disconnect(DisconnectReason.BY_APPLICATION, SHUTDOWN_MESSAGE)
            await self._writer.flush_and_close()

    def greet(self) -> None:
        """Write what the core queued at its start (KEXINIT) now, from the caller."""
        self._writer.flush_now()

    def metrics_closed(self, bytes_in: int, bytes_out: int) -> None:
        self._metrics.closed(self.close_reason, bytes_in, bytes_out)

    def _release_claims(self) -> None:
        self._release_startup()
        if self._counted_user is not None:
            self.ctx.state.release_user(self._counted_user)
            self._counted_user = None

    def _release_startup(self) -> None:
        """No longer an unauthenticated connection (MaxStartups counts only those)."""
        if self._startup_claimed:
            self._startup_claimed = False
            self.ctx.state.release_startup(self.remote_ip)

    def shutting_down(self) -> None:
        """The server stops: idle connections end now; users of sessions are told, and
        their sessions and forwards get the shutdown grace (the connections nursery's
        deadline)."""
        if self._kinds is None or not self._kinds.busy(SHUTDOWN_MESSAGE):
            self._end(DisconnectReason.BY_APPLICATION, SHUTDOWN_MESSAGE, "server_shutdown")

    # -- what an operator may see and do (trissh sessions, kill, watch) -------------------

    def describe(self) -> ConnectionView:
        stats = self.conn.statistics()
        return ConnectionView(
            conn_id=self.conn_id,
            remote=self.remote,
            user=self.login.username if self.login is not None else None,
            client_version=self.conn.client_version,
            connected_at=self._connected_at,
            idle_s=round(trio.current_time() - self._clock.last_received, 1),
            bytes_in=stats.bytes_received,
            bytes_out=stats.bytes_sent,
            sessions=self.live.views(),
        )

    @property
    def unsent_output(self) -> int:
        """Bytes of output not yet taken by the socket."""
        return self._writer.unsent

    def end_by_operator(self) -> None:
        """``trissh kill``: as a disconnect, sessions and containers go with it."""
        self._end(DisconnectReason.BY_APPLICATION, "ended by the operator", "ended_by_operator")

    def live_session(self, channel: int) -> LiveSession | None:
        return self.live.get(channel)

    def _end(self, reason: DisconnectReason, description: str, close_reason: str) -> None:
        """Disconnect on our own initiative: queue DISCONNECT, stop reading, cancel tasks.
        (Also called from other tasks, the admin's and the stop's: the keys are explicit.)
        A connection already ending keeps its reason: only its tasks are cancelled."""
        if self._ended:
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            return
        log.info(
            "connection_ended_by_server",
            reason=close_reason,
            description=description,
            conn_id=self.conn_id,
            remote=self.remote,
            user=self.login.username if self.login is not None else None,
        )
        self.close_reason = close_reason
        self.conn.disconnect(reason, description)
        self._ended = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- reading ----------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        """Read and process until the connection ends, running its timers when due."""
        while not self._ended:
            with trio.CancelScope(deadline=self._clock.next_deadline()) as scope:
                self._clock.scope = scope
                await self._receive_until_end()
                return
            self._on_timers()

    async def _receive_until_end(self) -> None:
        conn = self.conn
        data: bytes | bytearray = self._initial_data  # (re-entered only after login)
        while True:
            if data and not self._handshake_done:  # the first key exchange takes turns
                await self._kex.wait_turn()  # (and the only one before login: transport.py)
            try:
                await self._process_events()
            finally:  # its cost (a re-exchange's before login too), a bad packet after it or not
                if self.login is None:
                    self._kex.spent(conn.kex_cpu_seconds)
            if self._ended or conn.closed:
                return
            # A client that does not read our answers is not read either (sshd waits for
            # its output before reading on, before login): its answers would pile up here.
            await self._writer.wait_unsent_at_most(
                UNSENT_BEFORE_READING if self.login is not None else UNSENT_BEFORE_LOGIN
            )
            try:
                data = await self._reader.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, OSError):
                data = b""
            if self._quickack and data:
                self._quickack = ask_quick_acks(self._stream)
            self._clock.last_received = now = trio.current_time()
            if now >= self._bytes_reported_at + BYTES_REPORT_INTERVAL:  # not only at close
                self._bytes_reported_at = now
                stats = conn.statistics()
                self._metrics.transferred(stats.bytes_received, stats.bytes_sent)
            conn.receive_data(data)

    def _on_timers(self) -> None:
        """The clock's deadline passed: rekey, probe or give up on the client, as due."""
        for action in self._clock.due(self.conn.keepalives_unanswered):
            if action is TimerAction.REKEY:
                self.conn.request_rekey()
            elif action is TimerAction.PROBE:
                self.conn.send_keepalive()
            else:
                self._end(
                    DisconnectReason.CONNECTION_LOST,
                    "timeout, client not responding",
                    "client_alive_timeout",
                )
        self._writer.flush_now()

    async def _process_events(self) -> None:
        conn = self.conn
        while (event := conn.next_event()) is not None:
            if isinstance(event, AuthDecisionRequested):
                await self._login.decide(event)
            else:
                self._dispatch(event)
            if self._paused_until:
                await self._pause()
        self._writer.flush_now()

    async def _pause(self) -> None:
        """This connection waits (a re-exchange paid for, or others' turn while it inflates
        much input), packets already read too; nobody else does."""
        self._writer.flush_now()
        await trio.sleep_until(self._paused_until)
        self._paused_until = 0.0

    # -- routing ----------------------------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        match event:
            case ChannelDataReceived():
                if (handle := self._port.handle(event.channel_id)) is not None:
                    handle.feed(event.data)
            case ChannelWindowAdjusted():
                self._writer.space_freed()
            case ChannelEOFReceived():
                if (handle := self._port.handle(event.channel_id)) is not None:
                    handle.feed_eof()
            case ChannelCloseReceived():
                self._on_channel_close(event)
            case WindowChanged() | SignalReceived():
                if (handle := self._port.handle(event.channel_id)) is not None:
                    handle.feed_control(
                        event.size if isinstance(event, WindowChanged) else event.signal
                    )
            case ChannelOpenRequested():
                self._on_channel_open(event)
            case ChannelOpenConfirmed():
                self._port.answer_open(event.channel_id, None)
            case ChannelOpenFailed():
                self._port.answer_open(event.channel_id, event.description or "refused")
            case SessionRequested():
                self._on_session_requested(event)
            case GlobalRequestReceived():
                if self._kinds is not None:
                    self._kinds.remote_forwards.request(event)
            case AgentForwardingRequested():
                if self._kinds is not None:
                    self._kinds.agent.requested()
            case RequestRefused():
                self._note_refused(event.request, event.reason, channel=event.channel_id)
            case VersionReceived():
                structlog.contextvars.bind_contextvars(client_version=event.version)
            case KeyExchangeCompleted():
                self._on_kex_completed(event)
            case AuthFailed():
                handshake.auth_failed(event, self.ctx.metrics)
            case AuthPartiallySucceeded():
                self._login.confirmed(event)
                handshake.auth_partially_succeeded(event, self.ctx.metrics)
            case Authenticated():
                self._on_authenticated(event)
            case DisconnectReceived():
                self._ended = True
                self.close_reason = "client_disconnected"
            case ConnectionLost():
                self._ended = True
                self.close_reason = "connection_lost"
            case InputPaused():  # _pause: a checkpoint, then the rest of the input
                self._paused_until = max(self._paused_until, trio.current_time())
            case _:
                assert not isinstance(event, AuthDecisionRequested), "answered by _process_events"
                assert_never(event)

    def _on_kex_completed(self, event: KeyExchangeCompleted) -> None:
        self._clock.keys_changed()
        if event.is_rekey and event.compute_seconds > 0:
            pause = min(REKEY_PACING * event.compute_seconds, REKEY_PAUSE_MAX)
            self._paused_until = trio.current_time() + pause
        if not event.is_rekey:
            self._handshake_done = True
        if not event.by_client or self.client_lines.take():  # a client may re-key in a loop
            handshake.kex_completed(
                event, self.ctx.metrics, trio.current_time() - self._accepted_at
            )

    def _on_authenticated(self, event: Authenticated) -> None:
        self._login.confirmed(event)
        self._release_startup()
        self.ctx.metrics.auth_attempt(event.method, "success")
        grant = self._login.grant
        if not grant.allow_pty:
            self.conn.forbid_pty()
        if grant.forced_command is not None:
            self.conn.refuse_signals()
        self.ctx = self._login.source  # the configuration that let it in serves it
        login = self.login = handshake.login_of(self.ctx.settings, event.username, grant)
        self._grace.deadline = math.inf
        structlog.contextvars.bind_contextvars(user=login.username)
        log.info(
            "auth_succeeded",
            method=event.method,
            key_fingerprint=event.key_fingerprint,
            **self._login.log_fields,
        )
        limit = login.session.max_connections_per_user
        if not self.ctx.state.claim_user(login.username, limit):
            # (an accepted connection: trissh_disconnects_total counts this end)
            self._end(
                DisconnectReason.TOO_MANY_CONNECTIONS,
                f"too many connections for user {login.username}",
                "user_connection_limit",
            )
            return
        self._counted_user = login.username
        assert self._nursery is not None
        connection = Connection(
            conn_id=self.conn_id,
            remote=self.remote,
            local=self.local,
            login=login,
            port=self._port,
            nursery=self._nursery,
            note_refused=self._note_refused,
            lines=self.client_lines,
            live=self.live,
        )
        self._kinds = channel_kinds(self.ctx, connection)
        if self._kinds.agent_allowed:
            self.conn.allow_agent_forwarding()
        self._clock.arm(
            self.ctx.settings.ssh.rekey_interval,
            login.session.client_alive_interval,
            login.session.client_alive_count_max,
        )

    def _note_refused(
        self, request: str, reason: str, target: str | None = None, channel: int | None = None
    ) -> None:
        """One line per refused request (port forwarding is what operators look for), up to
        a bound per connection."""
        if self.refusals.take():
            log.info(
                "request_refused", request=request, reason=reason, channel=channel, target=target
            )

    def _on_channel_open(self, event: ChannelOpenRequested) -> None:
        refusal: Refusal | None
        kinds = self._kinds
        if self.ctx.state.shutting_down:
            refusal = Refusal(
                ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED, SHUTDOWN_MESSAGE
            )
        elif kinds is not None and event.channel_type == SESSION:
            refusal = kinds.sessions.open(event)
        elif kinds is not None and event.channel_type in (DIRECT_TCPIP, DIRECT_STREAMLOCAL):
            refusal = kinds.local_forwards.open(event)
        else:
            refusal = Refusal(
                ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED,
                f"channel type {event.channel_type!r} is not supported",
            )
        if refusal is not None:
            self._port.reject(event.channel_id, refusal)
            target = str(event.target) if event.target is not None else None
            self._note_refused(event.channel_type, refusal.text, target=target)

    def _on_channel_close(self, event: ChannelCloseReceived) -> None:
        handle = self._port.handle(event.channel_id)
        if handle is None:
            self.conn.close_channel(event.channel_id)
            return
        handle.peer_close()
        if not handle.started:
            self._port.finish(handle.id)

    def _on_session_requested(self, event: SessionRequested) -> None:
        if self._kinds is None or not self._kinds.sessions.start(event):
            self.conn.reply_channel_request(event.channel_id, False)
            return
        self._quickack = False


def open_connection(
    stream: trio.abc.Stream,
    ctx: ServerContext,
    *,
    conn_id: str,
    remote: str,
    local: str = "",
    greeted: bool = False,
) -> ConnectionDriver:
    """A new connection whose first flight (KEXINIT, after the version line unless the
    accept thread ``greeted`` it already: server/accept.py) is written at once, as far as
    the socket takes it without waiting; ``serve_connection`` then serves it.
    """
    driver = ConnectionDriver(
        stream, ctx, conn_id=conn_id, remote=remote, local=local, greeted=greeted
    )
    driver.greet()
    return driver


async def serve_connection(
    stream: trio.abc.Stream,
    ctx: ServerContext,
    *,
    conn_id: str,
    remote: str,
    local: str = "",
    initial_data: bytes = b"",
) -> None:
    """Serve one client from its stream until it leaves (:func:`serve_driver`)."""
    driver = ConnectionDriver(
        stream, ctx, conn_id=conn_id, remote=remote, local=local, initial_data=initial_data
    )
    await serve_driver(driver)


async def serve_driver(driver: ConnectionDriver) -> None:
    """Serve a connection (``open_connection`` greeted it, or ``serve_connection`` made it)
    until its client leaves; log its life in ``connection_*`` events.

    Cancellation: tears the connection down (sessions, container, socket) within bounds.
    """
    started = time.monotonic()
    ctx = driver.ctx
    with structlog.contextvars.bound_contextvars(conn_id=driver.conn_id, remote=driver.remote):
        log.info("connection_accepted")
        ctx.state.connections.add(driver)
        try:
            await driver.run()
        finally:
            ctx.state.connections.discard(driver)
            stats = driver.conn.statistics()
            driver.metrics_closed(stats.bytes_received, stats.bytes_sent)
            log.info(
                "connection_closed",
                reason=driver.close_reason,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
                bytes_in=stats.bytes_received,
                bytes_out=stats.bytes_sent,
                requests_refused=driver.refusals.used,
                lines_suppressed=driver.client_lines.suppressed,
            )
