"""OpenSSH user certificates (``*-cert-v01@openssh.com``): parsing and checking.

Theory of operation
-------------------
A certificate is a public key blob that carries the certified key, the conditions of its
use, and a CA's signature over all of it (OpenSSH ``PROTOCOL.certkeys``)::

    string  cert type          ("ssh-ed25519-cert-v01@openssh.com", ...)
    string  nonce
    ...     the key's own fields (ed25519: pk; ecdsa: curve, Q; rsa: e, n)
    uint64  serial
    uint32  type               (1 user, 2 host)
    string  key id
    string  valid principals   (a packed sequence of strings)
    uint64  valid after
    uint64  valid before
    string  critical options   (packed (name, data) pairs, data a packed string or empty)
    string  extensions         (same format)
    string  reserved
    string  signature key      (the CA's public key blob)
    string  signature          (over every byte before this field)

``parse_certificate`` decodes the structure only, bounding every length and count, so
arbitrary bytes can raise nothing but ``DecodeError``. ``check_user_certificate`` applies
sshd's rules for a user certificate presented for ``publickey`` authentication: a user
certificate, from a trusted CA whose signature verifies, inside its validity window,
naming the login user, with no critical option we cannot enforce, and from an allowed
source address. The core never reads the clock: ``now`` comes from the caller.

The client proves possession of the *certified* key: its signature algorithm names are
the ``*-cert-v01`` names in ``CERTIFICATE_ALGORITHMS``, but the signature blob inside is a
plain one (``ssh-ed25519``, ``rsa-sha2-512``, ...), checked by ``Certificate.verify``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final, final

from trissh.protocol import wire
from trissh.protocol.errors import DecodeError
from trissh.protocol.keys import MAX_APPLICATION_BYTES, PublicKey, parse_public_key
from trissh.protocol.wire import Reader

USER_CERTIFICATE: Final = 1
HOST_CERTIFICATE: Final = 2

#: ``valid_before`` of a certificate that never expires.
FOREVER: Final = (1 << 64) - 1
#: The start of a signature blob made with SHA-1 RSA (a string "ssh-rsa").
_SHA1_RSA: Final = wire.string("ssh-rsa")

#: Certificate key types we parse, and the plain key type each certifies.
CERTIFICATE_KEY_TYPES: Final[dict[str, str]] = {
    "ssh-ed25519-cert-v01@openssh.com": "ssh-ed25519",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": "ecdsa-sha2-nistp521",
    "ssh-rsa-cert-v01@openssh.com": "ssh-rsa",
    "sk-ssh-ed25519-cert-v01@openssh.com": "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": "sk-ecdsa-sha2-nistp256@openssh.com",
}

#: ``publickey`` algorithm names for certificates (what a client puts in USERAUTH_REQUEST
#: and the server in ``server-sig-algs``), mapped to (certificate key type, signature
#: algorithm inside the signature blob). No SHA-1 ``ssh-rsa-cert-v01`` signatures.
CERTIFICATE_ALGORITHMS: Final[dict[str, tuple[str, str]]] = {
    "ssh-ed25519-cert-v01@openssh.com": ("ssh-ed25519-cert-v01@openssh.com", "ssh-ed25519"),
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": (
        "ecdsa-sha2-nistp256-cert-v01@openssh.com",
        "ecdsa-sha2-nistp256",
    ),
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": (
        "ecdsa-sha2-nistp384-cert-v01@openssh.com",
        "ecdsa-sha2-nistp384",
    ),
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": (
        "ecdsa-sha2-nistp521-cert-v01@openssh.com",
        "ecdsa-sha2-nistp521",
    ),
    "rsa-sha2-512-cert-v01@openssh.com": ("ssh-rsa-cert-v01@openssh.com", "rsa-sha2-512"),
    "rsa-sha2-256-cert-v01@openssh.com": ("ssh-rsa-cert-v01@openssh.com", "rsa-sha2-256"),
    "sk-ssh-ed25519-cert-v01@openssh.com": (
        "sk-ssh-ed25519-cert-v01@openssh.com",
        "sk-ssh-ed25519@openssh.com",
    ),
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": (
        "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ),
}

#: Critical options we enforce; any other makes a certificate unusable (PROTOCOL.certkeys:
#: "if an implementation does not recognise a critical option, it must reject the cert").
KNOWN_CRITICAL_OPTIONS: Final = frozenset({"force-command", "source-address", "verify-required"})

# Bounds: generous for anything ssh-keygen makes, small enough that a hostile blob
# costs little.
MAX_CERTIFICATE_BYTES: Final = 32768
MAX_NONCE_BYTES: Final = 256
MAX_KEY_ID_BYTES: Final = 1024
MAX_PRINCIPALS: Final = 256
MAX_PRINCIPAL_BYTES: Final = 256
MAX_OPTIONS: Final = 64
MAX_OPTION_NAME_BYTES: Final = 256
MAX_OPTION_VALUE_BYTES: Final = 4096
MAX_SECTION_BYTES: Final = 16384
MAX_CA_KEY_BYTES: Final = 4096
MAX_SIGNATURE_BYTES: Final = 4096
MAX_SOURCE_ADDRESSES: Final = 64


def is_certificate_type(key_type: str) -> bool:
    """Whether a key type or algorithm name names an OpenSSH certificate."""
    return key_type.endswith("-cert-v01@openssh.com")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Certificate:
    """A parsed OpenSSH certificate; build it with ``parse_certificate``.

    ``blob`` is the whole certificate as received; ``signed_data`` is the part the CA
    signed (everything before the signature field).
    """

    key_type: str
    blob: bytes
    public_key: PublicKey
    nonce: bytes
    serial: int
    cert_type: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: dict[str, str]
    extensions: dict[str, str]
    signature_key: PublicKey
    signature: bytes
    signed_data: bytes

    @property
    def force_command(self) -> str | None:
        """The ``force-command`` critical option, if any."""
        return self.critical_options.get("force-command")

    @property
    def verify_required(self) -> bool:
        """``verify-required``: a security key must have verified the user (PIN, biometry)."""
        return "verify-required" in self.critical_options

    def permits(self, extension: str) -> bool:
        """Whether an extension such as ``permit-pty`` is granted."""
        return extension in self.extensions

    def ca_signature_problem(self) -> str | None:
        """Why the CA's signature is refused, or ``None`` if it verifies."""
        if self.verify_ca_signature():
            return None
        if self.signature.startswith(_SHA1_RSA):
            return "CA signature made with SHA-1 (ssh-rsa), which OpenSSH 8.2+ refuses too"
        return "bad CA signature"

    def verify_ca_signature(self) -> bool:
        """Check the CA's signature over ``signed_data``; never raises for bad input.

        The signature algorithm comes from the signature blob and must be one the CA key
        type allows (so an RSA CA must have used rsa-sha2-256/512, never SHA-1 ssh-rsa).
        """
        try:
            algorithm = Reader(self.signature).ascii(64)
        except DecodeError:
            return False
        return self.signature_key.verify(algorithm, self.signature, self.signed_data)

    def verify(self, algorithm: str, signature_blob: bytes, data: bytes) -> bool:
        """Check a client's proof of possession made with the certified key.

        Args:
            algorithm: the ``publickey`` algorithm name from USERAUTH_REQUEST (one of
                ``CERTIFICATE_ALGORITHMS``).
            signature_blob: the SSH signature blob the client sent.
            data: the signed data (RFC 4252 §7).

        Returns:
            True only for a valid signature whose algorithm matches ``algorithm``.
        """
        entry = CERTIFICATE_ALGORITHMS.get(algorithm)
        if entry is None or entry[0] != self.key_type:
            return False
        return self.public_key.verify(entry[1], signature_blob, data)


