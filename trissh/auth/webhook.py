"""ContainerSSH-compatible authentication and configuration webhooks (the client side).

ContainerSSH users point trissh at the auth and config servers they already run. The wire
format is ContainerSSH's (libcontainerssh ``auth/protocol.go``, ``metadata/connection.go``,
``config/protocol.go``, and the "Webhook authentication" and "Configuration server" docs):
a JSON ``POST``, ``Content-Type: application/json``, answered by ``200`` and a JSON body.

Requests (every field as ContainerSSH names it)::

    POST {url}/password   username, remoteAddress ("ip:port"), connectionId, clientVersion,
                          metadata, environment, files, passwordBase64
    POST {url}/pubkey     the same, with publicKey ("ssh-ed25519 AAAA...", no comment)
                          instead of passwordBase64
    POST {url}/authz      the same plus authenticatedUsername (after authentication)
    POST {config url}     the configuration server: the same fields as /authz

``metadata``/``environment`` map names to ``{"value": str, "sensitive": bool}`` and
``files`` map paths to ``{"value": base64, "sensitive": bool}``; entries marked sensitive
are never sent again, and empty maps are left out, as ContainerSSH does. Every auth
endpoint answers ``{"success": bool, "authenticatedUsername": str, "metadata": {...},
"environment": {...}, "files": {...}}``; the configuration server answers ``{"config":
{...}, "metadata": ..., "environment": ..., "files": ...}``. Answers are parsed strictly:
unknown fields, wrong types and bad base64 are errors, as in ContainerSSH's decoder (which,
being Go's, would also accept field names in another case; this one does not).

Keyboard-interactive (beyond ContainerSSH; RFC 4256 prompts driven by the server, one
HTTP round trip per SSH round)::

    POST {url}/keyboard-interactive
    {   ...the /password fields without passwordBase64...,
        "submethods": "",              # the client's hint (RFC 4256 §3.1)
        "round": 0,                    # 0 for the first request, then 1, 2, ...
        "state": null,                 # the previous answer's "state", echoed back
        "answers": []                  # the responses to the previous round's prompts
    }
    -> {"success": null | true | false,
        "name": "", "instruction": "", # shown by the client (RFC 4256 §3.2)
        "prompts": [{"prompt": "Password: ", "echo": false}, ...],
        "state": "opaque, up to 4096 characters",
        "authenticatedUsername": ..., "metadata": ..., "environment": ..., "files": ...}

``success`` is required: ``null`` asks another round with ``prompts`` (at most 16; zero is
allowed, as in RFC 4256); ``true`` or ``false`` ends the conversation, without prompts.
``state`` lets a stateless server carry its progress (sign or encrypt it). A conversation
longer than ``max_rounds`` is an error.

Configuration mapping: ContainerSSH's ``config.docker.execution`` (Docker Engine API field
names, matched case-insensitively like Go's decoder; ``host.resources.*`` as in its YAML is
accepted too) becomes a ``dict`` of trissh ``[container]`` keys:

    ====================================  =============================================
    ContainerSSH                          trissh ``[container]``
    ====================================  =============================================
    container.image                       image
    container.env ["K=V", ...]            env {K: V}
    container.user                        user
    container.workingdir                  workdir
    container.labels                      labels (``trissh.*`` refused)
    container.networkdisabled: true       network = "none"
    host.networkmode (none, slirp4netns,  network (other modes are ignored)
    pasta)
    host.binds ["/h:/c[:ro|rw,...]"]      volumes ["/h:/c:ro|rw"] (Docker's default rw
                                          kept; named volumes ignored)
    host.memory (bytes)                   memory_limit_mb (rounded down)
    host.cpushares                        cpu_shares
    host.pidslimit (> 0)                  pids_limit
    host.readonlyrootfs                   read_only
    shellcommand                          shell
    subsystems.sftp                       sftp_server
    ====================================  =============================================

Anything else that asks for something (a non-empty, non-zero value) is listed in
``ConfigResponse.ignored``; ``NanoCpus`` has no shares equivalent and is ignored too.

Retries: each attempt is bounded by ``timeout``; connection errors, timeouts and 5xx are
retried ``retries`` times with exponential backoff; any other status, a TLS verification
failure or a malformed answer fails at once. (ContainerSSH retries every failure until its
``authTimeout``; the caller here bounds the whole call with its own cancel scope.) No
redirects are followed and no proxy settings are read from the environment, as in
ContainerSSH. Nothing here logs; errors are ``WebhookError`` with one line naming the
endpoint (without credentials or query) and never a secret.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self, TypeVar, cast

import httpx
import trio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trissh import __version__
from trissh.config import join_host_port
from trissh.protocol.wire import Reader

MAX_RESPONSE_BYTES: Final = 1 << 20
MAX_ENTRIES: Final = 256
MAX_PROMPTS: Final = 16
MAX_STATE_CHARS: Final = 4096
_MIB: Final = 1 << 20


class WebhookError(Exception):
    """The webhook gave no usable answer; the message is one line and holds no secret."""


# --- metadata -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Value:
    """A metadata or environment value; a sensitive one is never sent to a later webhook."""

    value: str
    sensitive: bool = False

    def __repr__(self) -> str:
        shown = "<hidden>" if self.sensitive else repr(self.value)
        return f"Value({shown}, sensitive={self.sensitive})"


@dataclass(frozen=True, slots=True)
class FileValue:
    """A file to place in the container (path -> content)."""

    value: bytes
    sensitive: bool = False

    def __repr__(self) -> str:
        return f"FileValue(<{len(self.value)} bytes>, sensitive={self.sensitive})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Metadata:
    """ContainerSSH's dynamic metadata, carried from one webhook to the next."""

    metadata: Mapping[str, Value] = field(default_factory=dict)
    environment: Mapping[str, Value] = field(default_factory=dict)
    files: Mapping[str, FileValue] = field(default_factory=dict)

    def merged(self, newer: Metadata) -> Metadata:
        """This metadata updated entry by entry with ``newer`` (newer entries win)."""
        return Metadata(
            metadata={**self.metadata, **newer.metadata},
            environment={**self.environment, **newer.environment},
            files={**self.files, **newer.files},
        )

    def transmitted(self) -> dict[str, Any]:
        """The JSON fields a webhook receives: sensitive entries and empty maps left out."""
        sent = {
            "metadata": {k: v.value for k, v in self.metadata.items() if not v.sensitive},
            "environment": {k: v.value for k, v in self.environment.items() if not v.sensitive},
            "files": {
                path: base64.b64encode(f.value).decode("ascii")
                for path, f in self.files.items()
                if not f.sensitive
            },
        }
        return {
            name: {k: {"value": value, "sensitive": False} for k, value in entries.items()}
            for name, entries in sent.items()
            if entries
        }


