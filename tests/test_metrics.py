"""Metrics: counters and histograms move as the driver reports; the HTTP endpoint over loopback."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import h11
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from trissh.ops.metrics import OTHER, HttpLimits, Metrics, serve_http

from .support import capture_module_log


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse the exposition back with Prometheus' own parser."""
    body, _ = metrics.exposition()
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, frozenset(labels.items())), 0.0)


def test_private_registries_do_not_collide() -> None:
    one, two = Metrics(), Metrics()
    one.connection_opened()
    assert value(one, "trissh_connections_total", result="accepted") == 1
    assert value(two, "trissh_connections_total", result="accepted") == 0


def test_connection_life_cycle() -> None:
    metrics = Metrics()
    conn = metrics.connection_opened()
    assert value(metrics, "trissh_connections_active") == 1
    conn.transferred(100, 40)
    conn.transferred(150, 40)
    conn.closed("client_disconnected", 200, 90)
    conn.closed("client_disconnected", 999, 999)  # idempotent
    assert value(metrics, "trissh_connections_active") == 0
    assert value(metrics, "trissh_bytes_total", direction="in") == 200
    assert value(metrics, "trissh_bytes_total", direction="out") == 90
    assert value(metrics, "trissh_disconnects_total", reason="client_disconnected") == 1
    metrics.connection_rejected("rejected_limit")
    metrics.connection_rejected("rejected_proxy")
    assert value(metrics, "trissh_connections_total", result="rejected_limit") == 1
    assert value(metrics, "trissh_connections_total", result="rejected_proxy") == 1


def test_handshakes_and_histogram() -> None:
    metrics = Metrics()
    metrics.handshake_done("curve25519-sha256", 0.03)
    metrics.handshake_done("curve25519-sha256", 0.2)
    metrics.handshake_failed()
    assert value(metrics, "trissh_handshakes_total", kex="curve25519-sha256", result="ok") == 2
    assert value(metrics, "trissh_handshakes_total", kex="none", result="failed") == 1
    assert value(metrics, "trissh_handshake_duration_seconds_count") == 2
    assert value(metrics, "trissh_handshake_duration_seconds_sum") == pytest.approx(0.23)
    assert value(metrics, "trissh_handshake_duration_seconds_bucket", le="0.05") == 1
    assert value(metrics, "trissh_handshake_duration_seconds_bucket", le="+Inf") == 2


def test_auth_sessions_containers() -> None:
    metrics = Metrics()
    metrics.auth_attempt("publickey", "failure")
    metrics.auth_attempt("publickey", "success")
    assert value(metrics, "trissh_auth_attempts_total", method="publickey", result="success") == 1
    session = metrics.session_started("shell")
    metrics.session_started("exec")
    assert value(metrics, "trissh_sessions_active") == 2
    session.ended()
    session.ended()
    assert value(metrics, "trissh_sessions_active") == 1
    assert value(metrics, "trissh_sessions_total", kind="shell") == 1
    metrics.container_operation("start", 1.5)
    metrics.container_operation("remove", 0.1)
    name = "trissh_container_operation_duration_seconds"
    assert value(metrics, f"{name}_count", operation="start") == 1
    assert value(metrics, f"{name}_sum", operation="start") == 1.5
    assert value(metrics, f"{name}_count", operation="remove") == 1
    metrics.recording_failed()
    assert value(metrics, "trissh_recording_failures_total") == 1


def test_label_cardinality_is_bounded() -> None:
    metrics = Metrics()
    for n in range(100):
        metrics.session_started(f"kind-{n}").ended()
    metrics.session_started("x" * 200).ended()
    kinds = {
        dict(labels)["kind"]
        for (name, labels) in samples(metrics)
        if name == "trissh_sessions_total"
    }
    assert len(kinds) == 33
    assert OTHER in kinds
    assert value(metrics, "trissh_sessions_total", kind=OTHER) == 69


