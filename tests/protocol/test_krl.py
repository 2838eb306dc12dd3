"""KRLs (PROTOCOL.krl) made by ``ssh-keygen -k``, checked against ``ssh-keygen -Q`` for the
same keys and certificates; and the byte-level rules for what ssh-keygen will not write."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from trissh.protocol import wire
from trissh.protocol.certificates import Certificate, parse_certificate
from trissh.protocol.errors import DecodeError
from trissh.protocol.krl import (
    CERT_EXTENSION,
    CERT_KEY_ID,
    CERT_SERIAL_BITMAP,
    CERT_SERIAL_LIST,
    CERT_SERIAL_RANGE,
    KRL_MAGIC,
    SECTION_CERTIFICATES,
    SECTION_EXPLICIT_KEY,
    SECTION_EXTENSION,
    SECTION_FINGERPRINT_SHA1,
    SECTION_FINGERPRINT_SHA256,
    SECTION_SIGNATURE,
    RevocationList,
    is_krl,
    parse_krl,
)
from trissh.protocol.wire import Reader

from ..support import needs

pytestmark = needs("ssh-keygen")


def keygen(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh-keygen", "-q", *args], check=check, capture_output=True, text=True)


@dataclass(frozen=True)
class Subject:
    """A public key file (plain or certificate) and what trissh sees of it."""

    path: Path

    @property
    def blob(self) -> bytes:
        return base64.b64decode(self.path.read_text().split()[1])

    @property
    def certificate(self) -> Certificate | None:
        if "-cert-v01@" not in self.path.read_text().split()[0]:
            return None
        return parse_certificate(self.blob)

    @property
    def key_blob(self) -> bytes:
        cert = self.certificate
        return cert.public_key.blob if cert is not None else self.blob


#: (name, CA, serial, key id) of the certificates made.
CERTS = [
    ("c_listed", "ca", 100, "ok-1"),
    ("c_listed_far", "ca", 200000000000, "ok-2"),
    ("c_range_low", "ca", 300, "ok-3"),
    ("c_range_high", "ca", 1000, "ok-4"),
    ("c_past_range", "ca", 1001, "ok-5"),
    ("c_bitmap", "ca", 2004, "ok-6"),
    ("c_bitmap_gap", "ca", 2005, "ok-7"),
    ("c_serial_zero", "ca", 0, "ok-8"),
    ("c_key_id", "ca", 5000, "revoked-id"),
    ("c_any_ca_id", "ca2", 6000, "any-ca-id"),
    ("c_other_ca_same_serial", "ca2", 100, "ok-9"),
    ("c_of_revoked_ca", "ca3", 7000, "ok-10"),
    ("c_of_revoked_key", "ca", 8000, "ok-11"),
    ("c_fine", "ca", 9000, "ok-12"),
]
PLAIN = ["k_explicit", "k_sha1", "k_sha256", "k_hash", "k_fine"]

SPEC_WITH_CA = """\
serial: 100
serial: 100000000
serial: 200000000000
serial: 300-1000
serial: 2000
serial: 2002
serial: 2004
serial: 2006
id: revoked-id
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("krl")
    for name in ["ca", "ca2", "ca3", *PLAIN, *(name for name, *_ in CERTS)]:
        keygen("-t", "ed25519", "-N", "", "-f", str(directory / name))
    for name, ca, serial, key_id in CERTS:
        user = "k_explicit" if name == "c_of_revoked_key" else name
        pub = directory / f"{name}.pub"
        if user != name:
            shutil.copy(directory / f"{user}.pub", pub)
        keygen("-s", str(directory / ca), "-I", key_id, "-z", str(serial), "-n", "alice", str(pub))
    (directory / "spec_ca").write_text(SPEC_WITH_CA)
    fingerprint = keygen("-l", "-f", str(directory / "k_hash.pub")).stdout.split()[1]
    (directory / "spec_any").write_text(
        f"key: {(directory / 'k_explicit.pub').read_text()}"
        f"key: {(directory / 'ca3.pub').read_text()}"
        f"sha1: {(directory / 'k_sha1.pub').read_text()}"
        f"sha256: {(directory / 'k_sha256.pub').read_text()}"
        f"hash: {fingerprint}\n"
    )
    keygen(
        "-k",
        "-f",
        str(directory / "krl"),
        "-s",
        str(directory / "ca.pub"),
        str(directory / "spec_ca"),
    )
    keygen("-k", "-u", "-f", str(directory / "krl"), str(directory / "spec_any"))
    return directory


def subjects(pki: Path) -> list[Subject]:
    return [Subject(pki / f"{name}.pub") for name in PLAIN] + [
        Subject(pki / f"{name}-cert.pub") for name, *_ in CERTS
    ]


def sections(data: bytes) -> list[int]:
    """The section and certificate subsection types of a KRL, in order."""
    r = Reader(data, len(KRL_MAGIC) + 4 + 24)
    r.string()
    r.string()
    found = []
    while r.remaining:
        kind = r.byte()
        body = Reader(r.string())
        found.append(kind)
        if kind == SECTION_CERTIFICATES:
            body.string()
            body.string()
            while body.remaining:
                found.append(body.byte())
                body.string()
    return found


