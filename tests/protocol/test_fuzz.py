"""Property tests (h11's fuzz invariant as Hypothesis): whatever the peer sends, the core
either succeeds or raises ``RemoteProtocolError`` with DISCONNECT queued; and how the byte
stream is split into chunks never changes what the core does.

``HYPOTHESIS_PROFILE=long`` runs many more examples than the fast default.
"""

from __future__ import annotations

import contextlib
import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sshpeer import (
    ClientConnection,
    ConnectionPair,
    SeededRng,
    auto_answer,
    established_pair,
    make_config,
)
from trissh.protocol import (
    ChannelDataReceived,
    ChannelId,
    Event,
    GssapiAuthRequested,
    GssapiMicReceived,
    GssapiTokenReceived,
    RemoteProtocolError,
    ServerConnection,
    keyfile,
    keys,
    krl,
    wire,
)
from trissh.protocol import publickey_subsystem as pk
from trissh.protocol.constants import MessageNumber
from trissh.protocol.errors import DecodeError
from trissh.protocol.messages import connection as conn
from trissh.protocol.messages import forwarding as fw
from trissh.protocol.messages import gssapi as gss
from trissh.protocol.messages import transport as tr
from trissh.protocol.messages import userauth as ua

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
FUZZ = settings(
    max_examples=3000 if LONG else 100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VERSION = b"SSH-2.0-fuzz\r\n"


def _client_opening() -> bytes:
    client = ClientConnection(rng=SeededRng(77))
    return client.data_to_send()


#: Identification line plus a valid KEXINIT.
OPENING = _client_opening()


def policy(server: ServerConnection, event: Event) -> None:
    """auto_answer, plus consuming and echoing channel data so windows move."""
    auto_answer(server, event)
    if isinstance(event, ChannelDataReceived):
        server.acknowledge_channel_data(event.channel_id, len(event.data))
        window = server.send_window(event.channel_id)
        if window:
            server.send_channel_data(event.channel_id, event.data[:window])


def drain(server: ServerConnection) -> list[Event]:
    events: list[Event] = []
    while (event := server.next_event()) is not None:
        events.append(event)
        policy(server, event)
    return events


def feed_all(data: bytes, *, bytewise: bool) -> None:
    """Feed ``data``; only RemoteProtocolError may escape, and then DISCONNECT is queued."""
    server = ServerConnection(make_config())
    server.data_to_send()
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    try:
        for chunk in chunks:
            server.receive_data(chunk)
            drain(server)
        server.receive_data(b"")
        drain(server)
    except RemoteProtocolError:
        assert server.data_to_send(), "no DISCONNECT queued"
        with pytest.raises(RemoteProtocolError):
            server.next_event()


# -- raw bytes ---------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=600), bytewise=st.booleans())
def test_arbitrary_bytes_only_raise_remote_protocol_error(data: bytes, bytewise: bool) -> None:
    """Raw garbage, whole or byte by byte: success or RemoteProtocolError, nothing else."""
    feed_all(data, bytewise=bytewise)


@FUZZ
@given(data=st.binary(max_size=600), bytewise=st.booleans())
def test_bytes_after_a_version_line_only_raise_remote_protocol_error(
    data: bytes, bytewise: bool
) -> None:
    """Garbage where the first packet should be."""
    feed_all(VERSION + data, bytewise=bytewise)


@FUZZ
@given(data=st.binary(max_size=600), bytewise=st.booleans())
def test_bytes_after_kexinit_only_raise_remote_protocol_error(data: bytes, bytewise: bool) -> None:
    """Garbage after a valid identification line and KEXINIT."""
    feed_all(OPENING + data, bytewise=bytewise)


@FUZZ
@given(
    prefix=st.integers(0, len(OPENING)),
    flips=st.lists(st.tuples(st.integers(0, len(OPENING) - 1), st.integers(1, 255)), max_size=4),
)
def test_mutated_opening_only_raises_remote_protocol_error(
    prefix: int, flips: list[tuple[int, int]]
) -> None:
    """A valid opening with a few bytes changed, cut at any point."""
    data = bytearray(OPENING)
    for index, mask in flips:
        data[index] ^= mask
    feed_all(bytes(data[:prefix]), bytewise=False)


# -- encrypted payloads in each phase ------------------------------------------------------------

_NUMBERS = st.one_of(
    st.sampled_from([int(n) for n in MessageNumber]),
    st.integers(0, 255),
)
_RAW_PAYLOAD = st.builds(lambda n, tail: bytes((n,)) + tail, _NUMBERS, st.binary(max_size=80))
_UINT32 = st.one_of(st.integers(0, 3), st.integers(0, 2**32 - 1))
_TEXT = st.text(max_size=20)
_REQUEST_DATA = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda c: conn.ExecData(command=c).encode(), _TEXT),
    st.builds(lambda n, v: conn.EnvData(name=n, value=v).encode(), _TEXT, _TEXT),
    st.builds(
        lambda t, c, r: conn.PtyRequestData(
            term=t, columns=c, rows=r, width_px=0, height_px=0, modes=b""
        ).encode(),
        st.text(alphabet="abcxterm-", max_size=10),
        _UINT32,
        _UINT32,
    ),
    st.builds(
        lambda c, r: conn.WindowChangeData(columns=c, rows=r, width_px=0, height_px=0).encode(),
        _UINT32,
        _UINT32,
    ),
    st.builds(lambda s: conn.SignalData(name=s).encode(), st.sampled_from(["INT", "TERM", ""])),
    st.just(b""),  # auth-agent-req@openssh.com has no data
)
#: Shaped like a security key signature: string alg, string sig, byte flags, uint32 counter.
_SK_SIGNATURES = st.builds(
    lambda a, sig, flags, counter, tail: (
        wire.string(a) + wire.string(sig) + bytes([flags]) + wire.uint32(counter) + tail
    ),
    st.sampled_from(["sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"]),
    st.binary(max_size=72),
    st.integers(0, 255),
    _UINT32,
    st.sampled_from([b"", b"x"]),
)
_FORWARD_DATA = st.one_of(
    st.binary(max_size=60),
    st.builds(
        lambda h, p, o, q: fw.TcpipOpenData(
            host=h, port=p, originator_host=o, originator_port=q
        ).encode(),
        _TEXT, st.integers(0, 70000), _TEXT, _UINT32,
    ),
    st.builds(lambda h, p: fw.TcpipForwardData(address=h, port=p).encode(), _TEXT, _UINT32),
    st.builds(lambda p: fw.StreamlocalForwardData(path=p).encode(), _TEXT),
    st.builds(lambda p: fw.DirectStreamlocalData(path=p).encode(), _TEXT),
)  # fmt: skip
_STRUCTURED = st.one_of(
    st.builds(
        lambda t, s, w, m: conn.ChannelOpen(
            channel_type=t, sender_channel=s, initial_window=w, max_packet=m
        ).encode(),
        st.sampled_from(["session", "x11", "direct-tcpip", "bogus"]),
        _UINT32,
        _UINT32,
        _UINT32,
    ),
    st.builds(
        lambda t, s, w, d: conn.ChannelOpen(
            channel_type=t, sender_channel=s, initial_window=w, max_packet=32768, data=d
        ).encode(),
        st.sampled_from(["direct-tcpip", "direct-streamlocal@openssh.com", "forwarded-tcpip"]),
        _UINT32,
        _UINT32,
        _FORWARD_DATA,
    ),
    st.builds(
        lambda c, s, w, m: conn.ChannelOpenConfirmation(
            recipient_channel=c, sender_channel=s, initial_window=w, max_packet=m
        ).encode(),
        st.integers(0, 3),
        _UINT32,
        _UINT32,
        _UINT32,
    ),
    st.builds(
        lambda c, r, d: conn.ChannelOpenFailure(
            recipient_channel=c, reason=r, description=d
        ).encode(),
        st.integers(0, 3),
        _UINT32,
        _TEXT,
    ),
    st.builds(
        lambda n, w, d: conn.GlobalRequest(name=n, want_reply=w, data=d).encode(),
        st.sampled_from(
            [
                "tcpip-forward",
                "cancel-tcpip-forward",
                "streamlocal-forward@openssh.com",
                "cancel-streamlocal-forward@openssh.com",
                "hostkeys-prove-00@openssh.com",
            ]
        ),
        st.booleans(),
        _FORWARD_DATA,
    ),
    st.builds(
        lambda c, t, w, d: conn.ChannelRequest(
            recipient_channel=c, request_type=t, want_reply=w, data=d
        ).encode(),
        st.integers(0, 2),
        st.sampled_from(
            [
                "pty-req",
                "env",
                "exec",
                "shell",
                "subsystem",
                "window-change",
                "signal",
                "x",
                "auth-agent-req@openssh.com",
            ]
        ),
        st.booleans(),
        _REQUEST_DATA,
    ),
    st.builds(
        lambda c, d: conn.ChannelData(recipient_channel=c, data=d).encode(),
        st.integers(0, 2),
        st.binary(max_size=64),
    ),
    st.builds(
        lambda c, t, d: conn.ChannelExtendedData(recipient_channel=c, data_type=t, data=d).encode(),
        st.integers(0, 2),
        _UINT32,
        st.binary(max_size=64),
    ),
    st.builds(
        lambda c, n: conn.ChannelWindowAdjust(recipient_channel=c, bytes_to_add=n).encode(),
        st.integers(0, 2),
        _UINT32,
    ),
    st.builds(lambda c: conn.ChannelEof(recipient_channel=c).encode(), st.integers(0, 2)),
    st.builds(lambda c: conn.ChannelClose(recipient_channel=c).encode(), st.integers(0, 2)),
    st.builds(
        lambda n, w: conn.GlobalRequest(name=n, want_reply=w).encode(),
        st.sampled_from(["no-more-sessions@openssh.com", "tcpip-forward", "x"]),
        st.booleans(),
    ),
    st.builds(
        lambda u, m, d: ua.UserauthRequest(
            username=u, service="ssh-connection", method=m, method_data=d
        ).encode(),
        _TEXT,
        st.sampled_from(["none", "publickey", "password"]),
        st.one_of(
            st.binary(max_size=40),
            st.builds(
                lambda a, b, s: ua.PublicKeyMethod(algorithm=a, key_blob=b, signature=s).encode(),
                st.sampled_from(
                    [
                        "ssh-ed25519",
                        "ssh-rsa",
                        "rsa-sha2-256",
                        "ecdsa-sha2-nistp256",
                        "sk-ssh-ed25519@openssh.com",
                        "sk-ecdsa-sha2-nistp256@openssh.com",
                    ]
                ),
                st.one_of(
                    st.binary(max_size=60),
                    st.builds(
                        lambda k: wire.string("ssh-ed25519") + wire.string(k),
                        st.binary(min_size=32, max_size=32),
                    ),
                    st.builds(
                        lambda k, a: (
                            wire.string("sk-ssh-ed25519@openssh.com")
                            + wire.string(k)
                            + wire.string(a)
                        ),
                        st.binary(min_size=32, max_size=32),
                        st.binary(max_size=8),
                    ),
                ),
                st.one_of(st.none(), st.binary(max_size=80), _SK_SIGNATURES),
            ),
        ),
    ),
    st.builds(
        lambda s: tr.ServiceRequest(service=s).encode(), st.sampled_from(["ssh-userauth", "x"])
    ),
    st.builds(lambda d: tr.Ignore(data=d).encode(), st.binary(max_size=20)),
    st.builds(lambda r, d: tr.Disconnect(reason=r, description=d).encode(), _UINT32, _TEXT),
    st.builds(lambda k: tr.KexEcdhInit(client_public=k).encode(), st.binary(max_size=40)),
    st.just(tr.NewKeys().encode()),
)
PAYLOADS = st.lists(st.one_of(_RAW_PAYLOAD, _STRUCTURED), min_size=1, max_size=12)


