"""Prometheus metrics and the ``/metrics``, ``/healthz`` and ``/readyz`` HTTP endpoints.

Theory of operation
-------------------
:class:`Metrics` owns a private ``CollectorRegistry`` (never the global one), so tests and
several servers in one process do not collide. The driver calls small typed methods; each
counts one thing. Gauges that go up and down (active connections and sessions) are driven
by tracker objects whose ``closed()``/``ended()`` are idempotent, so a ``finally`` that runs
twice cannot push a gauge below zero.

Label values come from the server's own vocabulary (results, methods, kex names, reasons),
never from users; still, every free-form label goes through :class:`_LabelGuard`, which
caps the number of distinct values per label and maps the rest to ``"other"``, so a bug can
never explode the series count.

:func:`serve_http` is a deliberately tiny HTTP/1.1 server: h11 parses, trio serves one task
per client under ``trio.serve_listeners``. Each client gets one request, a bounded head
(``max_request_bytes``, 431 past it), a deadline for the whole exchange (a slowloris client
is cut off), and ``Connection: close``. A ``CapacityLimiter`` bounds concurrent clients.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, final

import h11
import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from trissh.addresses import join_host_port
from trissh.config.auth import AUTH_METHODS
from trissh.ops.forward_metrics import ForwardMetrics

log = structlog.get_logger("trissh.ops.metrics")

#: Handshakes: from TCP accept to the first NEWKEYS (post-quantum kex can take ~100 ms).
HANDSHAKE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Container operations: exec is milliseconds, a cold start with an image pull is seconds.
CONTAINER_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Past this many distinct values a label's new values are reported as ``"other"``.
MAX_LABEL_VALUES: Final = 32
OTHER: Final = "other"
#: Method labels of ``trissh_auth_attempts_total``: the methods a server may offer, and the
#: ``none`` and ``hostbased`` requests clients send (refused); any other name is ``other``.
AUTH_METHOD_LABELS: Final = frozenset((*AUTH_METHODS, "none", "hostbased"))

ReadyCheck = Callable[[], Awaitable[tuple[bool, str]]]


class _LabelGuard:
    """Keep a label's cardinality bounded whatever a caller passes."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit or not value or len(value) > 64:
            return OTHER
        self._seen.add(value)
        return value


#: Seconds between reports of a busy connection's or forward's bytes (not only at its end).
BYTES_REPORT_INTERVAL = 5.0


@final
class ConnectionMetrics:
    """One connection's share of the metrics; built by :meth:`Metrics.connection_opened`."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._in = 0
        self._out = 0
        self._closed = False

    def transferred(self, total_in: int, total_out: int) -> None:
        """Report the connection's byte totals so far (the core's cumulative counts).

        Only the growth since the last report is added, so the driver may call this as
        often as it likes (e.g. on rekey or every few seconds) and again on close.
        """
        metrics = self._metrics
        if total_in > self._in:
            metrics.bytes_total.labels(direction="in").inc(total_in - self._in)
            self._in = total_in
        if total_out > self._out:
            metrics.bytes_total.labels(direction="out").inc(total_out - self._out)
            self._out = total_out

    def closed(self, reason: str, total_in: int, total_out: int) -> None:
        """Count the disconnect reason and the last bytes; idempotent (first call wins)."""
        if self._closed:
            return
        self._closed = True
        self.transferred(total_in, total_out)
        metrics = self._metrics
        metrics.connections_active.dec()
        metrics.disconnects_total.labels(reason=metrics.guard_reason(reason)).inc()


@final
class SessionMetrics:
    """One session's share of the metrics; built by :meth:`Metrics.session_started`."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._ended = False

    def ended(self) -> None:
        """The session is over; idempotent."""
        if not self._ended:
            self._ended = True
            self._metrics.sessions_active.dec()


