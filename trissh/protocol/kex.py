"""The key-exchange methods trissh implements, by name, and which of them are on by default.

Each method is a small object (``kex_base.KexMethod``); the transport looks it up here and
lets it run the exchange. No SHA-1 method exists at all.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec

from trissh.protocol.kex_base import (
    KexContext,
    KexExchange,
    KexMethod,
    KexReply,
    KexResult,
    KexTranscript,
    SingleRoundMethod,
    derive_key,
    exchange_hash,
)
from trissh.protocol.kex_dh import GROUP14, GROUP16, GROUP18, DhAgreement, GexMethod
from trissh.protocol.kex_ecdh import EcdhAgreement, X25519Agreement
from trissh.protocol.kex_hybrid import KemHybridAgreement, MlKem768, Sntrup761

__all__ = [
    "DEFAULT_KEX",
    "KEX_METHODS",
    "POST_QUANTUM_KEX",
    "KexContext",
    "KexExchange",
    "KexMethod",
    "KexReply",
    "KexResult",
    "KexTranscript",
    "derive_key",
    "exchange_hash",
]

_x25519 = X25519Agreement()
_sntrup761x25519 = KemHybridAgreement(Sntrup761(), "sha512")

#: Every method, in our preference order (the order ``DEFAULT_KEX`` keeps).
KEX_METHODS: Final[dict[str, KexMethod]] = {
    method.name: method
    for method in (
        SingleRoundMethod(
            "mlkem768x25519-sha256", "sha256", KemHybridAgreement(MlKem768(), "sha256")
        ),
        SingleRoundMethod("sntrup761x25519-sha512", "sha512", _sntrup761x25519),
        SingleRoundMethod("sntrup761x25519-sha512@openssh.com", "sha512", _sntrup761x25519),
        SingleRoundMethod("curve25519-sha256", "sha256", _x25519),
        SingleRoundMethod("curve25519-sha256@libssh.org", "sha256", _x25519),
        SingleRoundMethod("diffie-hellman-group16-sha512", "sha512", DhAgreement(GROUP16)),
        SingleRoundMethod("diffie-hellman-group18-sha512", "sha512", DhAgreement(GROUP18)),
        SingleRoundMethod("diffie-hellman-group14-sha256", "sha256", DhAgreement(GROUP14)),
        SingleRoundMethod("ecdh-sha2-nistp256", "sha256", EcdhAgreement(ec.SECP256R1())),
        SingleRoundMethod("ecdh-sha2-nistp384", "sha384", EcdhAgreement(ec.SECP384R1())),
        SingleRoundMethod("ecdh-sha2-nistp521", "sha512", EcdhAgreement(ec.SECP521R1())),
        GexMethod("diffie-hellman-group-exchange-sha256", "sha256"),
    )
}

#: Hybrid methods that resist a future quantum computer.
POST_QUANTUM_KEX: Final = (
    "mlkem768x25519-sha256",
    "sntrup761x25519-sha512",
    "sntrup761x25519-sha512@openssh.com",
)

#: On unless configured otherwise. Left out: the NIST curves and group exchange (on request
#: only), diffie-hellman-group14-sha256, whose 2048-bit group gives only 112-bit strength
#: (ssh-audit warns), and diffie-hellman-group18-sha512: its exponentiation holds the one
#: event loop ~100 ms, which anyone may ask for before login (group16's: ~20 ms), and no
#: client needs it that lacks group16. Every one of them can be configured.
DEFAULT_KEX: Final = (
    *POST_QUANTUM_KEX,
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group16-sha512",
)
