"""The one place trissh talks to the podman service: requests, limits, errors, the upgrade.

Theory of operation
-------------------
Every REST request (``PodmanApi.request``) is HTTP/1.1 on trio over a kept-alive unix
socket (:mod:`.http`), under one ``trio.CapacityLimiter``: a burst of logins cannot open
more concurrent requests than the limiter allows, and no worker thread is involved (podman-py
with requests in a thread cost ~5x the CPU per request). Requests that change state
(create, start) keep ``abandon_on_cancel=False`` so their outcome is known; reads and the
teardown's removal use ``abandon_on_cancel=True`` so a bounded cleanup scope really is
bounded. podman-py remains for what it does well and rarely: rendering a create request's
body from its keyword arguments (:func:`create_body`) and the sweep's container list
(``PodmanApi.call``, in a worker thread).

podman-py cannot stream exec stdio, so :meth:`PodmanApi.upgrade` does that request itself
with h11 on a trio unix socket: ``POST .../start`` with ``Connection: Upgrade``, read the
``101``, keep the bytes h11 read past the response, and hand back the raw socket.

Foreign exceptions (podman-py, requests, OSError, h11, :mod:`.http`) become
:mod:`trissh.backend.errors` in :func:`map_podman_errors`, the only place that knows their
shapes.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import h11
import podman
import podman.errors
import requests
import trio

from trissh.backend.errors import BackendError, BackendUnavailable, ImageNotFound
from trissh.backend.podman.http import HttpError, PodmanHttp
from trissh.backend.podman.stdio_frames import FrameDecoder, FrameError, StreamType

__all__ = ["API_VERSION", "PodmanApi", "create_body", "map_podman_errors", "socket_path"]

#: The libpod API version in every path; podman 4.0+ serves it.
API_VERSION: Final = "4.0.0"
_PREFIX: Final = f"/v{API_VERSION}/libpod"
_MAX_ERROR_BODY: Final = 64 * 1024
_IMAGE_MISSING: Final = re.compile(r"image not known|no such image", re.IGNORECASE)
#: podman 4.3 answers a request on a container removed meanwhile (a rename) with a 500.
_CONTAINER_MISSING: Final = re.compile(r"no such container", re.IGNORECASE)

T = TypeVar("T")


def socket_path(url: str) -> str:
    """The socket path in ``unix:///p``, ``unix:/p`` or ``http+unix://%2Fp`` (CONTAINER_HOST).

    Raises:
        ValueError: not a unix-socket URL with an absolute path.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("unix", "http+unix"):
        raise ValueError(f"unsupported podman URL {url!r}: only unix sockets are supported")
    path = urllib.parse.unquote(parsed.netloc + parsed.path)
    if not path.startswith("/"):
        raise ValueError(f"podman URL {url!r} needs an absolute socket path")
    return path


def _one_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else "unknown error"
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        todo += [a for a in current.args if isinstance(a, BaseException)]


def _connect_failure(exc: BaseException) -> str | None:
    """Why the socket could not be reached, if that is what ``exc`` is about."""
    generic: BaseException | None = None
    for link in _chain(exc):
        if isinstance(link, FileNotFoundError | ConnectionRefusedError | PermissionError):
            return link.strerror or type(link).__name__
        if generic is None and isinstance(link, requests.ConnectionError | ConnectionError):
            generic = link
    return None if generic is None else _one_line(str(generic) or type(generic).__name__)


@contextmanager
def map_podman_errors(*, image: str | None = None, where: str = "") -> Iterator[None]:
    """Translate podman-py/requests/OSError/h11 exceptions into backend errors.

    ``image`` turns a 404 on create into :class:`ImageNotFound`; ``where`` names the
    socket for messages. ``trio.Cancelled`` and our own errors pass through untouched.
    """
    try:
        yield
    except BackendError:
        raise
    except podman.errors.ImageNotFound as exc:
        raise ImageNotFound(image or "?") from exc
    except (podman.errors.APIError, requests.RequestException, OSError) as exc:
        reason = _connect_failure(exc)
        if reason is not None:
            place = f" at {where}" if where else ""
            raise BackendUnavailable(
                f"container backend unavailable: cannot connect to podman{place}: {reason}"
            ) from exc
        if isinstance(exc, podman.errors.APIError):
            explanation = str(exc.explanation or exc)
            if image is not None and _IMAGE_MISSING.search(explanation):
                # podman 4.3 answers a create with a missing image with 500, not 404.
                raise ImageNotFound(image) from exc
            raise BackendError(f"podman: {_one_line(explanation)}") from exc
        if isinstance(exc, requests.Timeout):
            raise BackendError("podman: request timed out") from exc
        raise BackendError(f"podman: {_one_line(str(exc) or type(exc).__name__)}") from exc
    except (h11.ProtocolError, podman.errors.PodmanError, HttpError) as exc:
        raise BackendError(f"podman: {_one_line(str(exc) or type(exc).__name__)}") from exc