def _phase_pair(phase: str) -> tuple[ConnectionPair, ChannelId | None]:
    if phase == "keyed":
        pair = ConnectionPair()
        pair.handshake()
        return pair, None
    if phase == "userauth":
        pair = ConnectionPair()
        pair.handshake()
        pair.client.request_service()
        pair.transfer()
        return pair, None
    pair = established_pair()
    session = pair.open_session()
    pair.server.open_channel("forwarded-tcpip", b"")  # answers to our open are fair game
    pair.server.allow_agent_forwarding()
    pair.transfer()
    return pair, session


def feed_payloads(phase: str, payloads: list[bytes]) -> None:
    pair, _ = _phase_pair(phase)
    pair.client.take_all()
    for payload in payloads:
        pair.client.send(payload)
    pair.server.receive_data(pair.client.data_to_send())
    error: RemoteProtocolError | None = None
    try:
        drain(pair.server)
    except RemoteProtocolError as exc:
        error = exc
    pair.client.receive_data(pair.server.data_to_send())  # whatever was sent decrypts
    if error is not None:
        last = pair.client.take_all()[-1]
        assert isinstance(last, tr.Disconnect)
        assert last.reason == error.reason


@pytest.mark.parametrize("phase", ["keyed", "userauth", "connection"])
@FUZZ
@given(payloads=PAYLOADS)
def test_encrypted_payloads_only_raise_remote_protocol_error(
    phase: str, payloads: list[bytes]
) -> None:
    """Correctly encrypted but arbitrary messages, before auth, during it and after it."""
    feed_payloads(phase, payloads)