# --- requests -------------------------------------------------------------------------------


def remote_address(host: str, port: int) -> str:
    """``remoteAddress`` as ContainerSSH writes it (Go's JoinHostPort: IPv6 in brackets)."""
    return join_host_port(host, port)


def authorized_key(blob: bytes) -> str:
    """A key (or certificate) blob in authorized_keys format without comment, for ``publicKey``."""
    key_type = Reader(blob).ascii(64)
    return f"{key_type} {base64.b64encode(blob).decode('ascii')}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionInfo:
    """The fields every webhook receives (ContainerSSH's ``ConnectionAuthPendingMetadata``)."""

    username: str
    remote_address: str
    connection_id: str
    client_version: str = ""
    metadata: Metadata = field(default_factory=Metadata)

    def to_json(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "remoteAddress": self.remote_address,
            "connectionId": self.connection_id,
            "clientVersion": self.client_version,
            **self.metadata.transmitted(),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PasswordRequest(ConnectionInfo):
    password: str = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        encoded = base64.b64encode(self.password.encode("utf-8")).decode("ascii")
        return {**ConnectionInfo.to_json(self), "passwordBase64": encoded}


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicKeyRequest(ConnectionInfo):
    #: authorized_keys format, see ``authorized_key``.
    public_key: str

    def to_json(self) -> dict[str, Any]:
        return {**ConnectionInfo.to_json(self), "publicKey": self.public_key}


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationRequest(ConnectionInfo):
    """``/authz`` and the configuration server (``ConnectionAuthenticatedMetadata``)."""

    authenticated_username: str = ""

    def to_json(self) -> dict[str, Any]:
        out = ConnectionInfo.to_json(self)
        if self.authenticated_username:  # omitempty in ContainerSSH
            out["authenticatedUsername"] = self.authenticated_username
        return out


ConfigRequest = AuthorizationRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyboardInteractiveRequest(ConnectionInfo):
    """One round of the keyboard-interactive webhook (see the module docstring)."""

    submethods: str = ""
    round: int = 0
    state: str | None = None
    answers: tuple[str, ...] = field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            **ConnectionInfo.to_json(self),
            "submethods": self.submethods,
            "round": self.round,
            "state": self.state,
            "answers": list(self.answers),
        }

    def next_round(
        self, response: KeyboardInteractiveResponse, answers: tuple[str, ...]
    ) -> KeyboardInteractiveRequest:
        """The request that answers ``response``'s prompts."""
        return dataclasses.replace(
            self, round=self.round + 1, state=response.state, answers=answers
        )


