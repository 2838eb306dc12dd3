"""The channel table of the ``ssh-connection`` service (RFC 4254 §5): numbers, windows,
states, data, EOF, CLOSE and the order of replies — the same for every kind of channel.

Theory of operation
-------------------
Each channel has a ``ChannelState``; ``_TRANSITIONS`` lists the legal moves. A channel the
client opens starts ``OPENING`` (our decision pending); one we open starts ``OPEN_SENT``
(the client's answer pending). A channel is forgotten once CLOSE went both ways, or when
an open is refused, and only then may its number be reused.

What differs between kinds lives elsewhere, behind :class:`ChannelKind`: how the open's
type-specific data reads (a session has none; ``direct-tcpip`` names a host and port,
:mod:`.forwarding`) and which channel requests a channel of that kind takes
(:class:`ChannelRules`; sessions: :mod:`.session_channel`). The table knows no kind by name.

Windows (RFC 4254 §5.2): the peer may send ``recv_window`` more bytes; the driver reports
what it consumed through ``acknowledge``, and a WINDOW_ADJUST goes out once half the
window is consumed (h2's heuristic), so a slow consumer throttles the client instead of
growing our buffers. Sending is limited by the peer's window and maximum packet size.

Replies to ``want_reply`` requests leave in request order (RFC 4254 §5.4), some answered
later (a session's start, after its container started): each channel keeps a queue of
reply slots, and a resolved slot is sent once every earlier slot is.
"""

from __future__ import annotations