def parse_certificate(blob: bytes) -> Certificate:
    """Parse a certificate blob (PROTOCOL.certkeys).

    Raises:
        DecodeError: malformed or oversized blob, an unsupported certificate type, a
            certified or CA key that ``parse_public_key`` refuses, or a CA key that is
            itself a certificate.
    """
    if len(blob) > MAX_CERTIFICATE_BYTES:
        raise DecodeError("certificate is too large")
    r = Reader(blob)
    key_type = r.ascii(64)
    plain_type = CERTIFICATE_KEY_TYPES.get(key_type)
    if plain_type is None:
        raise DecodeError(f"unsupported certificate type {key_type!r}")
    nonce = r.string(MAX_NONCE_BYTES)
    public_key = parse_public_key(_plain_key_blob(plain_type, r))
    serial = r.uint64()
    cert_type = r.uint32()
    if cert_type not in (USER_CERTIFICATE, HOST_CERTIFICATE):
        raise DecodeError(f"unknown certificate type {cert_type}")
    key_id = _utf8(r.string(MAX_KEY_ID_BYTES), "key id")
    principals = _principals(r.string(MAX_SECTION_BYTES))
    valid_after, valid_before = r.uint64(), r.uint64()
    critical_options = _options(r.string(MAX_SECTION_BYTES), "critical option")
    extensions = _options(r.string(MAX_SECTION_BYTES), "extension")
    r.string(MAX_SECTION_BYTES)  # reserved: ignored, as OpenSSH does
    ca_blob = r.string(MAX_CA_KEY_BYTES)
    if is_certificate_type(Reader(ca_blob).ascii(64)):
        raise DecodeError("certificate CA key is itself a certificate")
    signature_key = parse_public_key(ca_blob)
    signed_data = bytes(blob[: len(blob) - r.remaining])
    signature = r.string(MAX_SIGNATURE_BYTES)
    r.check_end()
    return Certificate(
        key_type=key_type,
        blob=bytes(blob),
        public_key=public_key,
        nonce=nonce,
        serial=serial,
        cert_type=cert_type,
        key_id=key_id,
        principals=principals,
        valid_after=valid_after,
        valid_before=valid_before,
        critical_options=critical_options,
        extensions=extensions,
        signature_key=signature_key,
        signature=signature,
        signed_data=signed_data,
    )