# --- responses ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResponse:
    success: bool
    #: The name the server verified, if it differs from the login name (ContainerSSH's
    #: ``authenticatedUsername``); None when absent or empty.
    authenticated_username: str | None = None
    metadata: Metadata = field(default_factory=Metadata)


@dataclass(frozen=True, slots=True)
class Prompt:
    prompt: str
    echo: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyboardInteractiveResponse:
    #: None: answer ``prompts`` and call again; True/False: the verdict.
    success: bool | None
    name: str = ""
    instruction: str = ""
    prompts: tuple[Prompt, ...] = ()
    state: str | None = None
    authenticated_username: str | None = None
    metadata: Metadata = field(default_factory=Metadata)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigResponse:
    #: Overrides of trissh ``[container]`` keys, ready to merge over the user's settings.
    container: dict[str, Any]
    #: What the server asked for that trissh cannot honour, one note per field.
    ignored: tuple[str, ...] = ()
    metadata: Metadata = field(default_factory=Metadata)


# --- strict wire models ---------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _WireValue(_Strict):
    value: str
    sensitive: bool = False


class _WireMetadata(_Strict):
    metadata: dict[str, _WireValue] | None = Field(None, max_length=MAX_ENTRIES)
    environment: dict[str, _WireValue] | None = Field(None, max_length=MAX_ENTRIES)
    files: dict[str, _WireValue] | None = Field(None, max_length=MAX_ENTRIES)

    def to_metadata(self) -> Metadata:
        files: dict[str, FileValue] = {}
        for path, entry in (self.files or {}).items():
            try:
                content = base64.b64decode(entry.value, validate=True)
            except ValueError:
                raise ValueError(f"files.{path}: value is not base64") from None
            files[path] = FileValue(content, entry.sensitive)
        return Metadata(
            metadata={k: Value(v.value, v.sensitive) for k, v in (self.metadata or {}).items()},
            environment={
                k: Value(v.value, v.sensitive) for k, v in (self.environment or {}).items()
            },
            files=files,
        )


class _WireAuthResponse(_WireMetadata):
    success: bool
    authenticatedUsername: str | None = None


class _WirePrompt(_Strict):
    prompt: str = Field(max_length=1024)
    echo: bool = False


class _WireKeyboardInteractiveResponse(_WireMetadata):
    success: bool | None  # required, null to continue
    name: str = Field("", max_length=256)
    instruction: str = Field("", max_length=4096)
    prompts: list[_WirePrompt] = Field(default_factory=list, max_length=MAX_PROMPTS)
    state: str | None = Field(None, max_length=MAX_STATE_CHARS)
    authenticatedUsername: str | None = None


class _WireConfigResponse(_WireMetadata):
    config: dict[str, Any]


_Model = TypeVar("_Model", bound=_Strict)


# --- the client -----------------------------------------------------------------------------


class _Retriable(Exception):
    """A transient failure of one attempt (connection, timeout, 5xx)."""


