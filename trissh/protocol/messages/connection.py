"""Connection-protocol messages (RFC 4254) and the typed payloads of channel requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from trissh.protocol import wire
from trissh.protocol.constants import MessageNumber
from trissh.protocol.wire import Reader

#: Bounds on request names, terminal names, env entries and commands a client may send.
MAX_NAME = 256
MAX_TERM = 256
MAX_MODES = 4096
MAX_ENV_NAME = 256
MAX_ENV_VALUE = 32 * 1024
MAX_COMMAND = 128 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalRequest:
    NUMBER: ClassVar = MessageNumber.GLOBAL_REQUEST
    name: str
    want_reply: bool
    data: bytes = b""

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.byte(self.NUMBER),
                wire.string(self.name),
                wire.boolean(self.want_reply),
                self.data,
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        name = r.ascii(MAX_NAME)
        want_reply = r.boolean()
        return cls(name=name, want_reply=want_reply, data=r.rest())


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestSuccess:
    NUMBER: ClassVar = MessageNumber.REQUEST_SUCCESS
    data: bytes = b""

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + self.data

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(data=r.rest())


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFailure:
    NUMBER: ClassVar = MessageNumber.REQUEST_FAILURE

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls()


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelOpen:
    NUMBER: ClassVar = MessageNumber.CHANNEL_OPEN
    channel_type: str
    sender_channel: int
    initial_window: int
    max_packet: int
    data: bytes = b""

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.byte(self.NUMBER),
                wire.string(self.channel_type),
                wire.uint32(self.sender_channel),
                wire.uint32(self.initial_window),
                wire.uint32(self.max_packet),
                self.data,
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(
            channel_type=r.ascii(MAX_NAME),
            sender_channel=r.uint32(),
            initial_window=r.uint32(),
            max_packet=r.uint32(),
            data=r.rest(),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelOpenConfirmation:
    NUMBER: ClassVar = MessageNumber.CHANNEL_OPEN_CONFIRMATION
    recipient_channel: int
    sender_channel: int
    initial_window: int
    max_packet: int

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.byte(self.NUMBER),
                wire.uint32(self.recipient_channel),
                wire.uint32(self.sender_channel),
                wire.uint32(self.initial_window),
                wire.uint32(self.max_packet),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(
            recipient_channel=r.uint32(),
            sender_channel=r.uint32(),
            initial_window=r.uint32(),
            max_packet=r.uint32(),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelOpenFailure:
    NUMBER: ClassVar = MessageNumber.CHANNEL_OPEN_FAILURE
    recipient_channel: int
    reason: int
    description: str
    language: str = ""

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.byte(self.NUMBER),
                wire.uint32(self.recipient_channel),
                wire.uint32(self.reason),
                wire.string(self.description),
                wire.string(self.language),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(
            recipient_channel=r.uint32(),
            reason=r.uint32(),
            description=r.text(),
            language=r.ascii(),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelWindowAdjust:
    NUMBER: ClassVar = MessageNumber.CHANNEL_WINDOW_ADJUST
    recipient_channel: int
    bytes_to_add: int

    def encode(self) -> bytes:
        return (
            wire.byte(self.NUMBER)
            + wire.uint32(self.recipient_channel)
            + wire.uint32(self.bytes_to_add)
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(recipient_channel=r.uint32(), bytes_to_add=r.uint32())


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelData:
    NUMBER: ClassVar = MessageNumber.CHANNEL_DATA
    recipient_channel: int
    data: bytes

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.uint32(self.recipient_channel) + wire.string(self.data)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(recipient_channel=r.uint32(), data=r.string())


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelExtendedData:
    NUMBER: ClassVar = MessageNumber.CHANNEL_EXTENDED_DATA
    recipient_channel: int
    data_type: int
    data: bytes

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.byte(self.NUMBER),
                wire.uint32(self.recipient_channel),
                wire.uint32(self.data_type),
                wire.string(self.data),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(recipient_channel=r.uint32(), data_type=r.uint32(), data=r.string())


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelEof:
    NUMBER: ClassVar = MessageNumber.CHANNEL_EOF
    recipient_channel: int

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.uint32(self.recipient_channel)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(recipient_channel=r.uint32())


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelClose:
    NUMBER: ClassVar = MessageNumber.CHANNEL_CLOSE
    recipient_channel: int

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.uint32(self.recipient_channel)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(recipient_channel=r.uint32())


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelRequest:
    NUMBER: ClassVar = MessageNumber.CHANNEL_REQUEST
    recipient_channel: int
    request_type: str
    want_reply: bool
    data: bytes = b""

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.byte(self.NUMBER),
                wire.uint32(self.recipient_channel),
                wire.string(self.request_type),
                wire.boolean(self.want_reply),
                self.data,
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(
            recipient_channel=r.uint32(),
            request_type=r.ascii(MAX_NAME),
            want_reply=r.boolean(),
            data=r.rest(),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelSuccess:
    NUMBER: ClassVar = MessageNumber.CHANNEL_SUCCESS
    recipient_channel: int

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.uint32(self.recipient_channel)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(recipient_channel=r.uint32())


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelFailure:
    NUMBER: ClassVar = MessageNumber.CHANNEL_FAILURE
    recipient_channel: int

    def encode(self) -> bytes:
        return wire.byte(self.NUMBER) + wire.uint32(self.recipient_channel)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(recipient_channel=r.uint32())


# -- channel request payloads (RFC 4254 §6) -------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PtyRequestData:
    term: str
    columns: int
    rows: int
    width_px: int
    height_px: int
    modes: bytes

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.string(self.term),
                wire.uint32(self.columns),
                wire.uint32(self.rows),
                wire.uint32(self.width_px),
                wire.uint32(self.height_px),
                wire.string(self.modes),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        value = cls(
            term=r.ascii(MAX_TERM),
            columns=r.uint32(),
            rows=r.uint32(),
            width_px=r.uint32(),
            height_px=r.uint32(),
            modes=r.string(MAX_MODES),
        )
        r.check_end()
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowChangeData:
    columns: int
    rows: int
    width_px: int
    height_px: int

    def encode(self) -> bytes:
        return b"".join(
            wire.uint32(v) for v in (self.columns, self.rows, self.width_px, self.height_px)
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        value = cls(columns=r.uint32(), rows=r.uint32(), width_px=r.uint32(), height_px=r.uint32())
        r.check_end()
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvData:
    name: str
    value: str

    def encode(self) -> bytes:
        return wire.string(self.name) + wire.string(self.value)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        value = cls(name=r.text(MAX_ENV_NAME), value=r.text(MAX_ENV_VALUE))
        r.check_end()
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecData:
    command: str

    def encode(self) -> bytes:
        return wire.string(self.command)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        value = cls(command=r.text(MAX_COMMAND))
        r.check_end()
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class SubsystemData:
    name: str

    def encode(self) -> bytes:
        return wire.string(self.name)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        value = cls(name=r.ascii(MAX_NAME))
        r.check_end()
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakData:
    """RFC 4335: the requested break length in milliseconds."""

    length_ms: int

    def encode(self) -> bytes:
        return wire.uint32(self.length_ms)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        value = cls(length_ms=r.uint32())
        r.check_end()
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalData:
    name: str

    def encode(self) -> bytes:
        return wire.string(self.name)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        value = cls(name=r.ascii(MAX_NAME))
        r.check_end()
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitStatusData:
    code: int

    def encode(self) -> bytes:
        return wire.uint32(self.code)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(code=r.uint32())


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitSignalData:
    signal: str
    core_dumped: bool
    message: str
    language: str = ""

    def encode(self) -> bytes:
        return b"".join(
            (
                wire.string(self.signal),
                wire.boolean(self.core_dumped),
                wire.string(self.message),
                wire.string(self.language),
            )
        )

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(signal=r.ascii(), core_dumped=r.boolean(), message=r.text(), language=r.ascii())