class PodmanApi:
    """A podman-py client behind a thread limiter, plus the raw upgrade request."""

    def __init__(self, url: str, *, limiter_capacity: int, request_timeout: float) -> None:
        self.path = socket_path(url)
        self.client = podman.PodmanClient(
            base_url="unix://" + self.path,
            version=API_VERSION,
            timeout=request_timeout,
            max_pool_size=max(10, limiter_capacity),
        )
        self.limiter = trio.CapacityLimiter(limiter_capacity)
        #: Seconds one request may take before it is given up.
        self.timeout = request_timeout
        self._http = PodmanHttp(self.path, keep=limiter_capacity)

    def close(self) -> None:
        """Drop pooled connections (sync: only closes sockets)."""
        self.client.api.close()
        self._http.close()

    async def call(
        self,
        fn: Callable[[], T],
        *,
        abandon_on_cancel: bool = False,
        image: str | None = None,
    ) -> T:
        """Run one blocking podman-py call in a worker thread, errors mapped.

        Cancellation: with ``abandon_on_cancel=False`` the call runs to completion and the
        cancellation is delivered at the next checkpoint, so its outcome is never unknown.
        """
        with map_podman_errors(image=image, where=self.path):
            return await trio.to_thread.run_sync(
                fn, limiter=self.limiter, abandon_on_cancel=abandon_on_cancel
            )

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: object = None,
        abandon_on_cancel: bool = False,
        missing_ok: bool = False,
        image: str | None = None,
        exchange_bound: float | None = None,
    ) -> Any:
        """One libpod REST request (on trio: :mod:`.http`); returns decoded JSON, ``{}`` for
        an empty body. ``body`` is sent as JSON (``bytes`` as they are); ``exchange_bound``
        bounds the exchange once it has its slot (default: the backend's request timeout).

        ``missing_ok`` turns a 404 or "no such container" into ``None`` (what is gone already);
        ``image`` (a create's) turns an answer that the image is missing into
        :class:`ImageNotFound`.

        Cancellation: waiting for a slot is cancellable. Once sent, with
        ``abandon_on_cancel=False`` the request runs to its answer (bounded by the request
        timeout) and the cancellation is delivered at the next checkpoint, so its outcome is
        never unknown; with ``True`` it is dropped at once.
        """
        target = _PREFIX + path
        if params:
            target += "?" + urllib.parse.urlencode(params)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        async with self.limiter:
            with (
                trio.CancelScope(shield=not abandon_on_cancel),
                map_podman_errors(image=image, where=self.path),
            ):
                with trio.move_on_after(exchange_bound or self.timeout) as bound:
                    response = await self._http.request(method, target, data)
                if bound.cancelled_caught:
                    raise BackendError("podman: request timed out")
        if not abandon_on_cancel:
            await trio.lowlevel.checkpoint_if_cancelled()
        if response.status >= 400:
            message = _one_line(_error_text(response.body, response.reason))
            if missing_ok and (response.status == 404 or _CONTAINER_MISSING.search(message)):
                return None
            if image is not None and (response.status == 404 or _IMAGE_MISSING.search(message)):
                raise ImageNotFound(image)
            raise BackendError(f"podman: {message}")
        if not response.body.strip():
            return {}
        try:
            return json.loads(response.body)
        except ValueError:
            return {}  # e.g. a detached exec start answers with a bare newline

    async def put_archive(self, container_id: str, archive: bytes) -> None:
        """Extract a tar archive at the container's ``/`` (``PUT .../archive``).

        Cancellation: the upload completes (its outcome is known); then cancelled.
        """
        api = self.client.api

        def run() -> None:
            response = api.put(
                f"/containers/{container_id}/archive",
                params={"path": "/"},
                data=archive,
                headers={"Content-Type": "application/x-tar"},
            )
            _raise_for_status(response)

        await self.call(run)

    async def exec_output(self, container_id: str, argv: list[str]) -> bytes:
        """Run ``argv`` in the container to completion and return its stdout (small outputs).

        Cancellation: abandons the waiting thread; the short program finishes on its own.
        """
        created = await self.request(
            "POST",
            f"/containers/{container_id}/exec",
            body={"Cmd": argv, "AttachStdout": True, "AttachStderr": False},
            abandon_on_cancel=True,
        )
        api = self.client.api
        body = json.dumps({"Detach": False, "Tty": False})

        def run() -> bytes:
            response = api.post(
                f"/exec/{created['Id']}/start",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            _raise_for_status(response)
            return bytes(response.content)

        raw = await self.call(run, abandon_on_cancel=True)
        decoder = FrameDecoder()
        try:
            frames = decoder.feed(raw)
        except FrameError as exc:
            raise BackendError(f"podman: unreadable exec output: {exc}") from None
        return b"".join(data for stream, data in frames if stream is StreamType.STDOUT)

    async def upgrade(self, path: str, body: object) -> tuple[trio.SocketStream, bytes]:
        """POST ``body`` to ``path`` asking for ``Upgrade: tcp``; return the raw stream.

        Returns the socket and the bytes already read past the ``101`` response.

        Raises:
            BackendUnavailable: the socket cannot be reached.
            BackendError: podman answered with an error instead of upgrading.

        Cancellation: safe; the socket is closed.
        """
        with map_podman_errors(where=self.path):
            sock = await trio.open_unix_socket(self.path)
        try:
            with map_podman_errors(where=self.path):
                leftover = await _handshake(sock, _PREFIX + path, json.dumps(body).encode())
        except BaseException:
            await trio.aclose_forcefully(sock)
            raise
        return sock, leftover


#: Left out of every container's environment: podman's own ``TERM=xterm`` default. As
#: sshd, a program has TERM only with a terminal (the client's, set per session).
UNSET_ENV: Final = ("TERM",)


def create_body(image: str, kwargs: Mapping[str, Any]) -> bytes:
    """The body of ``POST /containers/create`` for podman-py's ``containers.create`` keyword
    arguments, as podman-py renders it (plus ``unsetenv``, which podman-py does not know);
    sent by :meth:`PodmanApi.request`, which reads the new id from the answer where
    podman-py would inspect the container once more."""
    from podman.api import prepare_body
    from podman.domain.containers_create import CreateMixin

    payload = CreateMixin._render_payload({"image": image, "command": None, **kwargs})
    payload["unsetenv"] = [name for name in UNSET_ENV if name not in kwargs.get("environment", {})]
    return str(prepare_body(payload)).encode()


def _raise_for_status(response: Any) -> None:
    """An error status as podman-py's ``APIError`` (which :func:`map_podman_errors` maps)."""
    if response.status_code >= 400:
        raise podman.errors.APIError(
            response.reason, response=response, explanation=_error_message(response)
        )


def _error_text(body: bytes, reason: str) -> str:
    """podman's error answer: JSON with ``message`` (or ``cause``), else the text itself."""
    try:
        payload = json.loads(body)
        return str(payload.get("message") or payload.get("cause") or reason)
    except (ValueError, AttributeError):
        return body.decode(errors="replace") or reason


def _error_message(response: Any) -> str:
    """:func:`_error_text` of a podman-py (requests) response."""
    return _error_text(response.content, response.text or str(response.status_code))


async def _handshake(sock: trio.SocketStream, target: str, body: bytes) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="POST",
        target=target,
        headers=[
            ("Host", "podman"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "Upgrade"),
            ("Upgrade", "tcp"),
        ],
    )
    await sock.send_all(
        conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    )
    status = 0
    error_body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await sock.receive_some(65536))
        elif isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                data, _closed = conn.trailing_data
                return bytes(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            if len(error_body) < _MAX_ERROR_BODY:
                error_body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            raise BackendError(f"podman: {_upgrade_error(status, bytes(error_body))}")


def _upgrade_error(status: int, body: bytes) -> str:
    try:
        payload = json.loads(body)
        message = str(payload.get("message") or payload.get("cause"))
    except (ValueError, AttributeError):
        message = body.decode(errors="replace") or "no upgrade"
    return _one_line(f"{status or 'connection closed'}: {message}")
