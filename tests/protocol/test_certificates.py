"""OpenSSH user certificates: certificates made by the real ``ssh-keygen -s``, parsed field by
field and checked against sshd's rules; hand-built ones for what ssh-keygen will not make.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import needs
from trissh.protocol import wire
from trissh.protocol.certificates import (
    CERTIFICATE_ALGORITHMS,
    CERTIFICATE_KEY_TYPES,
    FOREVER,
    HOST_CERTIFICATE,
    USER_CERTIFICATE,
    Certificate,
    check_user_certificate,
    is_certificate_type,
    parse_certificate,
    parse_source_address,
)
from trissh.protocol.errors import DecodeError
from trissh.protocol.keys import HostKey

pytestmark = needs("ssh-keygen")

#: 2030-01-01T00:00:00Z and 2031-01-01T00:00:00Z, the window most certificates here use.
START, END = 1893456000, 1924992000
WINDOW = "20300101000000Z:20310101000000Z"
NOW = START + 3600


@dataclass(frozen=True)
class KeyFiles:
    path: Path

    @property
    def blob(self) -> bytes:
        return _blob(self.path.with_name(self.path.name + ".pub"))

    def private(self) -> HostKey:
        key = serialization.load_ssh_private_key(self.path.read_bytes(), None)
        assert isinstance(
            key, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        )
        return HostKey(key)


def _blob(pub: Path) -> bytes:
    return base64.b64decode(pub.read_text().split()[1])


KEY_SPECS = {
    "ed25519": ["-t", "ed25519"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
    "rsa": ["-t", "rsa", "-b", "3072"],
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyFiles]:
    """User keys of every type, and CAs: ed25519, RSA, ECDSA, and an untrusted one."""
    directory = tmp_path_factory.mktemp("certkeys")
    specs = {**KEY_SPECS, "ca": ["-t", "ed25519"], "ca_rsa": ["-t", "rsa", "-b", "3072"]}
    specs |= {"ca_ecdsa": ["-t", "ecdsa", "-b", "256"], "other_ca": ["-t", "ed25519"]}
    found = {}
    for name, spec in specs.items():
        path = directory / name
        subprocess.run(
            ["ssh-keygen", "-q", *spec, "-N", "", "-C", name, "-f", str(path)], check=True
        )
        found[name] = KeyFiles(path)
    return found


Signer = Callable[..., bytes]


@pytest.fixture(scope="module")
def sign(keys: dict[str, KeyFiles], tmp_path_factory: pytest.TempPathFactory) -> Signer:
    """``sign(user, ca, *ssh_keygen_options)`` -> the certificate blob ssh-keygen makes."""
    directory = tmp_path_factory.mktemp("certs")
    counter = iter(range(1_000_000))

    def _sign(user: str, ca: str, *options: str) -> bytes:
        n = next(counter)
        pub = directory / f"{user}-{n}.pub"
        shutil.copy(keys[user].path.with_name(user + ".pub"), pub)
        subprocess.run(
            ["ssh-keygen", "-q", "-s", str(keys[ca].path), *options, str(pub)],
            check=True,
            capture_output=True,
        )
        return _blob(directory / f"{user}-{n}-cert.pub")

    return _sign


def _check(cert: Certificate, keys: dict[str, KeyFiles], **kw: object) -> str | None:
    args: dict[str, object] = {
        "username": "alice",
        "now": NOW,
        "source_ip": "10.1.2.3",
        "trusted_cas": {keys["ca"].blob, keys["ca_rsa"].blob, keys["ca_ecdsa"].blob},
    }
    args.update(kw)
    return check_user_certificate(cert, **args)  # type: ignore[arg-type]


CERT_TYPES = {
    "ed25519": "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa256": "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa384": "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa521": "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "rsa": "ssh-rsa-cert-v01@openssh.com",
}


@pytest.mark.parametrize("user", list(KEY_SPECS))
@pytest.mark.parametrize(
    ("ca", "ca_options", "ca_algorithm"),
    [
        ("ca", [], "ssh-ed25519"),
        ("ca_rsa", [], "rsa-sha2-512"),
        ("ca_rsa", ["-t", "rsa-sha2-256"], "rsa-sha2-256"),
        ("ca_ecdsa", [], "ecdsa-sha2-nistp256"),
    ],
)
def test_ssh_keygen_certificate_fields(
    keys: dict[str, KeyFiles],
    sign: Signer,
    user: str,
    ca: str,
    ca_options: list[str],
    ca_algorithm: str,
) -> None:
    blob = sign(
        user, ca, *ca_options, "-I", "alice@laptop", "-n", "alice,bob", "-V", WINDOW, "-z", "42"
    )
    cert = parse_certificate(blob)
    assert cert.key_type == CERT_TYPES[user]
    assert cert.blob == blob
    assert cert.public_key.blob == keys[user].blob
    assert cert.public_key.key_type == CERTIFICATE_KEY_TYPES[cert.key_type]
    assert cert.signature_key.blob == keys[ca].blob
    assert len(cert.nonce) == 32
    assert cert.serial == 42
    assert cert.cert_type == USER_CERTIFICATE
    assert cert.key_id == "alice@laptop"
    assert cert.principals == ("alice", "bob")
    assert (cert.valid_after, cert.valid_before) == (START, END)
    assert cert.critical_options == {}
    assert cert.extensions == {
        "permit-X11-forwarding": "",
        "permit-agent-forwarding": "",
        "permit-port-forwarding": "",
        "permit-pty": "",
        "permit-user-rc": "",
    }
    assert cert.permits("permit-pty")
    assert cert.force_command is None
    assert blob.startswith(cert.signed_data)
    assert blob == cert.signed_data + wire.string(cert.signature)
    assert cert.signature.startswith(wire.string(ca_algorithm))
    assert cert.verify_ca_signature()
    assert _check(cert, keys) is None
    assert _check(cert, keys, username="bob") is None
    assert is_certificate_type(cert.key_type)


def test_options_made_by_ssh_keygen(keys: dict[str, KeyFiles], sign: Signer) -> None:
    blob = sign(
        "ed25519",
        "ca",
        "-I", "ops",
        "-n", "alice",
        "-O", "source-address=10.0.0.0/8,2001:db8::/32",
        "-O", "force-command=/usr/bin/uptime -p",
        "-O", "no-pty",
        "-O", "extension:custom@example.com=hello",
    )  # fmt: skip
    cert = parse_certificate(blob)
    assert cert.critical_options == {
        "force-command": "/usr/bin/uptime -p",
        "source-address": "10.0.0.0/8,2001:db8::/32",
    }
    assert cert.force_command == "/usr/bin/uptime -p"
    assert "permit-pty" not in cert.extensions
    assert not cert.permits("permit-pty")
    assert cert.extensions["custom@example.com"] == "hello"  # unknown extensions: ignored
    assert (cert.valid_after, cert.valid_before) == (0, FOREVER)
    assert _check(cert, keys, now=2**63) is None
    assert _check(cert, keys, source_ip="10.255.0.1") is None
    assert _check(cert, keys, source_ip="2001:db8::5") is None
    assert _check(cert, keys, source_ip="::ffff:10.0.0.7") is None  # IPv4-mapped
    assert _check(cert, keys, source_ip="192.168.1.1") == "source address not allowed"
    assert _check(cert, keys, source_ip="2001:db9::1") == "source address not allowed"
    assert _check(cert, keys, source_ip=None) == "source address not allowed"
    assert _check(cert, keys, source_ip="not-an-ip") == "source address not allowed"


def test_single_address_source(keys: dict[str, KeyFiles], sign: Signer) -> None:
    cert = parse_certificate(
        sign("ed25519", "ca", "-I", "x", "-n", "alice", "-O", "source-address=127.0.0.1")
    )
    assert _check(cert, keys, source_ip="127.0.0.1") is None
    assert _check(cert, keys, source_ip="127.0.0.2") == "source address not allowed"


def test_validity_window(keys: dict[str, KeyFiles], sign: Signer) -> None:
    cert = parse_certificate(sign("ecdsa256", "ca", "-I", "x", "-n", "alice", "-V", WINDOW))
    assert _check(cert, keys, now=START - 1) == "certificate not yet valid"
    assert _check(cert, keys, now=START) is None
    assert _check(cert, keys, now=END - 1) is None
    assert _check(cert, keys, now=END) == "certificate expired"


def test_expired_relative_to_real_time(keys: dict[str, KeyFiles], sign: Signer) -> None:
    cert = parse_certificate(sign("ed25519", "ca", "-I", "x", "-n", "alice", "-V", "-2d:-1d"))
    assert _check(cert, keys, now=cert.valid_before + 10) == "certificate expired"
    assert cert.valid_before - cert.valid_after == 86400


def test_principal_rules(keys: dict[str, KeyFiles], sign: Signer) -> None:
    cert = parse_certificate(sign("ed25519", "ca", "-I", "x", "-n", "alice"))
    assert _check(cert, keys, username="bob") == "principal 'bob' not in certificate"
    assert _check(cert, keys, username="Alice") == "principal 'Alice' not in certificate"
    unrestricted = parse_certificate(sign("ed25519", "ca", "-I", "x"))
    assert unrestricted.principals == ()
    assert _check(unrestricted, keys) == "certificate has no principals"


def test_untrusted_ca(keys: dict[str, KeyFiles], sign: Signer) -> None:
    cert = parse_certificate(sign("ed25519", "other_ca", "-I", "x", "-n", "alice"))
    assert cert.verify_ca_signature()
    assert _check(cert, keys) == "CA not trusted"
    assert _check(cert, keys, trusted_cas={keys["other_ca"].blob}) is None
    assert _check(cert, keys, trusted_cas=()) == "CA not trusted"


def test_host_certificate_is_not_a_user_certificate(
    keys: dict[str, KeyFiles], sign: Signer
) -> None:
    cert = parse_certificate(sign("ed25519", "ca", "-h", "-I", "host", "-n", "alice"))
    assert cert.cert_type == HOST_CERTIFICATE
    assert cert.verify_ca_signature()
    assert _check(cert, keys) == "not a user certificate"


def test_unknown_critical_option_is_refused(keys: dict[str, KeyFiles], sign: Signer) -> None:
    cert = parse_certificate(
        sign("ed25519", "ca", "-I", "x", "-n", "alice", "-O", "critical:frobnicate@example.com=1")
    )
    assert cert.critical_options == {"frobnicate@example.com": "1"}
    assert _check(cert, keys) == "unknown critical option 'frobnicate@example.com'"


def test_sha1_rsa_ca_signature_is_refused(keys: dict[str, KeyFiles], sign: Signer) -> None:
    cert = parse_certificate(sign("ed25519", "ca_rsa", "-t", "ssh-rsa", "-I", "x", "-n", "alice"))
    assert cert.signature.startswith(wire.string("ssh-rsa"))
    assert not cert.verify_ca_signature()
    # Said as what it is, not as a forged signature (reviewer).
    assert _check(cert, keys) == (
        "CA signature made with SHA-1 (ssh-rsa), which OpenSSH 8.2+ refuses too"
    )


def _tampered(blob: bytes, position: int) -> bytes:
    return blob[:position] + bytes([blob[position] ^ 0x01]) + blob[position + 1 :]


@pytest.mark.parametrize("ca", ["ca", "ca_rsa", "ca_ecdsa"])
def test_tampered_certificates_fail_the_signature_check(
    keys: dict[str, KeyFiles], sign: Signer, ca: str
) -> None:
    blob = sign("ed25519", ca, "-I", "alice", "-n", "alice")
    # Last byte of the signature itself, and a byte of the key id ("alice" -> "alicd").
    for position in (len(blob) - 1, blob.index(b"\x00\x00\x00\x05alice") + 8):
        cert = parse_certificate(_tampered(blob, position))
        assert not cert.verify_ca_signature()
        assert _check(cert, keys) == "bad CA signature"
    # A principal swapped for another of the same length.
    forged = parse_certificate(blob.replace(b"\x00\x00\x00\x05alice", b"\x00\x00\x00\x05mally", 2))
    assert forged.principals == ("mally",)
    assert _check(forged, keys, username="mally") == "bad CA signature"


def test_every_truncation_is_a_decode_error(sign: Signer) -> None:
    blob = sign("rsa", "ca", "-I", "x", "-n", "alice,bob", "-O", "force-command=true")
    for length in range(len(blob)):
        with pytest.raises(DecodeError):
            parse_certificate(blob[:length])
    with pytest.raises(DecodeError):
        parse_certificate(blob + b"\x00")


def test_plain_keys_are_not_certificates(keys: dict[str, KeyFiles]) -> None:
    for name in KEY_SPECS:
        with pytest.raises(DecodeError, match="unsupported certificate type"):
            parse_certificate(keys[name].blob)


@pytest.mark.parametrize("user", list(KEY_SPECS))
def test_proof_of_possession_with_the_certified_key(
    keys: dict[str, KeyFiles], sign: Signer, user: str
) -> None:
    cert = parse_certificate(sign(user, "ca", "-I", "x", "-n", "alice"))
    private = keys[user].private()
    data = b"session id and userauth request"
    usable = [
        name for name, (key_type, _) in CERTIFICATE_ALGORITHMS.items() if key_type == cert.key_type
    ]
    assert usable
    for name in usable:
        signature = private.sign(data, CERTIFICATE_ALGORITHMS[name][1])
        assert cert.verify(name, signature, data)
        assert not cert.verify(name, signature, data + b"!")
        others = [other for other in CERTIFICATE_ALGORITHMS if other not in usable]
        assert not any(cert.verify(other, signature, data) for other in others)
    assert not cert.verify("ssh-rsa-cert-v01@openssh.com", b"", data)  # SHA-1: never offered


# --- hand-built certificates, for what ssh-keygen will not make -----------------------------


def _pack(items: Sequence[bytes]) -> bytes:
    return b"".join(wire.string(item) for item in items)


def _build(
    ca: HostKey,
    *,
    key_type: str = "ssh-ed25519-cert-v01@openssh.com",
    key_fields: bytes = wire.string(bytes(32)),
    cert_type: int = USER_CERTIFICATE,
    key_id: bytes = b"id",
    principals: bytes = _pack([b"alice"]),
    critical: bytes = b"",
    extensions: bytes = b"",
    ca_blob: bytes | None = None,
) -> bytes:
    body = b"".join(
        [
            wire.string(key_type),
            wire.string(bytes(32)),
            key_fields,
            wire.uint64(1),
            wire.uint32(cert_type),
            wire.string(key_id),
            wire.string(principals),
            wire.uint64(0),
            wire.uint64(FOREVER),
            wire.string(critical),
            wire.string(extensions),
            wire.string(b""),
            wire.string(ca.public_blob if ca_blob is None else ca_blob),
        ]
    )
    return body + wire.string(ca.sign(body))


@pytest.fixture(scope="module")
def ca_key(keys: dict[str, KeyFiles]) -> HostKey:
    return keys["ca"].private()


def test_hand_built_certificate_round_trips(keys: dict[str, KeyFiles], ca_key: HostKey) -> None:
    critical = _pack([b"force-command", _pack([b"ls"]), b"source-address", _pack([b"10.0.0.0/8"])])
    cert = parse_certificate(
        _build(ca_key, critical=critical, extensions=_pack([b"permit-pty", b""]))
    )
    assert cert.critical_options == {"force-command": "ls", "source-address": "10.0.0.0/8"}
    assert cert.extensions == {"permit-pty": ""}
    assert cert.verify_ca_signature()
    assert _check(cert, keys) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cert_type": 3}, "unknown certificate type"),
        ({"cert_type": 0}, "unknown certificate type"),
        ({"key_id": b"a\x00b"}, "NUL"),
        ({"key_id": b"\xff"}, "UTF-8"),
        ({"principals": _pack([b"al\x00ice"])}, "NUL"),
        ({"principals": _pack([b"x"] * 257)}, "more than 256 principals"),
        ({"principals": _pack([b"x" * 257])}, "exceeds the limit"),
        ({"principals": b"\x00\x00\x00\x09alice"}, "truncated"),
        ({"critical": _pack([b"source-address", b"", b"force-command", b""])}, "out of order"),
        ({"critical": _pack([b"force-command", b"", b"force-command", b""])}, "out of order"),
        ({"extensions": _pack([b"", b""])}, "empty"),
        ({"extensions": _pack([b"permit-pty", b"\x00\x00\x00\x01"])}, "truncated"),
        ({"extensions": _pack([b"permit-pty", _pack([b"a"]) + b"junk"])}, "unexpected data"),
        (
            {"extensions": b"".join(_pack([f"e{i:03}".encode(), b""]) for i in range(65))},
            "more than 64",
        ),
        ({"key_type": "ssh-dss-cert-v01@openssh.com"}, "unsupported certificate type"),
        ({"key_fields": wire.string(bytes(31))}, "32 bytes"),
        ({"ca_blob": b"\x00\x00\x00\x03foo"}, "unsupported key type"),
    ],
)
def test_malformed_certificates(ca_key: HostKey, fields: dict[str, object], message: str) -> None:
    blob = _build(ca_key, **fields)  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match=message):
        parse_certificate(blob)


def test_a_certificate_cannot_be_a_ca(
    keys: dict[str, KeyFiles], sign: Signer, ca_key: HostKey
) -> None:
    other = sign("ed25519", "ca", "-I", "x", "-n", "alice")
    with pytest.raises(DecodeError, match="itself a certificate"):
        parse_certificate(_build(ca_key, ca_blob=other))


def test_small_rsa_certified_key_is_refused(ca_key: HostKey) -> None:
    weak = rsa.generate_private_key(65537, 1024).public_key().public_numbers()
    fields = wire.mpint(weak.e) + wire.mpint(weak.n)
    with pytest.raises(DecodeError, match="too small"):
        parse_certificate(
            _build(ca_key, key_type="ssh-rsa-cert-v01@openssh.com", key_fields=fields)
        )


def test_negative_rsa_modulus_is_a_decode_error(ca_key: HostKey) -> None:
    """Found by the mutation fuzz (cryptography raised OverflowError), for the key and the CA."""
    fields = wire.mpint(65537) + wire.mpint(-(1 << 3000) + 12345)
    with pytest.raises(DecodeError, match="RSA modulus is not positive"):
        parse_certificate(
            _build(ca_key, key_type="ssh-rsa-cert-v01@openssh.com", key_fields=fields)
        )
    with pytest.raises(DecodeError, match="RSA modulus is not positive"):
        parse_certificate(_build(ca_key, ca_blob=wire.string("ssh-rsa") + fields))


def test_oversized_blob_is_refused() -> None:
    with pytest.raises(DecodeError, match="too large"):
        parse_certificate(b"\x00" * 40000)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("10.0.0.0/8", True),
        ("10.0.0.1,::1/128", True),
        ("10.0.0.1/8", False),  # host bits set
        ("", False),
        ("10.0.0.0/8,", False),
        (" 10.0.0.0/8", False),
        ("example.com", False),
        (",".join(["10.0.0.1"] * 65), False),
    ],
)
def test_source_address_lists(value: str, ok: bool) -> None:
    if ok:
        assert parse_source_address(value)
    else:
        with pytest.raises(ValueError):  # noqa: PT011
            parse_source_address(value)


def test_malformed_source_address_refuses_the_certificate(
    keys: dict[str, KeyFiles], ca_key: HostKey
) -> None:
    critical = _pack([b"source-address", _pack([b"10.0.0.0/8,nonsense"])])
    cert = parse_certificate(_build(ca_key, critical=critical))
    assert _check(cert, keys, trusted_cas={ca_key.public_blob}) == "malformed source-address option"


# --- fuzz -----------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes_only_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        parse_certificate(data)


@pytest.fixture(scope="module")
def fuzz_seed(sign: Signer) -> bytes:
    return sign(
        "ecdsa256", "ca_rsa", "-I", "seed", "-n", "alice,bob", "-O", "source-address=10.0.0.0/8"
    )


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_fuzz_mutated_certificates_only_raise_decode_error(
    fuzz_seed: bytes, keys: dict[str, KeyFiles], data: st.DataObject
) -> None:
    blob = bytearray(fuzz_seed)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(blob) - 1))
        blob[position] = data.draw(st.integers(0, 255))
    try:
        cert = parse_certificate(bytes(blob))
    except DecodeError:
        return
    reason = _check(cert, keys)  # checking a parsed certificate never raises either
    assert reason is None or isinstance(reason, str)