class WebhookClient:
    """A ContainerSSH-compatible webhook client on httpx (whose trio backend it uses).

    One client per server: the auth methods post to ``{url}/password`` and so on,
    ``config`` posts to ``url`` itself, so the configuration server gets its own client.
    Use it as an async context manager, or call ``aclose``.

    Args:
        url: base URL, ``http://`` or ``https://``.
        timeout: seconds allowed for one attempt (connect, send, answer).
        retries: extra attempts after a connection error, timeout or 5xx.
        backoff: seconds before the first retry, doubled for each further one.
        max_backoff: the longest pause between attempts.
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
        retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        max_rounds: int = 8,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("webhook URL must be http:// or https:// with a host")
        if timeout <= 0 or retries < 0 or backoff < 0 or max_response_bytes <= 0:
            raise ValueError("webhook timeout, retries, backoff or size limit out of range")
        if client_key is not None and client_cert is None:
            raise ValueError("a webhook client key needs a client certificate")
        self._url = parsed
        self._shown = str(parsed.copy_with(username=None, password=None, query=None)).rstrip("/")
        self._timeout, self._retries = timeout, retries
        self._backoff, self._max_backoff = backoff, max_backoff
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
        return await self._auth("/password", request.to_json())

    async def pubkey(self, request: PublicKeyRequest) -> AuthResponse:
        """Ask ``{url}/pubkey`` whether the key may log in (possession is checked elsewhere).

        Raises:
            WebhookError: no usable answer after the retries.

        Cancellation: safe at any point; nothing is granted unless this returns.
        """
        return await self._auth("/pubkey", request.to_json())

    async def authz(self, request: AuthorizationRequest) -> AuthResponse:
        """Ask ``{url}/authz`` whether an authenticated user may use the service.

        Raises:
            WebhookError: no usable answer after the retries.

        Cancellation: safe at any point; nothing is granted unless this returns.
        """
        return await self._auth("/authz", request.to_json())

    async def keyboard_interactive(
        self, request: KeyboardInteractiveRequest
    ) -> KeyboardInteractiveResponse:
        """One round of the keyboard-interactive webhook (protocol in the module docstring).

        Raises:
            WebhookError: no usable answer, a verdict with prompts, or too many rounds.

        Cancellation: safe at any point; the conversation can be abandoned.
        """
        if not 0 <= request.round < self._max_rounds:
            raise WebhookError(f"{self._shown}: more than {self._max_rounds} rounds")
        body = await self._post("/keyboard-interactive", request.to_json())
        wire = self._parse(_WireKeyboardInteractiveResponse, body, "/keyboard-interactive")
        if wire.success is not None and wire.prompts:
            raise WebhookError(f"{self._shown}/keyboard-interactive: a verdict with prompts")
        return KeyboardInteractiveResponse(
            success=wire.success,
            name=wire.name,
            instruction=wire.instruction,
            prompts=tuple(Prompt(p.prompt, p.echo) for p in wire.prompts),
            state=wire.state,
            authenticated_username=wire.authenticatedUsername or None,
            metadata=self._metadata(wire, "/keyboard-interactive"),
        )

    async def config(self, request: ConfigRequest) -> ConfigResponse:
        """Ask the configuration server (``url`` itself) for this connection's settings.

        Returns:
            The ``[container]`` overrides, notes on what was ignored, and metadata.

        Raises:
            WebhookError: no usable answer after the retries, or values of the wrong type.

        Cancellation: safe at any point.
        """
        body = await self._post("", request.to_json())
        wire = self._parse(_WireConfigResponse, body, "")
        try:
            container, ignored = container_overrides(wire.config)
        except ValueError as exc:
            raise WebhookError(f"{self._shown}: {exc}") from None
        return ConfigResponse(
            container=container, ignored=ignored, metadata=self._metadata(wire, "")
        )

    async def _auth(self, path: str, payload: dict[str, Any]) -> AuthResponse:
        wire = self._parse(_WireAuthResponse, await self._post(path, payload), path)
        return AuthResponse(
            success=wire.success,
            authenticated_username=wire.authenticatedUsername or None,
            metadata=self._metadata(wire, path),
        )

    def _parse(self, model: type[_Model], body: bytes, path: str) -> _Model:
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise WebhookError(
                f"{self._shown}{path}: invalid answer: {where}: {first['msg']}"
            ) from None

    def _metadata(self, wire: _WireMetadata, path: str) -> Metadata:
        try:
            return wire.to_metadata()
        except ValueError as exc:
            raise WebhookError(f"{self._shown}{path}: invalid answer: {exc}") from None

    async def _post(self, path: str, payload: dict[str, Any]) -> bytes:
        """POST with the retry policy; the answer body of a 200."""
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        delay = self._backoff
        for attempt in range(self._retries + 1):
            try:
                return await self._attempt(path, body)
            except _Retriable as exc:
                if attempt == self._retries:
                    raise WebhookError(
                        f"{self._shown}{path}: {exc} (after {attempt + 1} attempts)"
                    ) from None
            await trio.sleep(min(delay, self._max_backoff))
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, path: str, body: bytes) -> bytes:
        data: bytes | None = None
        request = self._http.build_request(
            "POST", self._endpoint(path), content=body, headers={"Content-Type": "application/json"}
        )
        request.stream = _Body(body)
        with trio.move_on_after(self._timeout):
            try:
                response = await self._http.send(request, stream=True)
                try:
                    status = response.status_code
                    if status >= 500:
                        raise _Retriable(f"HTTP {status}")
                    if status != 200:
                        raise WebhookError(f"{self._shown}{path}: HTTP {status}")
                    data = await self._read(response, path)
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                if _is_tls_failure(exc):
                    raise WebhookError(f"{self._shown}{path}: TLS: {_describe(exc)}") from None
                raise _Retriable(_describe(exc)) from None
        if data is None:
            raise _Retriable(f"no answer within {self._timeout:g} s")
        return data

    def _endpoint(self, path: str) -> httpx.URL:
        """``path`` appended to the base URL's path; its query string is kept."""
        if not path:
            return self._url
        return self._url.copy_with(path=self._url.path.rstrip("/") + path)

    async def _read(self, response: httpx.Response, path: str) -> bytes:
        too_big = WebhookError(f"{self._shown}{path}: answer over {self._max_bytes} bytes")
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
        raise ValueError(f"webhook TLS files: {exc}") from None
    return context


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: httpx.TransportError) -> str:
    """The exception's name and the first non-empty message along its cause chain."""
    seen: BaseException | None = exc
    while seen is not None and not str(seen).strip():
        seen = seen.__cause__ or seen.__context__
    text = str(seen).strip().splitlines()[0] if seen is not None else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- ContainerSSH configuration -> trissh [container] ---------------------------------------

