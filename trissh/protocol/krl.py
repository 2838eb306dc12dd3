"""Key revocation: OpenSSH KRLs (``ssh-keygen -k``, PROTOCOL.krl) and plain key lists.

Theory of operation
-------------------
A KRL is a header and sections::

    uint64 KRL_MAGIC ("SSHKRL\\n\\0")  uint32 format (1)  uint64 krl_version
    uint64 generated_date  uint64 flags  string reserved  string comment
    (byte section_type, string section_data)*

Sections revoke certificates of one CA (or of any CA, when the CA key is empty) by serial
list, serial range, serial bitmap or key ID; plain keys by their blob; or plain keys by the
SHA-1 or SHA-256 of their blob. ``parse_krl`` bounds nothing beyond the data it is given
(the caller bounds the file) and raises only ``DecodeError``. Like OpenSSH 9.4 and later it
refuses signed KRLs, and it refuses a critical extension it does not know (non-critical
ones, such as the Bloom filters of PROTOCOL.krl §7, are skipped).

``RevocationList.check`` applies sshd's rule (``ssh_krl_check_key``): a key is revoked if
its plain blob is listed or hashed; a certificate also if its serial (never serial 0) or
key ID is revoked for its CA or for any CA, or if its CA key is itself revoked. A plain
key list (sshd's other ``RevokedKeys`` format) is the same check with only explicit keys.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from trissh.protocol.certificates import Certificate
from trissh.protocol.errors import DecodeError
from trissh.protocol.keys import fingerprint
from trissh.protocol.wire import Reader

KRL_MAGIC: Final = b"SSHKRL\n\x00"
KRL_FORMAT_VERSION: Final = 1

SECTION_CERTIFICATES: Final = 1
SECTION_EXPLICIT_KEY: Final = 2
SECTION_FINGERPRINT_SHA1: Final = 3
SECTION_SIGNATURE: Final = 4
SECTION_FINGERPRINT_SHA256: Final = 5
SECTION_EXTENSION: Final = 255

CERT_SERIAL_LIST: Final = 0x20
CERT_SERIAL_RANGE: Final = 0x21
CERT_SERIAL_BITMAP: Final = 0x22
CERT_KEY_ID: Final = 0x23
CERT_EXTENSION: Final = 0x39

_U64_MAX: Final = (1 << 64) - 1


@dataclass(slots=True)
class CertificateRevocations:
    """What one certificate section revokes, for one CA (``ca_key`` None: any CA)."""

    ca_key: bytes | None
    #: Inclusive serial ranges; ``seal`` sorts and merges them.
    ranges: list[tuple[int, int]] = field(default_factory=list)
    #: (offset, bitmap): bit N set revokes serial offset + N.
    bitmaps: list[tuple[int, int]] = field(default_factory=list)
    key_ids: set[bytes] = field(default_factory=set)
    _starts: list[int] = field(default_factory=list, repr=False)

    def seal(self) -> None:
        """Merge overlapping and adjacent ranges, so one bisection finds a serial."""
        merged: list[tuple[int, int]] = []
        for start, end in sorted(self.ranges):
            if merged and start <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        self.ranges = merged
        self._starts = [start for start, _ in merged]

    def revokes(self, cert: Certificate) -> str | None:
        if cert.key_id.encode("utf-8") in self.key_ids:
            return f"key id {cert.key_id!r}"
        if self.revokes_serial(cert.serial):
            return f"serial {cert.serial}"
        return None

    def revokes_serial(self, serial: int) -> bool:
        """Whether ``serial`` is in a range or bitmap (never 0, a CA's default: parse_krl
        refuses to revoke it)."""
        index = bisect.bisect_right(self._starts, serial) - 1
        if index >= 0 and serial <= self.ranges[index][1]:
            return True
        return any(
            serial >= offset and (bits >> (serial - offset)) & 1 for offset, bits in self.bitmaps
        )


@dataclass(slots=True)
class RevocationList:
    """Revoked keys and certificates; build it with ``parse_krl`` or ``from_blobs``."""

    keys: set[bytes] = field(default_factory=set)
    sha1: set[bytes] = field(default_factory=set)
    sha256: set[bytes] = field(default_factory=set)
    certificates: list[CertificateRevocations] = field(default_factory=list)
    #: ``krl`` or ``key_list``: what it was read from.
    kind: str = "key_list"
    version: int = 0
    generated: int = 0
    comment: str = ""

    @classmethod
    def from_blobs(cls, blobs: Iterable[bytes]) -> RevocationList:
        """A plain key list: each blob (a certificate's certified key, for certificates)."""
        return cls(keys=set(blobs))

    @property
    def entries(self) -> int:
        """How many revocations it holds (serial ranges and bitmaps count once each)."""
        certificate_entries = sum(
            len(c.ranges) + len(c.bitmaps) + len(c.key_ids) for c in self.certificates
        )
        return len(self.keys) + len(self.sha1) + len(self.sha256) + certificate_entries

    def check(self, key_blob: bytes, certificate: Certificate | None = None) -> str | None:
        """Why ``key_blob`` (the plain key; with its ``certificate``, if any) is revoked.

        Returns:
            None if it is not revoked, else a short reason for the log.
        """
        reason = self._plain(key_blob)
        if reason is not None or certificate is None:
            return reason
        ca = certificate.signature_key.blob
        for section in self.certificates:
            if section.ca_key is None or section.ca_key == ca:
                why = section.revokes(certificate)
                if why is not None:
                    return f"certificate {why} revoked"
        ca_reason = self._plain(ca)
        if ca_reason is not None:
            return f"CA {fingerprint(ca)}: {ca_reason}"
        return None

    def _plain(self, blob: bytes) -> str | None:
        if blob in self.keys:
            return "key revoked"
        if self.sha256 and hashlib.sha256(blob).digest() in self.sha256:
            return "key revoked by SHA256 fingerprint"
        if self.sha1 and hashlib.sha1(blob, usedforsecurity=False).digest() in self.sha1:
            return "key revoked by SHA1 fingerprint"
        return None


def is_krl(data: bytes) -> bool:
    """Whether ``data`` starts like a KRL (the rest is a plain key list)."""
    return data.startswith(KRL_MAGIC)


def parse_krl(data: bytes) -> RevocationList:
    """Parse a KRL (PROTOCOL.krl).

    Raises:
        DecodeError: not a KRL, an unknown format version, a malformed or unknown section,
            a signature section, or an invalid serial.
    """
    if not is_krl(data):
        raise DecodeError("not a KRL (bad magic)")
    r = Reader(data, len(KRL_MAGIC))
    if (version := r.uint32()) != KRL_FORMAT_VERSION:
        raise DecodeError(f"unsupported KRL format version {version}")
    krl = RevocationList(kind="krl", version=r.uint64(), generated=r.uint64())
    r.uint64()  # flags: none defined
    r.string()  # reserved
    krl.comment = _cstring(r.string(), "comment").decode("utf-8", errors="replace")
    while r.remaining:
        section_type = r.byte()
        section = Reader(r.string())
        if section_type == SECTION_CERTIFICATES:
            krl.certificates.append(_certificate_section(section))
        elif section_type == SECTION_EXPLICIT_KEY:
            krl.keys.update(_blobs(section, 0))
        elif section_type == SECTION_FINGERPRINT_SHA1:
            krl.sha1.update(_blobs(section, 20))
        elif section_type == SECTION_FINGERPRINT_SHA256:
            krl.sha256.update(_blobs(section, 32))
        elif section_type == SECTION_SIGNATURE:
            raise DecodeError("signed KRLs are not supported (OpenSSH 9.4 refuses them too)")
        elif section_type == SECTION_EXTENSION:
            _extension(section)
        else:
            raise DecodeError(f"unsupported KRL section {section_type}")
        section.check_end()
    return krl


def _cstring(raw: bytes, what: str) -> bytes:
    if b"\x00" in raw:
        raise DecodeError(f"KRL {what} contains NUL")
    return raw


def _blobs(section: Reader, size: int) -> list[bytes]:
    """A sequence of strings, each ``size`` bytes long unless ``size`` is 0."""
    blobs = []
    while section.remaining:
        blob = section.string()
        if size and len(blob) != size:
            raise DecodeError(f"KRL hash of {len(blob)} bytes where {size} belong")
        blobs.append(blob)
    return blobs


def _extension(section: Reader) -> None:
    name = section.string(256)
    critical = section.boolean()
    section.string()
    if critical:
        raise DecodeError(f"unsupported critical KRL extension {name!r}")


def _certificate_section(section: Reader) -> CertificateRevocations:
    ca_key = section.string()
    section.string()  # reserved
    revoked = CertificateRevocations(ca_key or None)
    while section.remaining:
        kind = section.byte()
        sub = Reader(section.string())
        if kind == CERT_SERIAL_LIST:
            while sub.remaining:
                serial = sub.uint64()
                revoked.ranges.append(_serial_range(serial, serial))
        elif kind == CERT_SERIAL_RANGE:
            revoked.ranges.append(_serial_range(sub.uint64(), sub.uint64()))
        elif kind == CERT_SERIAL_BITMAP:
            revoked.bitmaps.append(_bitmap(sub))
        elif kind == CERT_KEY_ID:
            while sub.remaining:
                revoked.key_ids.add(_cstring(sub.string(), "key id"))
        elif kind == CERT_EXTENSION:
            _extension(sub)
        else:
            raise DecodeError(f"unsupported KRL certificate section {kind:#x}")
        sub.check_end()
    revoked.seal()
    return revoked


def _serial_range(low: int, high: int) -> tuple[int, int]:
    if low == 0 or low > high:  # ssh_krl_revoke_cert_by_serial_range refuses these
        raise DecodeError(f"invalid KRL serial range {low}-{high}")
    return low, high


def _bitmap(sub: Reader) -> tuple[int, int]:
    offset = sub.uint64()
    bits = sub.mpint(sub.remaining)
    if bits < 0:
        raise DecodeError("negative KRL serial bitmap")
    if bits and offset + bits.bit_length() - 1 > _U64_MAX:
        raise DecodeError("KRL serial bitmap wraps past 2**64")
    if offset == 0 and bits & 1:
        raise DecodeError("KRL serial bitmap revokes serial 0")
    return offset, bits
