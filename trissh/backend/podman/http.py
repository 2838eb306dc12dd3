"""HTTP/1.1 requests to the podman service on trio: h11 over kept-alive unix sockets.

Why not podman-py's client (requests in a worker thread): per request it cost ~0.8 ms of
CPU and ~3.6 ms of wall time here, against ~0.17 ms and ~0.3 ms for the same ``GET
/_ping`` with h11 in the trio thread, and a container login makes three or four requests
(issue 19: trissh's CPU per container login). Requests stay bounded exactly as before:
a ``trio.CapacityLimiter`` caps how many run at once, each has a deadline, a response body
has a size limit.

Connections are kept for the next request while podman keeps them open (at most
``keep`` idle ones). A kept connection the service closed meanwhile fails before any
answer arrives; the request is then sent once more on a new connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import h11
import trio

__all__ = ["MAX_BODY", "HttpError", "PodmanHttp", "Response"]

#: Largest response body read (a container list of thousands is a few MB).
MAX_BODY: Final = 64 * 1024 * 1024


class HttpError(Exception):
    """The exchange failed: the socket broke, the answer was not HTTP, or it was too big."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    body: bytes


class _Gone(Exception):
    """A kept connection was closed by the service before it answered."""


class PodmanHttp:
    def __init__(self, path: str, *, keep: int) -> None:
        self._path = path
        self._keep = keep
        self._idle: list[trio.SocketStream] = []

    def close(self) -> None:
        """Close the kept connections (sync: only closes sockets)."""
        for stream in self._idle:
            stream.socket.close()
        self._idle.clear()

    async def request(
        self, method: str, target: str, body: bytes | None = None, *, host: str = "podman"
    ) -> Response:
        """One request; a kept connection is reused, and tried once more on a fresh one if
        the service had closed it.

        Raises:
            OSError: the socket cannot be reached.
            HttpError: the exchange failed.

        Cancellation: the connection in use is closed (its state is unknown).
        """
        while self._idle:
            stream = self._idle.pop()
            try:
                return await self._exchange(stream, method, target, body, host, reused=True)
            except _Gone:
                continue
        stream = await trio.open_unix_socket(self._path)
        return await self._exchange(stream, method, target, body, host, reused=False)

    async def _exchange(
        self,
        stream: trio.SocketStream,
        method: str,
        target: str,
        body: bytes | None,
        host: str,
        *,
        reused: bool,
    ) -> Response:
        conn = h11.Connection(h11.CLIENT)
        headers = [("Host", host)]
        if body is not None:
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        keep = False
        answered = False
        try:
            data = conn.send(h11.Request(method=method, target=target, headers=headers))
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            response, content = await _read_response(stream, conn)
            answered = True
            keep = conn.our_state is h11.DONE and conn.their_state is h11.DONE
            return Response(response.status_code, response.reason.decode(errors="replace"), content)
        except _Gone:
            if reused:
                raise
            raise HttpError("podman closed the connection without an answer") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if reused and not answered:
                raise _Gone from exc  # closed while idle: try a fresh connection
            raise HttpError(str(exc) or type(exc).__name__) from exc
        except h11.ProtocolError as exc:
            raise HttpError(f"unreadable answer: {exc}") from exc
        finally:
            if keep and len(self._idle) < self._keep:
                conn.start_next_cycle()
                self._idle.append(stream)
            else:
                stream.socket.close()


async def _read_response(
    stream: trio.SocketStream, conn: h11.Connection
) -> tuple[h11.Response, bytes]:
    response: h11.Response | None = None
    content = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data and response is None and not content:
                raise _Gone
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            content += event.data
            if len(content) > MAX_BODY:
                raise HttpError(f"answer larger than {MAX_BODY} bytes")
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return response, bytes(content)
        elif isinstance(event, h11.ConnectionClosed):
            raise HttpError("podman closed the connection mid-answer")
