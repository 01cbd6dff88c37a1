"""The numerics contract: number formats, widths and the random stream shared by gateware and host.

Pure Python (no torch, no Amaranth) so that ``hw/`` (gateware) and ``host/`` (PyTorch) can both import
it. Everything here is a definition; the vectorized torch versions live in ``host/quant`` and are tested
against the scalar definitions in this file.

Formats (see docs/NUMERICS.md for the equations and their sources):

* :class:`IntGrid` -- two's-complement / unsigned integer grids (INT4 ``[-8, 7]``, symmetric ``[-7, 7]``,
  UINT4 ``[0, 15]``, INT8, ...).
* :class:`LogFormat` -- LOG4 = FP4 [1,3,0] (LUQ): sign + exponent code; code 0 is zero and code ``c > 0``
  is ``alpha * 2**(c-1)``. ``max_exp=6`` is the strict 16-code format, ``max_exp=7`` the reference code's
  17-code variant.
* :class:`ShiftFormat` -- shift-scaled INT4 (ShiftQuant): INT codes with a per-channel exponent
  ``e in [0, e_max]`` meaning a scale of ``s0 * 2**-e``.
* :func:`pe_operand` -- the unified processing-element operand ``(mantissa, shift)``: every training GEMM
  is ``acc += (a * m) << s``.
* :func:`accumulator_width` -- the signed accumulator width that makes a K-long reduction exact.
* The random stream (:func:`rng_word`, :func:`rng_draw`) -- a counter-based generator: draw ``i`` of a
  stream depends only on ``(seed, i)``, so any number of hardware lanes, and a vectorized torch
  implementation, produce exactly the same bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "IntGrid", "INT4", "INT4_SYM", "UINT4", "INT8", "INT8_SYM", "int_grid",
    "LogFormat", "LOG4", "LOG4_REF", "ShiftFormat",
    "pe_operand", "operand_bounds", "accumulator_width", "max_exact_k",
    "FLOAT32_EXACT_LIMIT", "float32_exact_k",
    "RNG_NAME", "RNG_MASK64", "RNG_MAX_WORDS", "RAND_BITS_ALLOWED", "DEFAULT_RAND_BITS",
    "rng_mix64", "rng_counter", "rng_word", "rng_draw", "rng_draws", "draw_to_uniform",
    "stochastic_round",
]


# ---------------------------------------------------------------------------------------------------
# Integer grids
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IntGrid:
    """An integer grid of ``bits`` bits.

    ``signed=True, symmetric=False`` is two's complement ``[-2**(b-1), 2**(b-1)-1]``;
    ``signed=True, symmetric=True`` drops the most negative code, ``[-(2**(b-1)-1), 2**(b-1)-1]``
    (the "symmetric-restricted" grid of ALGORITHMS.md §0, the hardware default: it allows exact
    4-lanes-per-DSP48E1 packing and makes SR quantizers symmetric); ``signed=False`` is ``[0, 2**b-1]``.
    """

    bits: int
    signed: bool = True
    symmetric: bool = False

    def __post_init__(self):
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 1 <= self.bits <= 32:
            raise ValueError(f"IntGrid bits must be an int in 1..32, got {self.bits!r}")
        if self.symmetric and not self.signed:
            raise ValueError("an unsigned grid cannot be symmetric")
        if self.symmetric and self.bits < 2:
            raise ValueError("a symmetric signed grid needs at least 2 bits")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.symmetric else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin + 1

    @property
    def max_abs(self) -> int:
        return max(abs(self.qmin), abs(self.qmax))

    def contains(self, value: int) -> bool:
        return self.qmin <= value <= self.qmax

    def __str__(self) -> str:
        kind = "uint" if not self.signed else ("int_sym" if self.symmetric else "int")
        return f"{kind}{self.bits}[{self.qmin},{self.qmax}]"


def int_grid(bits: int, *, signed: bool = True, symmetric: bool = True) -> IntGrid:
    """The grid for ``bits`` bits; symmetric by default (the hardware default)."""
    return IntGrid(bits, signed=signed, symmetric=symmetric if signed else False)


INT4 = IntGrid(4, signed=True, symmetric=False)       # [-8, 7]
INT4_SYM = IntGrid(4, signed=True, symmetric=True)    # [-7, 7]
UINT4 = IntGrid(4, signed=False)                      # [0, 15]
INT8 = IntGrid(8, signed=True, symmetric=False)       # [-128, 127]
INT8_SYM = IntGrid(8, signed=True, symmetric=True)    # [-127, 127]


# ---------------------------------------------------------------------------------------------------
# LOG4 (LUQ) and shift-scaled INT (ShiftQuant)
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LogFormat:
    """Radix-2 logarithmic format with a zero code: FP4 [1,3,0] for LUQ (ALGORITHMS.md §4).

    A value is held as a signed *code* ``c``: ``c = 0`` is zero, ``c != 0`` is
    ``sign(c) * alpha * 2**(|c| - 1)`` with ``1 <= |c| <= max_exp + 1``.

    ``max_exp=6`` (default): 7 non-zero magnitudes ``2**0 .. 2**6``, sign + 3-bit code -- a strict 4-bit
    format (16 codes; the sign-magnitude pattern for "negative zero" is unused).
    ``max_exp=7``: the LUQ reference code's 8 magnitudes ``2**0 .. 2**7`` (17 codes, so 5 bits on a wire).

    The wire/PE encoding is sign-magnitude: ``nibble = (sign << exp_bits) | |c|``.
    """

    max_exp: int = 6

    def __post_init__(self):
        if self.max_exp not in (6, 7):
            raise ValueError(f"LogFormat max_exp must be 6 (strict FP4) or 7 (LUQ reference code), got {self.max_exp!r}")

    @property
    def max_code(self) -> int:
        return self.max_exp + 1

    @property
    def exp_bits(self) -> int:
        return max(1, math.ceil(math.log2(self.max_code + 1)))

    @property
    def code_bits(self) -> int:
        """Bits of the sign-magnitude encoding: 4 for max_exp=6, 5 for max_exp=7."""
        return 1 + self.exp_bits

    def magnitude(self, code: int) -> int:
        """|value| / alpha of a code, as an integer power of two (0 for code 0)."""
        if not -self.max_code <= code <= self.max_code:
            raise ValueError(f"LOG code must be in [-{self.max_code}, {self.max_code}], got {code}")
        return 0 if code == 0 else 1 << (abs(code) - 1)

    def encode(self, code: int) -> int:
        """Sign-magnitude bit pattern of a signed code."""
        self.magnitude(code)  # validates
        return ((1 << self.exp_bits) if code < 0 else 0) | abs(code)

    def decode(self, pattern: int) -> int:
        """Signed code of a sign-magnitude bit pattern (negative zero decodes to 0)."""
        if not 0 <= pattern < (1 << self.code_bits):
            raise ValueError(f"LOG pattern must be a {self.code_bits}-bit unsigned int, got {pattern}")
        mag = pattern & ((1 << self.exp_bits) - 1)
        if mag > self.max_code:
            raise ValueError(f"LOG pattern {pattern:#x} has exponent code {mag} > {self.max_code}")
        return -mag if pattern >> self.exp_bits else mag


LOG4 = LogFormat(max_exp=6)       # strict FP4 [1,3,0], hardware default
LOG4_REF = LogFormat(max_exp=7)   # LUQ reference code (17 levels)


@dataclass(frozen=True)
class ShiftFormat:
    """Shift-scaled integer (ShiftQuant, ALGORITHMS.md §3): codes on ``grid`` with a per-channel exponent
    ``e in [0, e_max]``; the value is ``s0 * 2**-e * q``. Along a GEMM's reduction index the PE applies the
    exponent as a left shift by ``e_max - e`` (and the result carries a factor ``2**-e_max``)."""

    grid: IntGrid = INT4_SYM
    e_max: int = 3

    def __post_init__(self):
        if not isinstance(self.e_max, int) or not 0 <= self.e_max <= 15:
            raise ValueError(f"ShiftFormat e_max must be an int in 0..15, got {self.e_max!r}")


# ---------------------------------------------------------------------------------------------------
# Unified PE operand and accumulator width
# ---------------------------------------------------------------------------------------------------

def pe_operand(value: int) -> tuple[int, int]:
    """Split an integer operand value into the PE's ``(mantissa, shift)`` with ``value == m << s``.

    The canonical split uses the smallest mantissa that still fits: INT4 values keep ``s = 0`` unless
    they are a power of two times an odd number that a narrower mantissa could hold; LOG4 values
    ``±2**k`` become ``(±1, k)``. Hardware formats choose the split explicitly (INT4: ``s = 0``; LOG4:
    ``m = ±1``; ShiftQuant: ``s = e_max - e``); this canonical form exists for the driver and tests.
    """
    if not isinstance(value, int):
        raise TypeError(f"pe_operand takes an int, got {type(value).__name__}")
    if value == 0:
        return 0, 0
    shift = (value & -value).bit_length() - 1   # trailing zeros of |value|
    return value >> shift, shift


def operand_bounds(fmt) -> tuple[int, int]:
    """``(max |mantissa|, max shift)`` of the B operand in a format (``IntGrid``, ``LogFormat`` or
    ``ShiftFormat``)."""
    if isinstance(fmt, IntGrid):
        return fmt.max_abs, 0
    if isinstance(fmt, LogFormat):
        return 1, fmt.max_exp
    if isinstance(fmt, ShiftFormat):
        return fmt.grid.max_abs, fmt.e_max
    raise TypeError(f"unknown operand format {fmt!r}")


def accumulator_width(k_max: int, a_max: int, b_max: int, shift_max: int = 0) -> int:
    """Signed accumulator bits that hold any sum of ``k_max`` products ``a * (m << s)`` exactly:
    ``ceil(log2(k_max * a_max * b_max * 2**shift_max + 1)) + 1`` (ALGORITHMS.md §5.2)."""
    for name, v in (("k_max", k_max), ("a_max", a_max), ("b_max", b_max)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"accumulator_width: {name} must be a positive int, got {v!r}")
    if not isinstance(shift_max, int) or shift_max < 0:
        raise ValueError(f"accumulator_width: shift_max must be a non-negative int, got {shift_max!r}")
    bound = k_max * a_max * b_max << shift_max
    return bound.bit_length() + 1   # ceil(log2(bound + 1)) == bit_length(bound), exact for any size


def max_exact_k(width: int, a_max: int, b_max: int, shift_max: int = 0) -> int:
    """The largest K whose worst-case sum fits a signed ``width``-bit accumulator (inverse of
    :func:`accumulator_width`); the driver splits any longer reduction."""
    if not isinstance(width, int) or width < 2:
        raise ValueError(f"max_exact_k: width must be an int >= 2, got {width!r}")
    per_product = a_max * b_max << shift_max
    if per_product < 1:
        raise ValueError("max_exact_k: operand bounds must be positive")
    # need ceil(log2(K*p + 1)) + 1 <= width  <=>  K*p + 1 <= 2**(width-1)
    return (2 ** (width - 1) - 1) // per_product


FLOAT32_EXACT_LIMIT = 2 ** 24
"""Every integer of magnitude <= 2**24 is exact in float32; a float32 GEMM of integer-valued operands is
exact while ``K * max|a*b| <= 2**24`` (every partial sum then stays an exactly representable integer)."""


def float32_exact_k(ab_max: int) -> int:
    """The largest K for which a float32 dot product of integers with ``|a*b| <= ab_max`` is exact."""
    if not isinstance(ab_max, int) or ab_max < 0:
        raise ValueError(f"float32_exact_k: ab_max must be a non-negative int, got {ab_max!r}")
    return FLOAT32_EXACT_LIMIT if ab_max == 0 else FLOAT32_EXACT_LIMIT // ab_max


# ---------------------------------------------------------------------------------------------------
# The random stream
# ---------------------------------------------------------------------------------------------------

RNG_NAME = "wang64-ctr"
RNG_MASK64 = (1 << 64) - 1
RNG_MAX_WORDS = 1 << 32          # words per (seed) stream; the counter's low half
RAND_BITS_ALLOWED = (4, 8, 16)   # bits per draw; a 64-bit word holds 64 // bits draws
DEFAULT_RAND_BITS = 16


def rng_mix64(x: int) -> int:
    """Thomas Wang's 64-bit integer hash (``hash64shift``), a bijection of ``[0, 2**64)``.

    Multiply-free: ``* 265`` is ``x + (x << 3) + (x << 8)`` and ``* 21`` is ``x + (x << 2) + (x << 4)``,
    so in gateware it is seven pipeline stages of 64-bit add/xor with constant shifts (no DSP), one word
    per clock. All arithmetic is modulo 2**64; ``>>`` is a logical shift.
    """
    m = RNG_MASK64
    x &= m
    x = ((~x) + (x << 21)) & m
    x ^= x >> 24
    x = (x + (x << 3) + (x << 8)) & m
    x ^= x >> 14
    x = (x + (x << 2) + (x << 4)) & m
    x ^= x >> 28
    x = (x + (x << 31)) & m
    return x


def rng_counter(seed: int, word: int) -> int:
    """The 64-bit counter hashed for word ``word`` of stream ``seed``: ``seed << 32 | word``.

    Distinct seeds never share a counter, so their streams never overlap (up to 2**32 words each)."""
    if not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise ValueError(f"RNG seed must be an int in [0, 2**32), got {seed!r}")
    if not isinstance(word, int) or not 0 <= word < RNG_MAX_WORDS:
        raise ValueError(f"RNG word index must be in [0, 2**32), got {word!r}")
    return (seed << 32) | word


def rng_word(seed: int, word: int) -> int:
    """Word ``word`` (64 random bits) of stream ``seed``."""
    return rng_mix64(rng_counter(seed, word))


def _check_bits(bits: int) -> int:
    if bits not in RAND_BITS_ALLOWED:
        raise ValueError(f"random bits per draw must be one of {RAND_BITS_ALLOWED}, got {bits!r}")
    return bits


def rng_draw(seed: int, index: int, bits: int = DEFAULT_RAND_BITS) -> int:
    """Draw ``index`` of stream ``seed``: an unsigned ``bits``-bit integer.

    Draw ``i`` is field ``i % D`` (counting from the least significant bits) of word ``i // D``, with
    ``D = 64 // bits`` draws per word. Quantizers consume draw ``i`` for element ``i`` of the tensor they
    round, in row-major (C) order.
    """
    _check_bits(bits)
    per_word = 64 // bits
    word, field = divmod(index, per_word)
    return (rng_word(seed, word) >> (field * bits)) & ((1 << bits) - 1)


def rng_draws(seed: int, count: int, bits: int = DEFAULT_RAND_BITS, offset: int = 0) -> list[int]:
    """``count`` consecutive draws starting at draw ``offset`` (scalar reference; slow, for tests)."""
    _check_bits(bits)
    per_word, mask = 64 // bits, (1 << bits) - 1
    out, cache_word, cache = [], -1, 0
    for i in range(offset, offset + count):
        word, field = divmod(i, per_word)
        if word != cache_word:
            cache_word, cache = word, rng_word(seed, word)
        out.append((cache >> (field * bits)) & mask)
    return out


def draw_to_uniform(r: int, bits: int = DEFAULT_RAND_BITS) -> float:
    """The uniform variate of a draw, in ``(0, 1)``.

    The draw is read as a two's-complement ``bits``-bit integer ``s in [-2**(bits-1), 2**(bits-1))``
    and ``u = (s + 2**(bits-1) + 1/2) / 2**bits`` -- the centre of bin ``r XOR 2**(bits-1)``. (Reading
    the field as signed costs hardware one inverted bit and lets torch use a zero-copy narrow-int view.)
    Bin centres keep the rounding bias of :func:`stochastic_round` within ``2**-(bits+1)`` of a step in
    either direction (zero for inputs on the ``2**-bits`` sub-grid). ``u`` and ``1 - u`` are exact in
    float32 for ``bits <= 16``.
    """
    _check_bits(bits)
    half = 1 << (bits - 1)
    return ((r ^ half) + 0.5) / 2 ** bits


def stochastic_round(v: float, u: float) -> int:
    """SR(v) = floor(v + u) in exact arithmetic, computed as ``floor(v) + (frac(v) >= 1 - u)``.

    The split form never rounds: ``frac(v) = v - floor(v)`` is exact (Sterbenz) except for
    ``-1/2 < v < 0``, where it is replaced by the equivalent exact comparison ``v >= -u``; ``1 - u`` is
    exact for ``bits <= 16``. So the float torch implementation, this scalar definition and fixed-point
    hardware (which adds ``u`` to a fixed-point ``v`` and truncates) agree bit for bit.
    """
    fl = math.floor(v)
    if fl == -1:
        return 0 if v >= -u else -1
    return fl + (1 if (v - fl) >= 1.0 - u else 0)
