"""Finite-field Diffie-Hellman: the fixed RFC 3526 groups (RFC 8268) and group exchange
(RFC 4419).

Both hash ``mpint e || mpint f`` and K as an mpint. The client's ``e`` must lie in
[2, p-2] (RFC 4253 §8; 1 and p-1 would pin K to a value the attacker knows). Our private
exponent is drawn from the injected ``rng`` with twice the group's security strength in
bits (NIST SP 800-56A rev. 3 §5.6.1.1.1, as OpenSSL does for these named groups), at least
256, and its top bit set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from trissh.protocol import wire
from trissh.protocol.constants import MessageNumber
from trissh.protocol.errors import DecodeError, KeyExchangeFailed, UnexpectedMessage
from trissh.protocol.kex_base import KexContext, KexExchange, KexReply, KexResult, exchange_hash
from trissh.protocol.messages.transport import (
    KexDhGexGroup,
    KexDhGexInit,
    KexDhGexReply,
    KexDhGexRequest,
)
from trissh.protocol.wire import Reader

#: RFC 3526 §3: the 2048-bit MODP group (group 14).
MODP_2048 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)

#: RFC 3526 §4: the 3072-bit MODP group (group 15).
MODP_3072 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16,
)

#: RFC 3526 §5: the 4096-bit MODP group (group 16).
MODP_4096 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF",
    16,
)

#: RFC 3526 §6: the 6144-bit MODP group (group 17).
MODP_6144 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C93402849236C3FAB4D27C7026"
    "C1D4DCB2602646DEC9751E763DBA37BDF8FF9406AD9E530EE5DB382F413001AE"
    "B06A53ED9027D831179727B0865A8918DA3EDBEBCF9B14ED44CE6CBACED4BB1B"
    "DB7F1447E6CC254B332051512BD7AF426FB8F401378CD2BF5983CA01C64B92EC"
    "F032EA15D1721D03F482D7CE6E74FEF6D55E702F46980C82B5A84031900B1C9E"
    "59E7C97FBEC7E8F323A97A7E36CC88BE0F1D45B7FF585AC54BD407B22B4154AA"
    "CC8F6D7EBF48E1D814CC5ED20F8037E0A79715EEF29BE32806A1D58BB7C5DA76"
    "F550AA3D8A1FBFF0EB19CCB1A313D55CDA56C9EC2EF29632387FE8D76E3C0468"
    "043E8F663F4860EE12BF2D5B0B7474D6E694F91E6DCC4024FFFFFFFFFFFFFFFF",
    16,
)

#: RFC 3526 §7: the 8192-bit MODP group (group 18).
MODP_8192 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C93402849236C3FAB4D27C7026"
    "C1D4DCB2602646DEC9751E763DBA37BDF8FF9406AD9E530EE5DB382F413001AE"
    "B06A53ED9027D831179727B0865A8918DA3EDBEBCF9B14ED44CE6CBACED4BB1B"
    "DB7F1447E6CC254B332051512BD7AF426FB8F401378CD2BF5983CA01C64B92EC"
    "F032EA15D1721D03F482D7CE6E74FEF6D55E702F46980C82B5A84031900B1C9E"
    "59E7C97FBEC7E8F323A97A7E36CC88BE0F1D45B7FF585AC54BD407B22B4154AA"
    "CC8F6D7EBF48E1D814CC5ED20F8037E0A79715EEF29BE32806A1D58BB7C5DA76"
    "F550AA3D8A1FBFF0EB19CCB1A313D55CDA56C9EC2EF29632387FE8D76E3C0468"
    "043E8F663F4860EE12BF2D5B0B7474D6E694F91E6DBE115974A3926F12FEE5E4"
    "38777CB6A932DF8CD8BEC4D073B931BA3BC832B68D9DD300741FA7BF8AFC47ED"
    "2576F6936BA424663AAB639C5AE4F5683423B4742BF1C978238F16CBE39D652D"
    "E3FDB8BEFC848AD922222E04A4037C0713EB57A81A23F0C73473FC646CEA306B"
    "4BCBC8862F8385DDFA9D4B7FA2C087E879683303ED5BDD3A062B3CF5B3A278A6"
    "6D2A13F83F44F82DDF310EE074AB6A364597E899A0255DC164F31CC50846851D"
    "F9AB48195DED7EA1B1D510BD7EE74D73FAF36BC31ECFA268359046F4EB879F92"
    "4009438B481C6CD7889A002ED5EE382BC9190DA6FC026E479558E4475677E9AA"
    "9E3050E2765694DFC81F56E880B96E7160C980DD98EDD3DFFFFFFFFFFFFFFFFF",
    16,
)


@dataclass(frozen=True, slots=True)
class DhGroup:
    prime: int
    generator: int
    #: Bits of our private exponent.
    exponent_bits: int

    @property
    def bits(self) -> int:
        return self.prime.bit_length()

    def check_public(self, value: int, what: str = "e") -> None:
        """RFC 4253 §8: 1 < value < p - 1; and, as OpenSSH's dh_pub_is_valid, at least
        four bits set (with g = 2, a value with one bit set has a trivial logarithm).

        Raises:
            KeyExchangeFailed: outside that range, or too few bits set.
        """
        if not 1 < value < self.prime - 1:
            raise KeyExchangeFailed(f"DH {what} is outside [2, p-2]")
        if value.bit_count() < 4:
            raise KeyExchangeFailed(f"DH {what} has fewer than four bits set")

    def exponent(self, rng: Callable[[int], bytes]) -> int:
        bits = self.exponent_bits
        raw = int.from_bytes(rng((bits + 7) // 8), "big")
        return (raw & ((1 << bits) - 1)) | (1 << (bits - 1))

    def respond(self, e: int, rng: Callable[[int], bytes]) -> tuple[int, int]:
        """Check the client's ``e``; return our ``f`` and K."""
        self.check_public(e)
        y = self.exponent(rng)
        return pow(self.generator, y, self.prime), pow(e, y, self.prime)