# -- chunking invariance --------------------------------------------------------------------------


def _record_session() -> bytes:
    """Every byte a scripted client sends in a full session, including a rekey mid-data."""
    pair = ConnectionPair()
    recorded = bytearray()
    client = pair.client

    def pump() -> None:
        while True:
            out = client.data_to_send()
            recorded.extend(out)
            if out:
                pair.server.receive_data(out)
            drain(pair.server)
            back = pair.server.data_to_send()
            if back:
                client.receive_data(back)
            if not out and not back:
                return

    pump()
    client.request_service()
    client.auth_none()
    client.auth_publickey(sign=False)
    client.auth_publickey()
    pump()
    client.open_channel(5, window=4096, max_packet=1024)
    pump()
    pty = conn.PtyRequestData(term="vt100", columns=80, rows=24, width_px=0, height_px=0, modes=b"")
    client.channel_request(0, "pty-req", pty.encode())
    client.channel_request(0, "env", conn.EnvData(name="LANG", value="C").encode())
    client.channel_request(0, "exec", conn.ExecData(command="cat").encode())
    client.channel_data(0, b"hello " * 50)
    pump()
    client.start_kex()
    client.channel_data(0, b"during rekey")
    pump()
    client.window_adjust(0, 10_000)
    size = conn.WindowChangeData(columns=100, rows=40, width_px=0, height_px=0)
    client.channel_request(0, "window-change", size.encode())
    client.channel_eof(0)
    client.channel_close(0)
    client.global_request("keepalive@openssh.com", want_reply=True)
    pump()
    return bytes(recorded)


