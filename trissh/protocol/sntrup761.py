"""Streamlined NTRU Prime sntrup761, the KEM half of ``sntrup761x25519-sha512@openssh.com``.

Pure Python on the standard library only (hashlib's SHA-512). It computes exactly what
the reference implementation computes (SUPERCOP ``crypto_kem/sntrup761/ref``, which
OpenSSH ships as ``sntrup761.c``): parameters p = 761, q = 4591, w = 286; the ring
Rq = (Z/q)[x]/(x^p - x - 1) and R3 = (Z/3)[x]/(x^p - x - 1); the radix ``Encode``/``Decode``
of Rq elements and rounded elements; ``Hash_b(s) = SHA-512(b || s)[:32]`` with the
domain-separation prefixes b = 0..4; the confirmation hash; the session-key hash and the
implicit rejection of a bad ciphertext in decapsulation.

Randomness comes in only through ``rng(n) -> n bytes``. The calls are, in order:
``keypair``: ``rng(4 * 761)`` for the small polynomial g (repeated, each call a fresh g,
until g is invertible in R3), ``rng(4 * 761)`` for the short polynomial f, then ``rng(191)``
for the implicit-rejection secret rho; ``encapsulate``: one ``rng(4 * 761)`` for the short
input r. These are the draws of the NIST round-3 submission code, whose KAT depends on the
call boundaries (its DRBG starts every call on a fresh block); OpenSSH's copy reads the same
bytes four at a time (``urandom32``), which from a real random source is the same thing.

How it is fast in CPython
-------------------------
Polynomials are not held as Python lists of coefficients but as byte strings of fixed-width
little-endian slots and as big integers over those slots, so that the per-coefficient work
happens inside CPython's C loops (extended-slice copies, ``bytes.translate``,
``int.from_bytes``/``to_bytes``, big-integer arithmetic):

* multiplication by a small (-1/0/1) polynomial is one big-integer product (Kronecker
  substitution, 24-bit slots; both factors' digits are signed, centered representatives,
  which is fine for integers); an offset that is a multiple of q in every slot makes all
  product digits non-negative, so ``x^p = x + 1`` folds the top half down with a shift, a
  mask and two adds; one pass of ``% q`` and a table lookup per coefficient remain;
* ``Encode``/``Decode`` are done level by level, with all the equal pairs of a level as one
  big-integer computation (``Decode`` divides by the radix with a per-slot multiply-by-
  reciprocal and shift, exact for every value that can occur, checked when the plan is
  built); only the one irregular last pair or last element of a level is handled alone;
* arithmetic in R3 uses 16-bit slots and reduces mod 3 bytewise (256 = 1 mod 3);
* Short_random's sort is ``sorted()`` on the p words, the masking around it ``translate``.

Key generation needs 1/g in R3 (extended Euclid on bitsliced F3 polynomials, a few ms) and
1/(3f) in Rq (extended Euclid on coefficient lists, some 150 ms: the one slow part). Key
generation is the client's job in SSH, not on a server's path.

This is not constant-time code (CPython cannot promise that); the one comparison that
matters for the implicit rejection uses ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from operator import mod as _mod
from typing import Final

__all__ = [
    "CIPHERTEXT_SIZE",
    "PUBLIC_KEY_SIZE",
    "SECRET_KEY_SIZE",
    "SHARED_SECRET_SIZE",
    "decapsulate",
    "encapsulate",
    "keypair",
]

# ----- parameters

P: Final = 761
Q: Final = 4591
W: Final = 286
_Q12: Final = (Q - 1) // 2  # 2295: Fq elements are represented in -2295..2295

_RQ_BYTES: Final = 1158
_ROUNDED_BYTES: Final = 1007
_SMALL_BYTES: Final = (P + 3) // 4  # 191
_HASH_BYTES: Final = 32

PUBLIC_KEY_SIZE: Final = _RQ_BYTES
SECRET_KEY_SIZE: Final = 2 * _SMALL_BYTES + PUBLIC_KEY_SIZE + _SMALL_BYTES + _HASH_BYTES  # 1763
CIPHERTEXT_SIZE: Final = _ROUNDED_BYTES + _HASH_BYTES  # 1039
SHARED_SECRET_SIZE: Final = 32

#: Bytes one ``Short_random``/``Small_random`` draws: p little-endian uint32.
_LIST_BYTES: Final = 4 * P

Rng = Callable[[int], bytes]

_U32_P: Final = struct.Struct(f"<{P}I")
_U16_P: Final = struct.Struct(f"<{P}H")


# ----- hashing


def _hash(prefix: int, data: bytes) -> bytes:
    """``Hash_prefix``: the first 32 bytes of SHA-512(prefix byte || data)."""
    return hashlib.sha512(bytes((prefix,)) + data).digest()[:_HASH_BYTES]


# ----- slot helpers
#
# A "small" polynomial (coefficients -1, 0, 1) is held as p bytes of coefficient + 1,
# i.e. 0, 1, 2 (this is also the low two bits of a sorted Short_fromlist entry and the
# 2-bit field of Small_encode). A vector of values below 2^16 is held as 2p bytes of
# little-endian uint16 ("u16 bytes").


def _spread(data: bytes, width: int, count: int) -> bytearray:
    """Bytes ``data`` (one per element) as the low byte of ``width``-byte slots."""
    out = bytearray(width * count)
    out[0::width] = data
    return out


def _u16_to_slots(data: bytes | bytearray, width: int) -> bytearray:
    """u16 bytes widened to ``width``-byte little-endian slots."""
    count = len(data) // 2
    out = bytearray(width * count)
    out[0::width] = data[0::2]
    out[1::width] = data[1::2]
    return out


def _ones(width_bits: int, count: int) -> int:
    """The integer with a 1 in each of ``count`` slots of ``width_bits`` bits."""
    return ((1 << (width_bits * count)) - 1) // ((1 << width_bits) - 1)


_ONES24_P: Final = _ones(24, P)
_ONES16_P: Final = _ones(16, P)
_LOW24_P: Final = (1 << (24 * P)) - 1
_LOW16_P: Final = (1 << (16 * P)) - 1

#: Per-slot offsets over all 2p - 1 product slots: a multiple of the modulus in every slot
#: and larger than any product digit can be negative, so that every digit of
#: (product + offset) is in [0, slot) and the slots can be split exactly.
#: Rq: |f_i| <= q12 (centered representatives) and |g_i| <= 1, so |digit| <= q12 * p.
_RQ_OFFSET_DIGIT: Final = Q * -(-_Q12 * P // Q)
_RQ_OFFSET: Final = _RQ_OFFSET_DIGIT * _ones(24, 2 * P - 1)
# digits of product + offset < 2 * offset; after folding x^p = x + 1 three of them add up
assert 3 * 2 * _RQ_OFFSET_DIGIT < 1 << 24
#: R3: |digit| <= p.
_R3_OFFSET_DIGIT: Final = 3 * -(-P // 3)
_R3_OFFSET: Final = _R3_OFFSET_DIGIT * _ones(16, 2 * P - 1)
assert 3 * 2 * _R3_OFFSET_DIGIT < 1 << 16


def _small_int(small: bytes, width: int) -> int:
    """A small polynomial as the integer sum(c_i 2^(8 width i)) with signed digits c_i."""
    return int.from_bytes(_spread(small, width, P), "little") - (
        _ONES24_P if width == 3 else _ONES16_P
    )


def _rq_int(values: bytes | bytearray, scale: int = 1) -> int:
    """u16 bytes of R in 0..q-1 as the 24-bit-slot integer of the Fq values scale*R - q12.

    For scale 1 that is Rq_decode's (R - q12); for scale 3, Rounded_decode's (3R - q12).
    Both stay within -q12..q12, as _rq_mult_small needs.
    """
    return scale * int.from_bytes(_u16_to_slots(values, 3), "little") - _Q12 * _ONES24_P


def _rq_mult_small(f: int, g_small: bytes) -> tuple[int, ...]:
    """f * g in Rq, f as 24-bit-slot integer with signed digits |f_i| <= q12, g small.

    Returns p non-negative integers congruent mod q to the product's coefficients.
    """
    product = f * _small_int(g_small, 3) + _RQ_OFFSET  # every digit in [0, 2^24)
    high = product >> (24 * P)
    folded = ((product & _LOW24_P) + high + (high << 24)).to_bytes(3 * P, "little")
    wide = bytearray(4 * P)  # x^p = x + 1 folded; digits still < 2^24, widen to uint32
    wide[0::4] = folded[0::3]
    wide[1::4] = folded[1::3]
    wide[2::4] = folded[2::3]
    return _U32_P.unpack(wide)


#: mod 3 of a byte value, then + 1 (a residue 0, 1, 2 as the small coefficient 0, 1, -1
#: in the "coefficient + 1" form): used after bytewise mod-3 reduction.
_MOD3: Final = bytes(x % 3 for x in range(256))
_MOD3_TO_SMALL: Final = bytes((x % 3 + 1) % 3 for x in range(256))


def _r3_mult(a_small: bytes, b_small: bytes) -> bytes:
    """a * b in R3 for small a, b; the result as small bytes (coefficient + 1)."""
    product = _small_int(a_small, 2) * _small_int(b_small, 2) + _R3_OFFSET
    high = product >> (16 * P)
    folded = ((product & _LOW16_P) + high + (high << 16)).to_bytes(2 * P, "little")
    # a slot is lo + 256 hi = lo + hi (mod 3); each byte's residue is at most 2, sums <= 4
    summed = int.from_bytes(folded[0::2].translate(_MOD3), "little") + int.from_bytes(
        folded[1::2].translate(_MOD3), "little"
    )
    return summed.to_bytes(P, "little").translate(_MOD3_TO_SMALL)


# ----- the radix encoding (Encode/Decode of the reference), planned per modulus


@dataclass(frozen=True, slots=True)
class _Level:
    """One level of the recursive Encode for a vector whose entries share one modulus.

    The level has ``n`` entries; all but possibly the last have modulus ``m``, the last has
    ``m_last``. Entries pair up; the ``pairs`` leading pairs are all (m, m), each emits
    ``k`` bytes; then either an irregular last pair (m, m_last) emitting ``k_tail`` bytes,
    or a lone last entry carried up, or nothing.
    """

    n: int
    m: int
    m_last: int
    pairs: int
    k: int
    tail_pair: bool
    k_tail: int
    offset: int  # where this level's bytes start in the encoding
    shift: int  # Decode: floor(r / m) == (r * recip) >> shift for every reachable r
    recip: int
    mask: int  # the low 64 - shift bits of each of the ``pairs`` 64-bit slots


@dataclass(frozen=True, slots=True)
class _Plan:
    levels: tuple[_Level, ...]
    top_m: int
    top_offset: int
    size: int


def _pair_bytes(m: int) -> tuple[int, int]:
    """(bytes emitted, modulus carried up) for a pair whose moduli multiply to m."""
    k = 0
    while m >= 16384:
        k += 1
        m = (m + 255) >> 8
    return k, m


def _make_plan(modulus: int, n: int) -> _Plan:
    levels: list[_Level] = []
    m, m_last, offset = modulus, modulus, 0
    while n > 1:
        irregular = n % 2 == 0 and m_last != m
        pairs = n // 2 - (1 if irregular else 0)
        k, m_up = _pair_bytes(m * m)
        if pairs and k not in (1, 2):
            raise AssertionError("the vectorised levels handle 1 or 2 bytes a pair")
        if irregular:
            k_tail, m_up_last = _pair_bytes(m * m_last)
        elif n % 2:
            k_tail, m_up_last = 0, m_last
        else:
            k_tail, m_up_last = 0, m_up
        # Decode's r = bottom + 256^k * R2 with R2 < m_up: r < 256^k * m_up.
        r_max = (1 << (8 * k)) * m_up - 1
        shift = (r_max * m).bit_length()
        recip = -(-(1 << shift) // m)
        # exact division for all r <= r_max, and no carry between 64-bit slots
        if not (r_max * recip < 1 << 64 and (r_max // m) < 1 << (64 - shift)):
            raise AssertionError("reciprocal division does not fit 64-bit slots")
        if any((r * recip) >> shift != r // m for r in (r_max, r_max - 1, m - 1, m, 2 * m - 1)):
            raise AssertionError("reciprocal division is not exact")
        levels.append(
            _Level(
                n,
                m,
                m_last,
                pairs,
                k,
                irregular,
                k_tail,
                offset,
                shift,
                recip,
                _ones(64, pairs) * ((1 << (64 - shift)) - 1),
            ),
        )
        offset += pairs * k + k_tail
        n = (n + 1) // 2
        m, m_last = m_up, m_up_last
    top_m = m_last  # the one entry left is the last one
    size = offset
    mm = top_m
    while mm > 1:
        size += 1
        mm = (mm + 255) >> 8
    return _Plan(tuple(levels), top_m, offset, size)


_RQ_PLAN: Final = _make_plan(Q, P)
_ROUNDED_PLAN: Final = _make_plan((Q + 2) // 3, P)
assert _RQ_PLAN.size == _RQ_BYTES
assert _ROUNDED_PLAN.size == _ROUNDED_BYTES


def _encode(values: bytes | bytearray, plan: _Plan) -> bytes:
    """Encode: u16 bytes with 0 <= value < modulus, as ``plan.size`` bytes."""
    out: list[bytes | bytearray] = []
    cur: bytes | bytearray = values
    for lv in plan.levels:
        n_up = (lv.n + 1) // 2
        up = bytearray(2 * n_up)
        pairs = lv.pairs
        if pairs:
            even = bytearray(4 * pairs)
            even[0::4] = cur[0 : 4 * pairs : 4]
            even[1::4] = cur[1 : 4 * pairs : 4]
            odd = bytearray(4 * pairs)
            odd[0::4] = cur[2 : 4 * pairs : 4]
            odd[1::4] = cur[3 : 4 * pairs : 4]
            r = int.from_bytes(even, "little") + int.from_bytes(odd, "little") * lv.m
            rb = r.to_bytes(4 * pairs, "little")
            if lv.k == 1:
                out.append(rb[0::4])
                up[0 : 2 * pairs : 2] = rb[1::4]
                up[1 : 2 * pairs : 2] = rb[2::4]
            else:
                low = bytearray(2 * pairs)
                low[0::2] = rb[0::4]
                low[1::2] = rb[1::4]
                out.append(low)
                up[0 : 2 * pairs : 2] = rb[2::4]
                up[1 : 2 * pairs : 2] = rb[3::4]
        if lv.tail_pair:
            i = 2 * (lv.n - 2)
            r = cur[i] | cur[i + 1] << 8
            r += (cur[i + 2] | cur[i + 3] << 8) * lv.m
            mm = lv.m * lv.m_last
            tail = bytearray()
            while mm >= 16384:
                tail.append(r & 0xFF)
                r >>= 8
                mm = (mm + 255) >> 8
            out.append(tail)
            up[-2:] = r.to_bytes(2, "little")
        elif lv.n % 2:
            up[-2:] = cur[-2:]
        cur = up
    r = cur[0] | cur[1] << 8
    mm = plan.top_m
    top = bytearray()
    while mm > 1:
        top.append(r & 0xFF)
        r >>= 8
        mm = (mm + 255) >> 8
    out.append(top)
    return b"".join(out)


def _divmod_slots(r64: int, lv: _Level) -> tuple[int, int]:
    """Per 64-bit slot: (r div m, r mod m), for slot values r that Decode can produce."""
    quotient = ((r64 * lv.recip) >> lv.shift) & lv.mask
    return quotient, r64 - quotient * lv.m


def _decode(data: bytes, plan: _Plan) -> bytearray:
    """Decode: ``plan.size`` bytes to u16 bytes, every value below its modulus.

    Like the reference, any byte string decodes (to in-range values); it is only
    the inverse of ``_encode`` on that function's outputs.
    """
    top = plan.top_offset
    if plan.top_m == 1:
        value = 0
    elif plan.top_m <= 256:
        value = data[top] % plan.top_m
    else:
        value = (data[top] | data[top + 1] << 8) % plan.top_m
    cur = bytearray(value.to_bytes(2, "little"))
    for lv in reversed(plan.levels):
        down = bytearray(2 * lv.n)
        pairs = lv.pairs
        base = lv.offset
        if pairs:
            # r = bottom + 256^k * R2, one 64-bit slot per pair
            r64 = bytearray(8 * pairs)
            if lv.k == 1:
                r64[0::8] = data[base : base + pairs]
                r64[1::8] = cur[0 : 2 * pairs : 2]
                r64[2::8] = cur[1 : 2 * pairs : 2]
            else:
                r64[0::8] = data[base : base + 2 * pairs : 2]
                r64[1::8] = data[base + 1 : base + 2 * pairs : 2]
                r64[2::8] = cur[0 : 2 * pairs : 2]
                r64[3::8] = cur[1 : 2 * pairs : 2]
            quotient, r0 = _divmod_slots(int.from_bytes(r64, "little"), lv)
            _, r1 = _divmod_slots(quotient, lv)  # only changes anything if invalid
            b0 = r0.to_bytes(8 * pairs, "little")
            b1 = r1.to_bytes(8 * pairs, "little")
            down[0 : 4 * pairs : 4] = b0[0::8]
            down[1 : 4 * pairs : 4] = b0[1::8]
            down[2 : 4 * pairs : 4] = b1[0::8]
            down[3 : 4 * pairs : 4] = b1[1::8]
        if lv.tail_pair:
            at = base + pairs * lv.k
            mm = lv.m * lv.m_last
            if mm > 256 * 16383:
                bottom, scale = data[at] | data[at + 1] << 8, 65536
            elif mm >= 16384:
                bottom, scale = data[at], 256
            else:
                bottom, scale = 0, 1
            r = bottom + scale * (cur[-2] | cur[-1] << 8)
            high, low = divmod(r, lv.m)
            down[-4:-2] = low.to_bytes(2, "little")
            down[-2:] = (high % lv.m_last).to_bytes(2, "little")
        elif lv.n % 2:
            down[-2:] = cur[-2:]
        cur = down
    return cur


# ----- tables for the per-coefficient steps that need a true mod q

_REPEAT_Q: Final = repeat(Q)  # endless and stateless; map() stops at its shortest input

#: u (a residue mod q of h*r) -> Rounded_encode value of Round(h*r): (R + 1) // 3 where R
#: is the centered representative plus q12.
_ROUND_ENCODED: Final = tuple((((u + _Q12) % Q) + 1) // 3 for u in range(Q))
#: u (a residue mod q of c*f) -> F3_freeze(Fq_freeze(3 * c*f)) + 1.
_THREE_TIMES_MOD3: Final = bytes(((((3 * u + _Q12) % Q) - _Q12 + 1) % 3) for u in range(Q))


# ----- encoding small polynomials


_PLANE: Final = tuple(bytes((x >> s) & 3 for x in range(256)) for s in (0, 2, 4, 6))


def _small_encode(small: bytes) -> bytes:
    """Small_encode: four 2-bit fields (coefficient + 1) a byte, p = 1 mod 4."""
    n4 = P // 4
    packed = (
        int.from_bytes(small[0 : 4 * n4 : 4], "little")
        | int.from_bytes(small[1 : 4 * n4 : 4], "little") << 2
        | int.from_bytes(small[2 : 4 * n4 : 4], "little") << 4
        | int.from_bytes(small[3 : 4 * n4 : 4], "little") << 6
    )
    return packed.to_bytes(n4, "little") + small[P - 1 :]


def _small_decode(data: bytes) -> bytes:
    """Small_decode, as small bytes (coefficient + 1); a field of 3 is refused."""
    n4 = P // 4
    out = bytearray(P)
    body = data[:n4]
    for j, plane in enumerate(_PLANE):
        out[j : 4 * n4 : 4] = body.translate(plane)
    out[P - 1] = data[n4] & 3
    if 3 in out:
        raise ValueError("sntrup761 secret key has an invalid small-polynomial field")
    return bytes(out)


# ----- randomness


_LOW2_CLEAR0: Final = bytes(x & 0xFE for x in range(256))
_LOW2_SET1: Final = bytes((x & 0xFC) | 1 for x in range(256))
_LOW2: Final = bytes(x & 3 for x in range(256))


def _draw(rng: Rng, n: int) -> bytes:
    data = rng(n)
    if len(data) != n:
        raise ValueError(f"rng returned {len(data)} bytes, expected {n}")
    return bytes(data)


def _short_random(rng: Rng) -> bytes:
    """Short_random: weight-w small polynomial from p uint32 (Short_fromlist's sort)."""
    raw = bytearray(_draw(rng, _LIST_BYTES))
    # L[i] = in[i] & -2 for i < w; L[i] = (in[i] & -3) | 1 otherwise: only the low byte moves
    raw[0 : 4 * W : 4] = raw[0 : 4 * W : 4].translate(_LOW2_CLEAR0)
    raw[4 * W :: 4] = raw[4 * W :: 4].translate(_LOW2_SET1)
    ordered = sorted(_U32_P.unpack(raw))
    return _U32_P.pack(*ordered)[0::4].translate(_LOW2)


def _small_random(rng: Rng) -> bytes:
    """Small_random: each coefficient ((u & 0x3fffffff) * 3 >> 30) - 1, held + 1."""
    words = _U32_P.unpack(_draw(rng, _LIST_BYTES))
    return bytes(((x & 0x3FFFFFFF) * 3) >> 30 for x in words)


# ----- inversion (key generation only)


def _recip_q(a: list[int]) -> list[int]:
    """1/a in Rq (a field, so any a != 0 is invertible), coefficients in 0..q-1.

    Extended Euclid, one leading term at a time; polynomials are lists, index = degree,
    without leading zeros. Invariant: s_i * a = r_i (mod x^p - x - 1).
    """
    r0 = [Q - 1, Q - 1] + [0] * (P - 2) + [1]
    r1 = [x % Q for x in a]
    s0: list[int] = []
    s1 = [1]
    while r1 and r1[-1] == 0:
        r1.pop()
    if not r1:
        raise ValueError("0 has no inverse")
    while len(r1) > 1:
        d = len(r0) - len(r1)
        c = r0[-1] * pow(r1[-1], -1, Q) % Q
        r0[d:] = [(x - c * y) % Q for x, y in zip(r0[d:], r1, strict=True)]
        while r0 and r0[-1] == 0:
            r0.pop()
        need = d + len(s1)
        if len(s0) < need:
            s0.extend([0] * (need - len(s0)))
        s0[d:need] = [(x - c * y) % Q for x, y in zip(s0[d:need], s1, strict=True)]
        while s0 and s0[-1] == 0:
            s0.pop()
        if len(r0) < len(r1):
            r0, r1 = r1, r0
            s0, s1 = s1, s0
    scale = pow(r1[0], -1, Q)
    out = [x * scale % Q for x in s1]
    return out + [0] * (P - len(out))  # Euclid keeps deg s < p


# Polynomials over F3 for R3_recip, bitsliced: (plus, minus) integers whose bit i says
# coefficient i is +1 (resp. -1).

_IS_PLUS_BIT: Final = bytes(0x31 if x == 2 else 0x30 for x in range(256))  # ASCII '1'/'0'
_IS_MINUS_BIT: Final = bytes(0x31 if x == 0 else 0x30 for x in range(256))
_ASCII_BIT: Final = bytes(1 if x == 0x31 else 0 for x in range(256))
_ALL_ONE_BYTES: Final = int.from_bytes(b"\x01" * P, "little")


def _add3(ap: int, an: int, bp: int, bn: int) -> tuple[int, int]:
    """a + b over F3, bitsliced."""
    za = ~(ap | an)
    zb = ~(bp | bn)
    return (ap & zb) | (bp & za) | (an & bn), (an & zb) | (bn & za) | (ap & bp)


def _degree3(plus: int, minus: int) -> int:
    return max(plus.bit_length(), minus.bit_length()) - 1


def _recip3(g: bytes) -> bytes | None:
    """1/g in R3 for small g (coefficient + 1 bytes), or None if g is not invertible."""
    r0p, r0n = 1 << P, 0b11  # x^p - x - 1
    r1p = int(g.translate(_IS_PLUS_BIT)[::-1], 2)
    r1n = int(g.translate(_IS_MINUS_BIT)[::-1], 2)
    s0p = s0n = 0
    s1p, s1n = 1, 0
    d0, d1 = P, _degree3(r1p, r1n)
    while d1 > 0:
        d = d0 - d1
        # r0 -= (lc(r0) / lc(r1)) x^d r1, likewise s0; over F3, lc / lc = lc * lc
        if (r0p >> d0 & 1) == (r1p >> d1 & 1):  # quotient +1: add -x^d r1
            r0p, r0n = _add3(r0p, r0n, r1n << d, r1p << d)
            s0p, s0n = _add3(s0p, s0n, s1n << d, s1p << d)
        else:
            r0p, r0n = _add3(r0p, r0n, r1p << d, r1n << d)
            s0p, s0n = _add3(s0p, s0n, s1p << d, s1n << d)
        d0 = _degree3(r0p, r0n)
        if d0 < d1:
            r0p, r0n, r1p, r1n = r1p, r1n, r0p, r0n
            s0p, s0n, s1p, s1n = s1p, s1n, s0p, s0n
            d0, d1 = d1, d0
    if d1 < 0:
        return None
    if r1n:  # r1 = -1: the inverse is -s1
        s1p, s1n = s1n, s1p
    plus = format(s1p, f"0{P}b")[::-1].encode().translate(_ASCII_BIT)
    minus = format(s1n, f"0{P}b")[::-1].encode().translate(_ASCII_BIT)
    digits = _ALL_ONE_BYTES + int.from_bytes(plus, "little") - int.from_bytes(minus, "little")
    return digits.to_bytes(P, "little")


# ----- the KEM


def _rq_decode_pk(public_key: bytes) -> int:
    """Rq_decode(pk) as the 24-bit-slot integer of its Fq values (see _rq_int)."""
    return _rq_int(_decode(public_key, _RQ_PLAN))


def _zencrypt(r_small: bytes, h: int) -> bytes:
    """Rounded_encode(Round(h * r))."""
    product = _rq_mult_small(h, r_small)
    rounded = _U16_P.pack(*map(_ROUND_ENCODED.__getitem__, map(_mod, product, _REPEAT_Q)))
    return _encode(rounded, _ROUNDED_PLAN)


def _hide(r_small: bytes, public_key: bytes, h: int, cache: bytes) -> tuple[bytes, bytes]:
    """(ciphertext || confirmation, r_enc): the reference's Hide."""
    r_enc = _small_encode(r_small)
    ciphertext = _zencrypt(r_small, h)
    confirm = _hash(2, _hash(3, r_enc) + cache)
    return ciphertext + confirm, r_enc


def _session_key(prefix: int, r_enc: bytes, ciphertext: bytes) -> bytes:
    return _hash(prefix, _hash(3, r_enc) + ciphertext)


def keypair(rng: Rng) -> tuple[bytes, bytes]:
    """A fresh key pair: (public key, 1158 bytes; secret key, 1763 bytes)."""
    while True:
        g = _small_random(rng)
        ginv_small = _recip3(g)
        if ginv_small is not None:
            break
    f = _short_random(rng)
    finv = _recip_q([3 * (x - 1) for x in f])
    h = _rq_mult_small(_rq_int(_U16_P.pack(*[(v + _Q12) % Q for v in finv])), g)
    public_key = _encode(_U16_P.pack(*[(v + _Q12) % Q for v in h]), _RQ_PLAN)
    rho = _draw(rng, _SMALL_BYTES)
    secret_key = b"".join(
        (_small_encode(f), _small_encode(ginv_small), public_key, rho, _hash(4, public_key)),
    )
    return public_key, secret_key


def encapsulate(public_key: bytes, rng: Rng) -> tuple[bytes, bytes]:
    """(ciphertext, 1039 bytes; shared secret, 32 bytes) for ``public_key``.

    Raises ValueError for a public key that is not 1158 bytes; any 1158-byte string is
    accepted (it decodes to some element of Rq, as in the reference).
    """
    public_key = bytes(public_key)
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(
            f"sntrup761 public key must be {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}",
        )
    cache = _hash(4, public_key)
    r = _short_random(rng)
    ciphertext, r_enc = _hide(r, public_key, _rq_decode_pk(public_key), cache)
    return ciphertext, _session_key(1, r_enc, ciphertext)


_DEFAULT_R: Final = bytes([2] * W + [1] * (P - W))  # Decrypt's fallback (1,...,1,0,...,0)


def decapsulate(ciphertext: bytes, secret_key: bytes) -> bytes:
    """The 32-byte shared secret for ``ciphertext``.

    Raises ValueError for a ciphertext that is not 1039 bytes or a secret key that is not
    1763 bytes (or has an impossible small-polynomial field). A well-sized ciphertext never
    raises: one that does not re-encrypt to itself gets the implicit-rejection secret
    ``Hash0(Hash3(rho) || ciphertext)``, as in the reference.
    """
    ciphertext = bytes(ciphertext)
    secret_key = bytes(secret_key)
    if len(ciphertext) != CIPHERTEXT_SIZE:
        raise ValueError(
            f"sntrup761 ciphertext must be {CIPHERTEXT_SIZE} bytes, got {len(ciphertext)}",
        )
    if len(secret_key) != SECRET_KEY_SIZE:
        raise ValueError(
            f"sntrup761 secret key must be {SECRET_KEY_SIZE} bytes, got {len(secret_key)}",
        )
    f = _small_decode(secret_key[:_SMALL_BYTES])
    ginv = _small_decode(secret_key[_SMALL_BYTES : 2 * _SMALL_BYTES])
    at = 2 * _SMALL_BYTES
    public_key = secret_key[at : at + PUBLIC_KEY_SIZE]
    at += PUBLIC_KEY_SIZE
    rho = secret_key[at : at + _SMALL_BYTES]
    cache = secret_key[at + _SMALL_BYTES :]

    # ZDecrypt: c = Rounded_decode, e = R3(3 * c * f), ev = e * ginv, weight check
    rounded = _decode(ciphertext[:_ROUNDED_BYTES], _ROUNDED_PLAN)
    c = _rq_int(rounded, 3)
    cf = _rq_mult_small(c, f)
    e = bytes(map(_THREE_TIMES_MOD3.__getitem__, map(_mod, cf, _REPEAT_Q)))
    ev = _r3_mult(e, ginv)
    r = ev if P - ev.count(1) == W else _DEFAULT_R

    cnew, r_enc = _hide(r, public_key, _rq_decode_pk(public_key), cache)
    if hmac.compare_digest(cnew, ciphertext):
        return _session_key(1, r_enc, ciphertext)
    return _session_key(0, rho, ciphertext)
