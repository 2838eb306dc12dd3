"""ServerConnection: the sans-IO SSH server the driver talks to.

A façade that composes the layers (wsproto's ``WSConnection`` shape): ``Transport``
(RFC 4253), ``UserAuthServer`` (RFC 4252), and for the connection protocol (RFC 4254) the
``ChannelTable`` with its channel kinds (sessions, forwarding) and ``GlobalRequests``. It
routes each payload by message-number range (RFC 4250 §4.1.2) and gates the upper layers:
userauth only after the ``ssh-userauth`` service was requested, connection messages only
after authentication.

Contract for drivers: call ``receive_data`` with bytes read (``b""`` at EOF), then
``next_event()`` until it returns ``None``, answering decision events with the commands
named in their docstrings; after every call, write ``data_to_send()``. For any input,
these calls either succeed or raise ``RemoteProtocolError`` with a DISCONNECT already
queued in ``data_to_send()``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from trissh.protocol import wire
from trissh.protocol.channels import ChannelTable
from trissh.protocol.config import ProtocolConfig
from trissh.protocol.constants import ChannelOpenFailureReason, DisconnectReason, MessageNumber
from trissh.protocol.errors import LocalProtocolError, RemoteProtocolError, UnexpectedMessage
from trissh.protocol.events import (
    ChannelId,
    ConnectionLost,
    Event,
    InputPaused,
    NegotiatedAlgorithms,
)
from trissh.protocol.forwarding import forwarding_kinds
from trissh.protocol.global_requests import HOSTKEYS_PROVE, GlobalRequests
from trissh.protocol.messages.connection import GlobalRequest
from trissh.protocol.messages.transport import ServiceAccept, ServiceRequest, Unimplemented
from trissh.protocol.session_channel import (
    SessionPolicy,
    exit_signal,
    exit_status,
    session_kind,
)
from trissh.protocol.transport import Transport
from trissh.protocol.userauth import UserAuthServer
from trissh.protocol.wire import Reader

USERAUTH_SERVICE = "ssh-userauth"
#: OpenSSH PROTOCOL §2.5: host key rotation.
HOSTKEYS = "hostkeys-00@openssh.com"

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Statistics:
    bytes_sent: int
    bytes_received: int
    open_channels: int
    pending_output: int


class ServerConnection:
    """One SSH connection, server side, without I/O."""

    def __init__(self, config: ProtocolConfig, *, greeted: bool = False) -> None:
        """``greeted``: the caller already sent our version line (``version_line``), at
        accept, so the connection's first output is its KEXINIT."""
        self._config = config
        self._events: deque[Event] = deque()
        self._transport = Transport(config, self._events.append, greeted=greeted)
        self._auth = UserAuthServer(
            config,
            self._transport.send,
            self._events.append,
            self._session_id,
            self._transport.send_auth_success,
            lambda: self._transport.initial_host_key_blobs,
        )
        self._sessions = SessionPolicy()
        kinds = {
            **forwarding_kinds(),
            "session": session_kind(config, self._sessions, self._events.append),
        }
        self._channels = ChannelTable(
            config, kinds, self._transport.send, self._transport.send_each, self._events.append
        )
        self._global = GlobalRequests(
            self._transport.send, self._events.append, self._sessions, self._prove_host_keys
        )
        self._userauth_started = False
        self._eof = False
        self._lost_reported = False
        self._failed: RemoteProtocolError | None = None
        self._host_keys_announced = False
        #: Keepalive probes sent since the peer last answered one (ClientAliveCountMax).
        self.keepalives_unanswered = 0

    # -- I/O boundary ---------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes read from the peer; ``b""`` means the stream ended."""
        if not data:
            self._eof = True
            return
        self._guard(self._transport.receive_data, data)

    def next_event(self) -> Event | None:
        """The next event, or ``None`` when more input (or a pending decision) is needed.

        Raises:
            RemoteProtocolError: the peer violated the protocol; DISCONNECT is queued.
        """
        return self._guard(self._next_event)

    def data_to_send(self) -> bytes:
        return self._transport.data_to_send()

    @property
    def kex_cpu_seconds(self) -> float:
        """CPU seconds this connection's key exchanges took so far."""
        return self._transport.kex_cpu_seconds

    def take_output(self) -> list[bytes]:
        """``data_to_send`` as separate wire chunks, for a scatter-gather write."""
        return self._transport.take_output()

    @property
    def pending_output_size(self) -> int:
        return self._transport.pending_output_size

    @property
    def client_version(self) -> str | None:
        version = self._transport.client_version
        return version.decode("ascii") if version is not None else None

    @property
    def algorithms(self) -> NegotiatedAlgorithms | None:
        return self._transport.algorithms

    @property
    def authenticated(self) -> bool:
        return self._auth.username is not None

    @property
    def closed(self) -> bool:
        return self._transport.closed

    def statistics(self) -> Statistics:
        return Statistics(
            bytes_sent=self._transport.bytes_sent,
            bytes_received=self._transport.bytes_received,
            open_channels=len(self._channels),
            pending_output=self._transport.pending_output_size,
        )

    def _guard(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Queue DISCONNECT before a peer's violation leaves the core (h2's pattern)."""
        if self._failed is not None:
            raise self._failed
        try:
            return fn(*args, **kwargs)
        except RemoteProtocolError as exc:
            self._failed = exc
            self._transport.disconnect(exc.reason, exc.description)
            raise

    def _session_id(self) -> bytes:
        session_id = self._transport.session_id
        if session_id is None:
            raise LocalProtocolError("no session id before the first key exchange")
        return session_id

    def _next_event(self) -> Event | None:
        while not self._events:
            if self._transport.closed or self._auth.decision_pending:
                break
            item = self._transport.next_payload()
            if item is None:
                break
            self._dispatch(*item)
        if self._events:
            return self._events.popleft()
        if self._transport.input_paused:
            self._transport.input_paused = False
            return InputPaused()
        if self._eof and not self._lost_reported:
            self._lost_reported = True
            return ConnectionLost()
        return None

    def _dispatch(self, sequence: int, payload: bytes) -> None:
        number = payload[0]
        if number == MessageNumber.SERVICE_REQUEST:
            service = ServiceRequest.decode(Reader(payload, 1)).service
            if service != USERAUTH_SERVICE or self._userauth_started:
                raise RemoteProtocolError(
                    f"service {service!r} not available", DisconnectReason.SERVICE_NOT_AVAILABLE
                )
            self._userauth_started = True
            self._transport.send(ServiceAccept(service=service).encode())
        elif 50 <= number <= 79:
            if not self._userauth_started:
                raise UnexpectedMessage("authentication before the ssh-userauth service request")
            self._auth.handle(payload)
            self._auth.check_limit()
        elif 80 <= number <= 127:
            if not self.authenticated:
                raise UnexpectedMessage(f"connection message {number} before authentication")
            if number == MessageNumber.GLOBAL_REQUEST:
                self._global.handle(payload)
            elif number in (MessageNumber.REQUEST_SUCCESS, MessageNumber.REQUEST_FAILURE):
                self.keepalives_unanswered = 0  # any answer to our probe proves the peer lives
            else:
                self._channels.handle(payload)
        else:
            self._transport.send(Unimplemented(sequence_number=sequence).encode())

    # -- commands -------------------------------------------------------------------------

    def accept_auth(self, *, remaining: Sequence[str] = ()) -> None:
        """Answer an auth decision with yes (a bad signature still fails).

        ``remaining``: the methods the user must still pass (a multi-factor chain); the
        client is told of partial success and only these methods are accepted from then on.

        Raises:
            TooManyAuthAttempts: that was the last attempt allowed; DISCONNECT is queued.
        """
        self._guard(self._answer_auth, lambda: self._auth.accept(remaining))

    def reject_auth(self, reason: str = "key not authorized", *, error_token: bytes = b"") -> None:
        """Answer an auth decision with no. ``error_token``: for a ``GssapiTokenReceived``,
        the error token the GSS-API produced (the client's GSS-API learns why).

        Raises:
            TooManyAuthAttempts: that was the last attempt allowed; DISCONNECT is queued.
        """
        self._guard(self._answer_auth, lambda: self._auth.reject(reason, error_token))

    def accept_gssapi_mechanism(self, mechanism: bytes) -> None:
        """Answer ``GssapiAuthRequested``: go on with ``mechanism`` (a DER OID it listed)."""
        self._auth.select_gssapi_mechanism(mechanism)

    def continue_gssapi(self, token: bytes | None, *, established: bool) -> None:
        """Answer ``GssapiTokenReceived`` with the GSS-API's output token (if any) and
        whether the context is now established (the client's MIC comes next)."""
        self._auth.continue_gssapi(token, established=established)

    def send_auth_prompts(
        self, name: str, instruction: str, prompts: Sequence[tuple[str, bool]]
    ) -> None:
        """Answer a keyboard-interactive decision with prompts: ``(text, echo)`` pairs."""
        self._auth.prompt(name, instruction, prompts)

    def _answer_auth(self, answer: Callable[[], None]) -> None:
        answer()
        self._auth.check_limit()
        if self.authenticated and not self._host_keys_announced:
            self._host_keys_announced = True
            if self._config.announce_host_keys:
                self._announce_host_keys()

    def _announce_host_keys(self) -> None:
        """OpenSSH PROTOCOL §2.5: tell the client every host key after authentication."""
        blobs = b"".join(wire.string(key.public_blob) for key in self._config.host_keys)
        self._transport.send(GlobalRequest(name=HOSTKEYS, want_reply=False, data=blobs).encode())

    def _prove_host_keys(self, data: bytes) -> bytes | None:
        """Sign ``string "hostkeys-prove-00@openssh.com" || string session_id || string key``
        with each requested host key; any key that is not ours fails the whole request."""
        reader = Reader(data)
        blobs: list[bytes] = []
        while reader.remaining:
            blobs.append(reader.string(4096))
            if len(blobs) > len(self._config.host_keys):
                break
        keys = {key.public_blob: key for key in self._config.host_keys}
        if not blobs or len(blobs) > len(keys) or any(blob not in keys for blob in blobs):
            return None
        negotiated = self._transport.algorithms
        kex_algorithm = negotiated.host_key if negotiated is not None else ""
        signatures = []
        for blob in blobs:
            key = keys[blob]
            # Like sshd: an RSA key signs with the algorithm of the kex when that was RSA.
            algorithm = kex_algorithm if kex_algorithm in key.algorithms else None
            data = wire.string(HOSTKEYS_PROVE) + wire.string(self._session_id()) + wire.string(blob)
            signatures.append(wire.string(key.sign(data, algorithm)))
        return b"".join(signatures)

    def accept_channel(self, channel_id: ChannelId) -> None:
        self._channels.accept(channel_id)

    def reject_channel(
        self, channel_id: ChannelId, reason: ChannelOpenFailureReason, text: str
    ) -> None:
        self._channels.reject(channel_id, reason, text)

    def open_channel(self, channel_type: str, data: bytes = b"") -> ChannelId:
        """Open a channel to the client (``forwarded-tcpip``, ``auth-agent@openssh.com``...)
        with its type-specific ``data`` (:mod:`.forwarding` builds it); its answer comes as
        ``ChannelOpenConfirmed`` or ``ChannelOpenFailed``."""
        return self._channels.open(channel_type, data)

    def reply_channel_request(
        self, channel_id: ChannelId, ok: bool, *, again: bool = False
    ) -> None:
        """Answer the request a channel's rules left to the driver (a session's start);
        ``again``: refused before anything started, the channel may ask again."""
        self._channels.reply_request(channel_id, ok, again=again)

    def reply_global_request(self, request_id: int, ok: bool, *, port: int | None = None) -> None:
        """Answer a ``GlobalRequestReceived``; ``port``: the port a ``tcpip-forward`` for
        port 0 got (RFC 4254 §7.1)."""
        self._global.reply(request_id, ok, wire.uint32(port) if port is not None else b"")

    def send_window(self, channel_id: ChannelId) -> int | None:
        """Bytes ``send_channel_data`` would accept now; ``None`` once it accepts nothing."""
        return self._channels.send_window(channel_id)

    def send_channel_data(
        self, channel_id: ChannelId, data: bytes | memoryview, *, stderr: bool = False
    ) -> int:
        return self._channels.send_data(channel_id, data, stderr=stderr)

    def acknowledge_channel_data(self, channel_id: ChannelId, amount: int) -> None:
        self._channels.acknowledge(channel_id, amount)

    def send_channel_eof(self, channel_id: ChannelId) -> None:
        self._channels.send_eof(channel_id)

    def send_exit_status(self, channel_id: ChannelId, code: int) -> None:
        self._channels.send_request(channel_id, "exit-status", exit_status(code))

    def send_exit_signal(
        self, channel_id: ChannelId, signal: str, *, core_dumped: bool = False, message: str = ""
    ) -> None:
        data = exit_signal(signal, core_dumped=core_dumped, message=message)
        self._channels.send_request(channel_id, "exit-signal", data)

    def close_channel(self, channel_id: ChannelId) -> None:
        self._channels.close(channel_id)

    def allow_agent_forwarding(self) -> None:
        """Grant ``auth-agent-req@openssh.com`` on this connection's sessions."""
        self._sessions.agent_forwarding = True

    def forbid_pty(self) -> None:
        """Refuse every later ``pty-req`` (a ``no-pty`` restriction on the login)."""
        self._sessions.pty_allowed = False

    def refuse_signals(self) -> None:
        """Refuse ``signal`` requests: the login runs a forced command (as sshd)."""
        self._sessions.signals_allowed = False

    def send_keepalive(self) -> None:
        """Probe the client with ``keepalive@openssh.com``; every client answers it."""
        if not self.authenticated or self.closed:
            return
        self.keepalives_unanswered += 1
        self._transport.send(GlobalRequest(name="keepalive@openssh.com", want_reply=True).encode())

    def request_rekey(self) -> None:
        self._transport.request_rekey()

    def disconnect(self, reason: DisconnectReason, description: str) -> None:
        self._transport.disconnect(reason, description)