_NETWORK_MODES: Final = frozenset({"none", "slirp4netns", "pasta"})
_Path = tuple[str, ...]


class _Walker:
    """Case-insensitive lookups (Go's decoder) that remember which fields were used."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.used: set[_Path] = set()

    def get(self, *names: str) -> Any:
        node: Any = self.root
        path: _Path = ()
        for name in names:
            if not isinstance(node, Mapping):
                return None
            key = _key(node, name)
            if key is None:
                return None
            node, path = node[key], (*path, key)
        self.used.add(path)
        return node

    def leftovers(self, node: Mapping[str, Any], path: _Path = ()) -> list[str]:
        notes: list[str] = []
        for key, value in node.items():
            here = (*path, key)
            if here in self.used or value in (None, "", 0, False, [], {}):
                continue
            if isinstance(value, Mapping) and any(u[: len(here)] == here for u in self.used):
                notes += self.leftovers(value, here)
            else:
                notes.append(f"{'.'.join(here)}: not supported by trissh, ignored")
        return notes


def _key(node: Mapping[str, Any], name: str) -> str | None:
    if name in node:
        return name
    return next((k for k in node if isinstance(k, str) and k.lower() == name.lower()), None)


def _typed(value: Any, kind: type[Any], where: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"config.{where}: expected {kind.__name__}")
    return value


def _strings(value: Any, where: str) -> list[str]:
    items = _typed(value, list, where) or []
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"config.{where}: expected a list of strings")
    return list(items)


def container_overrides(config: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Map a ContainerSSH ``config`` object onto trissh ``[container]`` keys.

    Returns:
        The overrides, and one note for every field asked for but not honoured.

    Raises:
        ValueError: a mapped field of the wrong type.
    """
    w = _Walker(config)
    out: dict[str, Any] = {}
    notes: list[str] = []
    backend = _typed(w.get("backend"), str, "backend")
    if backend not in (None, "", "docker"):
        notes.append(f"backend: {backend!r} is not supported, only docker settings map")
    c, h = ("docker", "execution", "container"), ("docker", "execution", "host")
    for name, key in (("image", "image"), ("user", "user"), ("workingdir", "workdir")):
        if value := _typed(w.get(*c, name), str, f"docker.execution.container.{name}"):
            out[key] = value
    _map_env(_strings(w.get(*c, "env"), "docker.execution.container.env"), out, notes)
    labels = _typed(w.get(*c, "labels"), dict, "docker.execution.container.labels") or {}
    for name, value in labels.items():
        if not isinstance(value, str):
            raise ValueError(f"config.docker.execution.container.labels.{name}: expected str")
        if name.startswith("trissh."):
            notes.append(f"docker.execution.container.labels.{name}: reserved, ignored")
        else:
            out.setdefault("labels", {})[name] = value
    mode = _typed(w.get(*h, "networkmode"), str, "docker.execution.host.networkmode")
    if mode in _NETWORK_MODES:
        out["network"] = mode
    elif mode not in (None, "", "default"):
        notes.append(f"docker.execution.host.networkmode: {mode!r} is not supported, ignored")
    if _typed(w.get(*c, "networkdisabled"), bool, "docker.execution.container.networkdisabled"):
        out["network"] = "none"
    _map_binds(_strings(w.get(*h, "binds"), "docker.execution.host.binds"), out, notes)
    _map_resources(w, h, out, notes)
    if (readonly := _typed(w.get(*h, "readonlyrootfs"), bool, "host.readonlyrootfs")) is not None:
        out["read_only"] = readonly
    if shell := _strings(w.get("docker", "execution", "shellcommand"), "shellcommand"):
        out["shell"] = tuple(shell)
    sftp = w.get("docker", "execution", "subsystems", "sftp")
    if sftp := _typed(sftp, str, "docker.execution.subsystems.sftp"):
        out["sftp_server"] = sftp
    return out, (*notes, *w.leftovers(config))