def _plain_key_blob(plain_type: str, r: Reader) -> bytes:
    """Read the certified key's fields and re-encode them as a plain key blob."""
    blob = wire.string(plain_type)
    if plain_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        blob += wire.string(r.string(64))
    elif plain_type == "ssh-rsa":
        e, n = r.mpint(16), r.mpint(2048)
        blob += wire.mpint(e) + wire.mpint(n)
    else:
        curve, point = r.string(64), r.string(256)
        blob += wire.string(curve) + wire.string(point)
    if plain_type.startswith("sk-"):
        blob += wire.string(r.string(MAX_APPLICATION_BYTES))
    return blob


def _utf8(raw: bytes, what: str) -> str:
    if b"\x00" in raw:
        raise DecodeError(f"certificate {what} contains NUL")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"certificate {what} is not valid UTF-8") from None


def _principals(section: bytes) -> tuple[str, ...]:
    r = Reader(section)
    names: list[str] = []
    while r.remaining:
        if len(names) == MAX_PRINCIPALS:
            raise DecodeError(f"certificate has more than {MAX_PRINCIPALS} principals")
        names.append(_utf8(r.string(MAX_PRINCIPAL_BYTES), "principal"))
    return tuple(names)


def _options(section: bytes, what: str) -> dict[str, str]:
    """Packed (name, data) pairs, names unique and in order as OpenSSH requires."""
    r = Reader(section)
    options: dict[str, str] = {}
    previous = ""
    while r.remaining:
        if len(options) == MAX_OPTIONS:
            raise DecodeError(f"certificate has more than {MAX_OPTIONS} {what}s")
        name = _utf8(r.string(MAX_OPTION_NAME_BYTES), what)
        if not name or (options and name <= previous):
            raise DecodeError(f"certificate {what} {name!r} is empty, repeated or out of order")
        data = r.string(MAX_OPTION_VALUE_BYTES + 4)
        value = ""
        if data:  # the value is itself a packed string; flags have empty data
            inner = Reader(data)
            value = _utf8(inner.string(MAX_OPTION_VALUE_BYTES), what)
            inner.check_end()
        options[name] = value
        previous = name
    return options


