"""The webhook client: HTTP on httpx (trio backend), retries, timeouts, TLS and mutual TLS.

What goes over the wire is in ``wire.py`` (and docs/webhooks.md); what a configuration
server's answer means for containers is in ``containerssh.py``.

Retries, as ContainerSSH's: each attempt is bounded by ``timeout``; every failure (no
connection, no answer in time, any status but 200, a TLS failure, an answer that does not
parse) is tried again every ``retry_interval`` seconds until ``auth_timeout`` has passed
since the first attempt (or ``retries`` retries, when set). No redirects are followed and
no proxy settings are read from the environment, as in ContainerSSH. Nothing here logs;
errors are ``WebhookError`` with one line naming the endpoint (without credentials or
query) and never a secret.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Final, Self, TypeVar, cast

import httpx
import trio

from trissh import __version__
from trissh.auth.webhook.containerssh import ConfigRefused, ConfigResult, config_result
from trissh.auth.webhook.wire import (
    Answer,
    AuthorizationRequest,
    AuthResponse,
    ConfigRequest,
    ConfigResponse,
    ConnectionInfo,
    KeyboardInteractiveRequest,
    KeyboardInteractiveResponse,
    PasswordRequest,
    PublicKeyRequest,
    parse,
)

MAX_RESPONSE_BYTES: Final = 1 << 20
_AnswerT = TypeVar("_AnswerT", bound=Answer)


class WebhookError(Exception):
    """The webhook gave no usable answer; the message is one line and holds no secret."""


class _Retriable(Exception):
    """A failed attempt: tried again while the request's time and retries allow."""