SESSION = _record_session()


def replay(chunks: list[bytes]) -> tuple[list[Event], bytes]:
    server = ServerConnection(make_config())
    events: list[Event] = []
    output = bytearray(server.data_to_send())
    for chunk in chunks:
        server.receive_data(chunk)
        events += drain(server)
        output += server.data_to_send()
    return events, bytes(output)


REFERENCE = replay([SESSION])


def test_reference_session_covers_the_life_cycle() -> None:
    """The recorded stream exercises kex, auth, channels and a rekey (not a vacuous check)."""
    names = [type(event).__name__ for event in REFERENCE[0]]
    for name in (
        "VersionReceived",
        "KeyExchangeCompleted",
        "PublicKeyAuthRequested",
        "Authenticated",
        "ChannelOpenRequested",
        "SessionRequested",
        "ChannelDataReceived",
        "WindowChanged",
        "ChannelEOFReceived",
        "ChannelCloseReceived",
    ):
        assert name in names
    assert names.count("KeyExchangeCompleted") == 2


def test_byte_by_byte_delivery_matches_whole_delivery() -> None:
    """One byte per receive_data() gives the same events and the same output bytes."""
    assert replay([SESSION[i : i + 1] for i in range(len(SESSION))]) == REFERENCE


@FUZZ
@given(cuts=st.lists(st.integers(0, len(SESSION)), max_size=40))
def test_chunking_invariance(cuts: list[int]) -> None:
    """Splitting the same client byte stream anywhere yields the same events and output."""
    points = [0, *sorted(set(cuts)), len(SESSION)]
    chunks = [SESSION[a:b] for a, b in itertools.pairwise(points) if b > a]
    assert replay(chunks) == REFERENCE