@final
class Metrics:
    """Every trissh metric, on a registry of its own.

    Args:
        registry: where to register; a fresh ``CollectorRegistry`` by default.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._define_connection_metrics(self.registry)
        self._define_session_metrics(self.registry)
        self.forwards = ForwardMetrics(self.registry)
        self._define_server_metrics(self.registry)
        self._guard_result = _LabelGuard()
        self._guard_kex = _LabelGuard()
        self._guard_auth_result = _LabelGuard()
        self._guard_kind = _LabelGuard()
        self._guard_operation = _LabelGuard()
        self.guard_reason = _LabelGuard()
        self._guard_admin = _LabelGuard()
        self._guard_admin_result = _LabelGuard()
        for direction in ("in", "out"):
            self.bytes_total.labels(direction=direction)

    def _define_connection_metrics(self, reg: CollectorRegistry) -> None:
        self.connections_total = Counter(
            "trissh_connections_total",
            "TCP connections by what became of them (accepted, rejected_limit, ...).",
            ["result"],
            registry=reg,
        )
        self.connections_active = Gauge(
            "trissh_connections_active", "Connections being served now.", registry=reg
        )
        self.handshakes_total = Counter(
            "trissh_handshakes_total",
            "Initial key exchanges by negotiated kex and result.",
            ["kex", "result"],
            registry=reg,
        )
        self.handshake_duration = Histogram(
            "trissh_handshake_duration_seconds",
            "Time from accept to the end of the first key exchange.",
            buckets=HANDSHAKE_BUCKETS,
            registry=reg,
        )
        self.auth_attempts_total = Counter(
            "trissh_auth_attempts_total",
            "User authentication attempts by method and result.",
            ["method", "result"],
            registry=reg,
        )
        self.bytes_total = Counter(
            "trissh_bytes_total",
            "Bytes on the wire, in (from clients) and out (to clients).",
            ["direction"],
            registry=reg,
        )
        self.disconnects_total = Counter(
            "trissh_disconnects_total", "Closed connections by reason.", ["reason"], registry=reg
        )

    def _define_session_metrics(self, reg: CollectorRegistry) -> None:
        self.sessions_active = Gauge(
            "trissh_sessions_active", "Session channels running now.", registry=reg
        )
        self.sessions_total = Counter(
            "trissh_sessions_total",
            "Sessions started, by kind (shell, exec, subsystem).",
            ["kind"],
            registry=reg,
        )
        self.warm_containers = Gauge(
            "trissh_warm_containers",
            "Started containers waiting in the warm pool for a login.",
            registry=reg,
        )
        self.starts_waiting = Gauge(
            "trissh_container_starts_waiting",
            "Logins waiting for their turn to start a container (the start queue).",
            registry=reg,
        )
        self.starts_running = Gauge(
            "trissh_container_starts_running",
            "Container starts in progress (logins' and the warm pool's).",
            registry=reg,
        )
        self.container_operation_duration = Histogram(
            "trissh_container_operation_duration_seconds",
            "Duration of container operations (queue: the wait for a start's turn; start,"
            " exec, spawn by the agent, remove).",
            ["operation"],
            buckets=CONTAINER_BUCKETS,
            registry=reg,
        )
        self.recording_failures_total = Counter(
            "trissh_recording_failures_total",
            "Session recordings stopped by a storage error.",
            registry=reg,
        )
        self.workspaces = Gauge(
            "trissh_workspaces", "Workspaces (one container per user) kept now.", registry=reg
        )
        self.workspace_attaches_total = Counter(
            "trissh_workspace_attaches_total",
            "Connections that took a workspace: new (made for it), reattached (one that"
            " outlived an earlier connection, or adopted at start-up), refused (limit).",
            ["outcome"],
            registry=reg,
        )

    def _define_server_metrics(self, reg: CollectorRegistry) -> None:
        self.ready = Gauge(
            "trissh_ready", "1 when /readyz answers 200: a login can be served now.", registry=reg
        )
        self.draining = Gauge(
            "trissh_draining",
            "1 from SIGTERM (or trissh drain) until the server stops.",
            registry=reg,
        )
        self.unauthenticated = Gauge(
            "trissh_unauthenticated_connections",
            "Connections not yet authenticated, the queue max_startups bounds.",
            registry=reg,
        )
        self.admin_requests_total = Counter(
            "trissh_admin_requests_total",
            "Requests on the admin socket (trissh sessions, kill, watch, drain) by result.",
            ["action", "result"],
            registry=reg,
        )
        self.session_watchers = Gauge(
            "trissh_session_watchers", "Operators watching a session now.", registry=reg
        )

    def watch_server(
        self,
        *,
        ready: Callable[[], bool],
        draining: Callable[[], bool],
        unauthenticated: Callable[[], int],
    ) -> None:
        """Read the server's state at each scrape (the gauges that are not counted)."""
        self.ready.set_function(lambda: float(ready()))
        self.draining.set_function(lambda: float(draining()))
        self.unauthenticated.set_function(lambda: float(unauthenticated()))

    def admin_request(self, action: str, result: str) -> None:
        """One request on the admin socket; ``result`` ok, refused, not_found, error."""
        self.admin_requests_total.labels(
            action=self._guard_admin(action), result=self._guard_admin_result(result)
        ).inc()

    # -- what the driver calls -------------------------------------------------------------

    def connection_opened(self) -> ConnectionMetrics:
        """An accepted connection starts being served; call ``closed()`` on the result."""
        self.connections_total.labels(result="accepted").inc()
        self.connections_active.inc()
        return ConnectionMetrics(self)

    def connection_rejected(self, result: str) -> None:
        """A connection was turned away before SSH (``rejected_limit``, ``rejected_proxy``)."""
        self.connections_total.labels(result=self._guard_result(result)).inc()

    def handshake_done(self, kex: str, seconds: float) -> None:
        """The first key exchange finished ``seconds`` after accept."""
        self.handshakes_total.labels(kex=self._guard_kex(kex), result="ok").inc()
        if math.isfinite(seconds) and seconds >= 0:
            self.handshake_duration.observe(seconds)

    def handshake_failed(self, kex: str | None = None) -> None:
        """The connection ended before its first key exchange finished."""
        self.handshakes_total.labels(kex=self._guard_kex(kex or "none"), result="failed").inc()

    def auth_attempt(self, method: str, result: str) -> None:
        """One userauth request: ``method`` as on the wire, ``result`` success/failure/partial.

        A method name is the client's, before authentication: only those a server knows
        become labels, so made-up ones cannot crowd them out."""
        label = method if method in AUTH_METHOD_LABELS else OTHER
        self.auth_attempts_total.labels(method=label, result=self._guard_auth_result(result)).inc()

    def session_started(self, kind: str) -> SessionMetrics:
        """A session channel started a program; call ``ended()`` on the result."""
        self.sessions_total.labels(kind=self._guard_kind(kind)).inc()
        self.sessions_active.inc()
        return SessionMetrics(self)

    def container_operation(self, operation: str, seconds: float) -> None:
        """A podman operation (``start``, ``exec``, ``remove``) took ``seconds``."""
        if math.isfinite(seconds) and seconds >= 0:
            labels = self.container_operation_duration.labels(
                operation=self._guard_operation(operation)
            )
            labels.observe(seconds)

    def workspace_attached(self, outcome: str) -> None:
        """A connection took its user's workspace: ``new``, ``reattached`` or ``refused``."""
        self.workspace_attaches_total.labels(outcome=outcome).inc()

    def recording_failed(self) -> None:
        """A recording hit a storage error (``Recorder(on_failure=...)``)."""
        self.recording_failures_total.inc()

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in the format ``accept`` asks for: (body, content type)."""
        try:
            encoder, content_type = choose_encoder(accept)
            content_type.encode("ascii")  # the library copies the client's version into it
        except Exception:  # its parser raises several kinds on a client's header
            encoder, content_type = choose_encoder("")
        return encoder(self.registry), content_type


# -- HTTP --------------------------------------------------------------------------------


#: Seconds a client waits for a slot when no slot can be taken from an idle client.
SLOT_WAIT: Final = 1.0
#: A client that went away while being answered.
_GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpLimits:
    """Per-client bounds of the metrics endpoint (defaults suit a Prometheus scraper)."""

    #: Whole exchange, from accept to the last byte of the response.
    request_timeout: float = 10.0
    #: The readiness check; past it ``/readyz`` answers 503.
    ready_timeout: float = 5.0
    #: Request line plus headers; past it 431.
    max_request_bytes: int = 8192
    #: Clients served at once; see ``_ClientSlots`` for who gets a slot when all are taken.
    max_clients: int = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


_INTERNAL_ERROR: Final = _Reply(status=500, body=b"internal error\n")


async def serve_http(
    metrics: Metrics,
    listeners: Sequence[trio.SocketListener],
    *,
    ready: ReadyCheck,
    limits: HttpLimits | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``listeners`` until cancelled.

    Args:
        metrics: whose registry ``/metrics`` exposes.
        listeners: bound sockets (``trio.open_tcp_listeners``).
        ready: answers ``(ok, reason)`` for ``/readyz``; bounded by ``limits.ready_timeout``;
            an exception counts as not ready.
        limits: per-client bounds.
        task_status: ``started()`` with the listeners once accepting, so
            ``await nursery.start(serve_http, ...)`` returns them with no race.

    Cancellation: stops accepting and cancels every client; nothing to clean up.
    """
    limits = limits or HttpLimits()
    slots = _ClientSlots(limits.max_clients)

    async def handler(stream: trio.SocketStream) -> None:
        if not await slots.acquire():
            await stream.aclose()
            return
        try:
            await _serve_client(stream, metrics, ready, limits, slots)
        finally:
            slots.release()

    addresses = [join_host_port(*listener.socket.getsockname()[:2]) for listener in listeners]
    log.info("metrics_http_started", listen=addresses)
    await trio.serve_listeners(handler, list(listeners), task_status=task_status)