def test_ssh_keygen_krl_uses_every_section_kind(pki: Path) -> None:
    """Not vacuous: the KRL under test holds every encoding ssh-keygen writes."""
    kinds = set(sections((pki / "krl").read_bytes()))
    assert kinds >= {
        SECTION_CERTIFICATES, SECTION_EXPLICIT_KEY, SECTION_FINGERPRINT_SHA1,
        SECTION_FINGERPRINT_SHA256, CERT_SERIAL_LIST, CERT_SERIAL_RANGE, CERT_SERIAL_BITMAP,
        CERT_KEY_ID,
    }  # fmt: skip


def ssh_keygen_revokes(krl: Path, subject: Subject) -> bool:
    result = keygen("-Q", "-f", str(krl), str(subject.path), check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 1


def test_same_verdicts_as_ssh_keygen_query(pki: Path) -> None:
    krl = parse_krl((pki / "krl").read_bytes())
    verdicts = {
        subject.path.name: (
            krl.check(subject.key_blob, subject.certificate) is not None,
            ssh_keygen_revokes(pki / "krl", subject),
        )
        for subject in subjects(pki)
    }
    assert {name: ours for name, (ours, _) in verdicts.items()} == {
        name: theirs for name, (_, theirs) in verdicts.items()
    }
    revoked = sorted(name for name, (ours, _) in verdicts.items() if ours)
    assert revoked == sorted(
        [
            "k_explicit.pub", "k_sha1.pub", "k_sha256.pub", "k_hash.pub",
            "c_listed-cert.pub", "c_listed_far-cert.pub", "c_range_low-cert.pub",
            "c_range_high-cert.pub", "c_bitmap-cert.pub", "c_key_id-cert.pub",
            "c_of_revoked_ca-cert.pub", "c_of_revoked_key-cert.pub",
        ]
    )  # fmt: skip


def test_reasons_say_what_matched(pki: Path) -> None:
    krl = parse_krl((pki / "krl").read_bytes())

    def reason(name: str) -> str | None:
        subject = Subject(pki / name)
        return krl.check(subject.key_blob, subject.certificate)

    assert reason("k_explicit.pub") == "key revoked"
    assert reason("k_sha1.pub") == "key revoked by SHA1 fingerprint"
    assert reason("k_hash.pub") == "key revoked by SHA256 fingerprint"
    assert reason("c_bitmap-cert.pub") == "certificate serial 2004 revoked"
    assert reason("c_key_id-cert.pub") == "certificate key id 'revoked-id' revoked"
    assert str(reason("c_of_revoked_ca-cert.pub")).endswith(": key revoked")
    assert str(reason("c_of_revoked_ca-cert.pub")).startswith("CA SHA256:")
    assert reason("c_fine-cert.pub") is None
    assert krl.entries > 10


# -- hand-built KRLs ---------------------------------------------------------------------------


def krl_bytes(*sections: bytes, version: int = 1, comment: bytes = b"made by hand") -> bytes:
    header = KRL_MAGIC + wire.uint32(version) + wire.uint64(3) + wire.uint64(1700000000)
    return header + wire.uint64(0) + wire.string(b"") + wire.string(comment) + b"".join(sections)


def section(kind: int, body: bytes) -> bytes:
    return wire.byte(kind) + wire.string(body)


def cert_section(ca: bytes, *subsections: bytes) -> bytes:
    return section(SECTION_CERTIFICATES, wire.string(ca) + wire.string(b"") + b"".join(subsections))


def extension(name: str, critical: bool) -> bytes:
    return wire.string(name) + wire.boolean(critical) + wire.string(b"contents")


def test_header_fields_and_empty_krl() -> None:
    krl = parse_krl(krl_bytes())
    assert (krl.version, krl.generated, krl.comment, krl.entries) == (
        3,
        1700000000,
        "made by hand",
        0,
    )
    assert is_krl(krl_bytes())
    assert not is_krl(b"ssh-ed25519 AAAA")


def test_non_critical_extensions_are_skipped() -> None:
    krl = parse_krl(
        krl_bytes(
            section(SECTION_EXTENSION, extension("bloom-explicit-key", False)),
            cert_section(b"", section(CERT_EXTENSION, extension("cert-bloom-key-id", False))),
            section(SECTION_EXPLICIT_KEY, wire.string(b"blob")),
        )
    )
    assert krl.keys == {b"blob"}


def test_overlapping_ranges_and_bitmaps_merge() -> None:
    ranges = [
        section(CERT_SERIAL_RANGE, wire.uint64(low) + wire.uint64(high))
        for low, high in ((50, 60), (10, 100), (101, 120), (500, 500))
    ]
    bitmap = section(CERT_SERIAL_BITMAP, wire.uint64(1000) + wire.mpint(0b1010))
    krl = parse_krl(krl_bytes(cert_section(b"", *ranges, bitmap)))
    [revoked] = krl.certificates
    assert revoked.ranges == [(10, 120), (500, 500)]
    candidates = (*range(130), 499, 500, 501, *range(998, 1010))
    hits = {serial for serial in candidates if revoked.revokes_serial(serial)}
    assert hits == {*range(10, 121), 500, 1001, 1003}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"SSHKRL\n", "bad magic"),
        (krl_bytes(version=2), "format version 2"),
        (krl_bytes()[:-3], "truncated"),
        (krl_bytes(comment=b"a\x00b"), "comment contains NUL"),
        (krl_bytes(section(SECTION_SIGNATURE, b"key") + wire.string(b"sig")), "signed KRLs"),
        (krl_bytes(section(9, b"")), "unsupported KRL section 9"),
        (krl_bytes(section(SECTION_EXTENSION, extension("x@example", True))), "critical"),
        (krl_bytes(cert_section(b"", section(CERT_EXTENSION, extension("y", True)))), "critical"),
        (krl_bytes(cert_section(b"", section(0x30, b""))), "certificate section 0x30"),
        (krl_bytes(cert_section(b"", section(CERT_SERIAL_LIST, wire.uint64(0)))), "range 0-0"),
        (
            krl_bytes(
                cert_section(b"", section(CERT_SERIAL_RANGE, wire.uint64(9) + wire.uint64(8)))
            ),
            "range 9-8",
        ),
        (
            krl_bytes(
                cert_section(b"", section(CERT_SERIAL_BITMAP, wire.uint64(0) + wire.mpint(1)))
            ),
            "revokes serial 0",
        ),
        (
            krl_bytes(
                cert_section(
                    b"", section(CERT_SERIAL_BITMAP, wire.uint64(2**64 - 2) + wire.mpint(4))
                )
            ),
            "wraps",
        ),
        (
            krl_bytes(
                cert_section(b"", section(CERT_SERIAL_BITMAP, wire.uint64(5) + wire.mpint(-1)))
            ),
            "negative",
        ),
        (krl_bytes(cert_section(b"", section(CERT_KEY_ID, wire.string(b"a\x00")))), "NUL"),
        (krl_bytes(section(SECTION_FINGERPRINT_SHA1, wire.string(bytes(32)))), "32 bytes where 20"),
        (
            krl_bytes(section(SECTION_FINGERPRINT_SHA256, wire.string(bytes(20)))),
            "20 bytes where 32",
        ),
        (krl_bytes(section(SECTION_EXPLICIT_KEY, wire.string(b"k") + b"\x00")), "truncated"),
        (
            krl_bytes(
                cert_section(
                    b"", section(CERT_SERIAL_RANGE, wire.uint64(1) + wire.uint64(2) + b"x")
                )
            ),
            "unexpected data",
        ),
    ],
)
def test_malformed_krls(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        parse_krl(data)


def test_every_truncation_of_a_real_krl_is_a_decode_error(pki: Path) -> None:
    data = (pki / "krl").read_bytes()
    for end in range(len(data)):
        try:
            parse_krl(data[:end])
        except DecodeError:
            continue
        # A cut between sections is a shorter, valid KRL.
        assert sections(data[:end]) == sections(data)[: len(sections(data[:end]))]


def test_a_plain_key_list_revokes_keys_and_the_certificates_of_listed_cas(pki: Path) -> None:
    listed: Sequence[bytes] = [Subject(pki / "k_explicit.pub").blob, Subject(pki / "ca3.pub").blob]
    revoked = RevocationList.from_blobs(listed)
    assert revoked.check(Subject(pki / "k_explicit.pub").blob) == "key revoked"
    cert = Subject(pki / "c_of_revoked_ca-cert.pub")
    assert revoked.check(cert.key_blob, cert.certificate) is not None
    fine = Subject(pki / "c_fine-cert.pub")
    assert revoked.check(fine.key_blob, fine.certificate) is None
    assert revoked.check(hashlib.sha256(b"x").digest()) is None


def test_an_empty_ca_key_revokes_for_every_ca(pki: Path) -> None:
    """ssh-keygen 9.2 cannot write this (it wants -s for key IDs): built by hand."""
    by_id = section(CERT_KEY_ID, wire.string(b"any-ca-id"))
    by_serial = section(CERT_SERIAL_LIST, wire.uint64(100))
    krl = parse_krl(krl_bytes(cert_section(b"", by_id, by_serial)))
    for name, revoked in [
        ("c_any_ca_id", True),  # ca2, key id
        ("c_other_ca_same_serial", True),  # ca2, serial 100
        ("c_listed", True),  # ca, serial 100
        ("c_fine", False),
    ]:
        subject = Subject(pki / f"{name}-cert.pub")
        assert (krl.check(subject.key_blob, subject.certificate) is not None) is revoked, name
    ca2 = Subject(pki / "ca2.pub").blob
    only_ca2 = parse_krl(krl_bytes(cert_section(ca2, by_serial)))
    listed = Subject(pki / "c_listed-cert.pub")
    assert only_ca2.check(listed.key_blob, listed.certificate) is None  # serial 100 of ca
    other = Subject(pki / "c_other_ca_same_serial-cert.pub")
    assert only_ca2.check(other.key_blob, other.certificate) == "certificate serial 100 revoked"
