"""The ``ssh-connection`` service (RFC 4254): channels, windows, requests, replies.

Theory of operation
-------------------
Each channel has a ``ChannelState``; ``_TRANSITIONS`` lists the legal moves. A channel
is forgotten once CLOSE went both ways, and only then may its number be reused.

Windows (RFC 4254 §5.2): the peer may send ``recv_window`` more bytes; the driver reports
what it consumed through ``acknowledge``, and a WINDOW_ADJUST goes out once half the
window is consumed (h2's heuristic), so a slow consumer throttles the client instead of
growing our buffers. Sending is limited by the peer's window and maximum packet size.

Replies to ``want_reply`` requests must leave in request order (RFC 4254 §5.4) even though
the reply to a session request comes later, after the container started. Each channel
keeps a queue of reply slots; a resolved slot is sent once every earlier slot is.

Session requests: ``pty-req`` and ``env`` are collected; ``shell``/``exec``/``subsystem``
turns them into one ``SessionRequested`` event. Only ``session`` channels exist here;
every other channel type is refused with the proper reason.
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

from trissh.protocol.config import ProtocolConfig
from trissh.protocol.constants import EXTENDED_DATA_STDERR, ChannelOpenFailureReason, MessageNumber
from trissh.protocol.errors import DecodeError, LocalProtocolError, UnexpectedMessage
from trissh.protocol.events import (
    ChannelCloseReceived,
    ChannelDataReceived,
    ChannelEOFReceived,
    ChannelId,
    ChannelOpenRequested,
    ChannelWindowAdjusted,
    Event,
    PtyRequest,
    RequestRefused,
    SessionKind,
    SessionRequested,
    SignalReceived,
    TerminalSize,
    WindowChanged,
)
from trissh.protocol.messages.connection import (
    BreakData,
    ChannelClose,
    ChannelEof,
    ChannelOpen,
    ChannelOpenConfirmation,
    ChannelOpenFailure,
    ChannelRequest,
    ChannelWindowAdjust,
    EnvData,
    ExecData,
    ExitSignalData,
    ExitStatusData,
    PtyRequestData,
    SignalData,
    SubsystemData,
    WindowChangeData,
)
from trissh.protocol.wire import Reader

_DATA_HEADER: Final = struct.Struct(">BII")
_EXTENDED_HEADER: Final = struct.Struct(">BIII")
_UINT32_MAX: Final = 0xFFFFFFFF
#: Smallest maximum packet size we accept from a peer; tiny packets only cost us CPU.
MIN_PEER_MAX_PACKET: Final = 512
#: Largest data chunk we put in one packet, whatever the peer allows (fits MAX_PACKET_LENGTH).
MAX_SEND_CHUNK: Final = 128 * 1024
#: Bound on unanswered want_reply requests per channel.
MAX_PENDING_REPLIES: Final = 32

#: Environment names refused whatever the allow-list says: they change how programs load,
#: find binaries or run start-up code (sshd's AcceptEnv has no such guard).
NEVER_ACCEPTED_ENV: Final = (
    "LD_*", "DYLD_*", "PATH", "BASH_ENV", "ENV", "IFS", "SHELLOPTS", "BASHOPTS", "PS4",
    "PROMPT_COMMAND", "HOME", "SHELL", "USER", "LOGNAME", "MAIL", "TMPDIR", "GCONV_PATH",
    "LOCPATH", "MALLOC_*", "NODE_OPTIONS", "PYTHON*", "PERL5*", "PERLLIB", "RUBYOPT", "RUBYLIB",
    "JAVA_TOOL_OPTIONS", "GIT_*", "TERMINFO*", "HOSTALIASES", "RES_OPTIONS", "LOCALDOMAIN",
)  # fmt: skip

#: Requests clients send to see that the server is alive or to probe its window: refused
#: by design (the failure is the answer), so not worth a log line each.
_PROBES: Final = frozenset(("keepalive@openssh.com", "winadj@putty.projects.tartarus.org"))
#: Longest forwarding target kept for the log.
MAX_TARGET_LENGTH: Final = 255

#: Channel types a server might be asked for but that trissh refuses by policy.
_PROHIBITED_TYPES: Final = frozenset(
    (
        "direct-tcpip",
        "forwarded-tcpip",
        "x11",
        "auth-agent@openssh.com",
        "direct-streamlocal@openssh.com",
    )
)


def _terminal_size(request: PtyRequestData | WindowChangeData) -> TerminalSize:
    return TerminalSize(
        columns=request.columns,
        rows=request.rows,
        width_px=request.width_px,
        height_px=request.height_px,
    )


class ChannelState(enum.Enum):
    #: CHANNEL_OPEN received; waiting for the driver's decision.
    OPENING = "opening"
    OPEN = "open"
    #: We sent CLOSE; waiting for the peer's.
    CLOSE_SENT = "close_sent"
    #: The peer sent CLOSE; waiting for the driver to finish and call ``close_channel``.
    CLOSE_RECEIVED = "close_received"


_TRANSITIONS: Final = {
    (ChannelState.OPENING, "accept"): ChannelState.OPEN,
    (ChannelState.OPEN, "send_close"): ChannelState.CLOSE_SENT,
    (ChannelState.OPEN, "recv_close"): ChannelState.CLOSE_RECEIVED,
}


@dataclass(slots=True)
class _ReplySlot:
    ok: bool | None = None


@dataclass(slots=True)
class Channel:
    local_id: ChannelId
    remote_id: int
    channel_type: str
    send_window: int
    send_max_packet: int
    recv_window: int
    state: ChannelState = ChannelState.OPENING
    recv_unacknowledged: int = 0
    eof_sent: bool = False
    eof_received: bool = False
    session_started: bool = False
    pty: PtyRequest | None = None
    env: dict[str, str] = field(default_factory=dict)
    replies: deque[_ReplySlot] = field(default_factory=deque)
    session_slot: _ReplySlot | None = None

    def move(self, action: str) -> None:
        try:
            self.state = _TRANSITIONS[self.state, action]
        except KeyError:
            raise LocalProtocolError(f"channel cannot {action} in state {self.state}") from None


class SendPayload(Protocol):
    """The transport's ``send``: a payload, optionally in two parts so data is not joined
    to its message header before the packet is framed."""

    def __call__(self, payload: bytes, tail: bytes | memoryview = b"", /) -> None: ...


#: The transport's ``send_each``: ``SendPayload`` for each (header, data) pair, in one call.
SendEach = Callable[[Iterable[tuple[bytes, bytes | memoryview]]], None]


class ChannelTable:
    """All channels of one connection, plus the connection-level global requests."""

    def __init__(
        self,
        config: ProtocolConfig,
        send: SendPayload,
        send_each: SendEach,
        emit: Callable[[Event], None],
    ) -> None:
        self._config = config
        self._send = send
        self._send_each = send_each
        self._emit = emit
        self._channels: dict[int, Channel] = {}
        self.no_more_sessions = False
        #: False when the login's key said no-pty (authorized_keys, certificate).
        self.pty_allowed = True

    def __len__(self) -> int:
        return len(self._channels)

    def _lookup(self, channel_id: int) -> Channel:
        channel = self._channels.get(channel_id)
        if channel is None:
            raise UnexpectedMessage(f"message for unknown channel {channel_id}")
        return channel

    def _command_target(self, channel_id: ChannelId) -> Channel:
        channel = self._channels.get(channel_id)
        if channel is None:
            raise LocalProtocolError(f"no channel {channel_id}")
        return channel

    # -- inbound --------------------------------------------------------------------------

    def handle(self, payload: bytes) -> None:
        number = payload[0]
        if number == MessageNumber.CHANNEL_DATA:
            self._on_data(payload)
        elif number == MessageNumber.CHANNEL_EXTENDED_DATA:
            self._on_extended_data(payload)
        elif number == MessageNumber.CHANNEL_WINDOW_ADJUST:
            self._on_window_adjust(ChannelWindowAdjust.decode(Reader(payload, 1)))
        elif number == MessageNumber.CHANNEL_REQUEST:
            self._on_request(ChannelRequest.decode(Reader(payload, 1)))
        elif number == MessageNumber.CHANNEL_OPEN:
            self._on_open(ChannelOpen.decode(Reader(payload, 1)))
        elif number == MessageNumber.CHANNEL_EOF:
            self._on_eof(ChannelEof.decode(Reader(payload, 1)).recipient_channel)
        elif number == MessageNumber.CHANNEL_CLOSE:
            self._on_close(ChannelClose.decode(Reader(payload, 1)).recipient_channel)
        elif number in (MessageNumber.CHANNEL_SUCCESS, MessageNumber.CHANNEL_FAILURE):
            self._lookup(Reader(payload, 1).uint32())  # replies to our (reply-less) requests
        else:
            raise UnexpectedMessage(f"message {number} is not accepted from a client")

    def _on_open(self, message: ChannelOpen) -> None:
        reason: ChannelOpenFailureReason | None = None
        if message.channel_type != "session":
            reason = (
                ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED
                if message.channel_type in _PROHIBITED_TYPES
                else ChannelOpenFailureReason.UNKNOWN_CHANNEL_TYPE
            )
            text = f"channel type {message.channel_type!r} is not supported"
        elif self.no_more_sessions:
            reason = ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED
            text = "no more sessions allowed on this connection"
        elif len(self._channels) >= self._config.max_channels:
            reason = ChannelOpenFailureReason.RESOURCE_SHORTAGE
            text = "too many open channels"
        elif message.max_packet < MIN_PEER_MAX_PACKET:
            reason = ChannelOpenFailureReason.RESOURCE_SHORTAGE
            text = "maximum packet size too small"
        if reason is not None:
            self._send(
                ChannelOpenFailure(
                    recipient_channel=message.sender_channel, reason=reason, description=text
                ).encode()
            )
            target = forwarding_target(message.channel_type, message.data)
            self._emit(RequestRefused(request=message.channel_type, reason=text, target=target))
            return
        local_id = ChannelId(
            next(i for i in range(len(self._channels) + 1) if i not in self._channels)
        )
        self._channels[local_id] = Channel(
            local_id=local_id,
            remote_id=message.sender_channel,
            channel_type=message.channel_type,
            send_window=message.initial_window,
            send_max_packet=min(message.max_packet, MAX_SEND_CHUNK),
            recv_window=self._config.channel_window,
        )
        self._emit(ChannelOpenRequested(channel_id=local_id, channel_type=message.channel_type))

    def _on_data(self, payload: bytes) -> None:
        if len(payload) < 9:
            raise DecodeError("message truncated")
        _, channel_id, length = _DATA_HEADER.unpack_from(payload)
        if length != len(payload) - 9:
            raise DecodeError("channel data length does not match the packet")
        channel = self._charge_window(channel_id, length)
        if channel is None or channel.eof_received:
            return
        self._emit(ChannelDataReceived(channel_id=channel.local_id, data=memoryview(payload)[9:]))

    def _on_extended_data(self, payload: bytes) -> None:
        if len(payload) < 13:
            raise DecodeError("message truncated")
        _, channel_id, _, length = _EXTENDED_HEADER.unpack_from(payload)
        if length != len(payload) - 13:
            raise DecodeError("channel data length does not match the packet")
        channel = self._charge_window(channel_id, length)
        if channel is not None:
            self.acknowledge(channel.local_id, length)  # clients' stderr has no meaning here

    def _charge_window(self, channel_id: int, length: int) -> Channel | None:
        channel = self._lookup(channel_id)
        if channel.state is ChannelState.OPENING:
            raise UnexpectedMessage("data on a channel that is not open yet")
        if length > channel.recv_window:
            raise UnexpectedMessage(f"channel {channel_id}: peer exceeded the window")
        if length > self._config.channel_max_packet:
            raise UnexpectedMessage(f"channel {channel_id}: data packet larger than allowed")
        channel.recv_window -= length
        if channel.state is not ChannelState.OPEN:
            return None
        return channel

    def _on_window_adjust(self, message: ChannelWindowAdjust) -> None:
        channel = self._lookup(message.recipient_channel)
        channel.send_window += message.bytes_to_add
        if channel.send_window > _UINT32_MAX:
            raise UnexpectedMessage("window adjusted beyond 2^32-1")
        if channel.state is ChannelState.OPEN:
            self._emit(ChannelWindowAdjusted(channel_id=channel.local_id))

    def _on_eof(self, channel_id: int) -> None:
        channel = self._lookup(channel_id)
        if channel.eof_received:
            return
        channel.eof_received = True
        if channel.state is ChannelState.OPEN:
            self._emit(ChannelEOFReceived(channel_id=channel.local_id))

    def _on_close(self, channel_id: int) -> None:
        channel = self._lookup(channel_id)
        if channel.state is ChannelState.OPENING:
            raise UnexpectedMessage(f"close of channel {channel_id}, which is not open yet")
        if channel.state is ChannelState.CLOSE_RECEIVED:
            raise UnexpectedMessage(f"channel {channel_id} closed twice")
        if channel.state is ChannelState.CLOSE_SENT:
            del self._channels[channel.local_id]
            return
        channel.move("recv_close")
        self._emit(ChannelCloseReceived(channel_id=channel.local_id))

    def _on_request(self, message: ChannelRequest) -> None:
        channel = self._lookup(message.recipient_channel)
        if channel.state is ChannelState.OPENING:
            raise UnexpectedMessage("request on a channel that is not open yet")
        if channel.state is not ChannelState.OPEN:
            return  # closing: the answer no longer matters to anyone
        slot: _ReplySlot | None = None
        if message.want_reply:
            if len(channel.replies) >= MAX_PENDING_REPLIES:
                raise UnexpectedMessage("too many unanswered channel requests")
            slot = _ReplySlot()
            channel.replies.append(slot)
        outcome = self._apply_request(channel, message.request_type, Reader(message.data), slot)
        if isinstance(outcome, str):
            if message.request_type not in _PROBES:
                self._emit(
                    RequestRefused(
                        request=message.request_type, reason=outcome, channel_id=channel.local_id
                    )
                )
            outcome = False
        if outcome is not None and slot is not None:
            slot.ok = outcome
            self._flush_replies(channel)

    def _apply_request(
        self, channel: Channel, request_type: str, data: Reader, slot: _ReplySlot | None
    ) -> bool | str | None:
        """Apply one channel request: True when done, the reason when refused, ``None``
        when the driver answers later."""
        if request_type == "pty-req":
            if not self.pty_allowed:
                return "no terminal for this login"
            if channel.session_started or channel.pty is not None:
                return "a terminal only before the session starts, once"
            pty = PtyRequestData.decode(data)
            channel.pty = PtyRequest(term=pty.term, size=_terminal_size(pty), modes=pty.modes)
            return True
        if request_type == "env":
            env = EnvData.decode(data)
            if channel.session_started or len(channel.env) >= self._config.max_env_vars:
                return "too many variables, or the session has started"
            if not any(fnmatch.fnmatchcase(env.name, p) for p in self._config.accept_env):
                return f"{env.name} is not in accept_env"
            if any(fnmatch.fnmatchcase(env.name, p) for p in NEVER_ACCEPTED_ENV):
                return f"{env.name} is never accepted"
            channel.env[env.name] = env.value
            return True
        if request_type in ("shell", "exec", "subsystem"):
            return self._start_session(channel, request_type, data, slot)
        if request_type == "window-change":
            size = WindowChangeData.decode(data)
            if channel.pty is None:
                return "no terminal to resize"
            self._emit(WindowChanged(channel_id=channel.local_id, size=_terminal_size(size)))
            return True
        if request_type == "break":
            # RFC 4335: a BREAK on a terminal is an interrupt; without one there is nothing.
            BreakData.decode(data)
            if channel.pty is None or not channel.session_started:
                return "no terminal session to interrupt"
            self._emit(SignalReceived(channel_id=channel.local_id, signal="INT"))
            return True
        if request_type == "signal":
            signal = SignalData.decode(data)
            if not channel.session_started:
                return "no program to signal yet"
            self._emit(SignalReceived(channel_id=channel.local_id, signal=signal.name))
            return True
        return "not supported"

    def _start_session(
        self, channel: Channel, request_type: str, data: Reader, slot: _ReplySlot | None
    ) -> str | None:
        kind = SessionKind(request_type)
        command = subsystem = None
        if kind is SessionKind.EXEC:
            command = ExecData.decode(data).command
        elif kind is SessionKind.SUBSYSTEM:
            subsystem = SubsystemData.decode(data).name
        else:
            data.check_end()
        if channel.session_started:
            return "the channel already runs a session"
        channel.session_started = True
        channel.session_slot = slot if slot is not None else _ReplySlot()
        self._emit(
            SessionRequested(
                channel_id=channel.local_id,
                kind=kind,
                command=command,
                subsystem=subsystem,
                pty=channel.pty,
                env=dict(channel.env),
            )
        )
        return None

    def _flush_replies(self, channel: Channel) -> None:
        while channel.replies and channel.replies[0].ok is not None:
            ok = channel.replies.popleft().ok
            number = MessageNumber.CHANNEL_SUCCESS if ok else MessageNumber.CHANNEL_FAILURE
            self._send(struct.pack(">BI", number, channel.remote_id))

    def on_global_request(self, name: str, want_reply: bool, data: bytes = b"") -> None:
        """Global requests (RFC 4254 §4): none is granted, as sshd without forwarding."""
        if name == "no-more-sessions@openssh.com":
            self.no_more_sessions = True
        elif name not in _PROBES:
            target = forwarding_target(name, data)
            self._emit(RequestRefused(request=name, reason="not supported", target=target))
        if want_reply:
            self._send(bytes((MessageNumber.REQUEST_FAILURE,)))

    # -- commands from the driver ---------------------------------------------------------

    def accept(self, channel_id: ChannelId) -> None:
        channel = self._command_target(channel_id)
        channel.move("accept")
        self._send(
            ChannelOpenConfirmation(
                recipient_channel=channel.remote_id,
                sender_channel=channel.local_id,
                initial_window=channel.recv_window,
                max_packet=self._config.channel_max_packet,
            ).encode()
        )

    def reject(self, channel_id: ChannelId, reason: ChannelOpenFailureReason, text: str) -> None:
        channel = self._command_target(channel_id)
        if channel.state is not ChannelState.OPENING:
            raise LocalProtocolError("only a channel being opened can be rejected")
        del self._channels[channel_id]
        self._send(
            ChannelOpenFailure(
                recipient_channel=channel.remote_id, reason=reason, description=text
            ).encode()
        )

    def reply_session_request(self, channel_id: ChannelId, ok: bool) -> None:
        channel = self._channels.get(channel_id)
        if channel is None or channel.session_slot is None:
            return  # already closed: nobody is waiting for the answer
        slot, channel.session_slot = channel.session_slot, None
        slot.ok = ok
        if channel.state is ChannelState.OPEN:
            self._flush_replies(channel)

    def send_window(self, channel_id: ChannelId) -> int | None:
        """The peer's remaining window, or ``None`` if the channel cannot carry data."""
        channel = self._channels.get(channel_id)
        if channel is None or channel.state is not ChannelState.OPEN or channel.eof_sent:
            return None
        return channel.send_window

    def send_data(
        self, channel_id: ChannelId, data: bytes | memoryview, *, stderr: bool = False
    ) -> int:
        """Send as much of ``data`` as the peer's window allows; return how much that was."""
        channel = self._channels.get(channel_id)
        if channel is None or channel.state is not ChannelState.OPEN or channel.eof_sent:
            raise LocalProtocolError(f"channel {channel_id} cannot send data now")
        total = min(len(data), channel.send_window)
        chunk = channel.send_max_packet
        remote = channel.remote_id
        view = memoryview(data)[:total]
        if stderr:
            header = functools.partial(
                _EXTENDED_HEADER.pack,
                MessageNumber.CHANNEL_EXTENDED_DATA,
                remote,
                EXTENDED_DATA_STDERR,
            )
        else:
            header = functools.partial(_DATA_HEADER.pack, MessageNumber.CHANNEL_DATA, remote)
        pieces = (view[start : start + chunk] for start in range(0, total, chunk))
        self._send_each((header(len(piece)), piece) for piece in pieces)
        channel.send_window -= total
        return total

    def acknowledge(self, channel_id: ChannelId, amount: int) -> None:
        """The driver consumed ``amount`` received bytes; maybe reopen the peer's window."""
        channel = self._channels.get(channel_id)
        if channel is None or channel.state is not ChannelState.OPEN:
            return
        channel.recv_unacknowledged += amount
        if channel.recv_unacknowledged >= self._config.channel_window // 2:
            increment, channel.recv_unacknowledged = channel.recv_unacknowledged, 0
            channel.recv_window += increment
            self._send(
                ChannelWindowAdjust(
                    recipient_channel=channel.remote_id, bytes_to_add=increment
                ).encode()
            )

    def send_eof(self, channel_id: ChannelId) -> None:
        channel = self._channels.get(channel_id)
        if channel is None or channel.state is not ChannelState.OPEN or channel.eof_sent:
            return
        channel.eof_sent = True
        self._send(ChannelEof(recipient_channel=channel.remote_id).encode())

    def _send_request(self, channel_id: ChannelId, request_type: str, data: bytes) -> None:
        channel = self._channels.get(channel_id)
        if channel is None or channel.state is not ChannelState.OPEN:
            return
        self._send(
            ChannelRequest(
                recipient_channel=channel.remote_id,
                request_type=request_type,
                want_reply=False,
                data=data,
            ).encode()
        )

    def send_exit_status(self, channel_id: ChannelId, code: int) -> None:
        self._send_request(
            channel_id, "exit-status", ExitStatusData(code=code & _UINT32_MAX).encode()
        )

    def send_exit_signal(
        self, channel_id: ChannelId, signal: str, core_dumped: bool, message: str
    ) -> None:
        data = ExitSignalData(signal=signal, core_dumped=core_dumped, message=message).encode()
        self._send_request(channel_id, "exit-signal", data)

    def close(self, channel_id: ChannelId) -> None:
        """Send CLOSE (idempotent); forget the channel once both sides closed."""
        channel = self._channels.get(channel_id)
        if channel is None or channel.state is ChannelState.CLOSE_SENT:
            return
        if channel.state is ChannelState.OPENING:
            raise LocalProtocolError("reject a channel being opened instead of closing it")
        if channel.session_slot is not None and channel.state is ChannelState.OPEN:
            self.reply_session_request(channel_id, False)
        self._send(ChannelClose(recipient_channel=channel.remote_id).encode())
        if channel.state is ChannelState.CLOSE_RECEIVED:
            del self._channels[channel_id]
        else:
            channel.move("send_close")


def forwarding_target(request: str, data: bytes) -> str | None:
    """Where a forwarding request points (RFC 4254 §7, OpenSSH PROTOCOL §2.4), for the
    log: ``host:port`` or a socket path; ``None`` for other requests or malformed data."""
    reader = Reader(data)
    try:
        if request in ("direct-tcpip", "tcpip-forward", "cancel-tcpip-forward"):
            host = reader.string(MAX_TARGET_LENGTH)
            target = f"{host.decode('utf-8', 'replace')}:{reader.uint32()}"
        elif request in (
            "direct-streamlocal@openssh.com",
            "streamlocal-forward@openssh.com",
            "cancel-streamlocal-forward@openssh.com",
        ):
            target = reader.string(MAX_TARGET_LENGTH).decode("utf-8", "replace")
        else:
            return None
    except DecodeError:
        return None
    return target
