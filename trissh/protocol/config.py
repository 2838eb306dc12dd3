"""ProtocolConfig: every knob of the core, validated once at construction."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from trissh.protocol.ciphers import CIPHERS, MACS
from trissh.protocol.constants import COMPRESSION_METHODS
from trissh.protocol.kex import DEFAULT_KEX, KEX_METHODS, POST_QUANTUM_KEX
from trissh.protocol.keys import HOST_CERTIFICATE_ALGORITHMS, HOST_KEY_ALGORITHMS, HostKey

__all__ = [
    "DEFAULT_CIPHERS",
    "DEFAULT_HOST_KEY_ALGORITHMS",
    "DEFAULT_KEX",
    "DEFAULT_MACS",
    "POST_QUANTUM_KEX",
    "ProtocolConfig",
    "check_algorithm_names",
]

DEFAULT_CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
#: Encrypt-then-MAC only; the classic encrypt-and-MAC ``hmac-sha2-*`` on request.
DEFAULT_MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")
#: Offered in this order, each only when a host key of its type is configured (and for the
#: certificate algorithms, a certificate for it): certificates first, as OpenSSH orders them.
DEFAULT_HOST_KEY_ALGORITHMS = (*HOST_CERTIFICATE_ALGORITHMS, *HOST_KEY_ALGORITHMS)
DEFAULT_ACCEPT_ENV = ("LANG", "LC_*")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolConfig:
    """Settings for one ``ServerConnection``; shared by all connections of a server."""

    host_keys: tuple[HostKey, ...]
    software_version: str = "trissh"
    kex_algorithms: tuple[str, ...] = DEFAULT_KEX
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS
    macs: tuple[str, ...] = DEFAULT_MACS
    host_key_algorithms: tuple[str, ...] = DEFAULT_HOST_KEY_ALGORITHMS
    #: ``("none",)``, or with ``"zlib@openssh.com"`` (compression after authentication).
    compression: tuple[str, ...] = ("none",)
    auth_methods: tuple[str, ...] = ("publickey",)
    #: Sent once as USERAUTH_BANNER (RFC 4252 §5.4) before the answer to the first
    #: USERAUTH_REQUEST, as sshd's ``Banner``; "" sends none.
    banner: str = ""
    max_auth_attempts: int = 6
    #: ``fnmatch`` patterns of environment names accepted from ``env`` requests.
    accept_env: tuple[str, ...] = DEFAULT_ACCEPT_ENV
    max_env_vars: int = 64
    #: Receive window we grant per channel, and the largest data packet we accept.
    channel_window: int = 2 * 1024 * 1024
    channel_max_packet: int = 64 * 1024
    max_channels: int = 16
    #: Start a key re-exchange after this much traffic in either direction (RFC 4253 §9),
    #: or sooner when the cipher's RFC 4344 §3.2 block limit comes first.
    rekey_bytes: int = 1 << 30
    #: Send ``hostkeys-00@openssh.com`` after authentication (OpenSSH PROTOCOL §2.5).
    announce_host_keys: bool = True
    rng: Callable[[int], bytes] = field(default=os.urandom, repr=False)
    #: CPU seconds so far, to measure what a key exchange cost (the core reads no clock
    #: itself); without one every exchange costs 0 and none is paced.
    cpu_clock: Callable[[], float] = field(default=lambda: 0.0, repr=False)
    #: The configured host key algorithms that some configured key can serve (derived).
    offered_host_key_algorithms: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.host_keys:
            raise ValueError("at least one host key is required")
        check_algorithm_names("kex algorithm", self.kex_algorithms, KEX_METHODS)
        check_algorithm_names("cipher", self.ciphers, CIPHERS)
        check_algorithm_names("MAC", self.macs, MACS, allow_empty=True)
        check_algorithm_names(
            "host key algorithm", self.host_key_algorithms, DEFAULT_HOST_KEY_ALGORITHMS
        )
        check_algorithm_names("compression", self.compression, COMPRESSION_METHODS)
        if not self.macs and any(not CIPHERS[name].aead for name in self.ciphers):
            raise ValueError("ciphers without built-in authentication (aes*-ctr) need a MAC")
        key_types = [key.key_type for key in self.host_keys]
        for key_type in key_types:
            if key_types.count(key_type) > 1:
                raise ValueError(f"more than one {key_type} host key")
        # Derived once here, not per connection (every KEXINIT lists it).
        offered = tuple(
            name
            for name in self.host_key_algorithms
            if any(name in key.algorithms for key in self.host_keys)
        )
        object.__setattr__(self, "offered_host_key_algorithms", offered)
        if not offered:
            raise ValueError(
                "no host key serves any configured host key algorithm "
                f"({', '.join(self.host_key_algorithms)}); keys: "
                f"{', '.join(key.key_type for key in self.host_keys)}"
            )
        if self.max_auth_attempts < 1:
            raise ValueError("max_auth_attempts must be at least 1")
        if not 1024 <= self.channel_max_packet <= 128 * 1024:
            raise ValueError("channel_max_packet must be between 1 KiB and 128 KiB")
        if self.rekey_bytes < 1 << 16:
            raise ValueError("rekey_bytes must be at least 64 KiB")
        if not self.channel_max_packet <= self.channel_window < 2**32:
            raise ValueError("channel_window must hold at least one packet and fit 32 bits")

    @property
    def server_version(self) -> bytes:
        return f"SSH-2.0-{self.software_version}".encode("ascii")

    def host_key_for(self, algorithm: str) -> HostKey | None:
        for key in self.host_keys:
            if algorithm in key.algorithms:
                return key
        return None


def check_algorithm_names(
    kind: str,
    names: tuple[str, ...],
    known: Mapping[str, object] | tuple[str, ...],
    *,
    allow_empty: bool = False,
) -> None:
    """Refuse an empty list, duplicates and unknown names, listing the valid choices.

    Raises:
        ValueError: naming the first problem.
    """
    if not names and not allow_empty:
        raise ValueError(f"at least one {kind} is required")
    for name in names:
        if name not in known:
            choices = ", ".join(known) or "none available"
            raise ValueError(f"unknown {kind} {name!r}; choose from: {choices}")
        if names.count(name) > 1:
            raise ValueError(f"{kind} {name!r} is listed twice")
