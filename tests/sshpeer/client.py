"""A minimal sans-IO SSH *client* for driving ``ServerConnection`` in memory.

Built from trissh.protocol's role-agnostic parts (wire, messages, packet codec, ciphers, kex
maths). Algorithm negotiation and host-key verification are written here independently, so
the peer does not simply mirror the server's choices.

Transport messages (KEXINIT, ECDH_REPLY, NEWKEYS) are handled automatically, including a
key re-exchange started by either side; every other payload lands in ``inbox`` for the test
to inspect with ``expect()``/``take_all()``. Payloads given to ``send()`` are held back while
our side of a key exchange runs (RFC 4253 §7.1); ``send_now()`` bypasses that, for tests
that break the rules on purpose.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import deque
from collections.abc import Callable
from typing import ClassVar, Protocol, Self, TypeVar

from cryptography.hazmat.primitives.asymmetric import ed25519

from trissh.protocol import wire
from trissh.protocol.certificates import parse_certificate
from trissh.protocol.ciphers import CIPHERS, MACS
from trissh.protocol.constants import MessageNumber
from trissh.protocol.keys import HOST_CERTIFICATE_ALGORITHMS, parse_public_key
from trissh.protocol.messages import connection as conn
from trissh.protocol.messages import transport as tr
from trissh.protocol.messages import userauth as ua
from trissh.protocol.packet import PacketDecoder, PacketEncoder
from trissh.protocol.wire import Reader

from .kex import ClientKex, HashPrefix, KexOutcome, start_client_kex

EXT_INFO_C = "ext-info-c"
STRICT_KEX_C = "kex-strict-c-v00@openssh.com"
STRICT_KEX_S = "kex-strict-s-v00@openssh.com"
ZLIB = "zlib@openssh.com"
DEFAULT_CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
)
#: A fixed user key, so signatures (and therefore whole byte streams) are deterministic.
USER_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))


class PeerError(Exception):
    """The server did something the test peer cannot accept (bad host key signature...)."""


class Message(Protocol):
    NUMBER: ClassVar[MessageNumber]

    def encode(self) -> bytes: ...

    @classmethod
    def decode(cls, r: Reader) -> Self: ...


M = TypeVar("M", bound=Message)

#: Messages a server may send after the key exchange, by number.
SERVER_MESSAGES: dict[int, Callable[[Reader], object]] = {
    cls.NUMBER: cls.decode
    for cls in (
        tr.Disconnect,
        tr.Ignore,
        tr.Unimplemented,
        tr.Debug,
        tr.ServiceAccept,
        tr.ExtInfo,
        ua.UserauthFailure,
        ua.UserauthSuccess,
        ua.UserauthBanner,
        ua.UserauthPkOk,
        conn.GlobalRequest,
        conn.RequestSuccess,
        conn.RequestFailure,
        conn.ChannelOpen,
        conn.ChannelOpenConfirmation,
        conn.ChannelOpenFailure,
        conn.ChannelWindowAdjust,
        conn.ChannelData,
        conn.ChannelExtendedData,
        conn.ChannelEof,
        conn.ChannelClose,
        conn.ChannelRequest,
        conn.ChannelSuccess,
        conn.ChannelFailure,
    )
}


def ed25519_blob(key: ed25519.Ed25519PrivateKey) -> bytes:
    return wire.string("ssh-ed25519") + wire.string(key.public_key().public_bytes_raw())


def _first_common(category: str, ours: tuple[str, ...], theirs: tuple[str, ...]) -> str:
    for name in ours:
        if name in theirs:
            return name
    raise PeerError(f"no common {category}")


def _verify_host_signature(
    algorithm: str, host_key: bytes, signature: bytes, exchange_hash: bytes
) -> None:
    """The negotiated algorithm's signature over H (RFC 8709, RFC 8332, RFC 5656); for a
    certificate algorithm, the certified key's plain signature (PROTOCOL.certkeys)."""
    if algorithm in HOST_CERTIFICATE_ALGORITHMS:
        key = parse_certificate(host_key).public_key
        algorithm = HOST_CERTIFICATE_ALGORITHMS[algorithm]
    else:
        key = parse_public_key(host_key)
    if not key.verify(algorithm, signature, exchange_hash):
        raise PeerError(f"{algorithm} host key signature over H does not verify")


