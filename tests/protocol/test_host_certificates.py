"""OpenSSH host certificates (PROTOCOL.certkeys) made by ``ssh-keygen -s CA -h``: the server
offers the ``*-cert-v01@openssh.com`` algorithms for a certified key, presents the
certificate as K_S and signs H with the plain key; and what start-up refuses."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.sshpeer import HOST_KEY, ConnectionPair, make_config
from trissh.protocol import HostKey, KeyExchangeCompleted, wire
from trissh.protocol.certificates import (
    HOST_CERTIFICATE,
    check_host_certificate,
    parse_certificate,
)
from trissh.protocol.keys import HOST_CERTIFICATE_ALGORITHMS, HOST_KEY_ALGORITHMS
from trissh.protocol.wire import Reader
from trissh.server.hostkeys import HostKeyError, attach_certificates

from ..support import needs

pytestmark = needs("ssh-keygen")

SPECS = {
    "ed25519": ["-t", "ed25519"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "rsa": ["-t", "rsa", "-b", "3072"],
}


def keygen(*args: str) -> None:
    subprocess.run(["ssh-keygen", "-q", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Made:
    """A host key made by ssh-keygen, and a directory to sign its certificates in."""

    path: Path

    @property
    def host_key(self) -> HostKey:
        private = serialization.load_ssh_private_key(self.path.read_bytes(), None)
        assert isinstance(
            private, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        )
        return HostKey(private)

    def certify(self, ca: Path, name: str, *options: str) -> Path:
        """``ssh-keygen -s ca -I name OPTIONS key.pub`` -> the ``-cert.pub`` path."""
        pub = self.path.with_name(f"{self.path.name}-{name}.pub")
        shutil.copy(self.path.with_name(self.path.name + ".pub"), pub)
        keygen("-s", str(ca), "-I", name, *options, str(pub))
        return pub.with_name(f"{self.path.name}-{name}-cert.pub")


def blob_of(path: Path) -> bytes:
    return base64.b64decode(path.read_text().split()[1])


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Made]:
    directory = tmp_path_factory.mktemp("hostcerts")
    found = {}
    for name, spec in {**SPECS, "ca": ["-t", "ed25519"], "user": ["-t", "ed25519"]}.items():
        keygen(*spec, "-N", "", "-f", str(directory / name))
        found[name] = Made(directory / name)
    return found


def host_cert(made: dict[str, Made], name: str, *options: str) -> Path:
    return made[name].certify(made["ca"].path, f"{name}-host", "-h", "-n", "host.example", *options)


PLAIN_OF = {"ed25519": "ssh-ed25519", "ecdsa256": "ecdsa-sha2-nistp256"}
PLAIN_OF |= {"ecdsa384": "ecdsa-sha2-nistp384", "rsa": "ssh-rsa"}
CERT_ALGORITHMS = [
    (name, algorithm)
    for name, key_type in PLAIN_OF.items()
    for algorithm, plain in HOST_CERTIFICATE_ALGORITHMS.items()
    if plain.startswith(key_type) or (key_type == "ssh-rsa" and plain.startswith("rsa-sha2"))
]


@pytest.mark.parametrize(("name", "algorithm"), CERT_ALGORITHMS)
def test_certificate_algorithm_presents_the_certificate_and_signs_with_the_plain_key(
    made: dict[str, Made], name: str, algorithm: str
) -> None:
    cert_path = host_cert(made, name)
    key = made[name].host_key.with_certificate(blob_of(cert_path))
    config = make_config(host_keys=(key,))
    pair = ConnectionPair(config, host_key_algorithms=(algorithm,))
    completed = pair.handshake()[-1]  # the test client verifies the signature over H
    assert isinstance(completed, KeyExchangeCompleted)
    assert completed.algorithms.host_key == algorithm
    assert pair.client.host_key == blob_of(cert_path)
    signature = key.sign(b"data", algorithm)
    assert Reader(signature).ascii() == HOST_CERTIFICATE_ALGORITHMS[algorithm]


def test_kexinit_offers_certificate_algorithms_first_and_keeps_the_plain_ones(
    made: dict[str, Made],
) -> None:
    rsa_key = made["rsa"].host_key.with_certificate(blob_of(host_cert(made, "rsa")))
    config = make_config(host_keys=(HOST_KEY, rsa_key))
    assert config.offered_host_key_algorithms == (
        "rsa-sha2-512-cert-v01@openssh.com",
        "rsa-sha2-256-cert-v01@openssh.com",
        "ssh-ed25519",
        "rsa-sha2-512",
        "rsa-sha2-256",
    )
    pair = ConnectionPair(config, host_key_algorithms=("rsa-sha2-256",))
    completed = pair.handshake()[-1]
    assert isinstance(completed, KeyExchangeCompleted)
    assert pair.client.server_kexinits[0].server_host_key_algorithms == (
        config.offered_host_key_algorithms
    )
    assert pair.client.host_key == rsa_key.public_blob  # a plain client gets the plain key
    plain_only = make_config(host_keys=(HOST_KEY, made["rsa"].host_key))
    assert not any("cert" in name for name in plain_only.offered_host_key_algorithms)


def test_plain_signing_and_announcements_are_unchanged(made: dict[str, Made]) -> None:
    key = made["ed25519"].host_key
    certified = key.with_certificate(blob_of(host_cert(made, "ed25519")))
    assert certified.algorithms == ("ssh-ed25519", "ssh-ed25519-cert-v01@openssh.com")
    assert certified.public_blob == key.public_blob
    assert certified.blobs == (key.public_blob, certified.certificate)
    assert Reader(certified.sign(b"x")).ascii() == "ssh-ed25519"  # hostkeys-prove's default
    assert certified.public_blob_for("ssh-ed25519") == key.public_blob
    assert key.certificate is None  # with_certificate makes a new key


def test_a_certificate_of_another_key_type_is_refused(made: dict[str, Made]) -> None:
    with pytest.raises(ValueError, match="needs a ssh-ed25519-cert-v01@openssh"):
        made["ed25519"].host_key.with_certificate(blob_of(host_cert(made, "rsa")))


NOW = int(time.time())


def test_check_host_certificate(made: dict[str, Made]) -> None:
    key = made["ed25519"].host_key
    good = parse_certificate(blob_of(host_cert(made, "ed25519", "-V", "-1h:+1h")))
    assert good.cert_type == HOST_CERTIFICATE
    assert check_host_certificate(good, host_key=key.public_blob, now=NOW) is None
    assert check_host_certificate(good, host_key=key.public_blob, now=NOW + 7200) == "expired"
    assert check_host_certificate(good, host_key=key.public_blob, now=NOW - 7200) == (
        "not yet valid"
    )
    other = made["ecdsa256"].host_key.public_blob
    assert "certifies another key" in str(check_host_certificate(good, host_key=other, now=NOW))
    user = made["ed25519"].certify(made["ca"].path, "user-cert", "-n", "alice")
    assert check_host_certificate(
        parse_certificate(blob_of(user)), host_key=key.public_blob, now=NOW
    ) == ("not a host certificate (it is a user certificate)")
    tampered = bytearray(good.blob)
    tampered[-10] ^= 1
    assert check_host_certificate(
        parse_certificate(bytes(tampered)), host_key=key.public_blob, now=NOW
    ) == ("bad CA signature")


def test_a_critical_option_makes_a_host_certificate_unusable(made: dict[str, Made]) -> None:
    """ssh-keygen will not put one in a host certificate: build one by hand."""
    ca = made["ca"].host_key
    key = made["ed25519"].host_key
    raw = Reader(key.public_blob)
    raw.ascii()
    options = wire.string("verify-required") + wire.string(b"")
    body = b"".join(
        [
            wire.string("ssh-ed25519-cert-v01@openssh.com"),
            wire.string(bytes(32)),
            wire.string(raw.string()),
            wire.uint64(7),
            wire.uint32(HOST_CERTIFICATE),
            wire.string(b"id"),
            wire.string(wire.string("host.example")),
            wire.uint64(0),
            wire.uint64((1 << 64) - 1),
            wire.string(options),
            wire.string(b""),
            wire.string(b""),
            wire.string(ca.public_blob),
        ]
    )
    cert = parse_certificate(body + wire.string(ca.sign(body)))
    reason = check_host_certificate(cert, host_key=key.public_blob, now=NOW)
    assert reason == "critical option 'verify-required' in a host certificate"


# -- start-up ---------------------------------------------------------------------------------


def test_attach_pairs_each_certificate_with_its_key(made: dict[str, Made]) -> None:
    keys = (made["ed25519"].host_key, made["rsa"].host_key, made["ecdsa256"].host_key)
    paths = [host_cert(made, "rsa"), host_cert(made, "ed25519")]
    attached, loaded = attach_certificates(keys, paths, NOW)
    assert [key.certificate for key in attached] == [
        blob_of(paths[1]),
        blob_of(paths[0]),
        None,
    ]
    assert [path for path, _ in loaded] == paths


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("expired", r"host certificate 'ed25519-host' unusable: expired at 20\d\d-"),
        ("future", r"unusable: not valid before 2\d\d\d-"),
        ("other_key", r"certifies the ecdsa-sha2-nistp256 key SHA256:.*none of the host keys"),
        ("user", r"unusable: not a host certificate"),
        ("twice", r"a second certificate for host key"),
        ("garbage", r"not an OpenSSH certificate"),
        ("plain_key", r"not an OpenSSH certificate"),
        ("bad_base64", r"invalid base64"),
        ("missing", r"cannot read host certificate"),
    ],
)
def test_unusable_certificates_stop_the_start_naming_the_file(
    made: dict[str, Made], tmp_path: Path, case: str, message: str
) -> None:
    keys = (made["ed25519"].host_key,)
    path = tmp_path / "cert.pub"
    if case == "expired":
        path = host_cert(made, "ed25519", "-V", "20200101:20200201")
    elif case == "future":
        path = host_cert(made, "ed25519", "-V", "+1000w:+1001w")
    elif case == "other_key":
        path = host_cert(made, "ecdsa256")
    elif case == "user":
        path = made["ed25519"].certify(made["ca"].path, "user", "-n", "alice")
    elif case == "twice":
        path = host_cert(made, "ed25519")
    elif case == "garbage":
        path.write_text("hello\n")
    elif case == "plain_key":
        shutil.copy(made["ed25519"].path.with_name("ed25519.pub"), path)
    elif case == "bad_base64":
        path.write_text("ssh-ed25519-cert-v01@openssh.com !!!!\n")
    paths = [path, path] if case == "twice" else [path]
    with pytest.raises(HostKeyError, match=message) as raised:
        attach_certificates(keys, paths, NOW)
    assert str(raised.value).startswith(f"{path}: ")


def test_every_algorithm_name_is_known_to_the_configuration() -> None:
    config = make_config(host_key_algorithms=(*HOST_CERTIFICATE_ALGORITHMS, *HOST_KEY_ALGORITHMS))
    assert config.offered_host_key_algorithms == ("ssh-ed25519",)


def test_hostbound_publickey_may_bind_to_the_certificate(made: dict[str, Made]) -> None:
    """OpenSSH binds a publickey-hostbound signature to K_S of the first exchange, which is
    the certificate when a certificate algorithm was negotiated."""
    from tests.protocol.test_userauth_methods import hostbound
    from trissh.protocol import Authenticated, PublicKeyAuthRequested

    key = made["ed25519"].host_key.with_certificate(blob_of(host_cert(made, "ed25519")))
    pair = ConnectionPair(
        make_config(host_keys=(key,)), host_key_algorithms=("ssh-ed25519-cert-v01@openssh.com",)
    )
    pair.handshake()
    pair.client.request_service()
    pair.transfer()
    assert key.certificate is not None
    hostbound(pair, key.certificate)
    [asked] = pair.transfer()
    assert isinstance(asked, PublicKeyAuthRequested)
    pair.server.accept_auth()
    [done] = pair.transfer()
    assert isinstance(done, Authenticated)
