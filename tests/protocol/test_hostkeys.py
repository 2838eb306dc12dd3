"""Host keys: every type signs the exchange hash the client computed (RFC 8709, RFC 8332,
RFC 5656), several keys at once, and OpenSSH's hostkeys-00 / hostkeys-prove-00 (PROTOCOL
§2.5)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.sshpeer import HOST_KEY, ConnectionPair, established_pair, make_config
from trissh.protocol import HostKey, KeyExchangeCompleted, parse_public_key, wire
from trissh.protocol.errors import DecodeError
from trissh.protocol.global_requests import MAX_HOSTKEY_PROOFS
from trissh.protocol.keys import HOST_KEY_ALGORITHMS, MIN_RSA_HOST_KEY_BITS
from trissh.protocol.messages import connection as conn
from trissh.protocol.wire import Reader
from trissh.server.hostkeys import HostKeyError, load_or_create_host_key


@functools.cache
def rsa_host_key() -> HostKey:
    return HostKey(rsa.generate_private_key(public_exponent=65537, key_size=3072))


@functools.cache
def ecdsa_host_key(curve_name: str) -> HostKey:
    curve = {"nistp256": ec.SECP256R1(), "nistp384": ec.SECP384R1(), "nistp521": ec.SECP521R1()}
    return HostKey(ec.generate_private_key(curve[curve_name]))


def all_host_keys() -> tuple[HostKey, ...]:
    return (
        HOST_KEY,
        rsa_host_key(),
        ecdsa_host_key("nistp256"),
        ecdsa_host_key("nistp384"),
        ecdsa_host_key("nistp521"),
    )


@pytest.mark.parametrize("algorithm", HOST_KEY_ALGORITHMS)
def test_each_host_key_algorithm_signs_the_exchange_hash(algorithm: str) -> None:
    """The client verifies the negotiated algorithm's signature over its own H."""
    config = make_config(host_keys=all_host_keys())
    pair = ConnectionPair(config, host_key_algorithms=(algorithm,))
    completed = pair.handshake()[-1]
    assert isinstance(completed, KeyExchangeCompleted)
    assert completed.algorithms.host_key == algorithm
    key = config.host_key_for(algorithm)
    assert key is not None
    assert pair.client.host_key == key.public_blob


def test_offer_lists_only_algorithms_with_a_key_in_configured_order() -> None:
    only_rsa = make_config(host_keys=(rsa_host_key(),))
    assert only_rsa.offered_host_key_algorithms == ("rsa-sha2-512", "rsa-sha2-256")
    reordered = make_config(
        host_keys=all_host_keys(), host_key_algorithms=("rsa-sha2-256", "ssh-ed25519")
    )
    assert reordered.offered_host_key_algorithms == ("rsa-sha2-256", "ssh-ed25519")
    pair = ConnectionPair(reordered, host_key_algorithms=("rsa-sha2-512", "ssh-ed25519"))
    completed = pair.handshake()[-1]
    assert isinstance(completed, KeyExchangeCompleted)
    assert completed.algorithms.host_key == "ssh-ed25519"


def test_rsa_signatures_use_sha2_and_the_right_layout() -> None:
    """rsa-sha2-256/512 (RFC 8332 §3): string algorithm, string signature of modulus size."""
    key = rsa_host_key()
    public = parse_public_key(key.public_blob)
    for algorithm in ("rsa-sha2-256", "rsa-sha2-512"):
        blob = key.sign(b"data", algorithm)
        reader = Reader(blob)
        assert reader.ascii() == algorithm
        assert len(reader.string()) == 3072 // 8
        assert public.verify(algorithm, blob, b"data")
    with pytest.raises(ValueError, match="cannot sign with ssh-rsa"):
        key.sign(b"data", "ssh-rsa")


@pytest.mark.parametrize("curve", ["nistp256", "nistp384", "nistp521"])
def test_ecdsa_signature_layout(curve: str) -> None:
    """RFC 5656 §3.1.2: string algorithm, string (mpint r || mpint s); blob names the curve."""
    key = ecdsa_host_key(curve)
    reader = Reader(key.public_blob)
    assert reader.ascii() == f"ecdsa-sha2-{curve}"
    assert reader.ascii() == curve
    assert reader.string()[0] == 0x04
    blob = key.sign(b"data")
    assert parse_public_key(key.public_blob).verify(f"ecdsa-sha2-{curve}", blob, b"data")
    inner = Reader(Reader(blob, 4 + len(f"ecdsa-sha2-{curve}")).string())
    assert inner.mpint() > 0
    assert inner.mpint() > 0
    inner.check_end()