class ClientConnection:
    """The client half of an SSH connection, without I/O."""

    def __init__(
        self,
        *,
        rng: Callable[[int], bytes],
        username: str = "alice",
        user_key: ed25519.Ed25519PrivateKey = USER_KEY,
        version: bytes = b"SSH-2.0-sshpeer_1.0",
        kex_algorithms: tuple[str, ...] = ("curve25519-sha256",),
        host_key_algorithms: tuple[str, ...] = ("ssh-ed25519",),
        ciphers: tuple[str, ...] = DEFAULT_CIPHERS,
        server_to_client_ciphers: tuple[str, ...] | None = None,
        macs: tuple[str, ...] = (),
        compression: tuple[str, ...] = ("none",),
        strict_kex: bool = True,
        ext_info: bool = True,
        start: bool = True,
    ) -> None:
        self.rng = rng
        self.username = username
        self.user_key = user_key
        self.version = version
        self.kex_algorithms = kex_algorithms
        self.host_key_algorithms = host_key_algorithms
        self.ciphers = ciphers
        self.server_to_client_ciphers = server_to_client_ciphers or ciphers
        self.macs = macs
        self.compression = compression
        self.offer_strict_kex = strict_kex
        self.offer_ext_info = ext_info
        self.encoder = PacketEncoder(rng)
        self.decoder = PacketDecoder()
        self.inbox: deque[bytes] = deque()
        #: Every KEXINIT the server sent, decoded.
        self.server_kexinits: list[tr.KexInit] = []
        self.server_version: bytes | None = None
        self.session_id: bytes | None = None
        self.exchange_hash: bytes | None = None
        self.host_key: bytes | None = None
        self.strict_kex = False
        self.established = False
        self.completed_kex = 0
        self.cipher_names: tuple[str, str] | None = None
        self.mac_names: tuple[str | None, str | None] = (None, None)
        self.host_key_algorithm: str | None = None
        #: The running client-side method, and the last one that completed.
        self.kex: ClientKex | None = None
        self.kex_name: str | None = None
        self.negotiation_error: str | None = None
        self._out = bytearray()
        self._held: list[bytes] = []
        self._in_kex = False
        self._our_kexinit = b""
        self._server_kexinit = b""
        self._guessing = False
        self._guess_sent = False
        #: zlib@openssh.com state (OpenSSH PROTOCOL §1.3).
        self.after_auth = False
        self._next_compression = ("none", "none")
        self._out_compression = "none"
        self._in_compression = "none"
        self._pending_in: tuple[str, str | None, bytes, bytes, bytes] | None = None
        if start:
            self.send_version()
            self.start_kex()

    # -- output ---------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def send_version(self) -> None:
        self._out += self.version + b"\r\n"

    def send_raw(self, data: bytes) -> None:
        """Queue bytes exactly as given (no packet framing)."""
        self._out += data

    def send_now(self, payload: bytes) -> None:
        """Encode a packet now, even during our key exchange."""
        for piece in self.encoder.encode(payload):
            self._out += piece

    def send(self, payload: bytes | Message) -> None:
        """Send a payload, held back between our KEXINIT and our NEWKEYS."""
        raw = payload if isinstance(payload, bytes) else payload.encode()
        if self._in_kex:
            self._held.append(raw)
        else:
            self.send_now(raw)

    # -- key exchange ---------------------------------------------------------------------

    def kexinit(self, *, first_kex_packet_follows: bool = False) -> tr.KexInit:
        kex = self.kex_algorithms
        if not self.established:
            kex += ((EXT_INFO_C,) if self.offer_ext_info else ()) + (
                (STRICT_KEX_C,) if self.offer_strict_kex else ()
            )
        return tr.KexInit(
            cookie=self.rng(16),
            kex_algorithms=kex,
            server_host_key_algorithms=self.host_key_algorithms,
            encryption_client_to_server=self.ciphers,
            encryption_server_to_client=self.server_to_client_ciphers,
            mac_client_to_server=self.macs,
            mac_server_to_client=self.macs,
            compression_client_to_server=self.compression,
            compression_server_to_client=self.compression,
            first_kex_packet_follows=first_kex_packet_follows,
        )

    def start_kex(self, *, first_kex_packet_follows: bool = False) -> None:
        """Send our KEXINIT. With ``first_kex_packet_follows`` the test sends the guess."""
        if self._in_kex:
            raise PeerError("key exchange already running")
        self._our_kexinit = self.kexinit(first_kex_packet_follows=first_kex_packet_follows).encode()
        self._guessing = first_kex_packet_follows
        self._guess_sent = False
        self._server_kexinit = b""
        self.kex = None
        self._in_kex = True
        self.send_now(self._our_kexinit)

    def send_ecdh_init(self, name: str | None = None) -> None:
        """Start the client side of ``name`` (default: our first kex) and send its first
        message; before the server's KEXINIT this is a guess (RFC 4253 §7)."""
        name = name or self.kex_algorithms[0]
        prefix = HashPrefix(
            client_version=self.version,
            server_version=self.server_version or b"",
            client_kexinit=self._our_kexinit,
            server_kexinit=self._server_kexinit,
        )
        self.kex = start_client_kex(name, prefix, self.rng)
        if self._server_kexinit == b"":
            self._guess_sent = True
        for payload in self.kex.first_messages():
            self.send_now(payload)

    def _on_kexinit(self, payload: bytes) -> None:
        if not self._in_kex:
            self.start_kex()  # the server started a re-exchange
        server = tr.KexInit.decode(Reader(payload, 1))
        self.server_kexinits.append(server)
        self._server_kexinit = payload
        ours = tr.KexInit.decode(Reader(self._our_kexinit, 1))
        try:
            self.kex_name = _first_common("kex", ours.kex_algorithms, server.kex_algorithms)
            self.host_key_algorithm = _first_common(
                "host key", ours.server_host_key_algorithms, server.server_host_key_algorithms
            )
            self.cipher_names = (
                _first_common(
                    "cipher", ours.encryption_client_to_server, server.encryption_client_to_server
                ),
                _first_common(
                    "cipher", ours.encryption_server_to_client, server.encryption_server_to_client
                ),
            )
            self._next_compression = (
                _first_common(
                    "compression",
                    ours.compression_client_to_server,
                    server.compression_client_to_server,
                ),
                _first_common(
                    "compression",
                    ours.compression_server_to_client,
                    server.compression_server_to_client,
                ),
            )
        except PeerError as exc:
            self.negotiation_error = str(exc)  # the server will say so too; keep reading
            return
        if not self.established:
            self.strict_kex = (
                STRICT_KEX_C in ours.kex_algorithms and STRICT_KEX_S in server.kex_algorithms
            )
        if self.cipher_names is not None:
            self.mac_names = tuple(  # type: ignore[assignment]
                None
                if CIPHERS[cipher].aead
                else _first_common("MAC", ours.mac_client_to_server, server.mac_client_to_server)
                for cipher in self.cipher_names
            )
        if self._guessing:
            self._guessing = False
            # RFC 4253 §7: the guess is right only if both sides prefer the same kex and
            # host key algorithms; otherwise the guessed packet is void and we send again.
            right = (
                ours.kex_algorithms[0] == server.kex_algorithms[0]
                and ours.server_host_key_algorithms[0] == server.server_host_key_algorithms[0]
            )
            if right and self._guess_sent and self.kex is not None:
                # Our guess was computed before the server's KEXINIT: redo its hash prefix.
                self.kex.prefix = HashPrefix(
                    self.version, self.server_version or b"", self._our_kexinit, payload
                )
                return
        self.send_ecdh_init(self.kex_name)

    def _on_kex_reply(self, number: int, payload: bytes) -> None:
        if self.kex is None or self.server_version is None or self.cipher_names is None:
            raise PeerError(f"kex message {number} out of order")
        step = self.kex.receive(number, payload)
        if isinstance(step, list):
            for message in step:
                self.send_now(message)
            return
        self._finish_kex(step)

    def _finish_kex(self, outcome: KexOutcome) -> None:
        assert self.kex is not None
        assert self.cipher_names is not None
        assert self.host_key_algorithm is not None
        exchange_hash, secret, hash_name = (
            outcome.exchange_hash,
            outcome.shared_secret,
            self.kex.hash_name,
        )
        _verify_host_signature(
            self.host_key_algorithm, outcome.host_key, outcome.signature, exchange_hash
        )
        self.host_key = outcome.host_key
        self.exchange_hash = exchange_hash
        if self.session_id is None:
            self.session_id = exchange_hash
        session_id = self.session_id

        def derive(letter: bytes, size: int) -> bytes:
            """RFC 4253 §7.2, written out again here."""
            key = hashlib.new(hash_name, secret + exchange_hash + letter + session_id).digest()
            while len(key) < size:
                key += hashlib.new(hash_name, secret + exchange_hash + key).digest()
            return key[:size]

        out_name, in_name = self.cipher_names
        out_mac, in_mac = self.mac_names
        out_spec, in_spec = CIPHERS[out_name], CIPHERS[in_name]
        self.send_now(tr.NewKeys().encode())
        self.encoder.cipher = out_spec.build(
            derive(b"C", out_spec.key_size),
            derive(b"A", out_spec.iv_size),
            MACS[out_mac] if out_mac else None,
            derive(b"E", MACS[out_mac].key_size) if out_mac else b"",
        )
        if self.strict_kex:
            self.encoder.sequence = 0
        self._out_compression = self._next_compression[0]
        self.encoder.compressor = self._compressor(self._out_compression)
        self._pending_in = (
            in_name,
            in_mac,
            derive(b"D", in_spec.key_size),
            derive(b"B", in_spec.iv_size),
            derive(b"F", MACS[in_mac].key_size) if in_mac else b"",
        )
        self._in_kex = False
        self.kex = None
        held, self._held = self._held, []
        for raw in held:
            self.send_now(raw)

    def _on_newkeys(self) -> None:
        if self._pending_in is None:
            raise PeerError("NEWKEYS before KEX_ECDH_REPLY")
        name, mac, key, iv, mac_key = self._pending_in
        self._pending_in = None
        self.decoder.cipher = CIPHERS[name].build(key, iv, MACS[mac] if mac else None, mac_key)
        if self.strict_kex:
            self.decoder.sequence = 0
        self._in_compression = self._next_compression[1]
        self.decoder.decompressor = self._decompressor(self._in_compression)
        self.established = True
        self.completed_kex += 1

    def _compressor(self, name: str) -> zlib._Compress | None:
        """zlib@openssh.com: on after USERAUTH_SUCCESS, restarted at each NEWKEYS."""
        return zlib.compressobj(6) if self.after_auth and name == ZLIB else None

    def _decompressor(self, name: str) -> zlib._Decompress | None:
        return zlib.decompressobj() if self.after_auth and name == ZLIB else None

    # -- input ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self.decoder.feed(data)
        while True:
            if self.server_version is None:
                end = self.decoder.find_line_end(255)
                if end < 0:
                    return
                self.server_version = self.decoder.take_raw(end + 1).rstrip(b"\r\n")
                continue
            payload = self.decoder.next_payload()
            if payload is None:
                return
            number = payload[0]
            if number == MessageNumber.KEXINIT:
                self._on_kexinit(payload)
            elif 30 <= number <= 49:
                self._on_kex_reply(number, payload)
            elif number == MessageNumber.NEWKEYS:
                self._on_newkeys()
            else:
                if number == MessageNumber.USERAUTH_SUCCESS and not self.after_auth:
                    self.after_auth = True
                    self.encoder.compressor = self._compressor(self._out_compression)
                    self.decoder.decompressor = self._decompressor(self._in_compression)
                self.inbox.append(payload)

    def expect(self, cls: type[M]) -> M:
        """Pop the next inbox payload, which must be a ``cls`` message."""
        if not self.inbox:
            raise AssertionError(f"expected {cls.__name__}, inbox is empty")
        payload = self.inbox.popleft()
        if payload[0] != cls.NUMBER:
            raise AssertionError(f"expected {cls.__name__}, got message {payload[0]}")
        reader = Reader(payload, 1)
        message = cls.decode(reader)
        reader.check_end()
        return message

    def take_all(self) -> list[object]:
        """Decode and remove everything in the inbox."""
        messages: list[object] = []
        while self.inbox:
            payload = self.inbox.popleft()
            decode = SERVER_MESSAGES.get(payload[0])
            messages.append(decode(Reader(payload, 1)) if decode else payload)
        return messages

    # -- service requests -----------------------------------------------------------------

    def request_service(self, name: str = "ssh-userauth") -> None:
        self.send(tr.ServiceRequest(service=name))

    def auth_none(self) -> None:
        self.send(
            ua.UserauthRequest(username=self.username, service="ssh-connection", method="none")
        )

    def auth_publickey(
        self,
        *,
        sign: bool = True,
        algorithm: str = "ssh-ed25519",
        key_blob: bytes | None = None,
        session_id: bytes | None = None,
        signature: bytes | None = None,
        username: str | None = None,
    ) -> None:
        """A publickey query (``sign=False``) or signed request (RFC 4252 §7)."""
        username = self.username if username is None else username
        blob = ed25519_blob(self.user_key) if key_blob is None else key_blob
        if sign and signature is None:
            sid = self.session_id if session_id is None else session_id
            if sid is None:
                raise PeerError("no session id yet")
            signed = ua.publickey_signed_data(sid, username, "ssh-connection", algorithm, blob)
            signature = wire.string(algorithm) + wire.string(self.user_key.sign(signed))
        method = ua.PublicKeyMethod(algorithm=algorithm, key_blob=blob, signature=signature)
        self.send(
            ua.UserauthRequest(
                username=username,
                service="ssh-connection",
                method="publickey",
                method_data=method.encode(),
            )
        )

    # -- connection protocol --------------------------------------------------------------

    def open_channel(
        self,
        sender: int = 0,
        *,
        channel_type: str = "session",
        window: int = 1 << 20,
        max_packet: int = 32 * 1024,
        data: bytes = b"",
    ) -> None:
        self.send(
            conn.ChannelOpen(
                channel_type=channel_type,
                sender_channel=sender,
                initial_window=window,
                max_packet=max_packet,
                data=data,
            )
        )

    def channel_request(
        self, recipient: int, request_type: str, data: bytes = b"", *, want_reply: bool = True
    ) -> None:
        self.send(
            conn.ChannelRequest(
                recipient_channel=recipient,
                request_type=request_type,
                want_reply=want_reply,
                data=data,
            )
        )

    def channel_data(self, recipient: int, data: bytes) -> None:
        self.send(conn.ChannelData(recipient_channel=recipient, data=data))

    def channel_eof(self, recipient: int) -> None:
        self.send(conn.ChannelEof(recipient_channel=recipient))

    def channel_close(self, recipient: int) -> None:
        self.send(conn.ChannelClose(recipient_channel=recipient))

    def window_adjust(self, recipient: int, amount: int) -> None:
        self.send(conn.ChannelWindowAdjust(recipient_channel=recipient, bytes_to_add=amount))

    def global_request(self, name: str, *, want_reply: bool = False, data: bytes = b"") -> None:
        self.send(conn.GlobalRequest(name=name, want_reply=want_reply, data=data))
