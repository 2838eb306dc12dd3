"""FIDO security keys (``sk-ssh-ed25519@openssh.com``, ``sk-ecdsa-sha2-nistp256@openssh.com``,
OpenSSH PROTOCOL.u2f): published signatures verify, the software authenticator of the tests
agrees with ``ssh-keygen -Y verify``, the userauth bytes carry the flags to the driver, and
certificates of security keys made by ``ssh-keygen -s`` parse and verify."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.fido import PRESENCE, VERIFICATION, SoftwareSecurityKey
from tests.sshpeer import ConnectionPair, make_config
from trissh.protocol import (
    Authenticated,
    AuthFailed,
    PublicKeyAuthRequested,
    parse_public_key,
    wire,
)
from trissh.protocol.certificates import parse_certificate
from trissh.protocol.errors import DecodeError
from trissh.protocol.keys import SecurityKeyAssertion, security_key_assertion
from trissh.protocol.messages import userauth as ua
from trissh.protocol.messages.transport import ExtInfo
from trissh.protocol.wire import Reader

from ..support import needs

# -- published vectors -------------------------------------------------------------------------

# OpenSSH's regress/unittests/sshsig/testdata (BSD licence): SSHSIG signatures made with
# security keys through OpenSSH's test middleware, over "signed-data" in namespace "unittest".

SIGNED_DATA = b"This is a test, this is only a test"
NAMESPACE = "unittest"
VECTORS = {
    "ed25519_sk": (
        "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIJsaDYXQYruc6bil"
        "CYDIK4YSOeG+zmrRO2M9t03//7LHAAAABHNzaDo= ED25519-SK test key",
        """\
U1NIU0lHAAAAAQAAAEoAAAAac2stc3NoLWVkMjU1MTlAb3BlbnNzaC5jb20AAAAgmxoNhd
Biu5zpuKUJgMgrhhI54b7OatE7Yz23Tf//sscAAAAEc3NoOgAAAAh1bml0dGVzdAAAAAAA
AAAGc2hhNTEyAAAAZwAAABpzay1zc2gtZWQyNTUxOUBvcGVuc3NoLmNvbQAAAEAi+7eTjW
/+LQ2M+sCD+KFtH1n7VFFJon/SZFsxODyV8cWTlFKj617Ys1Ur5TV6uaEXQhck8rBA2oQI
HTPANLIPARI0Vng=""",
    ),
    "ecdsa_sk": (
        "sk-ecdsa-sha2-nistp256@openssh.com AAAAInNrLWVjZHNhLXNoYTItbmlzdHAyNTZAb3BlbnNzaC5jb20A"
        "AAAIbmlzdHAyNTYAAABBBKDVa5jRcT5V7E6ysmwVi7HJWh7p5D+hebLPakQcpnD2ajJZ6G/4WzuhlYWnclWY63Js"
        "pDp299Rlhq5AT86/g8AAAAAEc3NoOg== ECDSA-SK test key",
        """\
