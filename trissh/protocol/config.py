"""ProtocolConfig: every knob of the core, validated once at construction."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from trissh.protocol.ciphers import CIPHERS
from trissh.protocol.kex import KEX_METHODS
from trissh.protocol.keys import HostKey

DEFAULT_KEX = ("curve25519-sha256", "curve25519-sha256@libssh.org")
DEFAULT_CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
)
DEFAULT_MACS: tuple[str, ...] = ()
DEFAULT_ACCEPT_ENV = ("LANG", "LC_*")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolConfig:
    """Settings for one ``ServerConnection``; shared by all connections of a server."""

    host_keys: tuple[HostKey, ...]
    software_version: str = "trissh"
    kex_algorithms: tuple[str, ...] = DEFAULT_KEX
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS
    macs: tuple[str, ...] = DEFAULT_MACS
    auth_methods: tuple[str, ...] = ("publickey",)
    max_auth_attempts: int = 6
    #: ``fnmatch`` patterns of environment names accepted from ``env`` requests.
    accept_env: tuple[str, ...] = DEFAULT_ACCEPT_ENV
    max_env_vars: int = 64
    #: Receive window we grant per channel, and the largest data packet we accept.
    channel_window: int = 2 * 1024 * 1024
    channel_max_packet: int = 64 * 1024
    max_channels: int = 16
    #: Start a key re-exchange after this much traffic in either direction (RFC 4253 §9).
    rekey_bytes: int = 1 << 30
    rng: Callable[[int], bytes] = field(default=os.urandom, repr=False)

    def __post_init__(self) -> None:
        if not self.host_keys:
            raise ValueError("at least one host key is required")
        _check_names("kex algorithm", self.kex_algorithms, KEX_METHODS)
        _check_names("cipher", self.ciphers, CIPHERS)
        _check_names("MAC", self.macs, {})
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


def _check_names(kind: str, names: tuple[str, ...], known: Mapping[str, object]) -> None:
    if not names and kind != "MAC":
        raise ValueError(f"at least one {kind} is required")
    for name in names:
        if name not in known:
            choices = ", ".join(sorted(known)) or "none available"
            raise ValueError(f"unknown {kind} {name!r}; choose from: {choices}")