class WebhookClient:
    """A ContainerSSH-compatible webhook client on httpx (whose trio backend it uses).

    One client per server: the auth methods post to ``{url}/password`` and so on,
    ``config`` posts to ``url`` itself, so the configuration server gets its own client.
    Use it as an async context manager, or call ``aclose``.

    Args:
        url: base URL, ``http://`` or ``https://``.
        timeout: seconds allowed for one attempt (connect, send, answer).
        auth_timeout: seconds one request may take, its retries included.
        retry_interval: seconds between a failed attempt and the next.
        retries: at most this many retries; ``None``: as many as ``auth_timeout`` allows.
        ca_file: PEM CA bundle to verify the server with, instead of the system store.
        client_cert, client_key: PEM client certificate and key for mutual TLS.
        max_response_bytes: larger answers are an error.
        max_rounds: the most keyboard-interactive rounds of one conversation.

    Raises:
        ValueError: a bad URL or setting, or unreadable TLS files.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        auth_timeout: float = 60.0,
        retry_interval: float = 10.0,
        retries: int | None = None,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        max_rounds: int = 8,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("webhook URL must be http:// or https:// with a host")
        if (
            min(timeout, auth_timeout, max_response_bytes) <= 0
            or retry_interval < 0
            or (retries is not None and retries < 0)
        ):
            raise ValueError("webhook timeout, retries, interval or size limit out of range")
        if client_key is not None and client_cert is None:
            raise ValueError("a webhook client key needs a client certificate")
        self._url = parsed
        self._shown = str(parsed.copy_with(username=None, password=None, query=None)).rstrip("/")
        self._timeout, self._retries = timeout, retries
        self._auth_timeout, self._interval = auth_timeout, retry_interval
        self._max_bytes, self._max_rounds = max_response_bytes, max_rounds
        self._http = httpx.AsyncClient(
            verify=_ssl_context(ca_file, client_cert, client_key),
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            headers={"Accept": "application/json", "User-Agent": f"trissh/{__version__}"},
        )

    def __repr__(self) -> str:
        return f"WebhookClient({self._shown!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections.

        Cancellation: shielded, and bounded to one second, so it never hangs on a peer.
        """
        with trio.move_on_after(1.0, shield=True):
            await self._http.aclose()

    async def password(self, request: PasswordRequest) -> AuthResponse:
        """Ask ``{url}/password`` whether the password is good.

        Returns:
            The verdict; a clean ``success: false`` is an answer, not an error.

        Raises:
            WebhookError: no usable answer after the retries.

        Cancellation: safe at any point; nothing is granted unless this returns.
        """
        return await self._ask("/password", request, AuthResponse)

    async def pubkey(self, request: PublicKeyRequest) -> AuthResponse:
        """Ask ``{url}/pubkey`` whether the key may log in (possession is checked elsewhere).

        Raises:
            WebhookError: no usable answer after the retries.

        Cancellation: safe at any point; nothing is granted unless this returns.
        """
        return await self._ask("/pubkey", request, AuthResponse)

    async def authz(self, request: AuthorizationRequest) -> AuthResponse:
        """Ask ``{url}/authz`` whether an authenticated user may use the service.

        Raises:
            WebhookError: no usable answer after the retries.

        Cancellation: safe at any point; nothing is granted unless this returns.
        """
        return await self._ask("/authz", request, AuthResponse)

    async def keyboard_interactive(
        self, request: KeyboardInteractiveRequest
    ) -> KeyboardInteractiveResponse:
        """One round of the keyboard-interactive webhook (docs/webhooks.md).

        Raises:
            WebhookError: no usable answer, a verdict with prompts, or too many rounds.

        Cancellation: safe at any point; the conversation can be abandoned.
        """
        if not 0 <= request.round < self._max_rounds:
            raise WebhookError(f"{self._shown}: more than {self._max_rounds} rounds")
        path = "/keyboard-interactive"
        answer = await self._ask(path, request, KeyboardInteractiveResponse)
        if answer.success is not None and answer.prompts:
            raise WebhookError(f"{self._shown}{path}: a verdict with prompts")
        return answer

    async def config(self, request: ConfigRequest) -> ConfigResult:
        """Ask the configuration server (``url`` itself) for this connection's settings.

        Returns:
            The ``[container]`` overrides, notes on plumbing it set, and metadata.

        Raises:
            ConfigRefused: the answer asks for what trissh cannot apply (names the field).
            WebhookError: no usable answer after the retries, or values of the wrong type.

        Cancellation: safe at any point.
        """
        answer = await self._ask("", request, ConfigResponse)
        try:
            return config_result(answer)
        except ConfigRefused:
            raise
        except ValueError as exc:
            raise WebhookError(f"{self._shown}: {exc}") from None

    async def _ask(self, path: str, request: ConnectionInfo, model: type[_AnswerT]) -> _AnswerT:
        """POST ``request`` to ``path`` until a 200 answer parses as a ``model`` or the
        retries run out (module docstring)."""
        body = request.body()
        deadline = trio.current_time() + self._auth_timeout
        attempts = 0
        while True:
            attempts += 1
            try:
                data = await self._attempt(path, body, deadline)
                try:
                    return parse(model, data)
                except ValueError as exc:
                    raise _Retriable(f"invalid answer: {exc}") from None
            except _Retriable as exc:
                last = exc
            out_of_tries = self._retries is not None and attempts > self._retries
            if out_of_tries or trio.current_time() + self._interval >= deadline:
                raise WebhookError(f"{self._shown}{path}: {last} (after {attempts} attempts)")
            await trio.sleep(self._interval)

    async def _attempt(self, path: str, body: bytes, deadline: float) -> bytes:
        """One POST, bounded by ``timeout`` and the request's ``deadline``.

        Raises:
            _Retriable: any failure (the caller decides whether to try again).
        """
        data: bytes | None = None
        request = self._http.build_request(
            "POST", self._endpoint(path), content=body, headers={"Content-Type": "application/json"}
        )
        request.stream = _Body(body)
        bound = min(trio.current_time() + self._timeout, deadline)
        with trio.move_on_at(bound):
            try:
                response = await self._http.send(request, stream=True)
                try:
                    if response.status_code != 200:
                        raise _Retriable(f"HTTP {response.status_code}")
                    data = await self._read(response)
                finally:
                    await response.aclose()
            except httpx.HTTPError as exc:  # transport, and a body that does not decode
                prefix = "TLS: " if _is_tls_failure(exc) else ""
                raise _Retriable(prefix + _describe(exc)) from None
        if data is None:
            raise _Retriable(f"no answer within {self._timeout:g} s")
        return data

    def _endpoint(self, path: str) -> httpx.URL:
        """``path`` appended to the base URL's path; its query string is kept."""
        if not path:
            return self._url
        return self._url.copy_with(path=self._url.path.rstrip("/") + path)

    async def _read(self, response: httpx.Response) -> bytes:
        too_big = _Retriable(f"answer over {self._max_bytes} bytes")
        declared = response.headers.get("Content-Length", "0")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise too_big
        chunks = bytearray()
        chunk_iterator = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
        async with contextlib.aclosing(chunk_iterator) as stream:
            async for chunk in stream:
                chunks += chunk
                if len(chunks) > self._max_bytes:
                    raise too_big
        return bytes(chunks)


class _Body(httpx.AsyncByteStream):
    """The request body as a plain async iterator: httpx's own is an async generator that
    trio reports when a failed send abandons it (encode/httpx#3686)."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        data, self._data = self._data, None
        if data is None:
            raise StopAsyncIteration
        return data


def _ssl_context(
    ca_file: str | None, client_cert: str | None, client_key: str | None
) -> ssl.SSLContext:
    """Verification against ``ca_file`` only (else the system store), TLS 1.2 or later."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if client_cert is not None:
            context.load_cert_chain(client_cert, client_key)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(path for path in (ca_file, client_cert, client_key) if path)
        raise ValueError(f"cannot use the TLS files {files}: {exc}") from None
    return context


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: httpx.HTTPError) -> str:
    """The exception's name and the first non-empty message along its cause chain."""
    seen: BaseException | None = exc
    while seen is not None and not str(seen).strip():
        seen = seen.__cause__ or seen.__context__
    text = str(seen).strip().splitlines()[0] if seen is not None else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
