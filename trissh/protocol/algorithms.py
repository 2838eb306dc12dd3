"""KEXINIT construction and negotiation (RFC 4253 §7.1, RFC 8308, OpenSSH strict kex)."""

from __future__ import annotations

from trissh.protocol.ciphers import CIPHERS
from trissh.protocol.config import ProtocolConfig
from trissh.protocol.constants import ZLIB_OPENSSH

__all__ = ["ZLIB_OPENSSH", "negotiate", "server_kexinit"]
from trissh.protocol.errors import KeyExchangeFailed
from trissh.protocol.events import NegotiatedAlgorithms
from trissh.protocol.messages.transport import KexInit

#: Pseudo-algorithms that signal features rather than name a method.
EXT_INFO_CLIENT = "ext-info-c"
STRICT_KEX_CLIENT = "kex-strict-c-v00@openssh.com"
STRICT_KEX_SERVER = "kex-strict-s-v00@openssh.com"


def server_kexinit(config: ProtocolConfig, cookie: bytes, *, initial: bool) -> KexInit:
    """Our KEXINIT. The strict-kex marker is only meaningful in the first exchange."""
    kex = config.kex_algorithms + ((STRICT_KEX_SERVER,) if initial else ())
    compression = config.compression
    return KexInit(
        cookie=cookie,
        kex_algorithms=kex,
        server_host_key_algorithms=config.offered_host_key_algorithms,
        encryption_client_to_server=config.ciphers,
        encryption_server_to_client=config.ciphers,
        mac_client_to_server=config.macs,
        mac_server_to_client=config.macs,
        compression_client_to_server=compression,
        compression_server_to_client=compression,
    )


def _choose(category: str, client: tuple[str, ...], server: tuple[str, ...]) -> str:
    """The first client preference the server also supports (RFC 4253 §7.1)."""
    for name in client:
        if name in server:
            return name
    raise KeyExchangeFailed(
        f"no matching {category} (client offered: {','.join(client) or 'nothing'}; "
        f"server supports: {','.join(server)})"
    )


def _choose_mac(
    category: str, cipher: str, client: tuple[str, ...], server: tuple[str, ...]
) -> str | None:
    """AEAD ciphers authenticate themselves; the MAC list is ignored for them (OpenSSH)."""
    if CIPHERS[cipher].aead:
        return None
    return _choose(category, client, server)


def negotiate(client: KexInit, server: KexInit, *, initial: bool) -> NegotiatedAlgorithms:
    """Pick algorithms and read the feature flags of the client's KEXINIT.

    Raises:
        KeyExchangeFailed: naming the category without a common algorithm.
    """
    server_kex = tuple(name for name in server.kex_algorithms if name != STRICT_KEX_SERVER)
    cipher_in = _choose(
        "cipher (client to server)",
        client.encryption_client_to_server,
        server.encryption_client_to_server,
    )
    cipher_out = _choose(
        "cipher (server to client)",
        client.encryption_server_to_client,
        server.encryption_server_to_client,
    )
    return NegotiatedAlgorithms(
        kex=_choose("key exchange algorithm", client.kex_algorithms, server_kex),
        host_key=_choose(
            "host key algorithm",
            client.server_host_key_algorithms,
            server.server_host_key_algorithms,
        ),
        cipher_client_to_server=cipher_in,
        cipher_server_to_client=cipher_out,
        mac_client_to_server=_choose_mac(
            "MAC (client to server)",
            cipher_in,
            client.mac_client_to_server,
            server.mac_client_to_server,
        ),
        mac_server_to_client=_choose_mac(
            "MAC (server to client)",
            cipher_out,
            client.mac_server_to_client,
            server.mac_server_to_client,
        ),
        compression_client_to_server=_choose(
            "compression (client to server)",
            client.compression_client_to_server,
            server.compression_client_to_server,
        ),
        compression_server_to_client=_choose(
            "compression (server to client)",
            client.compression_server_to_client,
            server.compression_server_to_client,
        ),
        strict_kex=initial and STRICT_KEX_CLIENT in client.kex_algorithms,
        ext_info=initial and EXT_INFO_CLIENT in client.kex_algorithms,
    )