def test_small_rsa_and_unsupported_curves_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ValueError, match=f"2048 bits; at least {MIN_RSA_HOST_KEY_BITS}"):
        HostKey(small)
    with pytest.raises(ValueError, match="secp256k1"):
        HostKey(ec.generate_private_key(ec.SECP256K1()))


def test_config_refuses_duplicate_types_and_unservable_algorithms() -> None:
    other_ed25519 = HostKey(ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(ValueError, match="more than one ssh-ed25519 host key"):
        make_config(host_keys=(HOST_KEY, other_ed25519))
    with pytest.raises(ValueError, match="no host key serves any configured host key algorithm"):
        make_config(host_key_algorithms=("rsa-sha2-512",))
    with pytest.raises(ValueError, match="unknown host key algorithm 'ssh-rsa'"):
        make_config(host_key_algorithms=("ssh-rsa",))


# -- hostkeys-00@openssh.com and hostkeys-prove-00@openssh.com -----------------------------


def _announcement(pair: ConnectionPair) -> conn.GlobalRequest:
    return conn.GlobalRequest(
        name="hostkeys-00@openssh.com",
        want_reply=False,
        data=b"".join(wire.string(key.public_blob) for key in pair.config.host_keys),
    )


def test_all_host_keys_are_announced_after_authentication() -> None:
    config = make_config(host_keys=all_host_keys())
    pair = ConnectionPair(config)
    pair.handshake()
    pair.client.take_all()
    pair.client.request_service()
    pair.client.auth_publickey()
    pair.transfer()
    pair.server.accept_auth()
    pair.transfer()
    messages = pair.client.take_all()
    assert messages[-1] == _announcement(pair)
    reader = Reader(messages[-1].data)
    blobs = [reader.string() for _ in range(5)]
    assert [parse_public_key(blob).key_type for blob in blobs] == [
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
    ]


def test_announcement_can_be_turned_off() -> None:
    pair = ConnectionPair(make_config(announce_host_keys=False))
    pair.handshake()
    pair.client.take_all()
    pair.client.request_service()
    pair.client.auth_publickey()
    pair.transfer()
    pair.server.accept_auth()
    pair.transfer()
    assert not any(isinstance(m, conn.GlobalRequest) for m in pair.client.take_all())


def _prove(pair: ConnectionPair, blobs: list[bytes], *, want_reply: bool = True) -> list[object]:
    pair.client.send(
        conn.GlobalRequest(
            name="hostkeys-prove-00@openssh.com",
            want_reply=want_reply,
            data=b"".join(wire.string(blob) for blob in blobs),
        )
    )
    assert pair.transfer() == []
    return pair.client.take_all()


@pytest.mark.parametrize("kex_host_key", ["ssh-ed25519", "rsa-sha2-256"])
def test_prove_signs_each_requested_key_over_the_session_id(kex_host_key: str) -> None:
    """Each signature covers string "hostkeys-prove-00@openssh.com" || string session_id ||
    string key blob; RSA signs with the kex's RSA algorithm, else rsa-sha2-512, never SHA-1."""
    config = make_config(host_keys=all_host_keys())
    pair = established_pair(config, host_key_algorithms=(kex_host_key,))
    session_id = pair.client.session_id
    assert session_id is not None
    blobs = [key.public_blob for key in reversed(config.host_keys)]
    [reply] = _prove(pair, blobs)
    assert isinstance(reply, conn.RequestSuccess)
    reader = Reader(reply.data)
    for blob in blobs:
        signature = reader.string()
        key = parse_public_key(blob)
        algorithm = Reader(signature).ascii()
        if key.key_type == "ssh-rsa":
            expected = kex_host_key if kex_host_key.startswith("rsa") else "rsa-sha2-512"
            assert algorithm == expected
        signed = (
            wire.string("hostkeys-prove-00@openssh.com")
            + wire.string(session_id)
            + wire.string(blob)
        )
        assert key.verify(algorithm, signature, signed)
    reader.check_end()


def test_prove_fails_for_a_key_that_is_not_ours() -> None:
    pair = established_pair()
    stranger = HostKey(ed25519.Ed25519PrivateKey.generate()).public_blob
    assert _prove(pair, [HOST_KEY.public_blob, stranger]) == [conn.RequestFailure()]
    assert _prove(pair, []) == [conn.RequestFailure()]
    assert _prove(pair, [HOST_KEY.public_blob] * 5) == [conn.RequestFailure()]
    assert _prove(pair, [HOST_KEY.public_blob], want_reply=False) == []
    [ok] = _prove(pair, [HOST_KEY.public_blob])
    assert isinstance(ok, conn.RequestSuccess)


# -- host key files ----------------------------------------------------------------------------


def _write(path: Path, key: object, fmt: serialization.PrivateFormat) -> Path:
    assert isinstance(
        key, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    "fmt", [serialization.PrivateFormat.OpenSSH, serialization.PrivateFormat.PKCS8]
)
def test_key_files_of_every_type_load(tmp_path: Path, fmt: serialization.PrivateFormat) -> None:
    keys = {
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=3072),
        "ecdsa": ec.generate_private_key(ec.SECP384R1()),
    }
    types = []
    for name, key in keys.items():
        loaded, created = load_or_create_host_key(_write(tmp_path / name, key, fmt))
        assert not created
        types.append(loaded.key_type)
    assert types == ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp384"]