def test_method_names_a_client_makes_up_never_crowd_out_the_real_ones() -> None:
    """The method of a failed attempt is whatever the client sent: before authentication,
    junk names must not take the label slots that ``password`` and ``publickey`` need
    (an alert on password guessing would go blind)."""
    metrics = Metrics()
    for n in range(100):
        metrics.auth_attempt(f"method-{n}", "failure")
    metrics.auth_attempt("password", "failure")
    metrics.auth_attempt("publickey", "success")
    assert value(metrics, "trissh_auth_attempts_total", method=OTHER, result="failure") == 100
    assert value(metrics, "trissh_auth_attempts_total", method="password", result="failure") == 1
    assert value(metrics, "trissh_auth_attempts_total", method="publickey", result="success") == 1


# -- HTTP over a real loopback socket -----------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


@dataclass
class Server:
    port: int
    metrics: Metrics
    readiness: list[tuple[bool, str]]


async def request(
    port: int, target: str = "/metrics", method: str = "GET", extra: bytes = b""
) -> Reply:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        client = h11.Connection(h11.CLIENT)
        head = h11.Request(method=method, target=target, headers=[("Host", "x")])
        await stream.send_all((client.send(head) or b"") + (client.send(h11.EndOfMessage()) or b""))
        status, headers, body = 0, {}, bytearray()
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return Reply(status, headers, bytes(body))


async def raw_exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = bytearray()
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                received += chunk
        return bytes(received)


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    readiness = [(True, "")]

    async def ready() -> tuple[bool, str]:
        ok, reason = readiness[-1]
        if reason == "raise":
            raise RuntimeError("podman socket refused")
        if reason == "hang":
            await trio.sleep_forever()
        return ok, reason

    metrics = Metrics()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    limits = HttpLimits(request_timeout=0.5, ready_timeout=0.2, max_request_bytes=1024)
    await nursery.start(
        lambda task_status: serve_http(
            metrics, listeners, ready=ready, limits=limits, task_status=task_status
        )
    )
    return Server(listeners[0].socket.getsockname()[1], metrics, readiness)


async def test_scrape_parses_with_prometheus_parser(server: Server) -> None:
    server.metrics.connection_opened()
    server.metrics.handshake_done("mlkem768x25519-sha256", 0.1)
    reply = await request(server.port)
    assert reply.status == 200
    assert reply.headers[b"content-type"].startswith(b"text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
    assert families["trissh_connections"].type == "counter"
    assert families["trissh_handshake_duration_seconds"].type == "histogram"
    accepted = [s for s in families["trissh_connections"].samples if s.name.endswith("_total")]
    assert [(s.labels, s.value) for s in accepted] == [({"result": "accepted"}, 1.0)]
    # The scrape shows what happened after the first one.
    server.metrics.connection_opened()
    again = await request(server.port, "/metrics?x=1")
    assert b'trissh_connections_total{result="accepted"} 2.0' in again.body


async def test_openmetrics_on_request(server: Server) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\n\r\n"
        )
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
    assert b"application/openmetrics-text" in data
    assert data.endswith(b"# EOF\n")


@pytest.mark.parametrize(
    "accept",
    [
        b"text/plain; version=x",
        b"application/openmetrics-text; version=a",
        b"application/openmetrics-text; version=2.\xe9",
    ],
)
async def test_an_accept_header_the_library_cannot_parse_gets_the_text_format(
    server: Server, accept: bytes
) -> None:
    """Anyone who can reach the port chooses the Accept header: one prometheus_client's
    parser raises on (or copies into a non-ASCII Content-Type) gets the text format; it
    ended the server's process, every session with it (reviewer)."""
    data = await raw_exchange(
        server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: " + accept + b"\r\n\r\n"
    )
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    assert b"content-type: text/plain; version=0.0.4" in data.lower()
    assert (await request(server.port, "/healthz")).status == 200