def check_user_certificate(
    cert: Certificate,
    *,
    username: str,
    now: int,
    source_ip: str | None,
    trusted_cas: Collection[bytes],
) -> str | None:
    """Apply sshd's rules to a user certificate offered for ``username``.

    Args:
        cert: the parsed certificate.
        username: the login name, which must be one of the certificate's principals (a
            certificate without principals is refused, as sshd does for TrustedUserCAKeys).
        now: the current time in seconds since the epoch (the core reads no clocks).
        source_ip: the client's address, for the ``source-address`` option.
        trusted_cas: blobs of the trusted CA public keys.

    Returns:
        None if the certificate may be used, else a short reason for the log.
    """
    if cert.cert_type != USER_CERTIFICATE:
        return "not a user certificate"
    if cert.signature_key.blob not in trusted_cas:
        return "CA not trusted"
    if (problem := cert.ca_signature_problem()) is not None:
        return problem
    if now < cert.valid_after:
        return "certificate not yet valid"
    if now >= cert.valid_before:
        return "certificate expired"
    if not cert.principals:
        return "certificate has no principals"
    if username not in cert.principals:
        return f"principal {username!r} not in certificate"
    for option in cert.critical_options:
        if option not in KNOWN_CRITICAL_OPTIONS:
            return f"unknown critical option {option!r}"
    allowed = cert.critical_options.get("source-address")
    if allowed is not None:
        return _check_source_address(allowed, source_ip)
    return None


def check_host_certificate(cert: Certificate, *, host_key: bytes, now: int) -> str | None:
    """Whether ``cert`` can be served for the host key whose public blob is ``host_key``.

    What a client checks besides its trust in the CA and the host name: a host
    certificate, of exactly this key, signed by its CA, valid ``now``, with no critical
    option (none is defined for host certificates, and clients refuse unknown ones).

    Returns:
        None if it can be served, else a reason (``"expired"`` and ``"not yet valid"``
        exactly, so the caller can add the dates).
    """
    if cert.cert_type != HOST_CERTIFICATE:
        return "not a host certificate (it is a user certificate)"
    if cert.public_key.blob != host_key:
        return f"certifies another key ({cert.public_key.fingerprint})"
    if (problem := cert.ca_signature_problem()) is not None:
        return problem
    if cert.critical_options:
        return f"critical option {next(iter(cert.critical_options))!r} in a host certificate"
    if now < cert.valid_after:
        return "not yet valid"
    if now >= cert.valid_before:
        return "expired"
    return None


def _check_source_address(allowed: str, source_ip: str | None) -> str | None:
    try:
        networks = parse_source_address(allowed)
    except ValueError:
        return "malformed source-address option"
    if source_ip is None:
        return "source address not allowed"
    try:
        address = ipaddress.ip_address(source_ip)
    except ValueError:
        return "source address not allowed"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in networks):
        return None
    return "source address not allowed"


def parse_source_address(
    value: str,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse a ``source-address`` list: comma-separated addresses or CIDR blocks.

    Raises:
        ValueError: an empty list or entry, too many entries, or an invalid block
            (including one with host bits set, which OpenSSH refuses too).
    """
    entries = value.split(",")
    if len(entries) > MAX_SOURCE_ADDRESSES:
        raise ValueError("too many source addresses")
    return tuple(ipaddress.ip_network(entry, strict=True) for entry in entries if _nonempty(entry))


def _nonempty(entry: str) -> bool:
    if not entry or entry != entry.strip():
        raise ValueError("empty or padded source-address entry")
    return True