GROUP14 = DhGroup(MODP_2048, 2, 256)
GROUP15 = DhGroup(MODP_3072, 2, 256)
GROUP16 = DhGroup(MODP_4096, 2, 304)
GROUP17 = DhGroup(MODP_6144, 2, 352)
GROUP18 = DhGroup(MODP_8192, 2, 400)
#: Groups offered by diffie-hellman-group-exchange-sha256, smallest first.
GEX_GROUPS = (GROUP14, GROUP15, GROUP16, GROUP17, GROUP18)
#: RFC 8270 / OpenSSH DH_GRP_MIN and DH_GRP_MAX.
GEX_MIN_BITS = 2048
GEX_MAX_BITS = 8192


def _mpint_body(value: int) -> bytes:
    return wire.mpint(value)[4:]


def _read_mpint(body: bytes) -> int:
    """Parse a string's body as an mpint (minimal encoding enforced)."""
    return Reader(wire.string(body)).mpint()


class DhAgreement:
    """diffie-hellman-group14-sha256, -group16-sha512, -group18-sha512 (RFC 8268)."""

    __slots__ = ("_group",)

    def __init__(self, group: DhGroup) -> None:
        self._group = group

    def respond(self, client_value: bytes, rng: Callable[[int], bytes]) -> tuple[bytes, bytes]:
        if len(client_value) > self._group.bits // 8 + 1:
            raise KeyExchangeFailed("DH e is larger than the group")
        try:
            e = _read_mpint(client_value)
        except DecodeError:
            raise KeyExchangeFailed("DH e is not a valid mpint") from None
        f, k = self._group.respond(e, rng)
        return _mpint_body(f), wire.mpint(k)


def choose_group(
    minimum: int, preferred: int, maximum: int, groups: tuple[DhGroup, ...] = GEX_GROUPS
) -> DhGroup:
    """OpenSSH's rule: the smallest group of at least ``preferred`` bits within the bounds,
    else the largest within them. Bounds are clamped to [2048, 8192] first (RFC 8270).

    Raises:
        KeyExchangeFailed: inconsistent bounds, or no group within them.
    """
    if not minimum <= preferred <= maximum:
        raise KeyExchangeFailed(f"DH group exchange bounds {minimum}/{preferred}/{maximum}")
    low, high = max(minimum, GEX_MIN_BITS), min(maximum, GEX_MAX_BITS)
    target = min(max(preferred, GEX_MIN_BITS), GEX_MAX_BITS)
    fitting = [group for group in groups if low <= group.bits <= high]
    if not fitting:
        raise KeyExchangeFailed(f"no DH group between {minimum} and {maximum} bits")
    large_enough = [group for group in fitting if group.bits >= target]
    return large_enough[0] if large_enough else fitting[-1]


@dataclass(frozen=True, slots=True)
class GexMethod:
    """diffie-hellman-group-exchange-sha256 (RFC 4419): REQUEST(min, n, max) -> GROUP(p, g),
    then INIT(e) -> REPLY(K_S, f, signature); H also covers min, n, max, p and g."""

    name: str
    hash_name: str
    groups: tuple[DhGroup, ...] = GEX_GROUPS

    def start(self, context: KexContext) -> KexExchange:
        return _GexExchange(self, context)


class _GexExchange:
    __slots__ = ("_context", "_group", "_method", "_request")

    def __init__(self, method: GexMethod, context: KexContext) -> None:
        self._method = method
        self._context = context
        self._request: KexDhGexRequest | None = None
        self._group: DhGroup | None = None

    def receive(self, number: int, payload: bytes) -> KexReply | KexResult:
        if self._request is None:
            if number != MessageNumber.KEX_DH_GEX_REQUEST:
                raise UnexpectedMessage(f"expected KEX_DH_GEX_REQUEST, got message {number}")
            request = KexDhGexRequest.decode(Reader(payload, 1))
            group = choose_group(
                request.min_bits, request.preferred_bits, request.max_bits, self._method.groups
            )
            self._request, self._group = request, group
            return KexReply(KexDhGexGroup(prime=group.prime, generator=group.generator).encode())
        if number != MessageNumber.KEX_DH_GEX_INIT:
            raise UnexpectedMessage(f"expected KEX_DH_GEX_INIT, got message {number}")
        assert self._group is not None
        group, request, context = self._group, self._request, self._context
        e = KexDhGexInit.decode(Reader(payload, 1)).e
        f, k_value = group.respond(e, context.rng)
        k = wire.mpint(k_value)
        fields = b"".join(
            (
                wire.uint32(request.min_bits),
                wire.uint32(request.preferred_bits),
                wire.uint32(request.max_bits),
                wire.mpint(group.prime),
                wire.mpint(group.generator),
                wire.mpint(e),
                wire.mpint(f),
            )
        )
        h = exchange_hash(self._method.hash_name, context.transcript, fields, k)
        reply = KexDhGexReply(host_key=context.transcript.host_key, f=f, signature=context.sign(h))
        return KexResult(reply.encode(), k, h)