def _map_env(entries: list[str], out: dict[str, Any], notes: list[str]) -> None:
    for entry in entries:
        name, sep, value = entry.partition("=")
        if sep and name:
            out.setdefault("env", {})[name] = value
        else:
            notes.append(f"docker.execution.container.env: {name!r} has no value, ignored")


def _map_binds(binds: list[str], out: dict[str, Any], notes: list[str]) -> None:
    volumes: list[str] = []
    for bind in binds:
        parts = bind.split(":")
        if len(parts) not in (2, 3) or not all(p.startswith("/") for p in parts[:2]):
            notes.append(f"docker.execution.host.binds: {bind!r} is not HOST:CONTAINER, ignored")
            continue
        options = parts[2].split(",") if len(parts) == 3 else []
        if extra := [o for o in options if o not in ("ro", "rw", "")]:
            notes.append(f"docker.execution.host.binds: options {extra} of {bind!r} ignored")
        volumes.append(f"{parts[0]}:{parts[1]}:{'ro' if 'ro' in options else 'rw'}")
    if volumes:
        out["volumes"] = tuple(volumes)


def _map_resources(
    w: _Walker, host: tuple[str, ...], out: dict[str, Any], notes: list[str]
) -> None:
    """Docker's flat HostConfig resource fields, or ``host.resources.*`` as in its YAML."""

    def get(name: str) -> Any:
        flat = w.get(*host, name)
        nested = w.get(*host, "resources", name)
        return _typed(flat if flat is not None else nested, int, f"host.{name}")

    if memory := get("memory"):
        out["memory_limit_mb"] = max(1, memory // _MIB)
    if shares := get("cpushares"):
        out["cpu_shares"] = shares
    pids = get("pidslimit")
    if pids is not None and pids > 0:
        out["pids_limit"] = pids
    elif pids is not None and pids < 0:
        notes.append("docker.execution.host.pidslimit: unlimited is not supported, ignored")
