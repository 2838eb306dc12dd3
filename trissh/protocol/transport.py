"""The transport layer (RFC 4253): identification, packets, key exchange and rekeying.

Theory of operation
-------------------
The transport owns both packet directions and the whole key-exchange life cycle, so the
driver never coordinates a kex (the lesson of trio's ``_ssl.py``). Two independent windows
matter during an exchange:

* *Output hold-back*: from sending our KEXINIT until sending our NEWKEYS we may send only
  kex messages (RFC 4253 §7.1). Payloads from upper layers are held and flushed, in order,
  right after NEWKEYS (after EXT_INFO on the first exchange, RFC 8308 §2.4).
* *Input gating*: from the peer's KEXINIT until the peer's NEWKEYS only generic transport
  messages and kex messages may arrive. Before the first exchange completes nothing of the
  upper layers may arrive at all; with strict kex (OpenSSH's Terrapin fix, CVE-2023-48795)
  not even IGNORE/DEBUG, KEXINIT must be the very first packet, and sequence numbers restart
  at zero after every NEWKEYS.

``KexState`` is the server's side of that life cycle; ``_KEX_TRANSITIONS`` lists the legal
moves, and anything else is a bug (``LocalProtocolError``) or a peer violation.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Final

from trissh.protocol import kex as kexmath
from trissh.protocol.algorithms import negotiate, server_kexinit
from trissh.protocol.ciphers import CIPHERS, PacketCipher
from trissh.protocol.config import ProtocolConfig
from trissh.protocol.constants import (
    MAX_PRE_VERSION_LINES,
    MAX_VERSION_LINE,
    DisconnectReason,
    MessageNumber,
)
from trissh.protocol.errors import (
    DecodeError,
    KeyExchangeFailed,
    LocalProtocolError,
    RemoteProtocolError,
    UnexpectedMessage,
)
from trissh.protocol.events import (
    DisconnectReceived,
    Event,
    KeyExchangeCompleted,
    NegotiatedAlgorithms,
    VersionReceived,
)
from trissh.protocol.keys import USER_SIGNATURE_ALGORITHMS, HostKey
from trissh.protocol.messages.transport import (
    Disconnect,
    ExtInfo,
    KexEcdhInit,
    KexEcdhReply,
    KexInit,
    NewKeys,
)
from trissh.protocol.packet import PacketDecoder, PacketEncoder
from trissh.protocol.wire import Reader


class KexState(enum.Enum):
    #: Keys in force, no exchange running.
    IDLE = "idle"
    #: Our KEXINIT is out; the peer's has not arrived.
    AWAIT_KEXINIT = "await_kexinit"
    #: Both KEXINITs exchanged; waiting for the client's ephemeral key.
    AWAIT_KEX_INIT = "await_kex_init"
    #: Our NEWKEYS is out; waiting for the peer's.
    AWAIT_NEWKEYS = "await_newkeys"


_KEX_TRANSITIONS: Final = {
    (KexState.IDLE, "send_kexinit"): KexState.AWAIT_KEXINIT,
    (KexState.AWAIT_KEXINIT, "recv_kexinit"): KexState.AWAIT_KEX_INIT,
    (KexState.AWAIT_KEX_INIT, "recv_kex_init"): KexState.AWAIT_NEWKEYS,
    (KexState.AWAIT_NEWKEYS, "recv_newkeys"): KexState.IDLE,
}

#: Messages allowed from the peer at any time (RFC 4253 §7.1), unless strict kex applies.
_GENERIC = frozenset(
    (
        MessageNumber.DISCONNECT,
        MessageNumber.IGNORE,
        MessageNumber.UNIMPLEMENTED,
        MessageNumber.DEBUG,
    )
)


class Transport:
    """Server side of RFC 4253; hands service-layer payloads up through ``next_payload``."""

    def __init__(self, config: ProtocolConfig, emit: Callable[[Event], None]) -> None:
        self._config = config
        self._emit = emit
        self._decoder = PacketDecoder()
        self._encoder = PacketEncoder(config.rng)
        self._out = bytearray()
        self._held: list[bytes] = []
        self._held_size = 0
        self.client_version: bytes | None = None
        self._pre_version_lines = 0
        self.session_id: bytes | None = None
        self.kex_state = KexState.IDLE
        self.established = False
        self.strict_kex = False
        self.ext_info_requested = False
        self.algorithms: NegotiatedAlgorithms | None = None
        self.closed = False
        self.rekey_bytes = config.rekey_bytes
        self._sent_at_kex = 0
        self._received_at_kex = 0
        self._our_kexinit = b""
        self._peer_kexinit = b""
        self._negotiated: NegotiatedAlgorithms | None = None
        self._pending_input_cipher: PacketCipher | None = None
        self._ignore_guessed_packet = False
        self._bytes_received = 0
        self._out += config.server_version + b"\r\n"
        self._start_kex()

    # -- output ---------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    @property
    def pending_output_size(self) -> int:
        return len(self._out) + self._held_size

    @property
    def bytes_sent(self) -> int:
        return self._encoder.bytes_sent + len(self._config.server_version) + 2

    @property
    def bytes_received(self) -> int:
        return self._bytes_received

    def _send_now(self, payload: bytes) -> None:
        self._out += self._encoder.encode(payload)

    def send(self, payload: bytes) -> None:
        """Send a service-layer payload, held back while our side of a kex is running."""
        if self.closed:
            return
        if self.kex_state in (KexState.AWAIT_KEXINIT, KexState.AWAIT_KEX_INIT):
            self._held.append(payload)
            self._held_size += len(payload)
            return
        self._send_now(payload)
        if (
            self.kex_state is KexState.IDLE
            and self._encoder.bytes_sent - self._sent_at_kex > self.rekey_bytes
        ):
            self._start_kex()

    def disconnect(self, reason: DisconnectReason, description: str) -> None:
        """Queue SSH_MSG_DISCONNECT (allowed even mid-kex) and stop sending anything else."""
        if self.closed:
            return
        self._send_now(Disconnect(reason=reason, description=description).encode())
        self.closed = True
        self._held.clear()
        self._held_size = 0

    def request_rekey(self) -> None:
        """Start a key re-exchange now unless one is running (time-based policy, tests)."""
        if self.established and self.kex_state is KexState.IDLE and not self.closed:
            self._start_kex()

    def _move(self, action: str) -> None:
        try:
            self.kex_state = _KEX_TRANSITIONS[self.kex_state, action]
        except KeyError:
            raise LocalProtocolError(f"kex cannot {action} in state {self.kex_state}") from None

    def _start_kex(self) -> None:
        self._move("send_kexinit")
        self._sent_at_kex = self._encoder.bytes_sent
        self._received_at_kex = self._bytes_received
        message = server_kexinit(self._config, self._config.rng(16), initial=not self.established)
        self._our_kexinit = message.encode()
        self._send_now(self._our_kexinit)

    # -- input ----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        self._bytes_received += len(data)
        self._decoder.feed(data)

    def next_payload(self) -> tuple[int, bytes] | None:
        """Process transport messages; return ``(sequence, payload)`` of the next upper one.

        Raises:
            RemoteProtocolError: the peer broke the protocol.
        """
        while not self.closed:
            if self.client_version is None:
                if not self._read_version():
                    return None
                continue
            sequence = self._decoder.sequence
            payload = self._decoder.next_payload()
            if payload is None:
                return None
            if not payload:
                raise DecodeError("empty packet payload")
            if not self._handle(payload[0], payload, sequence):
                return sequence, payload
        return None

    def _read_version(self) -> bool:
        while True:
            end = self._decoder.find_line_end(MAX_VERSION_LINE)
            if end < 0:
                if self._decoder.buffered >= MAX_VERSION_LINE:
                    raise DecodeError("identification line longer than 255 bytes")
                return False
            line = self._decoder.take_raw(end + 1)[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if line.startswith(b"SSH-"):
                break
            self._pre_version_lines += 1
            if self._pre_version_lines > MAX_PRE_VERSION_LINES:
                raise DecodeError("too many lines before the identification string")
        if not (line.startswith((b"SSH-2.0-", b"SSH-1.99-"))):
            raise RemoteProtocolError(
                "protocol version not supported (need SSH-2.0)",
                DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED,
            )
        if any(c < 0x20 or c > 0x7E for c in line):
            raise DecodeError("identification string has non-printable characters")
        self.client_version = line
        self._emit(VersionReceived(version=line.decode("ascii")))
        return True

    def _handle(self, number: int, payload: bytes, sequence: int) -> bool:
        """Handle a transport message; return False for messages of the upper layers."""
        in_initial_strict_kex = self.strict_kex and not self.established
        if number == MessageNumber.DISCONNECT:
            message = Disconnect.decode(Reader(payload, 1))
            self.closed = True
            self._emit(DisconnectReceived(reason=message.reason, description=message.description))
            return True
        if number in _GENERIC:
            if in_initial_strict_kex:
                raise UnexpectedMessage(f"strict kex: message {number} during initial key exchange")
            return True
        if number == MessageNumber.KEXINIT:
            self._on_kexinit(payload, sequence)
            return True
        if 30 <= number <= 49:
            self._on_kex_method_message(number, payload)
            return True
        if number == MessageNumber.NEWKEYS:
            self._on_newkeys(payload)
            return True
        if 20 <= number <= 29:
            raise UnexpectedMessage(f"unexpected key exchange message {number}")
        if not self.established:
            raise UnexpectedMessage(f"message {number} before key exchange completed")
        if self.kex_state in (KexState.AWAIT_KEX_INIT, KexState.AWAIT_NEWKEYS):
            raise UnexpectedMessage(f"message {number} during key exchange")
        if self._bytes_received - self._received_at_kex > self.rekey_bytes:
            self.request_rekey()
        return False

    def _on_kexinit(self, payload: bytes, sequence: int) -> None:
        if self.kex_state in (KexState.AWAIT_KEX_INIT, KexState.AWAIT_NEWKEYS):
            raise UnexpectedMessage("KEXINIT during key exchange")
        if self.kex_state is KexState.IDLE:
            self._start_kex()  # the peer started a re-exchange
        client = KexInit.decode(Reader(payload, 1))
        ours = KexInit.decode(Reader(self._our_kexinit, 1))
        initial = not self.established
        negotiated = negotiate(client, ours, initial=initial)
        if initial:
            self.strict_kex = negotiated.strict_kex
            self.ext_info_requested = negotiated.ext_info
            if self.strict_kex and sequence != 0:
                raise KeyExchangeFailed("strict kex: KEXINIT was not the first packet")
        if client.first_kex_packet_follows:
            # RFC 4253 §7: the guess is right only if both sides' first kex and host key
            # algorithms agree (OpenSSH's proposals_match), not merely the negotiated ones.
            guessed_right = (
                client.kex_algorithms[:1] == ours.kex_algorithms[:1]
                and client.server_host_key_algorithms[:1] == ours.server_host_key_algorithms[:1]
            )
            self._ignore_guessed_packet = not guessed_right
        self._peer_kexinit = bytes(payload)
        self._negotiated = negotiated
        self._move("recv_kexinit")

    def _on_kex_method_message(self, number: int, payload: bytes) -> None:
        if self.kex_state is not KexState.AWAIT_KEX_INIT:
            raise UnexpectedMessage(f"key exchange message {number} out of order")
        if self._ignore_guessed_packet:
            self._ignore_guessed_packet = False  # RFC 4253 §7: a wrong guess is dropped
            return
        if number != MessageNumber.KEX_ECDH_INIT:
            raise UnexpectedMessage(f"unexpected key exchange message {number}")
        assert self._negotiated is not None
        self._reply_to_kex(KexEcdhInit.decode(Reader(payload, 1)).client_public, self._negotiated)

    def _host_key(self, algorithm: str) -> HostKey:
        for key in self._config.host_keys:
            if key.algorithm == algorithm:
                return key
        raise LocalProtocolError(f"negotiated host key {algorithm} is not configured")

    def _reply_to_kex(self, client_public: bytes, negotiated: NegotiatedAlgorithms) -> None:
        assert self.client_version is not None
        method = kexmath.KEX_METHODS[negotiated.kex]
        reply = method.reply(client_public, self._config.rng)
        host_key = self._host_key(negotiated.host_key)
        exchange_hash = kexmath.exchange_hash(
            method,
            client_version=self.client_version,
            server_version=self._config.server_version,
            client_kexinit=self._peer_kexinit,
            server_kexinit=self._our_kexinit,
            host_key=host_key.public_blob,
            client_public=client_public,
            server_public=reply.server_public,
            shared_secret=reply.shared_secret,
        )
        if self.session_id is None:
            self.session_id = exchange_hash
        session_id = self.session_id

        def derive(letter: bytes, size: int) -> bytes:
            return kexmath.derive_key(
                method, reply.shared_secret, exchange_hash, letter, session_id, size
            )

        self._send_now(
            KexEcdhReply(
                host_key=host_key.public_blob,
                server_public=reply.server_public,
                signature=host_key.sign(exchange_hash),
            ).encode()
        )
        self._send_now(NewKeys().encode())
        out_spec = CIPHERS[negotiated.cipher_server_to_client]
        self._encoder.cipher = out_spec.build(
            derive(b"D", out_spec.key_size), derive(b"B", out_spec.iv_size)
        )
        in_spec = CIPHERS[negotiated.cipher_client_to_server]
        self._pending_input_cipher = in_spec.build(
            derive(b"C", in_spec.key_size), derive(b"A", in_spec.iv_size)
        )
        if self.strict_kex:
            self._encoder.sequence = 0
        self._move("recv_kex_init")
        if not self.established and self.ext_info_requested:
            self._send_now(_server_sig_algs())
        held, self._held, self._held_size = self._held, [], 0
        for payload in held:
            self._send_now(payload)

    def _on_newkeys(self, payload: bytes) -> None:
        if self.kex_state is not KexState.AWAIT_NEWKEYS:
            raise UnexpectedMessage("NEWKEYS out of order")
        NewKeys.decode(Reader(payload, 1))
        assert self._pending_input_cipher is not None
        assert self._negotiated is not None
        self._decoder.cipher = self._pending_input_cipher
        self._pending_input_cipher = None
        if self.strict_kex:
            self._decoder.sequence = 0
        self._move("recv_newkeys")
        is_rekey = self.established
        self.established = True
        # Strict kex and ext-info are decided once, by the first exchange, and stay in force.
        algorithms = dataclasses.replace(
            self._negotiated, strict_kex=self.strict_kex, ext_info=self.ext_info_requested
        )
        self.algorithms = algorithms
        self._emit(KeyExchangeCompleted(algorithms=algorithms, is_rekey=is_rekey))


def _server_sig_algs() -> bytes:
    """EXT_INFO with the signature algorithms we verify (RFC 8308 §3.1)."""
    value = ",".join(USER_SIGNATURE_ALGORITHMS).encode("ascii")
    return ExtInfo(extensions=(("server-sig-algs", value),)).encode()