class _ClientSlots:
    """At most ``limit`` clients at once. When every slot is taken, a new client gets the
    slot of the one that has waited longest without sending a whole request: connections
    that send nothing (anyone who can reach the port may open them) must not keep a
    balancer's probe from ``/readyz`` until they time out."""

    def __init__(self, limit: int) -> None:
        self._limiter = trio.CapacityLimiter(limit)
        #: The request reads in progress, oldest first.
        self._reading: dict[trio.CancelScope, None] = {}

    async def acquire(self) -> bool:
        """Whether the calling task got a slot (within ``SLOT_WAIT`` seconds)."""
        if not self._limiter.available_tokens and self._reading:
            oldest = next(iter(self._reading))
            del self._reading[oldest]
            oldest.cancel()
        with trio.move_on_after(SLOT_WAIT):
            await self._limiter.acquire()
            return True
        return False

    def release(self) -> None:
        self._limiter.release()

    @contextlib.contextmanager
    def reading(self) -> Iterator[trio.CancelScope]:
        """A scope around one request's read, cancelled if a new client needs its slot."""
        with trio.CancelScope() as scope:
            self._reading[scope] = None
            try:
                yield scope
            finally:
                self._reading.pop(scope, None)


async def _serve_client(
    stream: trio.SocketStream,
    metrics: Metrics,
    ready: ReadyCheck,
    limits: HttpLimits,
    slots: _ClientSlots,
) -> None:
    """One request, one response, then close; never raises but ``Cancelled``."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_request_bytes)
    with trio.move_on_after(limits.request_timeout) as scope:
        try:
            request = None
            with slots.reading():
                request = await _receive_request(stream, conn, limits.max_request_bytes)
            if request is not None:
                reply = await _route(request, metrics, ready, limits)
                await _send(stream, conn, reply, head=request.method == b"HEAD")
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                status = exc.error_status_hint
                body = f"{_reason(status)}\n".encode()
                with contextlib.suppress(*_GONE):  # a client that sent garbage and reset
                    await _send(stream, conn, _Reply(status=status, body=body), head=False)
        except _GONE:
            pass
        except Exception:  # a bug here costs this client, never the server (nor its sessions)
            log.exception("metrics_client_failed")
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(*_GONE):
                    await _send(stream, conn, _INTERNAL_ERROR, head=False)
    if scope.cancelled_caught:
        log.debug("metrics_client_timed_out")
    with trio.move_on_after(1, shield=True):
        await stream.aclose()


def _reason(status: int) -> str:
    """The reason phrase for the statuses this server sends."""
    return _REASONS.get(status, "Error")


_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


async def _receive_request(
    stream: trio.SocketStream, conn: h11.Connection, limit: int
) -> h11.Request | None:
    """Read until the request head is complete; None if the client went away first.

    h11 bounds only an *incomplete* head; a head that arrives whole in one read is
    bounded here by counting what was read before it.
    """
    received = 0
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            return event
        if isinstance(event, h11.ConnectionClosed):
            return None
        if event is not h11.NEED_DATA:  # h11.PAUSED cannot precede a Request for a server
            return None
        data = await stream.receive_some(4096)
        received += len(data)
        if received > limit:
            raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        conn.receive_data(data)


async def _route(
    request: h11.Request, metrics: Metrics, ready: ReadyCheck, limits: HttpLimits
) -> _Reply:
    path = request.target.split(b"?", 1)[0]
    if path not in (b"/metrics", b"/healthz", b"/readyz"):
        return _Reply(status=404, body=b"not found\n")
    if request.method not in (b"GET", b"HEAD"):
        return _Reply(status=405, body=b"method not allowed\n", headers=(("Allow", "GET, HEAD"),))
    if path == b"/metrics":
        accept = b", ".join(value for name, value in request.headers if name == b"accept")
        body, content_type = metrics.exposition(accept.decode("latin-1"))
        return _Reply(status=200, body=body, content_type=content_type)
    if path == b"/healthz":
        return _Reply(status=200, body=b"ok\n")
    ok, reason = False, "readiness check timed out"
    with trio.move_on_after(limits.ready_timeout):
        ok, reason = await _check_ready(ready)
    text = reason or ("ready" if ok else "not ready")
    return _Reply(status=200 if ok else 503, body=f"{text}\n".encode())


async def _check_ready(ready: ReadyCheck) -> tuple[bool, str]:
    """Run the readiness check; its failure is the answer (not ready), not our crash."""
    try:
        return await ready()
    except Exception as exc:
        return False, f"readiness check failed: {type(exc).__name__}: {exc}"


async def _send(
    stream: trio.SocketStream, conn: h11.Connection, reply: _Reply, *, head: bool
) -> None:
    headers = [
        ("Content-Type", reply.content_type),
        ("Content-Length", str(len(reply.body))),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
        *reply.headers,
    ]
    response = h11.Response(status_code=reply.status, headers=headers, reason=_reason(reply.status))
    out = conn.send(response) or b""
    if not head and reply.body:
        out += conn.send(h11.Data(data=reply.body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(out)