import enum
import functools
import struct
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from trissh.protocol.config import ProtocolConfig
from trissh.protocol.constants import EXTENDED_DATA_STDERR, ChannelOpenFailureReason, MessageNumber
from trissh.protocol.errors import (
    ChannelLimitReached,
    DecodeError,
    LocalProtocolError,
    UnexpectedMessage,
)
from trissh.protocol.events import (
    ChannelCloseReceived,
    ChannelDataReceived,
    ChannelEOFReceived,
    ChannelId,
    ChannelOpenConfirmed,
    ChannelOpenFailed,
    ChannelOpenRequested,
    ChannelWindowAdjusted,
    Event,
    ForwardTarget,
    RequestRefused,
    TcpAddress,
)
from trissh.protocol.messages.connection import (
    ChannelClose,
    ChannelEof,
    ChannelOpen,
    ChannelOpenConfirmation,
    ChannelOpenFailure,
    ChannelRequest,
    ChannelWindowAdjust,
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
#: Requests clients send to see that the server is alive or to probe its window: refused
#: by design (the failure is the answer), so not worth a log line each.
PROBES: Final = frozenset(("keepalive@openssh.com", "winadj@putty.projects.tartarus.org"))


class ChannelState(enum.Enum):
    #: CHANNEL_OPEN received; waiting for the driver's decision.
    OPENING = "opening"
    #: We sent CHANNEL_OPEN; waiting for the peer's confirmation or failure.
    OPEN_SENT = "open_sent"
    OPEN = "open"
    #: We sent CLOSE; waiting for the peer's.
    CLOSE_SENT = "close_sent"
    #: The peer sent CLOSE; waiting for the driver to finish and call ``close``.
    CLOSE_RECEIVED = "close_received"


_TRANSITIONS: Final = {
    (ChannelState.OPENING, "accept"): ChannelState.OPEN,
    (ChannelState.OPEN_SENT, "confirmed"): ChannelState.OPEN,
    (ChannelState.OPEN, "send_close"): ChannelState.CLOSE_SENT,
    (ChannelState.OPEN, "recv_close"): ChannelState.CLOSE_RECEIVED,
}


#: A channel request's outcome: True (done), False or the reason (refused), or ``DEFERRED``
#: (the driver answers later with ``reply_request``).
class _Deferred(enum.Enum):
    DEFERRED = "deferred"


DEFERRED: Final = _Deferred.DEFERRED
RequestOutcome = bool | str | _Deferred


class ChannelRules(Protocol):
    """The requests one channel takes, by kind (RFC 4254 §6 for sessions)."""

    def on_request(self, request_type: str, data: Reader) -> RequestOutcome:
        """Apply a request; raise ``DecodeError`` for malformed data."""
        ...

    def allow_again(self) -> None:
        """A deferred request refused before anything ran: the channel may ask again."""
        return


class NoRequests(ChannelRules):
    """Rules of channels that take no requests (forwarded streams, the agent)."""

    def on_request(self, request_type: str, data: Reader) -> RequestOutcome:
        return "not supported"


@dataclass(frozen=True, slots=True)
class OpenDetails:
    """What an open's type-specific data says, for ``ChannelOpenRequested``."""

    target: ForwardTarget | None = None
    originator: TcpAddress | None = None


@dataclass(frozen=True, slots=True)
class ChannelKind:
    """How one channel type is opened and which requests its channels take."""

    name: str
    #: Whether a client may open it (``forwarded-tcpip``, ``x11``... only a server opens).
    client_opens: bool
    #: Reads the open's type-specific data; raises ``DecodeError`` if malformed.
    read_open: Callable[[Reader], OpenDetails]
    #: The request rules of one new channel of this kind.
    make_rules: Callable[[ChannelId], ChannelRules]
    #: Refused while this returns a reason (``no-more-sessions@openssh.com``).
    refusal: Callable[[], str | None] = lambda: None


def no_open_data(reader: Reader) -> OpenDetails:
    reader.check_end()
    return OpenDetails()


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
    rules: ChannelRules
    state: ChannelState = ChannelState.OPENING
    recv_unacknowledged: int = 0
    eof_sent: bool = False
    eof_received: bool = False
    replies: deque[_ReplySlot] = field(default_factory=deque)
    #: The slot of a request the driver answers later (at most one at a time).
    deferred: _ReplySlot | None = None

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
    """All channels of one connection."""

    def __init__(
        self,
        config: ProtocolConfig,
        kinds: Mapping[str, ChannelKind],
        send: SendPayload,
        send_each: SendEach,
        emit: Callable[[Event], None],
    ) -> None:
        self._config = config
        self._kinds = kinds
        self._send = send
        self._send_each = send_each
        self._emit = emit
        self._channels: dict[int, Channel] = {}

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

    def _free_id(self) -> ChannelId:
        return ChannelId(next(i for i in range(len(self._channels) + 1) if i not in self._channels))

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
        elif number == MessageNumber.CHANNEL_OPEN_CONFIRMATION:
            self._on_confirmation(ChannelOpenConfirmation.decode(Reader(payload, 1)))
        elif number == MessageNumber.CHANNEL_OPEN_FAILURE:
            self._on_open_failure(ChannelOpenFailure.decode(Reader(payload, 1)))
        elif number == MessageNumber.CHANNEL_EOF:
            self._on_eof(ChannelEof.decode(Reader(payload, 1)).recipient_channel)
        elif number == MessageNumber.CHANNEL_CLOSE:
            self._on_close(ChannelClose.decode(Reader(payload, 1)).recipient_channel)
        elif number in (MessageNumber.CHANNEL_SUCCESS, MessageNumber.CHANNEL_FAILURE):
            self._lookup(Reader(payload, 1).uint32())  # replies to our (reply-less) requests
        else:
            raise UnexpectedMessage(f"message {number} is not accepted from a client")

    def _on_open(self, message: ChannelOpen) -> None:
        kind = self._kinds.get(message.channel_type)
        details = OpenDetails()
        reason: ChannelOpenFailureReason | None = None
        if kind is None:
            reason = ChannelOpenFailureReason.UNKNOWN_CHANNEL_TYPE
            text = f"channel type {message.channel_type!r} is not supported"
        elif not kind.client_opens:
            reason = ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED
            text = f"channel type {message.channel_type!r} is not supported"
        elif (refusal := kind.refusal()) is not None:
            reason, text = ChannelOpenFailureReason.ADMINISTRATIVELY_PROHIBITED, refusal
        elif len(self._channels) >= self._config.max_channels:
            reason = ChannelOpenFailureReason.RESOURCE_SHORTAGE
            text = "too many open channels"
        elif message.max_packet < MIN_PEER_MAX_PACKET:
            reason = ChannelOpenFailureReason.RESOURCE_SHORTAGE
            text = "maximum packet size too small"
        else:
            try:
                details = kind.read_open(Reader(message.data))
            except DecodeError as exc:
                reason = ChannelOpenFailureReason.CONNECT_FAILED
                text = f"malformed {message.channel_type} request: {exc}"
        if reason is not None:
            self._send(
                ChannelOpenFailure(
                    recipient_channel=message.sender_channel, reason=reason, description=text
                ).encode()
            )
            self._emit(RequestRefused(request=message.channel_type, reason=text))
            return
        assert kind is not None
        local_id = self._free_id()
        self._channels[local_id] = Channel(
            local_id=local_id,
            remote_id=message.sender_channel,
            channel_type=message.channel_type,
            send_window=message.initial_window,
            send_max_packet=min(message.max_packet, MAX_SEND_CHUNK),
            recv_window=self._config.channel_window,
            rules=kind.make_rules(local_id),
        )
        self._emit(
            ChannelOpenRequested(
                channel_id=local_id,
                channel_type=message.channel_type,
                target=details.target,
                originator=details.originator,
            )
        )

    def _on_confirmation(self, message: ChannelOpenConfirmation) -> None:
        channel = self._lookup(message.recipient_channel)
        if channel.state is not ChannelState.OPEN_SENT:
            raise UnexpectedMessage(f"confirmation of channel {channel.local_id}, not opened")
        channel.remote_id = message.sender_channel
        channel.send_window = message.initial_window
        channel.send_max_packet = min(message.max_packet, MAX_SEND_CHUNK)
        channel.move("confirmed")
        if message.max_packet < MIN_PEER_MAX_PACKET:
            self.close(channel.local_id)  # unusable: treat as refused, once the peer closes
            self._emit(
                ChannelOpenFailed(
                    channel_id=channel.local_id,
                    reason=ChannelOpenFailureReason.RESOURCE_SHORTAGE,
                    description="maximum packet size too small",
                )
            )
            return
        self._emit(ChannelOpenConfirmed(channel_id=channel.local_id))

    def _on_open_failure(self, message: ChannelOpenFailure) -> None:
        channel = self._lookup(message.recipient_channel)
        if channel.state is not ChannelState.OPEN_SENT:
            raise UnexpectedMessage(f"open failure of channel {channel.local_id}, not opened")
        del self._channels[channel.local_id]
        self._emit(
            ChannelOpenFailed(
                channel_id=channel.local_id,
                reason=int(message.reason),
                description=message.description,
            )
        )

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
        if channel.state in (ChannelState.OPENING, ChannelState.OPEN_SENT):
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
        if channel.state is ChannelState.OPEN_SENT:
            raise UnexpectedMessage("window adjust on a channel that is not open yet")
        channel.send_window += message.bytes_to_add
        if channel.send_window > _UINT32_MAX:
            raise UnexpectedMessage("window adjusted beyond 2^32-1")
        if channel.state is ChannelState.OPEN:
            self._emit(ChannelWindowAdjusted(channel_id=channel.local_id))

    def _on_eof(self, channel_id: int) -> None:
        channel = self._lookup(channel_id)
        if channel.state is ChannelState.OPEN_SENT:
            raise UnexpectedMessage("EOF on a channel that is not open yet")
        if channel.eof_received:
            return
        channel.eof_received = True
        if channel.state is ChannelState.OPEN:
            self._emit(ChannelEOFReceived(channel_id=channel.local_id))

    def _on_close(self, channel_id: int) -> None:
        channel = self._lookup(channel_id)
        if channel.state in (ChannelState.OPENING, ChannelState.OPEN_SENT):
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
        if channel.state in (ChannelState.OPENING, ChannelState.OPEN_SENT):
            raise UnexpectedMessage("request on a channel that is not open yet")
        if channel.state is not ChannelState.OPEN:
            return  # closing: the answer no longer matters to anyone
        slot: _ReplySlot | None = None
        if message.want_reply:
            if len(channel.replies) >= MAX_PENDING_REPLIES:
                raise UnexpectedMessage("too many unanswered channel requests")
            slot = _ReplySlot()
            channel.replies.append(slot)
        outcome = channel.rules.on_request(message.request_type, Reader(message.data))
        if outcome is DEFERRED:
            if channel.deferred is not None:
                raise LocalProtocolError("a channel's rules deferred a second request")
            channel.deferred = slot if slot is not None else _ReplySlot()
            return
        if isinstance(outcome, str):
            if message.request_type not in PROBES:
                self._emit(
                    RequestRefused(
                        request=message.request_type, reason=outcome, channel_id=channel.local_id
                    )
                )
            outcome = False
        if slot is not None:
            slot.ok = outcome
            self._flush_replies(channel)

    def _flush_replies(self, channel: Channel) -> None:
        while channel.replies and channel.replies[0].ok is not None:
            ok = channel.replies.popleft().ok
            number = MessageNumber.CHANNEL_SUCCESS if ok else MessageNumber.CHANNEL_FAILURE
            self._send(struct.pack(">BI", number, channel.remote_id))

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

    def open(self, channel_type: str, data: bytes = b"") -> ChannelId:
        """Open a channel to the client (``forwarded-tcpip``, ``auth-agent@openssh.com``...);
        ``ChannelOpenConfirmed`` or ``ChannelOpenFailed`` follows."""
        kind = self._kinds.get(channel_type)
        if kind is None:
            raise LocalProtocolError(f"no channel kind {channel_type!r}")
        if len(self._channels) >= self._config.max_channels:
            raise ChannelLimitReached("too many open channels")
        local_id = self._free_id()
        channel = Channel(
            local_id=local_id,
            remote_id=-1,
            channel_type=channel_type,
            send_window=0,
            send_max_packet=MIN_PEER_MAX_PACKET,
            recv_window=self._config.channel_window,
            rules=kind.make_rules(local_id),
            state=ChannelState.OPEN_SENT,
        )
        self._channels[local_id] = channel
        self._send(
            ChannelOpen(
                channel_type=channel_type,
                sender_channel=local_id,
                initial_window=channel.recv_window,
                max_packet=self._config.channel_max_packet,
                data=data,
            ).encode()
        )
        return local_id

    def reply_request(self, channel_id: ChannelId, ok: bool, *, again: bool = False) -> None:
        """Answer the request the rules deferred (a session's start; ``again``: see rules)."""
        channel = self._channels.get(channel_id)
        if channel is None or channel.deferred is None:
            return  # already closed: nobody is waiting for the answer
        slot, channel.deferred = channel.deferred, None
        slot.ok = ok
        if again and not ok:
            channel.rules.allow_again()
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

    def send_request(self, channel_id: ChannelId, request_type: str, data: bytes) -> None:
        """A request that wants no reply (``exit-status``...); dropped once closing."""
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

    def close(self, channel_id: ChannelId) -> None:
        """Send CLOSE (idempotent); forget the channel once both sides closed."""
        channel = self._channels.get(channel_id)
        if channel is None or channel.state is ChannelState.CLOSE_SENT:
            return
        if channel.state in (ChannelState.OPENING, ChannelState.OPEN_SENT):
            raise LocalProtocolError("a channel being opened is rejected or awaited, not closed")
        if channel.deferred is not None and channel.state is ChannelState.OPEN:
            self.reply_request(channel_id, False)
        self._send(ChannelClose(recipient_channel=channel.remote_id).encode())
        if channel.state is ChannelState.CLOSE_RECEIVED:
            del self._channels[channel_id]
        else:
            channel.move("send_close")