async def test_garbage_from_a_client_that_resets_costs_nothing(server: Server) -> None:
    """The 400 to a malformed head, written to a client that already reset: before, the
    write's error left the handler and ended the server's process (second reader)."""
    for _ in range(20):
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await sock.send(b"GARBAGE \x00\r\n\r\n" + b"x" * 100_000)
        sock.close()
        await trio.sleep(0.01)
    assert (await request(server.port, "/healthz")).status == 200


async def test_a_bug_while_answering_costs_that_client_only(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception while answering is one log line with its traceback and a 500; the
    server answers the next client."""
    logged = capture_module_log(monkeypatch, "trissh.ops.metrics")

    def broken(accept: str = "") -> tuple[bytes, str]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.metrics, "exposition", broken)
    assert (await request(server.port)).status == 500
    assert [e["event"] for e in logged] == ["metrics_client_failed"]
    assert (await request(server.port, "/healthz")).status == 200


async def test_head_has_no_body(server: Server) -> None:
    reply = await request(server.port, "/healthz", method="HEAD")
    assert reply.status == 200
    assert reply.body == b""
    assert reply.headers[b"content-length"] == b"3"


async def test_healthz(server: Server) -> None:
    reply = await request(server.port, "/healthz")
    assert (reply.status, reply.body) == (200, b"ok\n")


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        ((True, ""), 200, b"ready\n"),
        (
            (False, "image docker.io/library/alpine missing"),
            503,
            b"image docker.io/library/alpine missing\n",
        ),
        ((False, "raise"), 503, b"readiness check failed: RuntimeError: podman socket refused\n"),
        ((False, "hang"), 503, b"readiness check timed out\n"),
    ],
)
async def test_readyz(server: Server, answer: tuple[bool, str], status: int, body: bytes) -> None:
    server.readiness.append(answer)
    reply = await request(server.port, "/readyz")
    assert (reply.status, reply.body) == (status, body)


async def test_unknown_path_and_method(server: Server) -> None:
    assert (await request(server.port, "/")).status == 404
    assert (await request(server.port, "/metrics/x")).status == 404
    post = await request(server.port, "/metrics", method="POST")
    assert post.status == 405
    assert post.headers[b"allow"] == b"GET, HEAD"


async def test_oversized_request_gets_431(server: Server) -> None:
    data = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 4000 + b"\r\n\r\n"
    answer = await raw_exchange(server.port, data)
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_garbage_gets_400(server: Server) -> None:
    answer = await raw_exchange(server.port, b"\x16\x03\x01 not http at all\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")


async def test_slowloris_is_cut_off(server: Server) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    start = trio.current_time()
    received = b""
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\n")
        with trio.fail_after(5):
            try:
                for _ in range(100):
                    await stream.send_all(b"X-Slow: 1\r\n")
                    with trio.move_on_after(0.05):
                        received += await stream.receive_some(100)
                        break
            except trio.BrokenResourceError:
                pass
    elapsed = trio.current_time() - start
    assert received == b""  # closed without an answer
    assert 0.4 < elapsed < 3


async def test_health_still_answers_while_a_client_stalls(server: Server) -> None:
    stalled = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stalled:
        await stalled.send_all(b"GET /metr")
        reply = await request(server.port, "/healthz")
        assert reply.status == 200


async def test_idle_connections_filling_every_slot_do_not_keep_readyz_from_a_probe(
    nursery: trio.Nursery,
) -> None:
    """Connections that send nothing take every client slot (the real bounds: 32 clients,
    10 s each); a balancer's probe still gets its answer, in the slot of the one that has
    waited longest, instead of being closed unanswered until they time out."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def ready() -> tuple[bool, str]:
        return True, ""

    await nursery.start(
        lambda task_status: serve_http(Metrics(), listeners, ready=ready, task_status=task_status)
    )
    port = listeners[0].socket.getsockname()[1]
    idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(HttpLimits().max_clients)]
    try:
        await trio.sleep(0.2)  # every one of them accepted and holding a slot
        with trio.fail_after(5):
            for _ in range(3):
                assert (await request(port, "/readyz")).status == 200
    finally:
        for stream in idle:
            await stream.aclose()
