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
moves, and anything else is a bug (``LocalProtocolError``) or a peer violation. While the
state is ``KEX_RUNNING`` every message numbered 30-49 goes to the negotiated method's
exchange object (``kex_base.KexExchange``), which answers with an intermediate reply (group
exchange) or the signed final reply plus K and H; the transport then derives the keys.

Rekeying: either side may start one at any time; the server starts one itself when the
bytes under the current keys pass ``rekey_bytes`` or the cipher's RFC 4344 §3.2 limit
(whichever is lower), or the packets pass 2**31 (sequence numbers must never wrap; strict
kex depends on it). Time-based rekeying is the driver's policy: it calls ``request_rekey``.
"""

from __future__ import annotations

import dataclasses
import enum
import zlib
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

from trissh.protocol.algorithms import ZLIB_OPENSSH, negotiate, server_kexinit
from trissh.protocol.ciphers import CIPHERS, MACS, PacketCipher
from trissh.protocol.config import ProtocolConfig
from trissh.protocol.constants import (
    INFLATE_SLICE,
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
from trissh.protocol.kex import (
    KEX_METHODS,
    KexContext,
    KexExchange,
    KexMethod,
    KexReply,
    KexResult,
    KexTranscript,
    derive_key,
)
from trissh.protocol.keys import USER_SIGNATURE_ALGORITHMS
from trissh.protocol.messages.transport import Disconnect, ExtInfo, KexInit, NewKeys
from trissh.protocol.packet import PacketDecoder, PacketEncoder
from trissh.protocol.wire import Reader


class KexState(enum.Enum):
    #: Keys in force, no exchange running.
    IDLE = "idle"
    #: Our KEXINIT is out; the peer's has not arrived.
    AWAIT_KEXINIT = "await_kexinit"
    #: Both KEXINITs exchanged; the negotiated method's messages are running.
    KEX_RUNNING = "kex_running"
    #: Our NEWKEYS is out; waiting for the peer's.
    AWAIT_NEWKEYS = "await_newkeys"


_KEX_TRANSITIONS: Final = {
    (KexState.IDLE, "send_kexinit"): KexState.AWAIT_KEXINIT,
    (KexState.AWAIT_KEXINIT, "recv_kexinit"): KexState.KEX_RUNNING,
    (KexState.KEX_RUNNING, "kex_done"): KexState.AWAIT_NEWKEYS,
    (KexState.AWAIT_NEWKEYS, "recv_newkeys"): KexState.IDLE,
}

_T = TypeVar("_T")

#: Rekey before a sequence number could wrap (OpenSSH's MAX_PACKETS; strict kex relies on it).
MAX_PACKETS_PER_KEY: Final = 1 << 31
#: Key re-exchanges a client may start before login: each costs the server tens of ms of
#: CPU in the event loop everyone shares, nobody is accountable for them yet, and the
#: first exchange's turn (connection/kex_budget.py) would not pace them. No client
#: re-keys that early (their limits are a GiB of data or an hour).
MAX_CLIENT_REKEYS_BEFORE_AUTH: Final = 0

#: Messages allowed from the peer at any time (RFC 4253 §7.1), unless strict kex applies.
_GENERIC = frozenset(
    (
        MessageNumber.DISCONNECT,
        MessageNumber.IGNORE,
        MessageNumber.UNIMPLEMENTED,
        MessageNumber.DEBUG,
    )
)


def version_line(config: ProtocolConfig) -> bytes:
    """Our identification string with its CR LF: the first bytes of every connection."""
    return config.server_version + b"\r\n"


def refusal(config: ProtocolConfig, reason: DisconnectReason, description: str) -> bytes:
    """What a greeted client (``version_line`` sent) turned away before its handshake gets: a
    cleartext DISCONNECT (RFC 4253 §11.1: sent at any time), which OpenSSH shows its user as
    "Received disconnect from HOST port N:REASON: description". sshd past MaxStartups
    closes without a word, and its clients report a reset or a timeout instead."""
    packet = PacketEncoder(config.rng).encode(
        Disconnect(reason=reason, description=description).encode()
    )
    return b"".join(packet)


class Transport:
    """Server side of RFC 4253; hands service-layer payloads up through ``next_payload``."""

    def __init__(
        self, config: ProtocolConfig, emit: Callable[[Event], None], *, greeted: bool = False
    ) -> None:
        self._config = config
        self._emit = emit
        self._decoder = PacketDecoder()
        self._encoder = PacketEncoder(config.rng)
        #: Wire packets not yet taken by the driver, kept apart so nothing copies them again.
        self._out: list[bytes] = []
        self._out_size = 0
        #: Payloads held back during our kex, each with whether it ends authentication.
        self._held: list[tuple[bytes, bool]] = []
        self._held_size = 0
        self.client_version: bytes | None = None
        self._pre_version_lines = 0
        self.session_id: bytes | None = None
        #: Every K_S of the host key the first exchange used (plain and certificate): what a
        #: publickey-hostbound signature must bind.
        self.initial_host_key_blobs: tuple[bytes, ...] = ()
        self.kex_state = KexState.IDLE
        self.established = False
        self.strict_kex = False
        self.ext_info_requested = False
        self.algorithms: NegotiatedAlgorithms | None = None
        self.closed = False
        self._sent_at_kex = 0
        self._received_at_kex = 0
        self._packets_sent_at_kex = 0
        self._packets_received_at_kex = 0
        self._rekey_limit_out = config.rekey_bytes
        self._rekey_limit_in = config.rekey_bytes
        self._method: KexMethod | None = None
        self._exchange: KexExchange | None = None
        self._after_auth = False
        self._rekeys_before_auth = 0
        #: CPU seconds spent computing the running exchange (the driver paces re-exchanges).
        self._kex_seconds = 0.0
        #: CPU seconds of every exchange so far (the connection's budget is charged with it).
        self.kex_cpu_seconds = 0.0
        self._out_compression = "none"
        self._in_compression = "none"
        self._our_kexinit = b""
        self._our_kexinit_message: KexInit | None = None
        self._peer_kexinit = b""
        self._negotiated: NegotiatedAlgorithms | None = None
        self._pending_input_cipher: PacketCipher | None = None
        self._ignore_guessed_packet = False
        self._bytes_received = 0
        #: ``next_payload`` stopped after ``INFLATE_SLICE`` inflated bytes (the connection
        #: reports it once, as ``InputPaused``, and clears it).
        self.input_paused = False
        #: The exchange under way was started by the client's KEXINIT.
        self._kex_by_client = False
        if not greeted:
            self._queue(version_line(config))
        self._start_kex()

    # -- output ---------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        return b"".join(self.take_output())

    def take_output(self) -> list[bytes]:
        """The queued wire bytes as separate chunks, for a scatter-gather write."""
        chunks, self._out, self._out_size = self._out, [], 0
        return chunks

    @property
    def pending_output_size(self) -> int:
        return self._out_size + self._held_size

    @property
    def bytes_sent(self) -> int:
        return self._encoder.bytes_sent + len(self._config.server_version) + 2

    @property
    def bytes_received(self) -> int:
        return self._bytes_received

    def _queue(self, wire: bytes) -> None:
        self._out.append(wire)
        self._out_size += len(wire)

    def _queue_packets(self, parts: Iterable[tuple[bytes, bytes | memoryview]]) -> None:
        self._out_size += self._encoder.encode_each(parts, self._out)

    def _send_now(self, payload: bytes, tail: bytes | memoryview = b"") -> None:
        self._queue_packets(((payload, tail),))

    def send(self, payload: bytes, tail: bytes | memoryview = b"") -> None:
        """Send the service-layer payload ``payload + tail``, held back while our side of a
        kex is running."""
        self._send(payload, tail, ends_auth=False)

    def send_auth_success(self, payload: bytes) -> None:
        """Send USERAUTH_SUCCESS, the last packet before delayed compression
        (zlib@openssh.com) starts both ways (OpenSSH PROTOCOL §1.3). The auth layer says
        which packet that is; the transport does not read userauth's messages."""
        self._send(payload, b"", ends_auth=True)

    def _send(self, payload: bytes, tail: bytes | memoryview, *, ends_auth: bool) -> None:
        if self.closed:
            return
        if self.kex_state in (KexState.AWAIT_KEXINIT, KexState.KEX_RUNNING):
            self._held.append((payload + tail if tail else payload, ends_auth))
            self._held_size += len(payload) + len(tail)
            return
        self._send_now(payload, tail)
        if ends_auth:
            self._start_compression()
        self._rekey_if_due()

    def _start_compression(self) -> None:
        self._after_auth = True
        self._encoder.compressor = self._compressor(self._out_compression)
        self._decoder.decompressor = self._decompressor(self._in_compression)

    def send_each(self, parts: Iterable[tuple[bytes, bytes | memoryview]]) -> None:
        """``send(payload, tail)`` for each part, in order: the path of channel data.

        Bulk transfer is bound by Python work per packet, so once authenticated and between
        key exchanges (nothing to hold back, no compression to switch on) the packets are
        framed in one loop, counted once and checked for a rekey once per call (a call is one
        ``send_data``: at most one pump chunk, so a limit is overshot by that much at most).
        """
        if self.kex_state is not KexState.IDLE or not self._after_auth or self.closed:
            for payload, tail in parts:
                self.send(payload, tail)
            return
        self._queue_packets(parts)
        self._rekey_if_due()

    def _rekey_if_due(self) -> None:
        """Past the volume limits a re-exchange starts, never before authentication (as
        sshd: a held USERAUTH_SUCCESS would start compression mid-exchange)."""
        if (
            self.kex_state is KexState.IDLE
            and self._after_auth
            and (
                self._encoder.bytes_sent - self._sent_at_kex > self._rekey_limit_out
                or self._encoder.packets - self._packets_sent_at_kex > MAX_PACKETS_PER_KEY
            )
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

    def _compressor(self, name: str) -> zlib._Compress | None:
        """A fresh deflater if ``name`` is on now: OpenSSH restarts the stream at every
        NEWKEYS once authenticated, so both sides start over at each key change."""
        return zlib.compressobj(6) if self._after_auth and name == ZLIB_OPENSSH else None

    def _decompressor(self, name: str) -> zlib._Decompress | None:
        return zlib.decompressobj() if self._after_auth and name == ZLIB_OPENSSH else None

    def _rekey_limit(self, cipher: str) -> int:
        """Bytes under one key: ours, or the cipher's RFC 4344 §3.2 limit if that is lower."""
        return min(self._config.rekey_bytes, CIPHERS[cipher].max_bytes_per_key)

    def _move(self, action: str) -> None:
        try:
            self.kex_state = _KEX_TRANSITIONS[self.kex_state, action]
        except KeyError:
            raise LocalProtocolError(f"kex cannot {action} in state {self.kex_state}") from None

    def _start_kex(self) -> None:
        self._move("send_kexinit")
        message = server_kexinit(self._config, self._config.rng(16), initial=not self.established)
        self._our_kexinit_message = message
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
        slice_end = self._decoder.inflated + INFLATE_SLICE
        while not self.closed:
            if self.client_version is None:
                if not self._read_version():
                    return None
                continue
            if self._decoder.inflated >= slice_end:
                self.input_paused = True  # more may be buffered: decoded at the next call
                return None
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
        if self.kex_state in (KexState.KEX_RUNNING, KexState.AWAIT_NEWKEYS):
            raise UnexpectedMessage(f"message {number} during key exchange")
        if number == MessageNumber.PING:  # answered as sshd: only logged in, not re-keying
            reader = Reader(payload, 1)
            reader.string()
            reader.check_end()
            if self._after_auth and self.kex_state is KexState.IDLE:
                self.send(bytes((MessageNumber.PONG,)) + payload[1:])
            return True
        if self._after_auth and (
            self._bytes_received - self._received_at_kex > self._rekey_limit_in
            or self._decoder.packets - self._packets_received_at_kex > MAX_PACKETS_PER_KEY
        ):
            self.request_rekey()
        return False

    def _on_kexinit(self, payload: bytes, sequence: int) -> None:
        if self.kex_state in (KexState.KEX_RUNNING, KexState.AWAIT_NEWKEYS):
            raise UnexpectedMessage("KEXINIT during key exchange")
        self._kex_by_client = self.kex_state is KexState.IDLE
        if self._kex_by_client:  # the peer started a re-exchange
            if not self._after_auth:
                self._rekeys_before_auth += 1
                if self._rekeys_before_auth > MAX_CLIENT_REKEYS_BEFORE_AUTH:
                    raise UnexpectedMessage("too many key exchanges before authentication")
            self._start_kex()
        client = KexInit.decode(Reader(payload, 1))
        ours = self._our_kexinit_message
        assert ours is not None  # _start_kex ran: the state is AWAIT_KEXINIT
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
        self._begin_exchange(negotiated)

    def _on_kex_method_message(self, number: int, payload: bytes) -> None:
        if self.kex_state is not KexState.KEX_RUNNING:
            raise UnexpectedMessage(f"key exchange message {number} out of order")
        if self._ignore_guessed_packet:
            self._ignore_guessed_packet = False  # RFC 4253 §7: a wrong guess is dropped
            return
        exchange = self._exchange
        assert exchange is not None
        step = self._costed(lambda: exchange.receive(number, payload))
        if isinstance(step, KexReply):
            self._send_now(step.payload)
            return
        self._exchange = None
        self._finish_kex(step)

    def _begin_exchange(self, negotiated: NegotiatedAlgorithms) -> None:
        """Start the negotiated method's exchange with the negotiated host key."""
        assert self.client_version is not None
        host_key = self._config.host_key_for(negotiated.host_key)
        if host_key is None:
            raise LocalProtocolError(f"negotiated host key {negotiated.host_key} is not configured")
        algorithm = negotiated.host_key
        if not self.initial_host_key_blobs:
            self.initial_host_key_blobs = host_key.blobs
        method = self._method = KEX_METHODS[negotiated.kex]
        context = KexContext(
            transcript=KexTranscript(
                client_version=self.client_version,
                server_version=self._config.server_version,
                client_kexinit=self._peer_kexinit,
                server_kexinit=self._our_kexinit,
                host_key=host_key.public_blob_for(algorithm),
            ),
            sign=lambda data: host_key.sign(data, algorithm),
            rng=self._config.rng,
        )
        self._exchange = self._costed(lambda: method.start(context))

    def _costed(self, compute: Callable[[], _T]) -> _T:
        """``compute()``, its CPU time added to the running exchange's cost."""
        started = self._config.cpu_clock()
        result = compute()
        spent = self._config.cpu_clock() - started
        self._kex_seconds += spent
        self.kex_cpu_seconds += spent
        return result

    def _finish_kex(self, result: KexResult) -> None:
        """Send the signed reply and NEWKEYS; switch our output to the new keys."""
        negotiated, method = self._negotiated, self._method
        assert negotiated is not None
        assert method is not None
        exchange_hash, shared_secret = result.exchange_hash, result.shared_secret
        if self.session_id is None:
            self.session_id = exchange_hash
        session_id = self.session_id

        def derive(letter: bytes, size: int) -> bytes:
            return derive_key(
                method.hash_name, shared_secret, exchange_hash, letter, session_id, size
            )

        self._send_now(result.payload)
        self._send_now(NewKeys().encode())
        self._encoder.cipher = _build_cipher(
            negotiated.cipher_server_to_client, negotiated.mac_server_to_client, b"BDF", derive
        )
        self._pending_input_cipher = _build_cipher(
            negotiated.cipher_client_to_server, negotiated.mac_client_to_server, b"ACE", derive
        )
        if self.strict_kex:
            self._encoder.sequence = 0
        self._out_compression = negotiated.compression_server_to_client
        self._encoder.compressor = self._compressor(self._out_compression)
        self._sent_at_kex = self._encoder.bytes_sent
        self._packets_sent_at_kex = self._encoder.packets
        self._move("kex_done")
        if not self.established and self.ext_info_requested:
            self._send_now(_server_sig_algs())
        held, self._held, self._held_size = self._held, [], 0
        for payload, ends_auth in held:
            self._send_now(payload)
            if ends_auth:
                self._start_compression()

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
        self._in_compression = self._negotiated.compression_client_to_server
        self._decoder.decompressor = self._decompressor(self._in_compression)
        self._received_at_kex = self._bytes_received
        self._packets_received_at_kex = self._decoder.packets
        self._rekey_limit_out = self._rekey_limit(self._negotiated.cipher_server_to_client)
        self._rekey_limit_in = self._rekey_limit(self._negotiated.cipher_client_to_server)
        self._move("recv_newkeys")
        is_rekey = self.established
        self.established = True
        # Strict kex and ext-info are decided once, by the first exchange, and stay in force.
        algorithms = dataclasses.replace(
            self._negotiated, strict_kex=self.strict_kex, ext_info=self.ext_info_requested
        )
        self.algorithms = algorithms
        self._emit(
            KeyExchangeCompleted(
                algorithms=algorithms,
                is_rekey=is_rekey,
                by_client=self._kex_by_client,
                compute_seconds=self._kex_seconds,
            )
        )
        self._kex_seconds = 0.0


def _build_cipher(
    name: str, mac_name: str | None, letters: bytes, derive: Callable[[bytes, int], bytes]
) -> PacketCipher:
    """One direction's cipher from IV, key and MAC key letters (RFC 4253 §7.2)."""
    spec = CIPHERS[name]
    mac = MACS[mac_name] if mac_name is not None else None
    iv_letter, key_letter, mac_letter = (bytes((letter,)) for letter in letters)
    return spec.build(
        derive(key_letter, spec.key_size),
        derive(iv_letter, spec.iv_size),
        mac,
        derive(mac_letter, mac.key_size) if mac is not None else b"",
    )


def _server_sig_algs() -> bytes:
    """EXT_INFO: the signature algorithms we verify (RFC 8308 §3.1), that we accept
    host-bound public key signatures (OpenSSH PROTOCOL §1.10) and answer PING (§1.9)."""
    value = ",".join(USER_SIGNATURE_ALGORITHMS).encode("ascii")
    return ExtInfo(
        extensions=(
            ("server-sig-algs", value),
            ("publickey-hostbound@openssh.com", b"0"),
            ("ping@openssh.com", b"0"),
        )
    ).encode()