@FUZZ
@given(
    flips=st.lists(
        st.tuples(st.integers(0, len(SESSION) - 1), st.integers(1, 255)), min_size=1, max_size=3
    ),
    bytewise=st.booleans(),
)
def test_mutated_session_only_raises_remote_protocol_error(
    flips: list[tuple[int, int]], bytewise: bool
) -> None:
    """A whole recorded session with bytes changed, mostly inside encrypted packets."""
    data = bytearray(SESSION)
    for index, mask in flips:
        data[index] ^= mask
    feed_all(bytes(data), bytewise=bytewise)


# -- key texts and formats (issue 23) -------------------------------------------------------------


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [keyfile.BEGIN, keyfile.END, "Comment: x", "a\\", "AAAA", "# c", "", "k: \\"]
            ),
            st.text(max_size=40),
        ),
        max_size=30,
    )
)
def test_key_text_only_yields_items(lines: list[str]) -> None:
    """RFC 4716 blocks among OpenSSH lines: any text yields items with line numbers."""
    for item in keyfile.iter_key_text("\n".join(lines)):
        assert item.line_number >= 1


def _krl_seed() -> bytes:
    """A KRL with every section kind (what ssh-keygen -k writes, plus extensions)."""

    def section(kind: int, body: bytes) -> bytes:
        return wire.byte(kind) + wire.string(body)

    certs = (
        wire.string(b"")
        + wire.string(b"")
        + section(krl.CERT_SERIAL_LIST, wire.uint64(5) + wire.uint64(9))
        + section(krl.CERT_SERIAL_RANGE, wire.uint64(10) + wire.uint64(20))
        + section(krl.CERT_SERIAL_BITMAP, wire.uint64(100) + wire.mpint(0b1011))
        + section(krl.CERT_KEY_ID, wire.string(b"id"))
        + section(krl.CERT_EXTENSION, wire.string("x") + wire.boolean(False) + wire.string(b""))
    )
    return b"".join(
        [
            krl.KRL_MAGIC, wire.uint32(1), wire.uint64(1), wire.uint64(2), wire.uint64(0),
            wire.string(b""), wire.string(b"comment"),
            section(krl.SECTION_CERTIFICATES, certs),
            section(krl.SECTION_EXPLICIT_KEY, wire.string(b"blob")),
            section(krl.SECTION_FINGERPRINT_SHA1, wire.string(bytes(20))),
            section(krl.SECTION_FINGERPRINT_SHA256, wire.string(bytes(32))),
            section(krl.SECTION_EXTENSION, wire.string("y") + wire.boolean(False) + b"\0\0\0\0"),
        ]
    )  # fmt: skip


KRL_SEED = _krl_seed()


def _parse_krl_or_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        krl.parse_krl(data)


def test_krl_seed_parses() -> None:
    assert krl.parse_krl(KRL_SEED).entries == 7


