"""A tiny HTTP/1.1 server on trio + h11 for webhook tests: it answers each request with a
handler and keeps what it received, so tests can check the exact JSON sent."""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import trio


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    client_cn: str | None = None


Answer = tuple[int, bytes] | dict[str, Any]
Handler = Callable[[Received], Awaitable[Answer]]


@dataclass
class Server:
    """Answers each request with ``handler`` and keeps what it received."""

    handler: Handler
    ssl_context: ssl.SSLContext | None = None
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    #: Connections whose client went away (or that the server ended).
    closed: int = 0
    url: str = ""
    #: Send bodies in 1 KiB chunks without Content-Length (chunked transfer encoding).
    chunked: bool = False
    #: Headers added to every answer (a proxy's, say).
    extra_headers: list[tuple[str, str]] = field(default_factory=list)

    async def serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        client_cn = None
        conn_stream: trio.abc.Stream = stream
        try:
            if self.ssl_context is not None:
                tls = trio.SSLStream(stream, self.ssl_context, server_side=True)
                await tls.do_handshake()
                peer = tls.getpeercert()
                if peer:
                    client_cn = dict(x[0] for x in peer["subject"])["commonName"]
                conn_stream = tls
            await self._requests(conn_stream, client_cn)
        except (trio.BrokenResourceError, ssl.SSLError, h11.RemoteProtocolError):
            pass
        finally:
            self.closed += 1
            await trio.aclose_forcefully(conn_stream)

    async def _requests(self, stream: trio.abc.Stream, client_cn: str | None) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request, body = None, bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(bytes(data))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
            assert request is not None
            got = Received(
                request.method.decode(),
                request.target.decode(),
                {k.decode().lower(): v.decode() for k, v in request.headers},
                json.loads(body) if body else None,
                client_cn,
            )
            self.received.append(got)
            answer = await self.handler(got)
            status, payload = (
                (200, json.dumps(answer).encode()) if isinstance(answer, dict) else answer
            )
            headers = [("Content-Type", "application/json")]
            if not self.chunked:
                headers.append(("Content-Length", str(len(payload))))
            headers += self.extra_headers
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
            size = 1024 if self.chunked else max(len(payload), 1)
            for offset in range(0, len(payload), size):
                await stream.send_all(conn.send(h11.Data(data=payload[offset : offset + size])))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()


async def start(
    nursery: trio.Nursery, handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> Server:
    server = Server(handler, ssl_context)
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, server.serve, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    server.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}/hooks"
    return server


def answer(value: Answer) -> Handler:
    async def handler(_: Received) -> Answer:
        return value

    return handler


def sequence(*values: Answer) -> Handler:
    queue = list(values)

    async def handler(_: Received) -> Answer:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return handler