U1NIU0lHAAAAAQAAAH8AAAAic2stZWNkc2Etc2hhMi1uaXN0cDI1NkBvcGVuc3NoLmNvbQ
AAAAhuaXN0cDI1NgAAAEEEoNVrmNFxPlXsTrKybBWLsclaHunkP6F5ss9qRBymcPZqMlno
b/hbO6GVhadyVZjrcmykOnb31GWGrkBPzr+DwAAAAARzc2g6AAAACHVuaXR0ZXN0AAAAAA
AAAAZzaGE1MTIAAAB3AAAAInNrLWVjZHNhLXNoYTItbmlzdHAyNTZAb3BlbnNzaC5jb20A
AABIAAAAIHohGwyy8iKT3zwd1TYA9V/Ioo7h/3zCJUtyq/Qigt/HAAAAIGzidTwq7D/kFa
7Xjcp/KkdbIs4MfQpfAW/0OciajlpzARI0Vng=""",
    ),
}


def sshsig(armored_body: str) -> tuple[bytes, bytes, bytes]:
    """(public key blob, signed data, signature blob) of an SSHSIG (PROTOCOL.sshsig)."""
    r = Reader(base64.b64decode("".join(armored_body.split())))
    assert r.fixed(6) == b"SSHSIG"
    assert r.uint32() == 1
    public_key, namespace, reserved, hash_name = r.string(), r.string(), r.string(), r.string()
    signature = r.string()
    r.check_end()
    digest = hashlib.new(hash_name.decode(), SIGNED_DATA).digest()
    signed = b"SSHSIG" + b"".join(map(wire.string, (namespace, reserved, hash_name, digest)))
    assert namespace == NAMESPACE.encode()
    return public_key, signed, signature


@pytest.mark.parametrize("name", list(VECTORS))
def test_openssh_regress_vectors_verify(name: str) -> None:
    line, body = VECTORS[name]
    blob, signed, signature = sshsig(body)
    assert blob == base64.b64decode(line.split()[1])
    key = parse_public_key(blob)
    assert (key.key_type, key.application) == (line.split()[0], b"ssh:")
    assert key.verify(key.key_type, signature, signed)
    assert security_key_assertion(signature) == SecurityKeyAssertion(PRESENCE, 0x12345678)
    assert not key.verify(key.key_type, signature, signed + b"x")
    for index in (len(signature) - 5, len(signature) - 1, 40):  # flags, counter, signature
        tampered = bytearray(signature)
        tampered[index] ^= 1
        assert not key.verify(key.key_type, bytes(tampered), signed)


# -- the software authenticator against ssh-keygen ---------------------------------------------


def armored(key: SoftwareSecurityKey, message: bytes, flags: int, tamper: bool) -> str:
    """An SSHSIG signature (PROTOCOL.sshsig) by ``key`` in namespace "file"; with
    ``tamper``, its flags byte changed after signing."""
    digest = hashlib.sha512(message).digest()
    signed = b"SSHSIG" + b"".join(map(wire.string, (b"file", b"", b"sha512", digest)))
    signature = bytearray(key.sign(signed, flags=flags))
    if tamper:
        signature[-5] ^= VERIFICATION
    fields = (key.public_blob, b"file", b"", b"sha512", bytes(signature))
    blob = b"SSHSIG" + wire.uint32(1) + b"".join(map(wire.string, fields))
    text = base64.b64encode(blob).decode()
    lines = [text[i : i + 70] for i in range(0, len(text), 70)]
    return "\n".join(["-----BEGIN SSH SIGNATURE-----", *lines, "-----END SSH SIGNATURE-----", ""])


@needs("ssh-keygen")
@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
@pytest.mark.parametrize("flags", [0, PRESENCE, PRESENCE | VERIFICATION])
def test_software_key_signatures_satisfy_ssh_keygen(kind: str, flags: int, tmp_path: Path) -> None:
    """ssh-keygen -Y verify (OpenSSH's own security key verification) accepts what the
    test authenticator signs, whatever the flags, and refuses flags changed afterwards."""
    key = SoftwareSecurityKey(kind)  # type: ignore[arg-type]
    (tmp_path / "signers").write_text(f"tester {key.openssh_line()}\n")
    message = b"a message"

    def verify(*, tamper: bool) -> subprocess.CompletedProcess[bytes]:
        (tmp_path / "sig").write_text(armored(key, message, flags, tamper))
        return subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "signers"), "-I", "tester",
             "-n", "file", "-s", str(tmp_path / "sig")],
            input=message, capture_output=True, check=False,
        )  # fmt: skip

    good = verify(tamper=False)
    assert good.returncode == 0, good.stderr
    assert b'Good "file" signature for tester' in good.stdout
    assert verify(tamper=True).returncode != 0


# -- userauth bytes ------------------------------------------------------------------------------


def sk_pair() -> ConnectionPair:
    pair = ConnectionPair(make_config())
    pair.handshake()
    pair.client.request_service()
    pair.transfer()
    pair.client.take_all()
    return pair


def send_sk(
    pair: ConnectionPair,
    key: SoftwareSecurityKey,
    *,
    flags: int = PRESENCE,
    key_blob: bytes | None = None,
    algorithm: str | None = None,
    tamper: int | None = None,
) -> None:
    session_id = pair.client.session_id
    assert session_id is not None
    blob = key.public_blob if key_blob is None else key_blob
    algorithm = key.key_type if algorithm is None else algorithm
    signed = ua.publickey_signed_data(session_id, "alice", "ssh-connection", algorithm, blob)
    signature = bytearray(key.sign(signed, flags=flags))
    if tamper is not None:
        signature[tamper] ^= 1
    pair.client.auth_publickey(algorithm=algorithm, key_blob=blob, signature=bytes(signature))


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
@pytest.mark.parametrize("flags", [0, PRESENCE, PRESENCE | VERIFICATION])
def test_the_driver_sees_the_flags_and_the_core_verifies(kind: str, flags: int) -> None:
    key = SoftwareSecurityKey(kind, counter=41)  # type: ignore[arg-type]
    pair = sk_pair()
    send_sk(pair, key, flags=flags)
    [asked] = pair.transfer()
    assert isinstance(asked, PublicKeyAuthRequested)
    assert asked.public_key.key_type == key.key_type
    assert asked.security_key == SecurityKeyAssertion(flags, 42)
    pair.server.accept_auth()
    [done] = pair.transfer()
    assert isinstance(done, Authenticated)


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
def test_flags_changed_after_signing_fail_the_signature(kind: str) -> None:
    """The flags the driver judged are the flags the key signed: a client that claims a
    touch it did not sign gets no login even after the driver's yes."""
    key = SoftwareSecurityKey(kind)  # type: ignore[arg-type]
    pair = sk_pair()
    send_sk(pair, key, flags=0, tamper=-5)  # the flags byte: 0 -> 1
    [asked] = pair.transfer()
    assert isinstance(asked, PublicKeyAuthRequested)
    assert asked.security_key is not None
    assert asked.security_key.user_present
    pair.server.accept_auth()
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert failed.reason == "invalid signature"


def test_malformed_security_key_signature_fails_before_the_driver() -> None:
    key = SoftwareSecurityKey()
    pair = sk_pair()
    session_id = pair.client.session_id
    assert session_id is not None
    signed = ua.publickey_signed_data(
        session_id, "alice", "ssh-connection", key.key_type, key.public_blob
    )
    signature = key.sign(signed)[:-1]  # counter cut short
    pair.client.auth_publickey(
        algorithm=key.key_type, key_blob=key.public_blob, signature=signature
    )
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert failed.reason == "malformed security key signature"


def test_a_plain_signature_for_a_security_key_is_refused() -> None:
    """An ed25519 signature from the same private key, without flags and counter: the
    security key type must be used, with its message, or nothing verifies."""
    key = SoftwareSecurityKey()
    pair = sk_pair()
    send_sk(pair, key, algorithm="ssh-ed25519")
    [failed] = pair.transfer()
    assert isinstance(failed, AuthFailed)
    assert "not allowed" in failed.reason


def test_query_without_signature_has_no_flags() -> None:
    key = SoftwareSecurityKey("ecdsa")
    pair = sk_pair()
    pair.client.auth_publickey(sign=False, algorithm=key.key_type, key_blob=key.public_blob)
    [asked] = pair.transfer()
    assert isinstance(asked, PublicKeyAuthRequested)
    assert (asked.signed, asked.security_key) == (False, None)


def test_server_sig_algs_announce_security_keys() -> None:
    pair = ConnectionPair(make_config())
    pair.handshake()
    ext_info = [m for m in pair.client.take_all() if isinstance(m, ExtInfo)]
    [algorithms] = [value for name, value in ext_info[0].extensions if name == "server-sig-algs"]
    names = algorithms.decode().split(",")
    assert "sk-ssh-ed25519@openssh.com" in names
    assert "sk-ecdsa-sha2-nistp256@openssh.com" in names


# -- key and certificate blobs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (
            wire.string("sk-ssh-ed25519@openssh.com") + wire.string(bytes(32)),
            "truncated",
        ),
        (
            wire.string("sk-ssh-ed25519@openssh.com") + wire.string(bytes(32)) + wire.string("a\0"),
            "application contains NUL",
        ),
        (
            wire.string("sk-ssh-ed25519@openssh.com")
            + wire.string(bytes(32))
            + wire.string(b"a" * 1025),
            "exceeds the limit",
        ),
        (
            wire.string("sk-ecdsa-sha2-nistp256@openssh.com")
            + wire.string("nistp384")
            + wire.string(b"\x04" + bytes(64))
            + wire.string("ssh:"),
            "curve does not match",
        ),
        (
            wire.string("sk-ssh-ed25519@openssh.com")
            + wire.string(bytes(32))
            + wire.string("ssh:")
            + b"x",
            "unexpected data",
        ),
    ],
)
def test_malformed_security_key_blobs(blob: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        parse_public_key(blob)


@needs("ssh-keygen")
@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
def test_ssh_keygen_certificates_of_security_keys(kind: str, tmp_path: Path) -> None:
    key = SoftwareSecurityKey(kind, application=b"ssh:trissh")  # type: ignore[arg-type]
    (tmp_path / "user.pub").write_text(key.openssh_line() + "\n")
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ca")], check=True
    )
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(tmp_path / "ca"), "-I", "sk", "-n", "alice",
         "-O", "no-touch-required", "-O", "verify-required", str(tmp_path / "user.pub")],
        check=True, capture_output=True,
    )  # fmt: skip
    cert_type, data, *_ = (tmp_path / "user-cert.pub").read_text().split()
    cert = parse_certificate(base64.b64decode(data))
    assert cert.key_type == cert_type == key.key_type.replace("@", "-cert-v01@")
    assert cert.public_key.blob == key.public_blob
    assert cert.public_key.application == b"ssh:trissh"
    assert cert.permits("no-touch-required")
    assert cert.verify_required
    assert cert.verify_ca_signature()
    signature = key.sign(b"data")
    assert cert.verify(cert.key_type, signature, b"data")
    assert not cert.verify(cert.key_type, signature, b"other")