@FUZZ
@given(st.binary(max_size=400))
def test_krl_arbitrary_bytes_only_raise_decode_error(data: bytes) -> None:
    _parse_krl_or_decode_error(KRL_SEED[:12] + data)


@FUZZ
@given(
    flips=st.lists(
        st.tuples(st.integers(0, len(KRL_SEED) - 1), st.integers(1, 255)), min_size=1, max_size=4
    ),
    cut=st.integers(0, len(KRL_SEED)),
)
def test_krl_mutated_only_raises_decode_error(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(KRL_SEED)
    for index, mask in flips:
        data[index] ^= mask
    _parse_krl_or_decode_error(bytes(data[:cut]))


@FUZZ
@given(
    blob=st.one_of(
        st.binary(max_size=120),
        st.builds(
            lambda t, body: wire.string(t) + body,
            st.sampled_from(["sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"]),
            st.binary(max_size=120),
        ),
    ),
    signature=st.one_of(st.binary(max_size=120), _SK_SIGNATURES),
)
def test_security_key_blobs_and_signatures_only_raise_decode_error(
    blob: bytes, signature: bytes
) -> None:
    """FIDO key blobs parse or raise DecodeError; a signature never raises from
    ``security_key_assertion`` or ``verify``."""
    keys.security_key_assertion(signature)
    try:
        key = keys.parse_public_key(blob)
    except DecodeError:
        return
    for algorithm in (key.key_type, "sk-ssh-ed25519@openssh.com"):
        assert key.verify(algorithm, signature, b"data") in (True, False)


# -- gssapi-with-mic (RFC 4462) -------------------------------------------------------------------

_KRB5_OID = bytes.fromhex("06092a864886f712010202")
_OIDS = st.one_of(
    st.just(_KRB5_OID),
    st.builds(lambda v: b"\x06" + bytes((len(v),)) + v, st.binary(min_size=1, max_size=12)),
    st.binary(max_size=14),
)
_GSSAPI_PAYLOADS = st.one_of(
    st.builds(
        lambda data: ua.UserauthRequest(
            username="alice", service="ssh-connection", method="gssapi-with-mic", method_data=data
        ).encode(),
        st.one_of(
            st.builds(
                lambda m: gss.GssapiMethod(mechanisms=tuple(m)).encode(),
                st.lists(_OIDS, max_size=4),
            ),
            st.binary(max_size=30),
        ),
    ),
    st.builds(lambda t: gss.UserauthGssapiToken(token=t).encode(), st.binary(max_size=20)),
    st.builds(lambda t: gss.UserauthGssapiErrtok(token=t).encode(), st.binary(max_size=8)),
    st.builds(
        lambda m: gss.UserauthGssapiMic(mic=m).encode(), st.sampled_from([b"ok", b"bad", b""])
    ),
    st.just(gss.UserauthGssapiExchangeComplete().encode()),
    st.builds(
        lambda n, tail: bytes((n,)) + tail,
        st.sampled_from([60, 61, 63, 64, 65, 66]),
        st.binary(max_size=12),
    ),
)


def gssapi_policy(server: ServerConnection, event: Event) -> None:
    """A GSS-API that chooses the first mechanism, finishes on tokens of odd length,
    fails on tokens starting with NUL, and accepts the MIC b"ok"."""
    if isinstance(event, GssapiAuthRequested):
        server.accept_gssapi_mechanism(event.mechanisms[0])
    elif isinstance(event, GssapiTokenReceived):
        if event.token.startswith(b"\0"):
            server.reject_auth("defective token", error_token=b"err")
        else:
            server.continue_gssapi(event.token[:4] or None, established=len(event.token) % 2 == 1)
    elif isinstance(event, GssapiMicReceived):
        if event.mic == b"ok":
            server.accept_auth()
        else:
            server.reject_auth("bad MIC")
    else:
        policy(server, event)


@FUZZ
@given(payloads=st.lists(st.one_of(_GSSAPI_PAYLOADS, _RAW_PAYLOAD), min_size=1, max_size=12))
def test_gssapi_exchanges_only_raise_remote_protocol_error(payloads: list[bytes]) -> None:
    """Any sequence of gssapi-with-mic messages, answered by a toy GSS-API."""
    pair = ConnectionPair(make_config(auth_methods=("gssapi-with-mic", "publickey")))
    pair.handshake()
    pair.client.request_service()
    pair.transfer()
    pair.client.inbox.clear()
    for payload in payloads:
        pair.client.send(payload)
    pair.server.receive_data(pair.client.data_to_send())
    error: RemoteProtocolError | None = None
    try:
        while (event := pair.server.next_event()) is not None:
            gssapi_policy(pair.server, event)
    except RemoteProtocolError as exc:
        error = exc
    pair.client.receive_data(pair.server.data_to_send())
    if error is not None:
        last = pair.client.inbox[-1]
        assert last[0] == MessageNumber.DISCONNECT


# -- the publickey subsystem (RFC 4819) -----------------------------------------------------------

_PK_NAMES = st.sampled_from(["version", "add", "remove", "list", "listattributes", "x", ""])
_PK_BODIES = st.one_of(
    st.builds(lambda n, tail: wire.string(n) + tail, _PK_NAMES, st.binary(max_size=60)),
    st.builds(
        lambda alg, blob, over, attrs: pk.AddRequest(
            algorithm=alg, blob=blob, overwrite=over, attributes=tuple(attrs)
        ).encode(),
        st.sampled_from(["ssh-ed25519", "ssh-rsa", ""]),
        st.one_of(
            st.binary(max_size=50),
            st.builds(
                lambda k: wire.string("ssh-ed25519") + wire.string(k),
                st.binary(min_size=32, max_size=32),
            ),
        ),
        st.booleans(),
        st.lists(
            st.builds(
                lambda n, v, c: pk.Attribute(name=n, value=v, critical=c),
                st.sampled_from(["comment", "command-override", "comment-language", "x509"]),
                st.text(max_size=10),
                st.booleans(),
            ),
            max_size=3,
        ),
    ),
    st.builds(lambda v: pk.Version(version=v).encode(), _UINT32),
    st.just(pk.ListRequest().encode()),
)


@FUZZ
@given(st.binary(max_size=200))
def test_publickey_requests_only_raise_decode_error(body: bytes) -> None:
    with contextlib.suppress(DecodeError):
        pk.parse_request(body)


@FUZZ
@given(
    bodies=st.lists(_PK_BODIES, max_size=8),
    tail=st.binary(max_size=8),
    version_first=st.booleans(),
)
def test_publickey_subsystem_server_answers_anything(
    tmp_path_factory: pytest.TempPathFactory,
    bodies: list[bytes],
    tail: bytes,
    version_first: bool,
) -> None:
    """The subsystem's server loop (channels/publickey.py) fed any packets: it ends (EOF or
    a DecodeError for a broken frame), and everything it sent parses as responses."""
    import trio
    import trio.testing

    from trissh.auth.user_keys import UserKeyStore
    from trissh.channels.publickey import _Server

    stream = b"".join(pk.packet(body) for body in bodies) + tail
    if version_first:
        stream = pk.packet(pk.Version(version=2).encode()) + stream
    store = UserKeyStore(tmp_path_factory.mktemp("keys"), max_keys=2)

    async def main() -> bytes:
        ours, theirs = trio.testing.memory_stream_pair()
        await theirs.send_all(stream)
        await theirs.send_eof()
        with trio.fail_after(10):
            with contextlib.suppress(DecodeError):
                await _Server("fuzz", store, ours).serve()  # type: ignore[arg-type]
            await ours.aclose()
            received = b""
            while chunk := await theirs.receive_some():
                received += chunk
        return received

    output = trio.run(main)
    responses = pk.PacketBuffer()
    responses.feed(output)
    while (body := responses.next_body()) is not None:
        pk.parse_response(body)
    assert responses.buffered == 0