def test_key_file_problems_name_the_file(tmp_path: Path) -> None:
    small = _write(
        tmp_path / "small_rsa",
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        serialization.PrivateFormat.OpenSSH,
    )
    with pytest.raises(HostKeyError, match=r"small_rsa: RSA host key has 2048 bits; at least 3072"):
        load_or_create_host_key(small)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a key")
    garbage.chmod(0o600)
    with pytest.raises(HostKeyError, match="garbage: not an unencrypted OpenSSH or PEM"):
        load_or_create_host_key(garbage)
    encrypted = tmp_path / "encrypted"
    encrypted.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    encrypted.chmod(0o600)
    with pytest.raises(HostKeyError, match="encrypted: not an unencrypted"):
        load_or_create_host_key(encrypted)
    created, was_created = load_or_create_host_key(tmp_path / "new" / "key")
    assert was_created
    assert created.key_type == "ssh-ed25519"


def test_negative_rsa_modulus_is_a_decode_error() -> None:
    """A negative mpint n (found by the certificate fuzzer) is refused, not an OverflowError."""
    modulus = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    n = modulus.public_numbers().n
    blob = wire.string("ssh-rsa") + wire.mpint(65537) + wire.mpint(-n)
    with pytest.raises(DecodeError, match="RSA modulus is not positive"):
        parse_public_key(blob)


def test_a_compressed_ecdsa_point_is_refused() -> None:
    """As sshd's get_ec: only uncompressed points. A compressed one is the same key under
    another blob, which a KRL or an authorized_keys line made from the .pub would miss."""
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    compressed = public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    blob = wire.string("ecdsa-sha2-nistp256") + wire.string("nistp256") + wire.string(compressed)
    with pytest.raises(DecodeError, match="uncompressed"):
        parse_public_key(blob)


def test_a_connection_gets_a_few_proofs_not_one_per_request() -> None:
    """OpenSSH asks once per connection; each proof is a host key signature (1.7 ms with
    RSA-4096), and a client asking in a loop held the one event loop for everyone."""
    pair = established_pair()
    answers = [_prove(pair, [HOST_KEY.public_blob]) for _ in range(MAX_HOSTKEY_PROOFS + 3)]
    assert all(isinstance(a, conn.RequestSuccess) for [a] in answers[:MAX_HOSTKEY_PROOFS])
    assert all(a == [conn.RequestFailure()] for a in answers[MAX_HOSTKEY_PROOFS:])


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_host_key_others_may_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    """As sshd ("UNPROTECTED PRIVATE KEY FILE"): a host key another local user can read
    lets them impersonate the server (cfg reviewer: a 0644 key loaded without a word)."""
    key = _write(
        tmp_path / "key", ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH
    )
    key.chmod(mode)
    problem = rf"key: readable or writable by group or others \(mode 0{mode:o}\)"
    with pytest.raises(HostKeyError, match=problem):
        load_or_create_host_key(key)
    key.chmod(0o600)
    assert load_or_create_host_key(key)[0].key_type == "ssh-ed25519"


def test_a_host_key_another_user_owns_may_be_group_readable_not_world_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trissh as its own user reading root's key: root:trissh 0640 is root's choice (as
    Fedora ships sshd's keys), 0644 lets every local user read it (second readers)."""
    key = _write(
        tmp_path / "key", ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH
    )
    monkeypatch.setattr(os, "getuid", lambda: 4242)  # trissh runs as another user than the owner
    key.chmod(0o640)
    assert load_or_create_host_key(key)[0].key_type == "ssh-ed25519"
    key.chmod(0o644)
    with pytest.raises(HostKeyError, match="readable or writable by group or others"):
        load_or_create_host_key(key)
