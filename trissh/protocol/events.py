"""Events the core hands to the driver.

Past-tense names for things that happened; ``...Requested`` for decisions the driver must
answer with the command named in the docstring. All frozen, slotted and keyword-only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NewType

from trissh.protocol.certificates import Certificate
from trissh.protocol.keys import PublicKey, SecurityKeyAssertion

#: Our local channel number (the peer's number stays inside the core).
ChannelId = NewType("ChannelId", int)


class SessionKind(enum.Enum):
    SHELL = "shell"
    EXEC = "exec"
    SUBSYSTEM = "subsystem"


@dataclass(frozen=True, slots=True, kw_only=True)
class TerminalSize:
    columns: int
    rows: int
    width_px: int = 0
    height_px: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PtyRequest:
    term: str
    size: TerminalSize
    modes: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class NegotiatedAlgorithms:
    kex: str
    host_key: str
    cipher_client_to_server: str
    cipher_server_to_client: str
    mac_client_to_server: str | None
    mac_server_to_client: str | None
    compression_client_to_server: str
    compression_server_to_client: str
    strict_kex: bool
    ext_info: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionReceived:
    """The client identified itself (RFC 4253 §4.2)."""

    version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyExchangeCompleted:
    algorithms: NegotiatedAlgorithms
    is_rekey: bool
    #: The client's KEXINIT came first (it asked for this exchange; we did not).
    by_client: bool = False
    #: CPU seconds the server spent computing it (key generation, agreement, signature);
    #: a measurement, so left out of comparisons.
    compute_seconds: float = field(default=0.0, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicKeyAuthRequested:
    """May ``username`` log in with ``public_key``? Answer ``accept_auth()``/``reject_auth()``.

    With ``signed`` False this is a query and acceptance sends PK_OK; with ``signed`` True
    the core verifies the signature after acceptance and only then sends SUCCESS.
    """

    username: str
    public_key: PublicKey
    signed: bool
    #: Set when the client offered an OpenSSH certificate; ``public_key`` is the key it
    #: certifies. Whether its CA is trusted is the driver's decision.
    certificate: Certificate | None = None
    #: For a signed request with a FIDO security key (``sk-*``, plain or certified): the
    #: flags and counter its signature carries. Whether they satisfy the login (user
    #: presence, verification) is the driver's decision; the core verifies the signature,
    #: flags included, only after a yes.
    security_key: SecurityKeyAssertion | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PasswordAuthRequested:
    """Is ``password`` right for ``username``? Answer ``accept_auth()``/``reject_auth()``."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyboardInteractiveAuthRequested:
    """RFC 4256 started: answer ``send_auth_prompts(...)``, ``accept_auth()`` or
    ``reject_auth()``. ``submethods`` are the client's hints, not a promise."""

    username: str
    submethods: str


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyboardInteractiveResponsesReceived:
    """Answers to the last prompts, in order; answer as for the request."""

    username: str
    responses: tuple[str, ...] = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class GssapiAuthRequested:
    """``gssapi-with-mic`` (RFC 4462) started: answer ``accept_gssapi_mechanism(oid)`` with
    one of ``mechanisms`` (DER-encoded OIDs, in the client's order), or ``reject_auth()``."""

    username: str
    mechanisms: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class GssapiTokenReceived:
    """A context-establishment token for the chosen mechanism: answer
    ``continue_gssapi(output, established=...)`` with what the GSS-API made of it, or
    ``reject_auth(reason, error_token=...)`` when it failed."""

    username: str
    token: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class GssapiMicReceived:
    """The context is established and the client sent its MIC. Answer ``accept_auth()``
    only if ``mic`` verifies over ``signed_data`` (RFC 4462 §3.5, built by the core from
    the session id and the request) and the context's principal may be ``username``."""

    username: str
    mic: bytes = field(repr=False)
    signed_data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthFailed:
    """An authentication attempt failed (for logs and metrics)."""

    username: str
    method: str
    reason: str
    key_fingerprint: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthPartiallySucceeded:
    """A method succeeded but the user's chain needs more (RFC 4252 §5.1 partial success)."""

    username: str
    method: str
    remaining: tuple[str, ...]
    key_fingerprint: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Authenticated:
    username: str
    method: str
    key_fingerprint: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpAddress:
    """A host (name or address, as the client wrote it) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SocketPath:
    """A unix socket path (OpenSSH's streamlocal forwarding)."""

    path: str

    def __str__(self) -> str:
        return self.path


#: Where a forwarding channel or request points.
ForwardTarget = TcpAddress | SocketPath


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelOpenRequested:
    """The client opens a channel: answer with ``accept_channel(id)`` or
    ``reject_channel(id, reason, text)``.

    ``target``: where a ``direct-tcpip`` or ``direct-streamlocal@openssh.com`` channel
    should lead; ``originator``: where a ``direct-tcpip`` connection came from on the
    client's side (as the client says). Both ``None`` for a session.
    """

    channel_id: ChannelId
    channel_type: str
    target: ForwardTarget | None = None
    originator: TcpAddress | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelOpenConfirmed:
    """The client accepted a channel we opened with ``open_channel``: it carries data now."""

    channel_id: ChannelId


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelOpenFailed:
    """The client refused a channel we opened; its number is free again."""

    channel_id: ChannelId
    reason: int
    description: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalRequestReceived:
    """A forwarding request (``tcpip-forward``, ``streamlocal-forward@openssh.com`` or a
    cancel of one): answer with ``reply_global_request(request_id, ok, port=...)``, also
    when ``want_reply`` is false (replies leave in request order, RFC 4254 §4)."""

    request_id: int
    name: str
    target: ForwardTarget
    want_reply: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRefused:
    """The core refused a client request on its own and has answered the client already
    (port, agent or X11 forwarding, a pty where none is allowed, an unknown request...).
    Nothing to do but tell the operator: ``request`` is the channel type or request name,
    ``target`` what a forwarding request pointed at (``host:port``, a socket path)."""

    request: str
    reason: str
    channel_id: ChannelId | None = None
    target: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRequested:
    """The client asked to start a program; answer with ``reply_channel_request(id, ok)``.

    ``pty`` and ``env`` fold in the earlier ``pty-req`` and ``env`` requests; ``env`` is
    already filtered through the configured allow-list.
    """

    channel_id: ChannelId
    kind: SessionKind
    command: str | None = None
    subsystem: str | None = None
    pty: PtyRequest | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: The client asked (``auth-agent-req@openssh.com``) for its agent in this session.
    agent_forwarding: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentForwardingRequested:
    """A session asked for the client's agent (``ssh -A``); already granted by the core
    (``allow_agent_forwarding``): make the socket its sessions will be told about."""

    channel_id: ChannelId


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowChanged:
    channel_id: ChannelId
    size: TerminalSize


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalReceived:
    channel_id: ChannelId
    signal: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelDataReceived:
    """Data for a channel; call ``acknowledge_channel_data(id, n)`` once it is consumed.

    The core passes a read-only view into the decrypted packet, not a copy: one copy
    less per packet on the upload path.
    """

    channel_id: ChannelId
    data: bytes | memoryview


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelEOFReceived:
    channel_id: ChannelId


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelCloseReceived:
    """The peer closed the channel; call ``close_channel(id)`` once local cleanup is done."""

    channel_id: ChannelId


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelWindowAdjusted:
    """The peer granted more send window; senders may continue."""

    channel_id: ChannelId


@dataclass(frozen=True, slots=True, kw_only=True)
class DisconnectReceived:
    reason: int
    description: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLost:
    """The byte stream ended (``receive_data(b"")``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InputPaused:
    """Decoding stopped after ``INFLATE_SLICE`` inflated bytes with more buffered: let
    other connections run, then ask for the next event again (not for more input)."""


#: Events that wait for the driver's answer (``accept_auth``, ``reject_auth``,
#: ``send_auth_prompts``, ``accept_gssapi_mechanism``, ``continue_gssapi``) before the core
#: reads on.
AuthDecisionRequested = (
    PublicKeyAuthRequested
    | PasswordAuthRequested
    | KeyboardInteractiveAuthRequested
    | KeyboardInteractiveResponsesReceived
    | GssapiAuthRequested
    | GssapiTokenReceived
    | GssapiMicReceived
)

Event = (
    VersionReceived
    | KeyExchangeCompleted
    | AuthDecisionRequested
    | AuthFailed
    | AuthPartiallySucceeded
    | Authenticated
    | ChannelOpenRequested
    | ChannelOpenConfirmed
    | ChannelOpenFailed
    | GlobalRequestReceived
    | RequestRefused
    | SessionRequested
    | AgentForwardingRequested
    | WindowChanged
    | SignalReceived
    | ChannelDataReceived
    | ChannelEOFReceived
    | ChannelCloseReceived
    | ChannelWindowAdjusted
    | DisconnectReceived
    | ConnectionLost
    | InputPaused
)
